"""The critical batch size over training, from a branched study (`batchlab.branched`).

Each branch's validation-loss curve is first smoothed by its least-squares non-increasing fit
(isotonic regression): at a small batch the loss moves by more from one evaluation to the next
than training improves it over a window, and a raw curve would set the target, or a crossing, by
one lucky evaluation. At every branch point t and seed, the target is the (smoothed) validation
loss that the reference batch size's branch reaches after `window` samples (interpolated between
its evaluations). Each branch at batch size B then takes S(B) steps and E(B) = B S(B) samples to
first reach that target (`critical.reach`: linear interpolation between evaluations). Per
point:

- B_crit(t) = E_min / S_min from McCandlish et al.'s S(B) = S_min + E_min / B, fitted by least
  squares in 1 / B (`critical.fit_steps`) over the batch sizes whose branches all reached the
  target, at their fastest lr factor (chosen on validation: the target is a validation loss).
- CBS_20(t) (Zhang et al. 2024): the batch size where the samples to the target exceed perfect
  linear scaling from the smallest batch size by 20%, E(B) / E(b_min) = 1.2, log-interpolated in
  log B between the two measured batch sizes that straddle it (steps S(B) then exceed the
  perfect-scaling line S(b_min) b_min / B by 20%). Beyond every measured batch size: reported as
  "above B_max", not as a number.
- B_simple(t): the reference's noise-scale probe at the step closest to the branch point (when
  the reference ran the `noise_scale` probe), averaged over seeds.

Rules as for `batchlab critical`: at least `MIN_BATCH_SIZES` batch sizes must reach the target
for a B_crit; a batch size counts at a lr factor only when every seed's branch reached it. 95%
intervals resample seeds with replacement (fixed RNG seed); with one seed there is none.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from batchlab.analysis.critical import (
    MIN_BATCH_SIZES,
    CriticalBatchError,
    Interval,
    Target,
    fit_steps,
    reach,
)
from batchlab.analysis.regimes import PERFECT_TOLERANCE, perfect_scaling_end
from batchlab.spec import EXECUTION_FIELDS, Budget
from batchlab.trial import FrozenTrial, TrialState

OVERHEAD = 1.0 + PERFECT_TOLERANCE
"""Zhang et al.'s rule: CBS is where the samples to the target exceed perfect scaling by 20%."""
N_BOOT = 1000


def is_branch(trial: FrozenTrial) -> bool:
    return trial.params.get("branch") is not None


@dataclass(frozen=True, kw_only=True)
class BranchBatch:
    """One batch size at one branch point: steps and samples to the target (means over seeds)
    at its fastest lr factor; NaN when no lr factor got every seed there."""

    batch_size: int
    lr_factor: float
    lr: float
    seeds: int
    steps: float
    samples: float
    reached: bool


@dataclass(frozen=True, kw_only=True)
class PointResult:
    """The critical batch size at one branch point of the reference run."""

    point: int
    step: int  # the reference's updates at the branch point
    samples: int  # the reference's samples at the branch point
    tokens: int | None  # samples x tokens per sample, for a language model
    target: float  # the mean over seeds of the target validation loss
    batches: tuple[BranchBatch, ...]
    s_min: float | None = None
    e_min: float | None = None
    b_crit: float | None = None
    b_crit_ci: Interval | None = None
    cbs20: float | None = None
    cbs20_above: int | None = None  # CBS_20 lies above this, the largest batch size measured
    cbs20_ci: Interval | None = None
    b_simple: float | None = None
    note: str = ""  # why a number is missing

    def to_dict(self) -> dict[str, Any]:
        def iv(i: Interval | None) -> list[float | None] | None:
            # an upper end above every batch size measured is null (JSON has no infinity)
            return None if i is None else [i.lo, i.hi if math.isfinite(i.hi) else None]

        return {
            "point": self.point,
            "step": self.step,
            "samples": self.samples,
            "tokens": self.tokens,
            "target_val_loss": self.target,
            "b_crit": self.b_crit,
            "b_crit_ci95": iv(self.b_crit_ci),
            "cbs20": self.cbs20,
            "cbs20_above": self.cbs20_above,
            "cbs20_ci95": iv(self.cbs20_ci),
            "b_simple": self.b_simple,
            "s_min": self.s_min,
            "e_min": self.e_min,
            "note": self.note,
            **self._in_tokens(),
            "batches": [b.__dict__ for b in self.batches],
        }

    def _in_tokens(self) -> dict[str, float | None]:
        """For a language model: the batch-size numbers in tokens per batch as well."""
        if self.tokens is None or self.samples <= 0:
            return {}
        per = self.tokens / self.samples
        return {
            f"{key}_tokens": None if value is None else value * per
            for key, value in (
                ("b_crit", self.b_crit),
                ("cbs20", self.cbs20),
                ("b_simple", self.b_simple),
            )
        }


