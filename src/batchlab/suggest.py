"""Suggest a batch size and lr before sweeping: a short run, the noise scale, a hardware profile.

`suggest(...)` spends at most `budget_fraction` (default 5%) of the training compute of the full
sweep it would replace, and returns a `Suggestion`:

1. Reference sweep. The full study the suggestion replaces: by default the `seed-sweep` preset's
   grid (batch sizes 8..2048 x its lrs x its seeds, its epoch budget) on the user's dataset and
   training set; or any study spec (`reference=`). Compute is counted in training samples (one
   forward and backward pass of one example); evaluation passes are counted on neither side.
2. Hardware profile (`batchlab.profile.profile_hardware`) at the reference's batch sizes up to the
   training-set size: samples/s per batch size and the largest batch that fits. A fixed number
   of timed steps per size (about 10% of the budget, 3 to 50 steps after one warm-up), counted
   against the budget.
3. A short SGD run at a small batch b (default 32) with the user's lr (one trial, trained by the
   engine with the noise-scale probe), measuring the simple noise scale every T/M steps with
   the probe's unbiased two-batch estimator
   (`batchlab.probes.noise_scale.estimate_noise`: `draws` batches of b and their average). The
   run gets what the budget leaves after the profile, less the measurements' own passes (at
   most a quarter of it: fewer measurements, at least 4, on a small budget), but
   never more samples than one reference trial (its mean over the sweep): B_simple grows as the
   loss falls, so it is measured at the stage of training the sweep's trials reach, not later.
   B_simple = mean tr(Sigma) / mean |G|^2 over the late half of the measurements (numerator and
   denominator averaged separately, as McCandlish et al. advise); its 95% interval is a
   bootstrap over those measurements. It has "settled" when the two halves of the late window
   agree within a factor 1.5 (B_simple grows as the loss falls, so it may not).
4. Prediction (McCandlish et al. 2018, ../shared/REFERENCE.md): B_crit ~ B_simple (an
   order-of-magnitude estimate). Steps to a target then go as S(B) = S_min (1 + B_crit / B), so
   wall-clock time to the target goes as (B + B_crit) / throughput(B). The suggested batch size
   is the profiled size (at most the largest that fits and the training set) with the least
   predicted time; sizes within 5% of it count as tied and the smallest of those is taken (fewer
   samples: E(B) = E_min (1 + B / B_crit)).
5. Learning rate, from the lr `lr` at the small batch b. Suggested: McCandlish's optimal-lr rule
   eta(B) = eta_max / (1 + B_noise / B) with B_noise ~ B_simple, eta_max fixed by eta(b) = lr;
   linear scaling well below B_simple, saturating above it. Range: from the sqrt rule
   lr * sqrt(B / b) (conservative) to that value (the ends swap when B < b).
6. `verify=True`: short trials (equal samples each; together at most another `budget_fraction`)
   at the suggested size and its power-of-two neighbours, 2 seeds each, with lrs from the rule;
   the suggestion holds when its mean final validation accuracy is within the seed spread
   (larger sample std of the two cells) of the best one's.

`method="branched"` (issue 14) replaces steps 3-4 with a direct measurement of B_crit by
branching (`batchlab.branched`, Merrill et al. 2025), within `budget_fraction` (default 10%):

3b. A branched study (`branch_plan`): one reference run at the small batch b with the user's lr
    (SGD, one seed), for an eighth of one reference trial's samples (`BRANCH_REF_TRIAL`; at most
    `BRANCH_REF_SHARE` of what the profile leaves), keeping its state at 2 points (half-way and
    at its end); from each, branches at every reference batch size up to the training set (b
    added), lr by the linear rule from `lr` at b (constant lr / B: the same gradient noise at
    every batch size; under the sqrt rule small batches are noisier than b and never reach its
    target) times each of `BRANCH_LR_FACTORS`, each training at most `reach` x `window` samples
    towards the validation loss b's branch reaches after `window`.
    The window is the largest (at most a quarter of the reference run) that fits the budget;
    when even the smallest (the largest branch batch, and `evals` steps of b) does not, fewer
    points, then one lr factor, then every other batch size (at least `MIN_BATCH_SIZES`); else
    the suggestion is refused. Run by `run_study` into the given store (a temporary one
    without), so a rerun resumes it. Compute: the reference's and every branch's samples.
4b. `branched_critical` on it; B_crit = the latest point with a number (its CBS_20 beside it);
    the batch size and lr then follow from B_crit as in steps 4-5.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchlab import presets
from batchlab.data import Dataset, load_dataset
from batchlab.engine import resolve_device, train_trial
from batchlab.errors import BatchlabError, SpecError
from batchlab.probes import ProbeRecord
from batchlab.profile import HardwareProfile, profile_hardware
from batchlab.spec import StudySpec, TrialSpec, load_spec, spec_from_dict
from batchlab.trial import EvalRecord, TrialState

DEFAULT_REFERENCE = "seed-sweep"  # the preset whose grid defines the default reference sweep
TIE = 0.05  # predicted times within 5% of the least count as tied
SETTLED_FACTOR = 1.5
PROFILE_SHARE = 0.1  # of the budget, for the hardware profile's timed steps
MEASURE_SHARE = 0.25  # of what the profile leaves, at most, for noise measurements
METHODS = ("noise", "branched")
DEFAULT_BUDGET = {"noise": 0.05, "branched": 0.10}  # fractions of the reference sweep
BRANCH_REF_SHARE = 0.4  # of what the profile leaves, at most, for the branched reference run
BRANCH_REF_TRIAL = 0.125  # of one reference trial's samples: the branched reference run's length
BRANCH_LR_FACTORS = (0.5, 1.0)  # on the linear rule (constant lr / B), halved where it is too big
BRANCH_REACH = 3.0
BRANCH_EVALS = 8


class SuggestError(BatchlabError):
    """A suggestion cannot be made from these inputs (one line, says what to change)."""


# ---- the reference sweep ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReferenceSweep:
    """The full sweep a suggestion replaces, and the training samples it would process."""

    source: str
    batch_sizes: tuple[int, ...]
    lrs: int
    seeds: int
    trials: int
    budget: str  # e.g. "25 epochs"
    n_train: int
    samples: float
    samples_by_batch: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"{self.source}: batch sizes {', '.join(map(str, self.batch_sizes))} x {self.lrs}"
            f" lr(s) x {self.seeds} seed(s) = {self.trials} trials of {self.budget} on"
            f" {self.n_train} training examples = {self.samples:,.0f} training samples"
        )


def trial_samples(trial: TrialSpec, n_train: int) -> float:
    """Training samples one trial processes under its budget (no wall-clock budgets)."""
    budget = trial.budget
    if budget.epochs is not None:
        return float(budget.epochs * n_train)
    if budget.samples is not None:
        return float(budget.samples)
    if budget.steps is not None:
        return float(budget.steps * min(trial.batch_size, n_train))
    raise SuggestError(
        "reference sweep: a seconds budget has no fixed compute; give the reference an"
        " epochs, steps or samples budget"
    )


def reference_sweep(spec: StudySpec, n_train: int, *, source: str) -> ReferenceSweep:
    """Count the reference study's trials and training samples on `n_train` examples."""
    trials = spec.trials(n_train=n_train)
    by_batch: dict[int, float] = {}
    for t in trials:
        by_batch[t.batch_size] = by_batch.get(t.batch_size, 0.0) + trial_samples(t, n_train)
    return ReferenceSweep(
        source=source,
        batch_sizes=tuple(sorted({t.batch_size for t in trials})),
        lrs=len(spec.lrs),
        seeds=len(spec.seeds),
        trials=len(trials),
        budget=f"{spec.budget.value:g} {spec.budget.kind}",
        n_train=n_train,
        samples=math.fsum(by_batch.values()),
        samples_by_batch=by_batch,
    )


