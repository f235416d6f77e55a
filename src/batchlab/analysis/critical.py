"""Critical batch size (McCandlish et al. 2018): steps and samples to reach a target.

To reach a fixed target, training at batch size B takes S(B) steps and E(B) = B * S(B) samples,
with (S / S_min - 1) * (E / E_min - 1) = 1. Substituting E = B * S gives B * (S - S_min) = E_min,
i.e. S(B) = S_min + E_min / B: a straight line in 1 / B, fitted here by least squares. The critical
batch size is B_crit = E_min / S_min (there training takes 2 S_min steps and 2 E_min samples).

Rules (see docs/critical-batch-size.md):
- Steps, samples and training time to the target are linearly interpolated between the two
  consecutive evaluations (of finite metric) that straddle it; a trial that never meets it is
  marked `reached=False` and gets NaN, never an extrapolated number.
- A (batch size, lr) cell counts only when every one of its trials is COMPLETE and reached the
  target; its S, E and time are means over seeds. Each batch size uses the counting lr with the
  fewest mean steps. Control trials are left out.
- That choice of lr is made on the target's split: the default target is on validation (on test
  only when the study kept no validation split); a target naming a test metric chooses on test,
  and `CriticalFit.selection` says so.
- At least `MIN_BATCH_SIZES` (4) batch sizes must reach the target, else the answer is
  "not enough batch sizes" (`NotEnoughBatchSizes`), never a number: the model has two
  parameters, so two points fit exactly (R² = 1 whatever the data) and three leave one residual
  degree of freedom, too few for R² or the bootstrap to tell the hyperbola from noise.
- Confidence intervals: resample each cell's seeds with replacement, re-pick the best lr, refit;
  95% percentile interval, fixed RNG seed.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from batchlab.analysis.selection import Selection
from batchlab.errors import BatchlabError
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

Metric = Literal["val_acc", "test_acc", "val_loss", "test_loss"]
METRICS: tuple[Metric, ...] = ("val_acc", "test_acc", "val_loss", "test_loss")


class CriticalBatchError(BatchlabError, ValueError):
    """The critical batch size cannot be computed from these trials (one line, says why)."""


MIN_BATCH_SIZES = 4
"""Batch sizes that must reach the target before a fit is reported. S(B) = S_min + E_min / B
has two parameters: 2 points fit exactly (R² = 1.000 by construction, a CI over decades), 3
leave one residual degree of freedom; 4 leave two, the fewest that test the hyperbola's shape."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """What "reaching the target" means: `metric` meets `value`, or `fraction` of the best.

    For a score (`*_acc`: the task's accuracy, R² or token accuracy) the threshold is `value`
    or `fraction * best` (met when metric >= it); for a loss it is `value` or `best / fraction`
    (met when metric <= it), so 0.98 means "within about 2% of the best loss". "Best" is over
    every evaluation of the COMPLETE trials considered.
    """

    metric: Metric = "val_acc"
    value: float | None = None
    fraction: float | None = 0.98

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise CriticalBatchError(f"target metric {self.metric!r}: use one of {METRICS}")
        if (self.value is None) == (self.fraction is None):
            raise CriticalBatchError("target: give exactly one of an absolute value or a fraction")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise CriticalBatchError(f"target fraction {self.fraction}: need 0 < fraction <= 1")

    @property
    def higher_is_better(self) -> bool:
        return self.metric.endswith("_acc")

    @classmethod
    def parse(cls, text: str) -> Target:
        """`val_acc=0.9` (absolute), `val_acc=0.98*best` (fraction of the best) or `test_loss`."""
        m = re.fullmatch(r"\s*(\w+)\s*(?:=\s*([0-9.eE+-]+)\s*(\*\s*best)?)?\s*", text)
        if m is None or m.group(1) not in METRICS:
            raise CriticalBatchError(
                f"--target {text!r}: use METRIC=VALUE or METRIC=FRACTION*best with METRIC one of"
                f" {', '.join(METRICS)}, e.g. val_acc=0.98*best"
            )
        metric = cast(Metric, m.group(1))
        if m.group(2) is None:
            return cls(metric=metric)
        try:
            number = float(m.group(2))
        except ValueError:
            raise CriticalBatchError(f"--target {text!r}: {m.group(2)!r} is not a number") from None
        if m.group(3):
            return cls(metric=metric, fraction=number, value=None)
        return cls(metric=metric, value=number, fraction=None)

    def describe(self) -> str:
        if self.value is not None:
            op = ">=" if self.higher_is_better else "<="
            return f"{self.metric} {op} {self.value:g}"
        assert self.fraction is not None
        if self.higher_is_better:
            return f"{self.metric} >= {self.fraction:g} x best"
        return f"{self.metric} <= best / {self.fraction:g}"

    def met(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.higher_is_better else value <= threshold

    def threshold(self, trials: Iterable[FrozenTrial]) -> float:
        """The absolute threshold; raises when the metric was never recorded."""
        if self.value is not None:
            return self.value
        assert self.fraction is not None
        values = [
            v
            for t in trials
            if t.state is TrialState.COMPLETE
            for e in t.evals
            if math.isfinite(v := float(getattr(e, self.metric)))
        ]
        if not values:
            raise CriticalBatchError(
                f"target: no COMPLETE trial recorded a finite {self.metric};"
                " pick another metric (e.g. test_acc when there is no validation split)"
            )
        if self.higher_is_better:
            return self.fraction * max(values)
        return min(values) / self.fraction


def default_target(trials: Iterable[FrozenTrial], fraction: float = 0.98) -> Target:
    """`fraction` of the best validation score (`val_acc`: accuracy, R², ...); the test score
    when no validation was kept."""
    has_val = any(
        math.isfinite(e.val_acc) for t in trials if t.state is TrialState.COMPLETE for e in t.evals
    )
    return Target(metric="val_acc" if has_val else "test_acc", fraction=fraction)


@dataclass(frozen=True, kw_only=True)
class Reach:
    """When one trial first met the target (NaN fields when `reached` is False)."""

    trial_id: str
    variant: str
    batch_size: int
    lr_base: float
    lr: float
    seed: int
    reached: bool
    steps: float
    samples: float
    time_s: float


def _interp(a: float, b: float, f: float) -> float:
    return a + f * (b - a)


def reach(trial: FrozenTrial, target: Target, threshold: float) -> Reach:
    """Steps, samples and training time at which `trial` first meets the threshold.

    Linear interpolation in the metric between the last evaluation that misses and the first
    that meets it (evaluations with a non-finite metric are skipped); met at idx 0 means 0.
    """
    evals: list[EvalRecord] = [
        e for e in trial.evals if math.isfinite(float(getattr(e, target.metric)))
    ]
    hit: tuple[float, float, float] | None = None
    for i, e in enumerate(evals):
        v = float(getattr(e, target.metric))
        if not target.met(v, threshold):
            continue
        if i == 0:
            hit = (float(e.step), float(e.samples), e.train_time_s)
        else:
            p = evals[i - 1]
            pv = float(getattr(p, target.metric))
            f = (threshold - pv) / (v - pv)  # in (0, 1]: p missed and e met
            hit = (
                _interp(p.step, e.step, f),
                _interp(p.samples, e.samples, f),
                _interp(p.train_time_s, e.train_time_s, f),
            )
        break
    nan = math.nan
    return Reach(
        trial_id=trial.trial_id,
        variant=str(trial.params.get("variant", "")),
        batch_size=trial.batch_size,
        lr_base=trial.lr_base,
        lr=trial.lr,
        seed=trial.seed,
        reached=hit is not None,
        steps=hit[0] if hit else nan,
        samples=hit[1] if hit else nan,
        time_s=hit[2] if hit else nan,
    )


@dataclass(frozen=True, kw_only=True)
class BatchPoint:
    """One batch size at its best lr: means (and sample stds) over seeds of S, E and time."""

    batch_size: int
    lr_base: float
    lr: float
    seeds: int
    steps: float
    samples: float
    time_s: float
    steps_std: float
    time_std: float


@dataclass(frozen=True, kw_only=True)
class Interval:
    lo: float
    hi: float


@dataclass(frozen=True, kw_only=True)
class CriticalFit:
    """The fit S(B) = S_min + E_min / B and everything it was fitted from."""

    target: Target
    threshold: float
    variant: str
    points: tuple[BatchPoint, ...]  # batch sizes with a counting lr, ascending
    unreached: tuple[int, ...]  # batch sizes where no lr counts
    reaches: tuple[Reach, ...]
    s_min: float
    e_min: float
    r2: float
    s_min_ci: Interval | None = None
    e_min_ci: Interval | None = None
    b_crit_ci: Interval | None = None
    n_boot: int = 0
    boot_failed: int = 0  # resamples whose refit had a non-positive S_min or E_min (or < 2 B)
    ci_note: str = ""
    selection: Selection = field(default_factory=Selection)  # the split choosing each B's lr

    @property
    def b_crit(self) -> float:
        return self.e_min / self.s_min

    @property
    def extrapolated(self) -> bool:
        """B_crit lies outside the batch sizes fitted: the fit extrapolates, not measures, it."""
        return not self.points[0].batch_size <= self.b_crit <= self.points[-1].batch_size

    def caveat(self) -> str:
        """One sentence when B_crit is extrapolated (outside the fitted batch sizes), else ""."""
        lo, hi = self.points[0].batch_size, self.points[-1].batch_size
        if self.b_crit > hi:
            return (
                f"B_crit is above the largest batch size fitted ({hi}): an extrapolation, read"
                f" it as 'more than {hi}'; add larger batch sizes to measure it."
            )
        if self.b_crit < lo:
            return (
                f"B_crit is below the smallest batch size fitted ({lo}): an extrapolation, read"
                f" it as 'less than {lo}'; add smaller batch sizes to measure it."
            )
        return ""

    def steps_at(self, batch_size: float) -> float:
        return self.s_min + self.e_min / batch_size

    def samples_at(self, batch_size: float) -> float:
        return batch_size * self.s_min + self.e_min

    def to_dict(self, *, tokens_per_sample: float | None = None) -> dict[str, Any]:
        """Plain data; with `tokens_per_sample` (a language model's tokens per sequence) also
        E_min, B_crit and its CI, and each point's samples, in tokens (`in_tokens`)."""

        def iv(i: Interval | None) -> list[float] | None:
            return None if i is None else [i.lo, i.hi]

        out = {
            "target": self.target.describe(),
            "metric": self.target.metric,
            "threshold": self.threshold,
            "variant": self.variant,
            "s_min": self.s_min,
            "e_min": self.e_min,
            "b_crit": self.b_crit,
            "extrapolated": self.extrapolated,
            "caveat": self.caveat(),
            "r2": self.r2,
            "s_min_ci95": iv(self.s_min_ci),
            "e_min_ci95": iv(self.e_min_ci),
            "b_crit_ci95": iv(self.b_crit_ci),
            "n_boot": self.n_boot,
            "boot_failed": self.boot_failed,
            "ci_note": self.ci_note,
            "selection": self.selection.to_dict(),
            "unreached_batch_sizes": list(self.unreached),
            "points": [p.__dict__ for p in self.points],
        }
        return out if tokens_per_sample is None else in_tokens(out, tokens_per_sample)


class NotEnoughBatchSizes(CriticalBatchError):
    """Fewer than `MIN_BATCH_SIZES` batch sizes reach the target: no B_crit, only the points.

    Carries what was measured (steps to target per batch size at its best lr), so a command can
    still show the table; `to_dict()` is `CriticalFit.to_dict()`'s shape with the fit's numbers
    set to None.
    """

    def __init__(
        self,
        message: str,
        *,
        target: Target,
        threshold: float,
        variant: str,
        points: tuple[BatchPoint, ...],
        unreached: tuple[int, ...],
        selection: Selection,
    ) -> None:
        super().__init__(message)
        self.target, self.threshold, self.variant = target, threshold, variant
        self.points, self.unreached, self.selection = points, unreached, selection

    def to_dict(self, *, tokens_per_sample: float | None = None) -> dict[str, Any]:
        none = ("s_min", "e_min", "b_crit", "r2", "s_min_ci95", "e_min_ci95", "b_crit_ci95")
        out = {
            "target": self.target.describe(),
            "metric": self.target.metric,
            "threshold": self.threshold,
            "variant": self.variant,
            **dict.fromkeys(none),
            "not_enough_batch_sizes": True,
            "reason": str(self).removeprefix("critical batch size: "),
            "min_batch_sizes": MIN_BATCH_SIZES,
            "selection": self.selection.to_dict(),
            "unreached_batch_sizes": list(self.unreached),
            "points": [p.__dict__ for p in self.points],
        }
        return out if tokens_per_sample is None else in_tokens(out, tokens_per_sample)


def in_tokens(fit: dict[str, Any], tokens_per_sample: float) -> dict[str, Any]:
    """A fit's `to_dict()` with its sample counts also in tokens: a batch of B sequences of T
    tokens is B T tokens, so B_crit, E_min, their CIs and each point's samples scale by T (a
    constant, so the bootstrap's percentiles scale with it). None stays None."""

    def scaled(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, list):
            return [x * tokens_per_sample for x in v]
        return v * tokens_per_sample

    out = {**fit, "tokens_per_sample": tokens_per_sample}
    for key in ("e_min", "b_crit", "e_min_ci95", "b_crit_ci95"):
        name = key.replace("_ci95", "_tokens_ci95") if key.endswith("_ci95") else f"{key}_tokens"
        out[name] = scaled(fit.get(key))
    out["points"] = [{**p, "tokens": p["samples"] * tokens_per_sample} for p in fit["points"]]
    return out


def fit_steps(batch_sizes: Sequence[float], steps: Sequence[float]) -> tuple[float, float, float]:
    """Least squares of S against 1 / B: returns (S_min, E_min, R²). No positivity check."""
    x = 1.0 / np.asarray(batch_sizes, dtype=float)
    y = np.asarray(steps, dtype=float)
    if len(np.unique(x)) < 2:
        raise CriticalBatchError("critical batch size: need at least 2 distinct batch sizes")
    design = np.stack([np.ones_like(x), x], axis=1)
    (s_min, e_min), *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - (s_min + e_min * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else math.nan
    return float(s_min), float(e_min), r2


@dataclass(frozen=True, kw_only=True)
class _Cell:
    batch_size: int
    lr_base: float
    lr: float
    reaches: tuple[Reach, ...]


def _cells(trials: Sequence[FrozenTrial], reaches: dict[str, Reach]) -> list[_Cell]:
    """Counting cells: every trial COMPLETE and reached."""
    groups: dict[tuple[int, float], list[FrozenTrial]] = {}
    for t in trials:
        groups.setdefault((t.batch_size, t.lr_base), []).append(t)
    out = []
    for (b, lr_base), ts in sorted(groups.items()):
        if all(t.state is TrialState.COMPLETE and reaches[t.trial_id].reached for t in ts):
            rs = tuple(reaches[t.trial_id] for t in sorted(ts, key=lambda t: t.seed))
            out.append(_Cell(batch_size=b, lr_base=lr_base, lr=ts[0].lr, reaches=rs))
    return out


def _std(xs: Sequence[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def _best_points(cells: Sequence[_Cell]) -> list[BatchPoint]:
    by_b: dict[int, list[_Cell]] = {}
    for c in cells:
        by_b.setdefault(c.batch_size, []).append(c)
    points = []
    for b, cs in sorted(by_b.items()):
        best = min(cs, key=lambda c: (statistics.fmean(r.steps for r in c.reaches), c.lr_base))
        steps = [r.steps for r in best.reaches]
        times = [r.time_s for r in best.reaches]
        points.append(
            BatchPoint(
                batch_size=b,
                lr_base=best.lr_base,
                lr=best.lr,
                seeds=len(steps),
                steps=statistics.fmean(steps),
                samples=statistics.fmean(r.samples for r in best.reaches),
                time_s=statistics.fmean(times),
                steps_std=_std(steps),
                time_std=_std(times),
            )
        )
    return points


def select_trials(
    trials: Iterable[FrozenTrial], variant: str | None = None
) -> tuple[str, list[FrozenTrial]]:
    """The sweep's trials (controls and a branched design's branches left out) of one variant;
    several variants need `variant`."""
    sweep = [t for t in trials if not t.params.get("control") and not t.params.get("branch")]
    variants = sorted({str(t.params.get("variant", "")) for t in sweep})
    if variant is None:
        if len(variants) > 1:
            raise CriticalBatchError(
                f"critical batch size: the study has variants {variants}; pick one with --variant"
            )
        variant = variants[0] if variants else ""
    chosen = [t for t in sweep if str(t.params.get("variant", "")) == variant]
    if not chosen:
        raise CriticalBatchError(f"critical batch size: no trials of variant {variant!r}")
    return variant, chosen


def critical_batch_size(
    trials: Iterable[FrozenTrial],
    target: Target | None = None,
    *,
    variant: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> CriticalFit:
    """Fit S(B) = S_min + E_min / B to the trials' steps-to-target; see the module docstring.

    Without a `target`: 0.98 of the best validation score (of the test score when no validation
    split was kept)."""
    trials = list(trials)
    target = target or default_target(trials)
    variant, chosen = select_trials(trials, variant)
    done = [t for t in chosen if t.state is TrialState.COMPLETE]
    if not done:
        raise CriticalBatchError("critical batch size: no COMPLETE trial to measure")
    threshold = target.threshold(done)
    reaches = {t.trial_id: reach(t, target, threshold) for t in done}
    all_reaches = tuple(reaches[t.trial_id] for t in done)
    where = f"target {target.describe()} (= {threshold:.4g})"
    if not any(r.reached for r in all_reaches):
        raise CriticalBatchError(f"critical batch size: no trial ever reached the {where}")
    batch_sizes = sorted({t.batch_size for t in chosen})
    if len(batch_sizes) < 2:
        raise CriticalBatchError(
            f"critical batch size: the study has one batch size ({batch_sizes[0]}); the fit needs"
            f" steps to target at {MIN_BATCH_SIZES} or more: add batch sizes"
        )
    cells = _cells(chosen, reaches)
    points = _best_points(cells)
    unreached = tuple(b for b in batch_sizes if b not in {p.batch_size for p in points})
    selection = Selection.of_metric(target.metric, Selection.of(done))
    if len(points) < MIN_BATCH_SIZES:
        sizes = ", ".join(str(p.batch_size) for p in points)
        got = f"{len(points)} ({sizes})" if points else "none"
        more = (
            "add batch sizes"
            if len(batch_sizes) < MIN_BATCH_SIZES
            else "add batch sizes, lower the target or train longer"
        )
        raise NotEnoughBatchSizes(
            f"critical batch size: not enough batch sizes: {got} of {len(batch_sizes)} reach the"
            f" {where} with every seed; S(B) = S_min + E_min/B has 2 parameters (2 points fit it"
            f" exactly), so a fit needs at least {MIN_BATCH_SIZES}: {more}",
            target=target,
            threshold=threshold,
            variant=variant,
            points=tuple(points),
            unreached=unreached,
            selection=selection,
        )
    s_min, e_min, r2 = fit_steps([p.batch_size for p in points], [p.steps for p in points])
    if not (s_min > 0 and e_min > 0):
        raise CriticalBatchError(_no_fit_reason(s_min, e_min, points))
    fit = CriticalFit(
        target=target,
        threshold=threshold,
        variant=variant,
        points=tuple(points),
        unreached=unreached,
        reaches=all_reaches,
        s_min=s_min,
        e_min=e_min,
        r2=r2,
        selection=selection,
    )
    return _bootstrap(fit, cells, n_boot=n_boot, seed=seed)


def _no_fit_reason(s_min: float, e_min: float, points: Sequence[BatchPoint]) -> str:
    """Why a fit with S_min <= 0 or E_min <= 0 gives no B_crit, and what would resolve it."""
    lo, hi = points[0].batch_size, points[-1].batch_size
    if e_min > 0:  # steps fall like 1 / B all the way: no levelling off within the range
        hint = (
            f"steps to target still fall like 1/B up to the largest batch size reached ({hi}),"
            f" so B_crit is probably above {hi}: add larger batch sizes"
        )
    else:  # steps do not fall as the batch grows
        hint = (
            f"steps to target do not fall as the batch grows from {lo}, so B_crit is probably"
            f" below {lo} (or the lrs are not tuned per batch size): add smaller batch sizes"
            " or more lrs"
        )
    return (
        "fit did not converge / data not consistent with the model S(B) = S_min + E_min/B:"
        f" S_min = {s_min:.4g}, E_min = {e_min:.4g} (need both > 0); {hint}"
    )


def _bootstrap(fit: CriticalFit, cells: Sequence[_Cell], *, n_boot: int, seed: int) -> CriticalFit:
    if n_boot <= 0:
        return fit
    if max(len(c.reaches) for c in cells) < 2:
        return _replace(fit, ci_note="one seed per cell: no confidence interval")
    rng = np.random.default_rng(seed)
    steps = [np.array([r.steps for r in c.reaches]) for c in cells]
    sizes = np.array([c.batch_size for c in cells])
    draws: list[tuple[float, float]] = []
    failed = 0
    for _ in range(n_boot):
        means = np.array([s[rng.integers(0, len(s), len(s))].mean() for s in steps])
        best: dict[int, float] = {}
        for b, m in zip(sizes.tolist(), means.tolist(), strict=True):
            best[b] = min(m, best.get(b, math.inf))
        if len(best) < 2:
            failed += 1
            continue
        s_min, e_min, _ = fit_steps(list(best), list(best.values()))
        if s_min > 0 and e_min > 0:
            draws.append((s_min, e_min))
        else:
            failed += 1
    if not draws:
        return _replace(fit, n_boot=n_boot, boot_failed=failed, ci_note="every resample failed")
    arr = np.array(draws)

    def pct(v: np.ndarray[Any, Any]) -> Interval:
        lo, hi = np.percentile(v, [2.5, 97.5])
        return Interval(lo=float(lo), hi=float(hi))

    note = f"{failed} of {n_boot} resamples gave no valid fit and were dropped" if failed else ""
    return _replace(
        fit,
        s_min_ci=pct(arr[:, 0]),
        e_min_ci=pct(arr[:, 1]),
        b_crit_ci=pct(arr[:, 1] / arr[:, 0]),
        n_boot=n_boot,
        boot_failed=failed,
        ci_note=note,
    )


def _replace(fit: CriticalFit, **changes: Any) -> CriticalFit:
    return replace(fit, **changes)


@dataclass(frozen=True, kw_only=True)
class NoiseScale:
    """Median simple noise scale B_simple over the late part of training."""

    late_fraction: float
    overall: float
    per_batch: dict[int, float] = field(default_factory=dict)
    values: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "late_fraction": self.late_fraction,
            "overall": self.overall,
            "per_batch_size": {str(b): v for b, v in self.per_batch.items()},
            "values": self.values,
        }


def noise_scale_summary(
    probes: pd.DataFrame,
    trials: Iterable[FrozenTrial] | None = None,
    *,
    late_fraction: float = 0.5,
) -> NoiseScale | None:
    """Median B_simple (probe "noise_scale", key "total") over each trial's last `late_fraction`
    of its probed steps (step >= (1 - late_fraction) * its last probed step), per batch size and
    over all; only COMPLETE trials among `trials` when given. None when nothing was recorded."""
    if probes.empty or "probe" not in probes.columns:
        return None
    df = probes[(probes["probe"] == "noise_scale") & (probes["key"] == "total")]
    if trials is not None:
        trials = list(trials)
        keep = {t.trial_id for t in trials if t.state is TrialState.COMPLETE}
        df = df[df["trial_id"].isin(keep)]
        if "batch_size" not in df.columns:  # a bare probe table: take sizes from the trials
            sizes = {t.trial_id: t.batch_size for t in trials}
            df = df.assign(batch_size=df["trial_id"].map(sizes))
    if "batch_size" not in df.columns:
        raise CriticalBatchError(
            "noise scale: the probe table has no batch_size column; pass the trials as well"
        )
    df = df[np.isfinite(df["value"].astype(float))]
    if df.empty:
        return None
    last = df.groupby("trial_id")["step"].transform("max")
    late = df[df["step"] >= (1.0 - late_fraction) * last]
    per_batch = {
        int(cast(int, b)): float(g["value"].median())
        for b, g in late.groupby("batch_size", sort=True)
    }
    return NoiseScale(
        late_fraction=late_fraction,
        overall=float(late["value"].median()),
        per_batch=per_batch,
        values=len(late),
    )