@dataclass(frozen=True, kw_only=True)
class BranchedResult:
    reference_batch_size: int
    seeds: tuple[int, ...]
    points: tuple[PointResult, ...]
    ci_note: str = ""
    unit: str = "samples"  # or "tokens" for a language model
    failed: tuple[str, ...] = field(default_factory=tuple)  # branches that did not complete

    def to_dict(self) -> dict[str, Any]:
        return {
            "design": "branched",
            "reference_batch_size": self.reference_batch_size,
            "seeds": list(self.seeds),
            "overhead_rule": OVERHEAD,
            "min_batch_sizes": MIN_BATCH_SIZES,
            "ci_note": self.ci_note,
            "unit": self.unit,
            "failed_branches": list(self.failed),
            "points": [p.to_dict() for p in self.points],
        }

    def to_dataframe(self) -> pd.DataFrame:
        """One row per branch point."""
        rows = []
        for p in self.points:
            d = p.to_dict()
            d.pop("batches")
            for key in ("b_crit_ci95", "cbs20_ci95"):
                ci = d.pop(key)
                d[f"{key}_lo"], d[f"{key}_hi"] = (ci or [math.nan, math.nan])[:2]
            rows.append(d)
        return pd.DataFrame(rows)


# ---- the rules -------------------------------------------------------------------------------


def non_increasing(values: Sequence[float]) -> list[float]:
    """The least-squares non-increasing fit to `values` (isotonic regression, pool adjacent
    violators): a branch's validation loss with its step-to-step noise averaged out, so that
    neither the target nor a crossing is set by one lucky evaluation."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    out: list[float] = []
    for mean, count in blocks:
        out += [mean] * int(count)
    return out


def smoothed(trial: FrozenTrial) -> FrozenTrial:
    """`trial` with its finite validation losses replaced by their non-increasing fit."""
    evals = [e for e in trial.evals if math.isfinite(e.val_loss)]
    fit = non_increasing([e.val_loss for e in evals])
    return replace(
        trial, evals=tuple(replace(e, val_loss=v) for e, v in zip(evals, fit, strict=True))
    )


def loss_at(trial: FrozenTrial, samples: float) -> float:
    """The validation loss of a branch after `samples` samples, linear between evaluations."""
    evals = [e for e in trial.evals if math.isfinite(e.val_loss)]
    for prev, cur in itertools.pairwise(evals):
        if prev.samples <= samples <= cur.samples:
            if cur.samples == prev.samples:
                return cur.val_loss
            f = (samples - prev.samples) / (cur.samples - prev.samples)
            return prev.val_loss + f * (cur.val_loss - prev.val_loss)
    return math.nan


def cbs20(batch_sizes: Sequence[float], samples: Sequence[float]) -> tuple[float | None, bool]:
    """Where E(B) / E(b_min) first exceeds `OVERHEAD` (`regimes.perfect_scaling_end`, the
    same rule as the end of perfect scaling): (value, False); (None, True) when no measured
    batch size gets there (CBS_20 lies above them all); (None, False) when the smallest batch
    size met the target before training (no samples to compare with)."""
    if samples[0] <= 0:
        return None, False
    value = perfect_scaling_end(batch_sizes, samples, OVERHEAD - 1.0)
    return value, value is None


def _fit(batch_sizes: Sequence[float], steps: Sequence[float]) -> tuple[float, float] | None:
    """(S_min, E_min) when the hyperbola fits with both positive, else None."""
    s_min, e_min, _ = fit_steps(batch_sizes, steps)
    return (s_min, e_min) if s_min > 0 and e_min > 0 else None


def _point_numbers(
    steps: Mapping[int, np.ndarray[Any, Any]],
) -> tuple[float | None, tuple[float, float] | None, float | None, bool]:
    """From each batch size's per-seed steps: (B_crit, (S_min, E_min), CBS_20, above)."""
    sizes = sorted(steps)
    means = [float(np.mean(steps[b])) for b in sizes]
    samples = [b * s for b, s in zip(sizes, means, strict=True)]
    value, above = cbs20(sizes, samples)
    fit = _fit(sizes, means) if len(sizes) >= MIN_BATCH_SIZES else None
    return (fit[1] / fit[0] if fit else None), fit, value, above