def load_reference(path: Path | None) -> tuple[StudySpec, str]:
    """The reference study spec: a TOML file, or the seed-sweep preset as written."""
    if path is None:
        return load_spec(base=presets.get(DEFAULT_REFERENCE).data), f"{DEFAULT_REFERENCE} preset"
    return load_spec(path), str(path)


# ---- measuring the noise scale ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NoiseMeasurement:
    """One two-batch measurement during the short run (unbiased, noisy estimates)."""

    step: int
    samples: int  # training samples seen when it was made
    trace: float  # tr(Sigma)
    g2: float  # |G|^2

    @property
    def b_simple(self) -> float:
        return self.trace / self.g2 if self.g2 > 0 else math.nan


@dataclass(frozen=True, kw_only=True)
class BSimple:
    """B_simple over the late window: ratio of means, a bootstrap interval, and settling."""

    value: float
    ci_lo: float
    ci_hi: float
    measurements: int
    from_step: int
    early: float  # first half of the late window (ratio of its means)...
    late: float  # ...and the second half
    settled: bool


def b_simple(
    measurements: Sequence[NoiseMeasurement],
    *,
    late_fraction: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> BSimple:
    """B_simple = mean trace / mean |G|^2 over measurements at step >= (1 - late) * last step."""
    if not measurements:
        raise SuggestError("noise scale: no measurement was made; raise --budget-fraction")
    last = max(m.step for m in measurements)
    late = [m for m in measurements if m.step >= (1.0 - late_fraction) * last]
    tr = np.array([m.trace for m in late])
    g2 = np.array([m.g2 for m in late])
    if not g2.mean() > 0:
        raise SuggestError(
            "noise scale: the averaged |G|^2 estimate is not positive (the gradient is lost in"
            " its noise); raise --draws or --budget-fraction"
        )
    value = float(tr.mean() / g2.mean())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        i = rng.integers(0, len(late), len(late))
        if g2[i].mean() > 0:
            draws.append(tr[i].mean() / g2[i].mean())
    lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (math.nan, math.nan)
    half = max(1, len(late) // 2)

    def ratio(ms: Sequence[NoiseMeasurement]) -> float:
        den = math.fsum(m.g2 for m in ms)
        return math.fsum(m.trace for m in ms) / den if den > 0 else math.nan

    early_v, late_v = ratio(late[:half]), ratio(late[half:] or late[-1:])
    settled = (
        early_v > 0 and late_v > 0 and abs(math.log(late_v / early_v)) <= math.log(SETTLED_FACTOR)
    )
    return BSimple(
        value=value,
        ci_lo=float(lo),
        ci_hi=float(hi),
        measurements=len(late),
        from_step=min(m.step for m in late),
        early=early_v,
        late=late_v,
        settled=bool(settled),
    )


@dataclass(frozen=True, kw_only=True)
class ShortRun:
    """The short run at the small batch: what it did and cost."""

    batch_size: int
    lr: float
    momentum: float
    steps: int
    planned_steps: int
    train_samples: int
    noise_samples: int  # passes spent measuring (draws x batch per measurement)
    seconds: float
    stopped_by_time: bool
    first_loss: float  # over the training set, at the initial weights...
    last_loss: float  # ...and at the end
    measurements: tuple[NoiseMeasurement, ...]


def measurement_steps(total_steps: int, measurements: int) -> list[int]:
    """Evenly spaced steps ending at `total_steps` (at least step 1, no repeats)."""
    return sorted(
        {max(1, round((i + 1) * total_steps / measurements)) for i in range(measurements)}
    )


def short_run(
    data: Dataset,
    *,
    model: str,
    model_args: dict[str, Any],
    batch_size: int,
    lr: float,
    momentum: float,
    steps: int,
    measurements: int,
    draws: int,
    seed: int,
    device: torch.device,
    max_seconds: float,
) -> ShortRun:
    """A trial of SGD for `steps` steps, trained by the engine (`engine.train_trial`) with the
    noise-scale probe measuring at evenly spaced steps (each measurement on its own: no EMA);
    stops early once `max_seconds` of wall time have passed. Training loss: over the whole
    training set at the start and at the end."""
    when = measurement_steps(steps, measurements)
    spec = StudySpec.model_validate(
        {
            "name": "suggest",
            "model": model,
            "model_args": model_args,
            "optimizer": "sgd",
            "momentum": momentum,
            "lrs": [lr],
            "batch_sizes": [batch_size],
            "seeds": [seed],
            "budget": {"steps": steps},
            "val_fraction": 0.0,
            "probes": ["noise_scale"],
            "probe_args": {"noise_scale": {"draws": draws, "beta": 0.0, "steps": when}},
        }
    )
    trial = spec.trials(n_train=data.n_train)[0]
    records: list[EvalRecord] = []
    probes: list[ProbeRecord] = []

    def sink(rec: EvalRecord, _ckpt: object, probed: list[ProbeRecord]) -> None:
        records.append(rec)
        probes.extend(probed)

    t0 = time.perf_counter()
    out = train_trial(trial, data, device=device, on_eval=sink, deadline=t0 + max_seconds)
    seconds = time.perf_counter() - t0
    if out.state is TrialState.DIVERGED:
        raise SuggestError(
            f"suggest: the short run diverged at step {out.diverged_step} with lr {lr:g} at batch"
            f" {batch_size}; lower --lr"
        )
    value = {(p.step, p.key): p.value for p in probes if p.probe == "noise_scale"}
    taken = sorted({s for s, _ in value})
    per_epoch = math.ceil(data.n_train / batch_size)

    def samples_at(step: int) -> int:
        epochs, rest = divmod(step, per_epoch)
        return epochs * data.n_train + min(rest * batch_size, data.n_train)

    last = records[-1]
    return ShortRun(
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        steps=last.step,
        planned_steps=steps,
        train_samples=last.samples,
        noise_samples=len(taken) * batch_size * draws,
        seconds=seconds,
        stopped_by_time=last.step < steps,
        first_loss=records[0].full_train_loss,
        last_loss=last.full_train_loss,
        measurements=tuple(
            NoiseMeasurement(
                step=s,
                samples=samples_at(s),
                trace=value[(s, "trace_sigma/total")],
                g2=value[(s, "g2/total")],
            )
            for s in taken
        ),
    )


# ---- prediction ---------------------------------------------------------------------------------


def lr_at(batch_size: float, *, lr: float, small_batch: int, b_noise: float) -> float:
    """McCandlish's eta(B) = eta_max / (1 + B_noise / B), with eta(small_batch) = lr."""
    eta_max = lr * (1.0 + b_noise / small_batch)
    return eta_max / (1.0 + b_noise / batch_size)


def lr_range(
    batch_size: float, *, lr: float, small_batch: int, b_noise: float
) -> tuple[float, float]:
    """From the sqrt rule lr * sqrt(B / b) to McCandlish's rule, lower end first."""
    a = lr * math.sqrt(batch_size / small_batch)
    b = lr_at(batch_size, lr=lr, small_batch=small_batch, b_noise=b_noise)
    return min(a, b), max(a, b)


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """One batch size: measured throughput and the predicted cost of reaching a target."""

    batch_size: int
    samples_per_s: float
    steps_factor: float  # S(B) / S_min = 1 + B_crit / B
    samples_factor: float  # E(B) / E_min = 1 + B / B_crit
    relative_time: float  # predicted time to target / the least over candidates
    lr: float
    lr_lo: float
    lr_hi: float


def rank_batch_sizes(
    throughput: Sequence[tuple[int, float]],
    b_crit: float,
    *,
    lr: float,
    small_batch: int,
) -> tuple[list[Candidate], int]:
    """Candidates in batch-size order and the suggested size (rules in the module docstring)."""
    if not throughput:
        raise SuggestError("suggest: no batch size to choose from (none fits in memory)")
    if not b_crit > 0:
        raise SuggestError(f"suggest: B_crit must be positive, got {b_crit:g}")
    cost = {b: (b + b_crit) / rate for b, rate in throughput}
    least = min(cost.values())
    cands = []
    for b, rate in sorted(throughput):
        lo, hi = lr_range(b, lr=lr, small_batch=small_batch, b_noise=b_crit)
        cands.append(
            Candidate(
                batch_size=b,
                samples_per_s=rate,
                steps_factor=1.0 + b_crit / b,
                samples_factor=1.0 + b / b_crit,
                relative_time=cost[b] / least,
                lr=lr_at(b, lr=lr, small_batch=small_batch, b_noise=b_crit),
                lr_lo=lo,
                lr_hi=hi,
            )
        )
    best = min(c.batch_size for c in cands if c.relative_time <= 1.0 + TIE)
    return cands, best


# ---- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class VerifyRow:
    batch_size: int
    lr: float
    seeds: int
    val_acc: float
    val_acc_std: float
    test_acc: float
    train_time_s: float


@dataclass(frozen=True, kw_only=True)
class Verification:
    study: str
    store: str
    samples_per_trial: int
    samples: float
    rows: tuple[VerifyRow, ...]
    best_batch_size: int
    suggested_batch_size: int
    gap: float  # best mean val acc - suggested's
    spread: float  # larger sample std of the two cells
    within_spread: bool | None  # None when the spread is unknown (a seed did not finish)

    def verdict(self) -> str:
        if self.best_batch_size == self.suggested_batch_size:
            return f"the suggested batch size {self.suggested_batch_size} was the best"
        if self.gap <= 0:
            return f"the suggested batch size ties the best (B={self.best_batch_size})"
        gap = f"{100 * self.gap:.2f} points below the best (B={self.best_batch_size})"
        if self.within_spread is None:
            return f"the suggested batch size is {gap}; the seed spread is unknown"
        spread = f"{100 * self.spread:.2f}"
        if self.within_spread:
            return f"the suggested batch size is {gap}, within the seed spread ({spread} points)"
        return f"the suggested batch size is {gap}, more than the seed spread ({spread} points)"


def verify_neighbours(
    *,
    base: dict[str, Any],
    sizes: Sequence[int],
    lrs: dict[int, float],
    suggested: int,
    samples_per_trial: int,
    store: Path,
    name: str,
    data_dir: Path | None,
    n_train: int,
) -> Verification:
    """Short trials (2 seeds, equal samples) at `sizes`, each at its lr; see the module docs."""
    from batchlab.study import run_study  # the study layer sits above this module

    variants = [
        {"label": f"B={b}", "batch_sizes": [b], "lrs": [float(f"{lrs[b]:.6g}")]} for b in sizes
    ]
    data = {
        **base,
        "name": name,
        "description": "batchlab suggest --verify: the suggested batch size and its neighbours",
        "batch_sizes": [sizes[0]],
        "lrs": [1.0],
        "seeds": [0, 1],
        "budget": {"samples": samples_per_trial},
        "variants": variants,
        "save_weights": False,
    }
    spec = spec_from_dict(data, source="suggest --verify")
    study = run_study(spec, store=store, data_dir=data_dir)
    ids = {t.trial_id for t in spec.trials(n_train=n_train)}
    trials = [t for t in study.trials if t.trial_id in ids]  # a rerun may hold older trials
    rows = []
    for b in sizes:
        done = [t for t in trials if t.batch_size == b and t.state is TrialState.COMPLETE]
        vals = [t.last.val_acc for t in done if t.last is not None]
        rows.append(
            VerifyRow(
                batch_size=b,
                lr=lrs[b],
                seeds=len(done),
                val_acc=statistics.fmean(vals) if vals else math.nan,
                val_acc_std=statistics.stdev(vals) if len(vals) > 1 else math.nan,
                test_acc=statistics.fmean(t.last.test_acc for t in done if t.last is not None)
                if done
                else math.nan,
                train_time_s=statistics.fmean(t.last.train_time_s for t in done if t.last)
                if done
                else math.nan,
            )
        )
    scored = [r for r in rows if math.isfinite(r.val_acc)]
    if not scored:
        raise SuggestError("suggest --verify: no verification trial completed; lower --lr")
    best = max(scored, key=lambda r: (r.val_acc, -r.batch_size))
    mine_row = next(r for r in rows if r.batch_size == suggested)
    gap = best.val_acc - mine_row.val_acc if math.isfinite(mine_row.val_acc) else math.inf
    spread = max(best.val_acc_std, mine_row.val_acc_std)
    within = None if math.isnan(spread) else gap <= spread
    if best.batch_size == suggested:
        within = True
    return Verification(
        study=name,
        store=str(store),
        samples_per_trial=samples_per_trial,
        samples=float(samples_per_trial * len(trials)),
        rows=tuple(rows),
        best_batch_size=best.batch_size,
        suggested_batch_size=suggested,
        gap=gap,
        spread=spread,
        within_spread=within,
    )


# ---- the branched method ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BranchPlan:
    """A branched study's shape, and the training samples it plans (reference + branches)."""

    reference_samples: int
    points: int
    first: float  # the first point, as a fraction of the reference run (the last is its end)
    batch_sizes: tuple[int, ...]  # the branches' (the small batch included)
    lr_factors: tuple[float, ...]
    window: int
    reach: float
    evals: int
    branch_samples: int

    @property
    def samples(self) -> int:
        return self.reference_samples + self.branch_samples


def branch_cost(
    batch_sizes: Sequence[int],
    *,
    window: int,
    points: int,
    lr_factors: int,
    reach: float = BRANCH_REACH,
    evals: int = BRANCH_EVALS,
) -> int:
    """Samples every branch plans: `batchlab.branched.branch_trials`' budgets, summed."""
    from batchlab.branched import interval

    per_point = 0
    for b in batch_sizes:
        every = interval(b, window, evals)
        per_point += every * math.ceil(reach * window / every)
    return points * lr_factors * per_point


def whole_batches(samples: int, n_train: int, batch_size: int) -> int:
    """`samples` rounded down to what the engine trains exactly: whole epochs, then whole
    batches (a samples budget is spent in whole batches, so it may overshoot otherwise)."""
    epochs, rest = divmod(samples, n_train)
    return epochs * n_train + (rest // batch_size) * batch_size


def branch_plan(
    *,
    available: float,
    one_trial: float,
    batch_size: int,
    batch_sizes: Sequence[int],
    n_train: int,
    reach: float = BRANCH_REACH,
    evals: int = BRANCH_EVALS,
) -> BranchPlan:
    """The largest branched study that fits in `available` samples (rules: module docstring)."""
    from batchlab.analysis.critical import MIN_BATCH_SIZES

    ref = whole_batches(
        int(min(BRANCH_REF_TRIAL * one_trial, BRANCH_REF_SHARE * available)), n_train, batch_size
    )
    sizes = tuple(sorted({*batch_sizes, batch_size}))
    if len(sizes) < MIN_BATCH_SIZES:
        raise SuggestError(
            f"suggest --method branched: not enough batch sizes: the reference sweep has"
            f" {len(sizes)} up to the training set ({', '.join(map(str, sizes))}), a fit needs"
            f" {MIN_BATCH_SIZES}; use --method noise or a wider reference"
        )
    every_other = tuple(sorted({*sizes[::2], batch_size}))
    options: list[tuple[int, tuple[float, ...], tuple[int, ...]]] = [
        (2, BRANCH_LR_FACTORS, sizes),
        (1, BRANCH_LR_FACTORS, sizes),
        (1, (1.0,), sizes),
    ]
    if len(every_other) >= MIN_BATCH_SIZES and every_other != sizes:
        options.append((1, (1.0,), every_other))
    for points, factors, bs in options:
        least = max(bs[-1], evals * batch_size)  # a step of the largest, `evals` of b
        most = ref // 4
        room = available - ref
        if most < least:
            continue
        # the cost grows about linearly with the window: start from that guess, shrink to fit
        guess = room / (points * len(factors) * len(bs) * reach)
        window = int(min(most, guess))
        while window >= least:
            cost = branch_cost(
                bs, window=window, points=points, lr_factors=len(factors), reach=reach, evals=evals
            )
            if ref + cost <= available:
                return BranchPlan(
                    reference_samples=ref,
                    points=points,
                    first=0.5 if points > 1 else 1.0,
                    batch_sizes=bs,
                    lr_factors=factors,
                    window=window,
                    reach=reach,
                    evals=evals,
                    branch_samples=cost,
                )
            window = int(window * 0.97)
    raise SuggestError(
        f"suggest --method branched: {available:,.0f} training samples (after the profile) do not"
        f" fit a reference run and branches at batch sizes {sizes[0]}..{sizes[-1]} (a window of at"
        f" least {max(sizes[-1], evals * batch_size):,} samples); raise --budget-fraction or use"
        " --method noise"
    )


@dataclass(frozen=True, kw_only=True)
class BranchedEstimate:
    """B_crit measured by branching from a short reference run (`branched_critical`)."""

    study: str
    store: str | None  # None: a temporary store, removed afterwards
    plan: BranchPlan
    reference_samples: int  # trained (a diverged branch stops early: at most the plan)
    branch_samples: int
    branches: int
    diverged: int  # branches that did not complete
    point: int  # the branch point B_crit is taken from
    at_samples: int  # the reference's samples there
    b_crit: float
    b_crit_note: str
    cbs20: float | None
    cbs20_above: int | None
    points: tuple[dict[str, Any], ...]  # every point, as `PointResult.to_dict` gives it


def branched_estimate(
    *,
    base: dict[str, Any],
    plan: BranchPlan,
    lr: float,
    batch_size: int,
    seed: int,
    store: Path | None,
    data_dir: Path | None,
) -> BranchedEstimate:
    """Run the planned branched study (`run_study`) and take B_crit from its latest point."""
    import tempfile

    from batchlab.analysis.branched import branched_critical, is_branch
    from batchlab.study import run_study  # the study layer sits above this module

    data = {
        **base,
        "lrs": [lr],
        "reference_batch_size": batch_size,
        "lr_scaling": "linear",
        "batch_sizes": [batch_size],
        "seeds": [seed],
        "budget": {"samples": plan.reference_samples},
        "save_weights": False,
        "branched": {
            "batch_sizes": list(plan.batch_sizes),
            "points": plan.points,
            "first": plan.first,
            "window": plan.window,
            "reach": plan.reach,
            "evals": plan.evals,
            "lr_factors": list(plan.lr_factors),
        },
    }
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(base["dataset"]))
    name = f"suggest-branched-{safe}-{digest[:8]}"
    data["name"] = name
    data["description"] = "batchlab suggest --method branched: B_crit from a short run's branches"
    spec = spec_from_dict(data, source="suggest --method branched")
    with tempfile.TemporaryDirectory(prefix="batchlab-suggest-") as tmp:
        path = store if store is not None else Path(tmp) / "suggest.db"
        study = run_study(spec, store=path, data_dir=data_dir, notify=lambda _line: None)
        trials = list(study.trials)  # the name is the spec's digest: every trial is this one's
        info = study.task
        per = info.tokens_per_sample if info.unit != "example" else None
    result = branched_critical(trials, None, tokens_per_sample=per)
    refs = [t for t in trials if not is_branch(t)]
    branches = [t for t in trials if is_branch(t)]

    def trained(ts: Sequence[Any]) -> int:
        return sum(t.last.samples for t in ts if t.last is not None)

    if not refs or refs[0].state is not TrialState.COMPLETE:
        raise SuggestError(
            f"suggest --method branched: the reference run at batch {batch_size} did not complete"
            f" ({refs[0].state.value if refs else 'missing'}); lower --lr"
        )
    numbered = [p for p in result.points if p.b_crit is not None and p.b_crit > 0]
    if not numbered:
        why = "; ".join(f"point {p.point}: {p.note or 'no B_crit'}" for p in result.points)
        raise SuggestError(f"suggest --method branched: no branch point gave a B_crit ({why})")
    last = numbered[-1]
    assert last.b_crit is not None
    return BranchedEstimate(
        study=name,
        store=str(store) if store is not None else None,
        plan=plan,
        reference_samples=trained(refs),
        branch_samples=trained(branches),
        branches=len(branches),
        diverged=len(result.failed),
        point=last.point,
        at_samples=last.samples,
        b_crit=last.b_crit,
        b_crit_note=last.note,
        cbs20=last.cbs20,
        cbs20_above=last.cbs20_above,
        points=tuple(p.to_dict() for p in result.points),
    )


# ---- the suggestion -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Compute:
    """Training samples spent, against the reference sweep."""

    reference_samples: float
    budget_fraction: float
    profile_samples: int
    train_samples: int
    noise_samples: int
    verify_samples: float
    seconds: float
    branch_samples: int = 0  # --method branched: every branch (train_samples: its reference)

    @property
    def samples(self) -> float:
        return float(
            self.profile_samples + self.train_samples + self.noise_samples + self.branch_samples
        )

    @property
    def fraction(self) -> float:
        """Fraction of the reference sweep used by the suggestion (without --verify)."""
        return self.samples / self.reference_samples

    @property
    def fraction_with_verify(self) -> float:
        return (self.samples + self.verify_samples) / self.reference_samples


@dataclass(frozen=True, kw_only=True)
class Suggestion:
    dataset: str
    model: str
    n_train: int
    reference: ReferenceSweep
    run: ShortRun | None  # the noise method's short run...
    noise: BSimple | None  # ...and its B_simple
    b_crit: float  # predicted: B_simple (noise), or measured by branching (branched)
    profile: HardwareProfile
    candidates: tuple[Candidate, ...]
    batch_size: int
    lr: float
    lr_lo: float
    lr_hi: float
    compute: Compute
    reference_seconds: float  # the reference sweep's training time predicted from the profile
    verification: Verification | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    method: str = "noise"
    branched: BranchedEstimate | None = None
    run_batch_size: int = 32  # the small batch b (the short run's, or the branched reference's)
    run_lr: float = 0.05  # the lr at b

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.run is not None:
            d["run"]["measurements"] = [
                {**asdict(m), "b_simple": m.b_simple} for m in self.run.measurements
            ]
        d["compute"].update(
            samples=self.compute.samples,
            fraction=self.compute.fraction,
            fraction_with_verify=self.compute.fraction_with_verify,
        )
        d["reference"]["description"] = self.reference.describe()
        d["lines"] = self.lines()
        return d

    def _measured(self) -> list[str]:
        """What B_crit came from, in a line or two."""
        n, r, e = self.noise, self.run, self.branched
        if e is not None:
            p = e.plan
            cbs = (
                f"> {e.cbs20_above}"
                if e.cbs20_above is not None
                else ("—" if e.cbs20 is None else f"{e.cbs20:.3g}")
            )
            note = f" ({e.b_crit_note})" if e.b_crit_note else ""
            return [
                f"Measured critical batch size B_crit = {self.b_crit:.3g} by branching"
                f" (point {e.point}, after {e.at_samples:,} samples; CBS_20 {cbs}){note}.",
                f"  Reference run at batch {self.run_batch_size}: {e.reference_samples:,} samples"
                f" ({e.reference_samples / self.n_train:.2g} epochs); {e.branches} branches"
                f" ({p.points} point(s) x batch {p.batch_sizes[0]}..{p.batch_sizes[-1]} x lr"
                f" factors {', '.join(f'{f:g}' for f in p.lr_factors)} on the linear rule), window"
                f" {p.window:,} samples, reach {p.reach:g}; {e.diverged} did not complete;"
                f" study {e.study}" + (f" in {e.store}." if e.store else " (temporary store)."),
            ]
        assert n is not None and r is not None
        settle = (
            "settled"
            if n.settled
            else f"still moving: {n.early:.3g} then {n.late:.3g} over the late window"
        )
        return [
            f"Predicted critical batch size B_crit ~ B_simple = {self.b_crit:.3g}"
            f" (95% CI over measurements {n.ci_lo:.3g} .. {n.ci_hi:.3g}; {settle}).",
            f"  Measured at batch {r.batch_size}, lr {r.lr:g}: {r.steps} steps"
            f" ({r.train_samples / self.n_train:.2g} epochs), training loss {r.first_loss:.3g}"
            f" -> {r.last_loss:.3g}; {n.measurements} late measurements from step"
            f" {n.from_step}.",
        ]

    def lines(self) -> list[str]:
        c, r = self.compute, self.run
        out = [
            f"Suggested batch size: {self.batch_size}, lr {self.lr:.3g}"
            f" (range {self.lr_lo:.3g} .. {self.lr_hi:.3g}).",
            *self._measured(),
            "  Rule: time to a target ~ (B + B_crit) / throughput(B); the smallest size within"
            f" {TIE:.0%} of the least predicted time. Sizes up to"
            f" {max(x.batch_size for x in self.candidates)} (fits in memory and the training"
            " set).",
            "  lr: McCandlish's eta(B) = eta_max / (1 + B_crit / B) through"
            f" eta({self.run_batch_size}) = {self.run_lr:g}; range from the sqrt rule to it.",
            f"Compute: {c.samples:,.0f} training samples = {100 * c.fraction:.2f}% of the"
            f" reference sweep (budget {100 * c.budget_fraction:g}%), {c.seconds:.0f} s;"
            f" the sweep itself: about {_duration(self.reference_seconds)} of training here.",
            f"  Reference: {self.reference.describe()}.",
        ]
        if r is not None and r.stopped_by_time:
            out.append(f"  The short run hit the time limit after {r.steps} of {r.planned_steps}.")
        if self.verification is not None:
            v = self.verification
            out.append(
                f"Verify ({v.study} in {v.store}, {v.samples_per_trial:,} samples per trial,"
                f" {100 * v.samples / c.reference_samples:.2f}% of the reference): {v.verdict()}."
            )
        out.extend(self.notes)
        return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _pow2_neighbours(b: int) -> list[int]:
    return [max(1, b // 2), b, 2 * b]


def suggest(
    *,
    model: str = "mlp",
    dataset: str,
    model_args: dict[str, Any] | None = None,
    dataset_args: dict[str, Any] | None = None,
    train_subset: int | None = None,
    val_fraction: float = 0.1,
    data_dir: Path | None = None,
    task: str | None = None,
    task_args: dict[str, Any] | None = None,
    lr: float = 0.05,
    batch_size: int = 32,
    momentum: float = 0.0,
    reference: StudySpec | None = None,
    reference_source: str = "",
    budget_fraction: float | None = None,
    max_seconds: float = 300.0,
    draws: int = 16,
    measurements: int = 40,
    device: str = "cpu",
    seed: int = 0,
    verify: bool = False,
    store: Path | None = None,
    verify_name: str | None = None,
    method: str = "noise",
) -> Suggestion:
    """Suggest a batch size and lr range; every rule is in the module docstring. `method`:
    "noise" (B_crit ~ B_simple of a short run) or "branched" (B_crit measured by branching);
    `budget_fraction` defaults to 5% of the reference sweep for the first, 10% for the second;
    `store` holds --verify's trials and the branched study (a temporary store without)."""
    if method not in METHODS:
        raise SpecError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if budget_fraction is None:
        budget_fraction = DEFAULT_BUDGET[method]
    if not 0 < budget_fraction <= 1:
        raise SpecError(f"--budget-fraction {budget_fraction}: need 0 < fraction <= 1")
    if lr <= 0 or batch_size <= 0 or not 0 <= momentum < 1:
        raise SpecError("--lr and --batch-size must be > 0 and --momentum in [0, 1)")
    if draws < 2 or measurements < 2:
        raise SpecError("--draws and --measurements must be at least 2")
    if verify and not val_fraction > 0:
        raise SpecError("--verify compares validation accuracy: need a validation fraction > 0")
    t0 = time.perf_counter()
    args = dict(model_args or {})
    data = load_dataset(
        dataset,
        args=dataset_args or {},
        data_dir=data_dir,
        val_fraction=val_fraction,
        train_subset=train_subset,
        task=task,
        task_args=task_args,
    )
    n = data.n_train
    if batch_size > n:
        raise SpecError(f"--batch-size {batch_size}: more than the {n} training examples")
    if reference is None:
        reference, reference_source = load_reference(None)
    ref = reference_sweep(reference, n, source=reference_source or reference.name)
    dev = resolve_device(device)
    allowed = budget_fraction * ref.samples

    sizes = sorted({b for b in ref.batch_sizes if b <= n} | {batch_size})
    # A fixed number of timed steps per size (no minimum time), so the profile's compute is
    # known in advance: about PROFILE_SHARE of the budget, 3 to 50 steps after one warm-up.
    timed = min(50, max(3, int(PROFILE_SHARE * allowed / sum(sizes)) - 1))
    prof = profile_hardware(
        model=model,
        dataset=dataset,
        model_args=args,
        dataset_args=dataset_args or {},
        device=device,
        batch_sizes=sizes,
        warmup=1,
        min_steps=timed,
        min_time_s=0.0,
        matmul_n=1024,
        seed=seed,
        task=task,
        task_args=task_args,
    )
    profile_samples = sum(r.batch_size * (1 + r.steps_timed) for r in prof.rows)
    left = allowed - profile_samples
    run: ShortRun | None = None
    noise: BSimple | None = None
    estimate: BranchedEstimate | None = None
    notes: list[str] = []
    if method == "branched":
        plan = branch_plan(
            available=left,
            one_trial=ref.samples / ref.trials,
            batch_size=batch_size,
            batch_sizes=[b for b in ref.batch_sizes if b <= n],
            n_train=n,
        )
        base = {
            "dataset": dataset,
            "dataset_args": dataset_args or {},
            "train_subset": train_subset,
            "val_fraction": val_fraction,
            "task": task,
            "task_args": task_args or {},
            "model": model,
            "model_args": args,
            "optimizer": "sgd",
            "momentum": momentum,
            "device": device,
            "threads": torch.get_num_threads() if dev.type == "cpu" else None,
        }
        estimate = branched_estimate(
            base={k: v for k, v in base.items() if v is not None},
            plan=plan,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            store=store,
            data_dir=data_dir,
        )
        b_crit = estimate.b_crit
        if plan.reference_samples < BRANCH_REF_TRIAL * ref.samples / ref.trials - batch_size:
            notes.append(
                f"  The reference run trained {plan.reference_samples:,} samples, less than"
                f" {BRANCH_REF_TRIAL:g} of a reference trial's (the budget is small): B_crit is"
                " measured earlier in training."
            )
        if estimate.b_crit_note:
            notes.append(f"  Branch point {estimate.point}: {estimate.b_crit_note}.")
    else:
        per_measure = draws * batch_size
        # On a small budget the measurements take at most a quarter of it (but at least 4 of them).
        affordable = int(MEASURE_SHARE * left // per_measure)
        measurements = max(min(measurements, 4), min(measurements, affordable))
        steps = int((left - measurements * per_measure) // batch_size)
        if steps < 2 * measurements:
            raise SuggestError(
                f"suggest: {100 * budget_fraction:g}% of the reference sweep"
                f" ({allowed:,.0f} samples) leaves {max(0, steps)} training steps after the"
                " profile; raise --budget-fraction or use a larger reference sweep"
            )
        one_trial = int(ref.samples / ref.trials) // batch_size  # steps of one reference trial
        capped = one_trial < steps
        if capped:
            steps = max(one_trial, 4)
            measurements = min(measurements, steps // 2)
        run = short_run(
            data,
            model=model,
            model_args=args,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            steps=steps,
            measurements=measurements,
            draws=draws,
            seed=seed,
            device=dev,
            max_seconds=max_seconds,
        )
        noise = b_simple(run.measurements, seed=seed)
        b_crit = noise.value
        if not b_crit > 0:
            raise SuggestError(
                f"suggest: B_simple came out {b_crit:.3g} (not positive); raise --draws or"
                " --budget-fraction"
            )
        if capped:
            notes.append(
                f"  The short run stopped at one reference trial's samples ({one_trial} steps),"
                " below the budget: B_simple is measured where the sweep's trials end."
            )
        if not noise.settled and noise.late > noise.early:
            notes.append(
                "  B_simple was still rising (it grows as the loss falls): the prediction is"
                " likely low for targets near the best accuracy."
            )
        elif not noise.settled:
            notes.append(
                "  B_simple moved by more than a factor 1.5 within the late window (measurement"
                " noise, or training not settled): take it as an order of magnitude."
            )
    limit = min(prof.max_batch_size, n)
    rates = [(r.batch_size, r.samples_per_s) for r in prof.rows if r.batch_size <= limit]
    cands, best = rank_batch_sizes(rates, b_crit, lr=lr, small_batch=batch_size)
    chosen = next(c for c in cands if c.batch_size == best)
    rate = {r.batch_size: r.samples_per_s for r in prof.rows}
    ref_seconds = math.fsum(e / rate[b] for b, e in ref.samples_by_batch.items() if b in rate)
    if best == max(c.batch_size for c in cands):
        notes.append(
            "  The suggestion is the largest size considered: larger batches may be as good."
        )
    compute = Compute(
        reference_samples=ref.samples,
        budget_fraction=budget_fraction,
        profile_samples=profile_samples,
        train_samples=run.train_samples if run else estimate.reference_samples if estimate else 0,
        noise_samples=run.noise_samples if run else 0,
        branch_samples=estimate.branch_samples if estimate else 0,
        verify_samples=0.0,
        seconds=time.perf_counter() - t0,
    )
    verification = None
    if verify:
        sizes = [b for b in _pow2_neighbours(best) if b <= n]
        lrs = {b: lr_at(b, lr=lr, small_batch=batch_size, b_noise=b_crit) for b in sizes}
        per_trial = max(1, int(allowed // (2 * len(sizes))))
        base = {
            "dataset": dataset,
            "dataset_args": dataset_args or {},
            "train_subset": train_subset,
            "val_fraction": val_fraction,
            "model": model,
            "model_args": args,
            "optimizer": "sgd",
            "momentum": momentum,
            "device": device,
            "eval_every": 1,
        }
        # One study per verification: the same suggestion resumes it, another gets its own (a
        # study is one spec; a rerun under its name with another spec is refused).
        digest = hashlib.sha256(
            json.dumps([base, sizes, lrs, per_trial], sort_keys=True, default=str).encode()
        ).hexdigest()[:8]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", dataset)
        name = verify_name or f"suggest-verify-{safe}-{digest}"
        verification = verify_neighbours(
            base={k: v for k, v in base.items() if v is not None},
            sizes=sizes,
            lrs=lrs,
            suggested=best,
            samples_per_trial=per_trial,
            store=store or Path("batchlab.db"),
            name=name,
            data_dir=data_dir,
            n_train=n,
        )
        compute = Compute(
            **{**asdict(compute), "verify_samples": verification.samples},
        )
    return Suggestion(
        dataset=dataset,
        model=model,
        n_train=n,
        reference=ref,
        run=run,
        noise=noise,
        b_crit=b_crit,
        profile=prof,
        candidates=tuple(cands),
        batch_size=best,
        lr=chosen.lr,
        lr_lo=chosen.lr_lo,
        lr_hi=chosen.lr_hi,
        compute=compute,
        reference_seconds=ref_seconds,
        verification=verification,
        notes=tuple(notes),
        method=method,
        branched=estimate,
        run_batch_size=batch_size,
        run_lr=lr,
    )
