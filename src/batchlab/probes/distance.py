"""Distance from initialization |w_t - w_0|, total and per layer (Hoffer et al. 2017)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from batchlab.probes._util import layer_records, norms, trainable
from batchlab.probes.base import Probe, ProbeContext, ProbeRecord, Tier
from batchlab.probes.schedule import Schedule, periodic


class Distance(Probe):
    """|w_t - w_0| per parameter tensor and over the whole model.

    `start` keeps a copy of w_0 and records step 0 (exactly 0); `finish` records the final step
    too when the schedule did not already, so every trial ends with its total distance.
    """

    name: ClassVar[str] = "distance"
    tier: ClassVar[Tier] = "cheap"

    def __init__(self, *, schedule: Schedule) -> None:
        super().__init__(schedule=schedule)
        self._w0: list[torch.Tensor] = []
        self._last_step = -1

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return periodic(total_steps, measurements=40)

    def _measure(self, ctx: ProbeContext) -> list[ProbeRecord]:
        named = trainable(ctx.model)
        diffs = torch._foreach_sub([p.detach() for _, p in named], self._w0)
        values = norms(diffs)
        self._last_step = ctx.step
        names = [n for n, _ in named]
        return layer_records(
            ctx.step, self.name, names, values, math.sqrt(math.fsum(v * v for v in values))
        )

    def start(self, ctx: ProbeContext) -> list[ProbeRecord]:
        self._w0 = [p.detach().clone() for _, p in trainable(ctx.model)]
        return self._measure(ctx)

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return self._measure(ctx)

    def finish(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return [] if ctx.step == self._last_step else self._measure(ctx)