def _bootstrap(
    steps: Mapping[int, np.ndarray[Any, Any]], n_seeds: int, rng: np.random.Generator
) -> tuple[Interval | None, Interval | None]:
    """95% percentile intervals of B_crit and CBS_20, resampling the seeds (paired across batch
    sizes: one draw of seeds for every batch size of the point)."""
    crits, cbss = [], []
    for _ in range(N_BOOT):
        pick = rng.integers(0, n_seeds, size=n_seeds)
        resampled = {b: s[pick] for b, s in steps.items()}
        crit, _, value, above = _point_numbers(resampled)
        if crit is not None:
            crits.append(crit)
        # a resample whose CBS_20 lies above every batch size counts as +inf, not as missing:
        # leaving it out would pull the interval's upper end down
        if value is not None or above:
            cbss.append(value if value is not None else math.inf)

    def pct(xs: list[float]) -> Interval | None:
        if sum(map(math.isfinite, xs)) < N_BOOT // 2:  # most gave no number: no interval
            return None
        with np.errstate(invalid="ignore"):  # interpolating between two infinities: NaN
            lo, hi = np.nan_to_num(np.percentile(xs, [2.5, 97.5]), nan=math.inf, posinf=math.inf)
        return Interval(lo=float(lo), hi=float(hi))

    return pct(crits), pct(cbss)


def branched_critical(
    trials: Sequence[FrozenTrial],
    probes: pd.DataFrame | None = None,
    *,
    tokens_per_sample: float | None = None,
) -> BranchedResult:
    """B_crit(t), CBS_20(t) and B_simple(t) at every branch point of a branched study."""
    branches = [t for t in trials if is_branch(t)]
    refs = [t for t in trials if not is_branch(t)]
    if not branches or not refs:
        raise CriticalBatchError(
            "critical: not a branched study (no branch trials); set branched = { ... } in the"
            " spec, e.g. the `branched` preset"
        )
    ref_batch = refs[0].batch_size
    seeds = tuple(sorted({t.seed for t in refs}))
    failed = tuple(t.trial_id for t in branches if t.state is not TrialState.COMPLETE)
    by_point: dict[int, list[FrozenTrial]] = {}
    for t in map(smoothed, branches):
        by_point.setdefault(int(t.params["branch"]["point"]), []).append(t)
    rng = np.random.default_rng(0)
    points = []
    for i in sorted(by_point):
        points.append(_point(i, by_point[i], ref_batch, seeds, probes, tokens_per_sample, rng))
    note = "" if len(seeds) > 1 else "one seed: no confidence intervals (add seeds for them)"
    return BranchedResult(
        reference_batch_size=ref_batch,
        seeds=seeds,
        points=tuple(points),
        ci_note=note,
        unit="tokens" if tokens_per_sample else "samples",
        failed=failed,
    )


