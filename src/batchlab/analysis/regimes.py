"""Shallue et al.'s (2019) three regimes of steps to a target against batch size.

With the lr tuned per batch size, steps to a target S(B) fall as 1/B (perfect scaling), then
more slowly (diminishing returns), then not at all (maximal data parallelism). From the measured
points (`BatchPoint`: batch size, mean steps at its best lr), batchlab marks the two boundaries.

Rules (see docs/critical-batch-size.md, "Scaling regimes"):
- Perfect scaling is measured from the smallest batch size B_0: S_perfect(B) = S(B_0) B_0 / B.
  The excess r(B) = S(B) / S_perfect(B) = E(B) / E(B_0) is the samples a batch size needs
  relative to B_0's. Between measured sizes, log S (so log r) is interpolated linearly in log B.
- End of perfect scaling: the batch size where r first exceeds 1 + `tolerance` (default 0.2:
  Zhang et al.'s CBS_20, steps 20% above perfect scaling). Under McCandlish's hyperbola
  S = S_min (1 + B_noise / B) this is 1.2 B_0 + 0.2 B_noise.
- Start of maximal data parallelism: the smallest measured batch size from which every step to
  the next measured size saves less than `min_gain` (default 10%, as the hardware profile's
  knee) of the steps per doubling, 1 - (S_next / S)^(1 / log2(B_next / B)). The gain is known
  only between measured sizes, so this is a measured size, not an interpolated one. Under the
  hyperbola a doubling from B saves B_noise / (2 (B + B_noise)): < 10% once B > 4 B_noise.
- Either boundary may lie beyond the largest batch size measured: it is then None and said to be
  "not reached in the measured range", never extrapolated.
- At least `MIN_BATCH_SIZES` (4) points, as for the fit, else `CriticalBatchError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from batchlab.analysis.critical import MIN_BATCH_SIZES, BatchPoint, CriticalBatchError
from batchlab.trial import FrozenTrial

PERFECT_TOLERANCE = 0.2
"""Steps may exceed perfect scaling by this fraction (CBS_20, Zhang et al. 2024)."""
MIN_DOUBLING_GAIN = 0.1
"""A doubling of the batch that saves less than this fraction of the steps is no longer useful."""


@dataclass(frozen=True, kw_only=True)
class Regimes:
    """Where perfect scaling ends and maximal data parallelism begins (None: not reached)."""

    tolerance: float
    min_gain: float
    batch_sizes: tuple[int, ...]  # measured, ascending
    steps: tuple[float, ...]  # mean steps to target at each, at its best lr
    perfect_end: float | None  # batch size where S first exceeds (1 + tolerance) S_perfect
    maximal_start: int | None  # measured batch size from which doublings save < min_gain

    @property
    def b0(self) -> int:
        return self.batch_sizes[0]

    def perfect_steps(self, batch_size: float) -> float:
        """The perfect-scaling line S(B_0) B_0 / B."""
        return self.steps[0] * self.b0 / batch_size

    @property
    def excess(self) -> tuple[float, ...]:
        """S / S_perfect - 1 at each measured batch size (0 at B_0)."""
        return tuple(
            s / self.perfect_steps(b) - 1 for b, s in zip(self.batch_sizes, self.steps, strict=True)
        )

    @property
    def gains(self) -> tuple[float, ...]:
        """Fraction of the steps saved per doubling between consecutive measured sizes."""
        return tuple(
            doubling_gain(b, s, b2, s2)
            for b, s, b2, s2 in zip(
                self.batch_sizes, self.steps, self.batch_sizes[1:], self.steps[1:], strict=False
            )
        )

    def steps_at(self, batch_size: float) -> float:
        """Measured steps interpolated linearly in log-log (the curve the report draws)."""
        return loglog_interp(self.batch_sizes, self.steps, batch_size)

    def perfect_text(self) -> str:
        tol = f"{self.tolerance:.0%}"
        if self.perfect_end is None:
            return (
                f"not reached in the measured range: steps stay within {tol} of perfect scaling"
                f" up to the largest batch size, {self.batch_sizes[-1]}"
            )
        above = next(b for b in self.batch_sizes if b > self.perfect_end)
        below = max(b for b in self.batch_sizes if b < above)
        return (
            f"B = {self.perfect_end:.3g} (steps exceed S(B_0) B_0 / B by {tol} there;"
            f" interpolated between {below} and {above})"
        )

    def maximal_text(self) -> str:
        gain = f"{self.min_gain:.0%}"
        if self.maximal_start is None:
            b, b2 = self.batch_sizes[-2:]
            return (
                f"not reached in the measured range: from {b} to {b2} a doubling still saves"
                f" {self.gains[-1]:.0%} of the steps (>= {gain})"
            )
        return f"B = {self.maximal_start} (from there a doubling saves < {gain} of the steps)"

    def lines(self) -> list[str]:
        return [
            f"Perfect scaling (from B_0 = {self.b0}) ends: {self.perfect_text()}",
            f"Maximal data parallelism begins: {self.maximal_text()}",
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            "min_doubling_gain": self.min_gain,
            "b0": self.b0,
            "perfect_scaling_end": self.perfect_end,
            "perfect_scaling_end_reached": self.perfect_end is not None,
            "perfect_scaling_text": self.perfect_text(),
            "maximal_batch_start": self.maximal_start,
            "maximal_batch_start_reached": self.maximal_start is not None,
            "maximal_batch_text": self.maximal_text(),
            "excess": dict(zip(map(str, self.batch_sizes), self.excess, strict=True)),
            "doubling_gains": list(self.gains),
        }


def doubling_gain(b: float, s: float, b2: float, s2: float) -> float:
    """1 - (s2 / s)^(1 / log2(b2 / b)): the steps saved per doubling from (b, s) to (b2, s2)."""
    return 1.0 - float((s2 / s) ** (1.0 / math.log2(b2 / b)))


def loglog_interp(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """ys at x, linear in (log x, log y) between the bracketing points; NaN outside xs."""
    if not xs[0] <= x <= xs[-1]:
        return math.nan
    for x1, y1, x2, y2 in zip(xs, ys, xs[1:], ys[1:], strict=False):
        if x1 <= x <= x2:
            t = math.log(x / x1) / math.log(x2 / x1)
            return math.exp(math.log(y1) + t * math.log(y2 / y1))
    return float(ys[-1])  # a single point


def perfect_scaling_end(
    batch_sizes: Sequence[float], samples: Sequence[float], tolerance: float = PERFECT_TOLERANCE
) -> float | None:
    """Where the samples to the target, relative to the smallest batch size's, r(B) = E(B) /
    E(B_0), first exceed 1 + `tolerance` (Zhang et al.'s CBS_20 at 0.2), with log r linear in
    log B between the two measured sizes around the crossing (as log S is); None when no
    measured batch size gets there. `samples` are positive, in ascending batch size."""
    ratio = [e / samples[0] for e in samples]
    limit = 1.0 + tolerance
    for i in range(1, len(batch_sizes)):
        if ratio[i] > limit:  # the first crossing; ratio[i - 1] <= limit since it is the first
            t = math.log(limit / ratio[i - 1]) / math.log(ratio[i] / ratio[i - 1])
            return float(batch_sizes[i - 1] * (batch_sizes[i] / batch_sizes[i - 1]) ** t)
    return None


def scaling_regimes(
    points: Sequence[BatchPoint],
    *,
    tolerance: float = PERFECT_TOLERANCE,
    min_gain: float = MIN_DOUBLING_GAIN,
) -> Regimes:
    """The two regime boundaries of the measured points; see the module docstring."""
    pts = sorted(points, key=lambda p: p.batch_size)
    if len(pts) < MIN_BATCH_SIZES:
        sizes = ", ".join(str(p.batch_size) for p in pts) or "none"
        raise CriticalBatchError(
            f"scaling regimes: not enough batch sizes: {len(pts)} ({sizes}) reach the target,"
            f" need at least {MIN_BATCH_SIZES}"
        )
    if len({p.batch_size for p in pts}) < len(pts):
        raise CriticalBatchError("scaling regimes: one point per batch size")
    bad = [p.batch_size for p in pts if not (math.isfinite(p.steps) and p.steps > 0)]
    if bad:
        raise CriticalBatchError(
            f"scaling regimes: steps to target are 0 at B = {bad[0]} (met before training):"
            " raise the target"
        )
    bs = tuple(p.batch_size for p in pts)
    ss = tuple(p.steps for p in pts)
    perfect_end = perfect_scaling_end(bs, [b * s for b, s in zip(bs, ss, strict=True)], tolerance)
    gains = [doubling_gain(bs[i], ss[i], bs[i + 1], ss[i + 1]) for i in range(len(bs) - 1)]
    maximal_start: int | None = None
    for i in range(len(gains) - 1, -1, -1):  # the start of the last run of small gains
        if gains[i] >= min_gain:
            break
        maximal_start = bs[i]
    return Regimes(
        tolerance=tolerance,
        min_gain=min_gain,
        batch_sizes=bs,
        steps=ss,
        perfect_end=perfect_end,
        maximal_start=maximal_start,
    )


def untuned_batch_sizes(points: Sequence[BatchPoint], trials: Iterable[FrozenTrial]) -> list[int]:
    """Batch sizes whose best lr is the smallest or largest lr_base tried there (one lr counts).

    The regimes assume an lr tuned per batch size (Shallue et al.); a best lr on the edge of its
    grid may not be the optimum, so the steps there may be overstated (the Tuning Playbook's
    "flag a best value on the edge of the searched range")."""
    tried: dict[int, set[float]] = {}
    for t in trials:
        tried.setdefault(t.batch_size, set()).add(t.lr_base)
    out = []
    for p in points:
        lrs = tried.get(p.batch_size, {p.lr_base})
        if p.lr_base in (min(lrs), max(lrs)):
            out.append(p.batch_size)
    return out
