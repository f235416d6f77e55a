"""When a probe runs: every k steps, log-spaced, at the end, or any mix of those.

A schedule is a pure function of the step number, so `ProbeSuite.due(step)` costs a few Python
comparisons and never touches the device. Steps count optimizer updates from 1; `at_end` asks
for one more measurement after the last update (`ProbeSuite.finish`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class Schedule:
    """Base class: `due(step)` says whether to measure after update `step`."""

    @property
    def at_end(self) -> bool:
        """Whether to measure once more after the last update."""
        return False

    def due(self, step: int) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class Every(Schedule):
    """Every `every` updates (step % every == 0), plus step `total_steps` when given."""

    every: int
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"Every: every must be >= 1, got {self.every}")

    def due(self, step: int) -> bool:
        return step >= 1 and (step % self.every == 0 or step == self.total_steps)


@dataclass(frozen=True)
class LogSpaced(Schedule):
    """About `per_decade` steps per factor of ten (1, 2, 3, 4, 6, 7, 8, 10, 13, ... for 10).

    Step s is due when it is the first integer at or after some 10**(i / per_decade), which
    is why early training, where things change fastest, is sampled densest.
    """

    per_decade: int = 10
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if self.per_decade < 1:
            raise ValueError(f"LogSpaced: per_decade must be >= 1, got {self.per_decade}")

    def due(self, step: int) -> bool:
        if step < 1:
            return False
        if step == 1 or step == self.total_steps:
            return True
        # Is there an integer i with step - 1 < 10**(i/d) <= step?  Compare the number of grid
        # points at or below each (the 1e-9 keeps exact powers of ten on the grid).
        d = self.per_decade
        return math.floor(d * math.log10(step) + 1e-9) > math.floor(d * math.log10(step - 1) + 1e-9)


@dataclass(frozen=True)
class AtEnd(Schedule):
    """Only once, after the last update."""

    @property
    def at_end(self) -> bool:
        return True

    def due(self, step: int) -> bool:
        return False


@dataclass(frozen=True)
class AtSteps(Schedule):
    """At the chosen steps (checkpoints) only, e.g. AtSteps((100, 1000))."""

    steps: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(s < 1 for s in self.steps):
            raise ValueError(f"AtSteps: steps count updates from 1, got {self.steps}")

    def due(self, step: int) -> bool:
        return step in self.steps


@dataclass(frozen=True)
class AnyOf(Schedule):
    """Due whenever any member is due; at the end when any member asks for it."""

    schedules: tuple[Schedule, ...]

    @property
    def at_end(self) -> bool:
        return any(s.at_end for s in self.schedules)

    def due(self, step: int) -> bool:
        return any(s.due(step) for s in self.schedules)


def periodic(
    total_steps: int | None, *, measurements: int, per_decade: int = 5, min_every: int = 1
) -> Schedule:
    """Log-spaced early, plus about `measurements` evenly spaced points, plus the last step.

    The even spacing is never closer than `min_every` steps (a cap on a costly probe's share of
    a short trial). Without a step budget (a wall-clock budget) it is every 100 steps.
    """
    every = max(min_every, math.ceil(total_steps / measurements)) if total_steps else 100
    return AnyOf(
        (
            LogSpaced(per_decade=per_decade, total_steps=total_steps),
            Every(every, total_steps=total_steps),
        )
    )