def _point(
    i: int,
    group: Sequence[FrozenTrial],
    ref_batch: int,
    seeds: tuple[int, ...],
    probes: pd.DataFrame | None,
    tokens_per_sample: float | None,
    rng: np.random.Generator,
) -> PointResult:
    info = group[0].params["branch"]
    window = float(info["window"])
    # Each seed's target: the reference batch's branch (lr factor closest to 1) after `window`.
    ref_branches = [t for t in group if t.batch_size == ref_batch]
    factor = min(
        {float(t.params["branch"]["lr_factor"]) for t in ref_branches},
        key=lambda f: abs(math.log(f)),
    )
    targets: dict[int, float] = {}
    for t in ref_branches:
        if float(t.params["branch"]["lr_factor"]) == factor and t.state is TrialState.COMPLETE:
            targets[t.seed] = loss_at(t, window)
    good = [s for s in seeds if math.isfinite(targets.get(s, math.nan))]
    step, samples = int(info["step"]), int(info["samples"])
    base = PointResult(
        point=i,
        step=step,
        samples=samples,
        tokens=round(samples * tokens_per_sample) if tokens_per_sample else None,
        target=float(np.mean([targets[s] for s in good])) if good else math.nan,
        batches=(),
        b_simple=_b_simple(probes, group, step),
    )
    if len(good) < len(seeds):
        return _with(base, note="the reference batch's branch did not complete its window")
    if any(t.evals and t.evals[0].val_loss <= targets[t.seed] for t in ref_branches):
        return _with(
            base,
            note="the validation loss did not fall over the window: lengthen branched.window",
        )
    # Steps to each seed's target, per (batch size, lr factor).
    cells: dict[tuple[int, float], dict[int, float]] = {}
    lrs: dict[tuple[int, float], float] = {}
    for t in group:
        key = (t.batch_size, float(t.params["branch"]["lr_factor"]))
        lrs[key] = t.lr
        r = reach(
            t, Target(metric="val_loss", value=targets[t.seed], fraction=None), targets[t.seed]
        )
        ok = t.state is TrialState.COMPLETE and r.reached
        cells.setdefault(key, {})[t.seed] = r.steps if ok else math.nan
    rows: list[BranchBatch] = []
    per_seed: dict[int, np.ndarray[Any, Any]] = {}
    for b in sorted({b for b, _ in cells}):
        options = []
        for (bb, f), by_seed in cells.items():
            got = [by_seed.get(s, math.nan) for s in seeds]
            if bb == b and all(math.isfinite(v) for v in got):
                options.append((float(np.mean(got)), f, np.asarray(got)))
        if not options:
            rows.append(
                BranchBatch(
                    batch_size=b,
                    lr_factor=math.nan,
                    lr=math.nan,
                    seeds=len(seeds),
                    steps=math.nan,
                    samples=math.nan,
                    reached=False,
                )
            )
            continue
        mean, f, best = min(options, key=lambda o: o[0])
        per_seed[b] = best
        rows.append(
            BranchBatch(
                batch_size=b,
                lr_factor=f,
                lr=lrs[(b, f)],
                seeds=len(seeds),
                steps=mean,
                samples=mean * b,
                reached=True,
            )
        )
    base = _with(base, batches=tuple(rows))
    if len(per_seed) < 2:
        return _with(base, note="fewer than 2 batch sizes reached the target")
    crit, fit, value, above = _point_numbers(per_seed)
    notes = []
    if len(per_seed) < MIN_BATCH_SIZES:
        notes.append(
            f"not enough batch sizes: {len(per_seed)} reached the target, a fit needs"
            f" {MIN_BATCH_SIZES}"
        )
    elif fit is None:
        sizes = sorted(per_seed)
        _, e_min, _ = fit_steps(sizes, [float(np.mean(per_seed[b])) for b in sizes])
        if e_min > 0:  # S_min <= 0: the steps fall as fast as 1 / B, or faster, throughout
            notes.append(
                f"no B_crit: the steps fall as 1 / B throughout (perfect scaling), so B_crit"
                f" lies above the largest batch size measured ({sizes[-1]})"
            )
        else:
            notes.append("no B_crit: the steps do not fall with batch size (B_noise near 0)")
    elif crit is not None and not min(per_seed) <= crit <= max(per_seed):
        side, edge = (
            ("above the largest", max(per_seed))
            if crit > max(per_seed)
            else ("below the smallest", min(per_seed))
        )
        notes.append(f"B_crit is {side} batch size that reached the target ({edge}): extrapolated")
    b_min = min(per_seed)
    if value is not None and value < 2 * OVERHEAD * b_min:
        notes.append(
            f"CBS_20 is below {2 * OVERHEAD:g}x the smallest batch ({b_min}): on the hyperbola it"
            f" is {OVERHEAD:g} b_min + {OVERHEAD - 1:.1f} B_noise, here more the smallest batch's"
            " share than the noise's (B_crit does not depend on b_min)"
        )
    crit_ci = cbs_ci = None
    if len(seeds) > 1:
        crit_ci, cbs_ci = _bootstrap(per_seed, len(seeds), rng)
    return _with(
        base,
        s_min=fit[0] if fit else None,
        e_min=fit[1] if fit else None,
        b_crit=crit,
        b_crit_ci=crit_ci if crit is not None else None,
        cbs20=value,
        cbs20_above=max(per_seed) if above else None,
        cbs20_ci=cbs_ci if value is not None else None,
        note="; ".join(notes),
    )


