"""`ProbeSuite`: the probes of one trial, built from the spec's `probes` value, run by the engine.

The engine's side of the contract, per training step t (t counts optimizer updates from 1):

    suite.start(ctx)                        # once, before training: records w_0 (distance 0)
    due = suite.due(t)                      # pure Python, no device work
    loss.backward()
    if due: suite.after_backward(ctx.at(t)) # training grads in p.grad, weights still w_{t-1}
    optimizer.step()
    if due: suite.after_update(ctx.at(t))   # weights now w_t
    ...
    suite.finish(ctx.at(last_step))         # end-of-training probes
    records = suite.drain()                 # whenever convenient: records since the last drain

Hooks leave parameters, buffers, `p.grad`, module modes and the global RNG as they found them,
and draw randomness only from `ctx.generator`, so a trial's trajectory is the same with or
without probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from batchlab.probes.base import TIERS, Probe, ProbeContext, ProbeRecord
from batchlab.probes.distance import Distance
from batchlab.probes.grad_norms import GradNorms
from batchlab.probes.hessian import HessianTop
from batchlab.probes.histograms import GradHistograms
from batchlab.probes.noise_scale import NoiseScale
from batchlab.probes.schedule import AnyOf, AtEnd, AtSteps, Every, Schedule
from batchlab.probes.sharpness import Sharpness
from batchlab.probes.update_size import UpdateSize

PROBES: dict[str, type[Probe]] = {
    cls.name: cls
    for cls in (GradNorms, UpdateSize, Distance, NoiseScale, HessianTop, Sharpness, GradHistograms)
}
"""Every probe by name."""

PRESETS: dict[str, list[str]] = {
    "cheap": ["grad_norms", "update_size", "distance"],
    "standard": ["grad_norms", "update_size", "distance", "noise_scale"],
    "full": [
        "grad_norms",
        "update_size",
        "distance",
        "noise_scale",
        "hessian",
        "sharpness",
        "grad_histograms",
    ],
}
"""Probe names per cost tier; each tier includes the cheaper ones."""


def resolve_names(value: str | Sequence[str] | None) -> list[str]:
    """Probe names for a spec value: a preset name, a list of probe names, or None (none).

    Raises ValueError, in one line, for an unknown name.
    """
    if value is None:
        return []
    if isinstance(value, str):
        if value in PRESETS:
            return list(PRESETS[value])
        names = [value]
    else:
        names = list(value)
    for name in names:
        if name not in PROBES:
            raise ValueError(
                f"unknown probe {name!r}; valid probes: {', '.join(PROBES)} "
                f"(or a preset: {', '.join(TIERS)})"
            )
    return list(dict.fromkeys(names))  # drop repeats, keep order


def _with_options(
    default: Schedule, kwargs: dict[str, Any], *, total_steps: int | None
) -> Schedule:
    """The schedule that `every` / `steps` in a probe's options ask for (popped from kwargs)."""
    every, steps = kwargs.pop("every", None), kwargs.pop("steps", None)
    if every is None and steps is None:
        return default
    parts: list[Schedule] = []
    if every is not None:
        parts.append(Every(int(every), total_steps=total_steps))
    if steps is not None:
        parts.append(AtSteps(tuple(int(s) for s in steps)))
    if default.at_end:
        parts.append(AtEnd())
    return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))


class ProbeSuite:
    """The probes of one trial, each on its own schedule, and the records they produced."""

    def __init__(self, *, probes: Sequence[Probe]) -> None:
        self.probes = list(probes)
        self._records: list[ProbeRecord] = []

    @classmethod
    def from_spec(
        cls,
        value: str | Sequence[str] | None,
        *,
        total_steps: int | None,
        every: int | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> ProbeSuite:
        """Build from the spec's `probes` value with each probe's default schedule.

        `total_steps` (None for a wall-clock budget) spreads the default schedules over the
        trial and makes the last step due. `every`, if given, replaces the schedule of every
        per-step probe by `Every(every)`; end-of-training probes stay at the end. `options`
        maps a probe name to keyword arguments of its class (e.g. {"sharpness": {"eps": 1e-4}}),
        plus two schedule keys: `every` (measure every k updates) and `steps` (measure at these
        checkpoints, e.g. {"grad_histograms": {"steps": [100, 1000]}}). An end-of-training
        probe given either still measures at the end too.
        """
        probes: list[Probe] = []
        names = resolve_names(value)
        for name in options or {}:
            if name not in names:
                raise ValueError(f"options for {name!r}, which is not among the probes {names}")
        for name in names:
            kind = PROBES[name]
            schedule: Schedule = kind.default_schedule(total_steps)
            if every is not None and not schedule.at_end:
                schedule = Every(every, total_steps=total_steps)
            kwargs = dict((options or {}).get(name, {}))
            schedule = _with_options(schedule, kwargs, total_steps=total_steps)
            try:
                probes.append(kind(schedule=schedule, **kwargs))
            except TypeError as err:
                raise ValueError(f"{name}: {err}") from None
        return cls(probes=probes)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.probes]

    def __bool__(self) -> bool:
        return bool(self.probes)

    def due(self, step: int) -> bool:
        """Whether any probe measures at update `step` (pure Python, cheap)."""
        return any(p.schedule.due(step) for p in self.probes)

    def needs_split_step(self, step: int) -> bool:
        """Whether a probe due at update `step` reads the step's own gradients (`needs` "grads")
        or the weights before the update (it has an `after_backward` hook): the engine then
        takes that step through autograd, split around the probe; other steps may stay fast."""
        return any(
            p.schedule.due(step)
            and ("grads" in p.needs or type(p).after_backward is not Probe.after_backward)
            for p in self.probes
        )

    def start(self, ctx: ProbeContext) -> None:
        """Once before training, at the initial weights (ctx.step == 0)."""
        for p in self.probes:
            self._records += p.start(ctx)

    def after_backward(self, ctx: ProbeContext) -> None:
        """After loss.backward(), before optimizer.step(), for update ctx.step (when due)."""
        for p in self.probes:
            if p.schedule.due(ctx.step):
                self._records += p.after_backward(ctx)

    def after_update(self, ctx: ProbeContext) -> None:
        """After optimizer.step() for update ctx.step (when due)."""
        for p in self.probes:
            if p.schedule.due(ctx.step):
                self._records += p.after_update(ctx)

    def finish(self, ctx: ProbeContext) -> None:
        """Once after the last update (ctx.step is the final step): end-of-training probes.

        When the weights are not finite (a diverged trial) the end-of-training probes are
        skipped: a Hessian or sharpness of NaN weights means nothing and can fail in scipy.
        """
        finite = all(bool(torch.isfinite(p).all()) for p in ctx.model.parameters())
        for p in self.probes:
            if finite or not p.schedule.at_end:
                self._records += p.finish(ctx)

    def drain(self) -> list[ProbeRecord]:
        """The records produced since the last drain, in the order they were measured."""
        out, self._records = self._records, []
        return out
