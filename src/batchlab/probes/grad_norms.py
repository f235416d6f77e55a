"""Gradient norms per layer, from the training step's own gradients (cheap: no extra passes)."""

from __future__ import annotations

import math
from typing import ClassVar

from batchlab.probes._util import layer_records, norms, trainable
from batchlab.probes.base import Need, Probe, ProbeContext, ProbeRecord, Tier
from batchlab.probes.schedule import Schedule, periodic


class GradNorms(Probe):
    """|g_l| for each parameter tensor l and |g| = sqrt(sum_l |g_l|^2) for the whole model.

    g is the minibatch gradient the optimizer is about to use (read from `p.grad` in
    `after_backward`); a parameter without a gradient counts as zero.
    """

    name: ClassVar[str] = "grad_norms"
    tier: ClassVar[Tier] = "cheap"
    needs: ClassVar[frozenset[Need]] = frozenset({"grads"})

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return periodic(total_steps, measurements=40)

    def after_backward(self, ctx: ProbeContext) -> list[ProbeRecord]:
        named = [(n, p.grad) for n, p in trainable(ctx.model) if p.grad is not None]
        values = norms([g for _, g in named])  # the one host sync of this probe
        total = math.sqrt(math.fsum(v * v for v in values))
        per_layer = dict(zip([n for n, _ in named], values, strict=True))
        names = [n for n, _ in trainable(ctx.model)]
        return layer_records(
            ctx.step, self.name, names, [per_layer.get(n, 0.0) for n in names], total
        )