def _with(p: PointResult, **changes: Any) -> PointResult:
    return replace(p, **changes)


def _b_simple(probes: pd.DataFrame | None, group: Sequence[FrozenTrial], step: int) -> float | None:
    """The reference's B_simple at the noise-scale record closest to `step`, mean over seeds."""
    if probes is None or probes.empty:
        return None
    refs = {str(t.params["branch"]["reference"]) for t in group}
    rows = probes[
        (probes["probe"] == "noise_scale")
        & (probes["key"] == "total")
        & probes["trial_id"].isin(refs)
    ]
    values = []
    for _, per_trial in rows.groupby("trial_id"):
        nearest = per_trial.iloc[(per_trial["step"] - step).abs().argsort()[:1]]
        v = float(nearest["value"].iloc[0])
        if math.isfinite(v) and v > 0:
            values.append(v)
    return float(np.mean(values)) if values else None


# ---- from measurement to a schedule ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BatchWarmup:
    """A batch-size warmup from CBS(t): the batch size from each milestone epoch on."""

    start: int  # the batch size before the first milestone: the reference's
    milestones: tuple[int, ...]  # epochs
    batch_sizes: tuple[int, ...]
    rule: str  # how each size was chosen, in words
    epochs: int | None = None
    """The budget in epochs, to state with the schedule, when the branched study's budget was
    samples (a whole number of passes): milestones are epochs, so the budget must be too."""

    def to_toml(self, *, study: str) -> str:
        """The `batch_sizes` and `batch_schedule` lines a study can use as they are (and the
        budget in epochs, when the branched study counted samples)."""
        head = [
            f"# batch-size warmup from the branched study {study!r}: {self.rule}",
            f"batch_sizes = [{self.start}]",
        ]
        if self.epochs is not None:
            note = "in place of the samples budget (the same samples)"
            head.append(f"budget = {{ epochs = {self.epochs} }}  # {note}")
        if not self.milestones:
            return "\n".join([*head, "# the measured CBS never allows a larger batch"]) + "\n"
        ms = ", ".join(map(str, self.milestones))
        bs = ", ".join(map(str, self.batch_sizes))
        return (
            "\n".join([*head, f"batch_schedule = {{ milestones = [{ms}], batch_sizes = [{bs}] }}"])
            + "\n"
        )


def power_of_two_below(x: float) -> int:
    """The largest power of two <= x (1 for x < 2)."""
    return 1 << max(0, math.floor(math.log2(x))) if x >= 1 else 1


def budget_passes(budget: Budget, n_train: int) -> int | None:
    """A budget in whole passes over `n_train` examples: its epochs, or a samples budget that is
    a whole number of passes; None for any other (a batch schedule steps at epoch boundaries)."""
    if budget.epochs is not None:
        return budget.epochs
    if budget.samples is not None and budget.samples % n_train == 0:
        return budget.samples // n_train
    return None


