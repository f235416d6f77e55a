"""Update size |w_{t+1} - w_t| per layer: how far one optimizer step moves the weights."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from batchlab.probes._util import layer_records, norms, trainable
from batchlab.probes.base import Probe, ProbeContext, ProbeRecord, Tier
from batchlab.probes.schedule import Schedule, periodic


class UpdateSize(Probe):
    """|w_{t+1,l} - w_{t,l}| per parameter tensor and over the whole model.

    `after_backward` snapshots the pre-update weights (one copy of the parameters, only at due
    steps) and `after_update` measures the difference. For plain SGD this is lr * |g|.
    """

    name: ClassVar[str] = "update_size"
    tier: ClassVar[Tier] = "cheap"

    def __init__(self, *, schedule: Schedule) -> None:
        super().__init__(schedule=schedule)
        self._before: list[torch.Tensor] | None = None

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return periodic(total_steps, measurements=40)

    def after_backward(self, ctx: ProbeContext) -> list[ProbeRecord]:
        self._before = [p.detach().clone() for _, p in trainable(ctx.model)]
        return []

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        if self._before is None:  # after_backward was not called for this step
            return []
        named = trainable(ctx.model)
        diffs = torch._foreach_sub([p.detach() for _, p in named], self._before)
        self._before = None
        values = norms(diffs)
        names = [n for n, _ in named]
        return layer_records(
            ctx.step, self.name, names, values, math.sqrt(math.fsum(v * v for v in values))
        )