def warmup_schedule(
    result: BranchedResult, *, n_train: int, epochs: int, state_epochs: bool = False
) -> BatchWarmup:
    """The batch at each branch point is the largest power of two at or below the CBS_20
    measured there (the largest batch size measured, when CBS_20 lies above them all), never
    below the reference batch size nor below the batch of an earlier point; it takes effect at
    the first epoch boundary at or after the point (the engine changes batch size between
    epochs), for a study of `epochs` epochs: a point in the last epoch changes nothing. Points
    without a CBS_20 keep the batch before them. `state_epochs`: the schedule states its budget
    of `epochs` (the branched study's budget was samples)."""
    start = result.reference_batch_size
    batch, out = start, dict[int, int]()
    for p in result.points:
        cbs = float(p.cbs20_above) if p.cbs20_above is not None else p.cbs20
        if cbs is None:
            continue
        batch = max(batch, power_of_two_below(cbs))
        epoch = max(1, math.ceil(p.samples / n_train))
        if epoch >= epochs:
            continue
        if batch > (out.get(epoch) or 0) and batch > max([start, *out.values()]):
            out[epoch] = batch
    at = sorted(out)
    return BatchWarmup(
        start=start,
        milestones=tuple(at),
        batch_sizes=tuple(out[e] for e in at),
        rule="at each branch point, the largest power of two at or below CBS_20, from the next"
        " epoch on",
        epochs=epochs if state_epochs else None,
    )


def validation_spec(stored: dict[str, Any], warmup: BatchWarmup, largest: int) -> dict[str, Any]:
    """A study running `warmup` against the constant reference batch and the constant largest
    batch, at equal samples (the reference's budget), from a branched study's stored spec."""
    # What runs, from the store; where and how it runs (executor, device, workers...) is this
    # machine's default: a store is data, and does not choose where code runs.
    left_out = {"branched", "probes", "probe_args", *EXECUTION_FIELDS}
    base = {k: v for k, v in stored.items() if k not in left_out}
    keep = list(zip(warmup.milestones, warmup.batch_sizes, strict=True))
    variants: list[dict[str, Any]] = []
    if keep:
        variants.append(
            {
                "label": "warmup",
                "batch_schedule": {
                    "milestones": [m for m, _ in keep],
                    "batch_sizes": [b for _, b in keep],
                },
            }
        )
    variants.append({"label": f"constant {warmup.start}"})
    if largest != warmup.start:
        variants.append({"label": f"constant {largest}", "batch_sizes": [largest]})
    if warmup.epochs is not None:  # the same samples, as the epochs a batch schedule steps in
        base["budget"] = {"epochs": warmup.epochs}
    return {
        **base,
        "name": f"{stored['name']}-validation",
        "description": f"batch-size warmup from {stored['name']!r} against constant batches",
        "batch_sizes": [warmup.start],
        "variants": variants,
    }


@dataclass(frozen=True, kw_only=True)
class ValidationRow:
    variant: str
    seeds: int
    reached: int  # seeds whose run reached the target
    steps: float  # means over the seeds that reached it
    samples: float
    time_s: float
    final_val_loss: float  # mean over seeds
    total_steps: float  # updates made in the whole budget (mean over seeds)


def validation_rows(
    trials: Sequence[FrozenTrial], targets: Mapping[int, float]
) -> list[ValidationRow]:
    """Per variant: steps, samples and training time to each seed's target validation loss
    (the reference run of that seed's final one: paired, as the runs share their seeds), and
    the final loss and updates of the whole budget."""
    by_variant: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        by_variant.setdefault(str(t.params.get("variant", "")), []).append(t)
    rows = []
    for label, ts in by_variant.items():
        done = [t for t in ts if t.state is TrialState.COMPLETE and t.evals and t.seed in targets]
        hits = []
        for t in done:
            goal = Target(metric="val_loss", value=targets[t.seed], fraction=None)
            if (r := reach(t, goal, targets[t.seed])).reached:
                hits.append(r)

        def mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else math.nan

        rows.append(
            ValidationRow(
                variant=label,
                seeds=len(ts),
                reached=len(hits),
                steps=mean([r.steps for r in hits]),
                samples=mean([r.samples for r in hits]),
                time_s=mean([r.time_s for r in hits]),
                final_val_loss=mean([t.evals[-1].val_loss for t in done]),
                total_steps=mean([float(t.evals[-1].step) for t in done]),
            )
        )
    return rows
