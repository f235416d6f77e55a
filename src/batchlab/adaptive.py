"""Adaptive sweeps: successive halving over the batch-size x learning-rate grid.

A *configuration* is one (batch size, base lr) of a variant; its seeds live and die together, so
a surviving configuration keeps its mean and spread. Every configuration trains to the first
rung, the ones clearly behind are stopped (PRUNED, with the reason stored), the rest go on to the
next rung, and the last survivors train to the end of the budget exactly as in the full grid.

Rungs. Rung k lies at the budget fraction r_k = min_fraction * eta**k (1/9 and 1/3 by default)
of each trial's planned steps, moved forward to the first *checkpointed evaluation* at or after
it (an epoch boundary where `eval_every` evaluates): the metric exists there and the engine can
pause and later resume bit-identically. Rungs that land on the same evaluations as the previous
one, or on the end of training, are dropped.

The rule at a rung, within each variant (controls form their own pool):
  1. score each configuration by the mean over its seeds of `metric` at the rung; a seed that
     diverged or failed before the rung makes its configuration rank last;
  2. keep the top ceil(n / eta) of the n configurations that reached the rung;
  3. also keep every configuration whose score is within the noise margin of the cut-off (the
     n_keep-th score): margin = max(seed spread, sampling error, min_margin), where the seed
     spread is the pooled standard deviation over seeds at the rung (with two seeds or more) and
     the sampling error is the binomial standard error of the cut-off accuracy on the validation
     set, sqrt(c (1 - c) / n_val) (for val_acc; the loss has none we can compute from the store);
  4. with `keep_per_batch`, also keep the best configuration at every batch size, so the
     batch-size curve stays drawable (the saving then comes from the lr axis);
  5. stop the rest.
Ranking uses the validation split only; the test set never decides anything.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from batchlab.errors import BatchlabError
from batchlab.plan import TrialPlan, planned_steps
from batchlab.spec import Adaptive, TrialSpec
from batchlab.store import Store
from batchlab.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from batchlab.prepared import PreparedStudy, Reporter

ConfigKey = tuple[int, float]  # (batch size, base lr) within a pool
_RUNG_RE = re.compile(r"adaptive rung (\d+) ")


class RunOne(Protocol):
    """`batchlab.study._run_one`: run or resume one trial, optionally pausing at a step."""

    def __call__(
        self,
        store: Store,
        trial: TrialSpec,
        prepared: PreparedStudy,
        reporter: Reporter,
        prov: dict[str, Any],
        *,
        stop_at_step: int | None = None,
    ) -> TrialState: ...


# ---- where rungs can lie ------------------------------------------------------------------------


def pause_points(trial: TrialSpec, n_train: int) -> list[int]:
    """Steps of the checkpointed evaluations strictly inside training: where the engine can pause
    a trial (`TrialPlan.pause_points`, the schedule the engine trains by)."""
    return TrialPlan(trial, n_train).pause_points()


@dataclass(frozen=True, kw_only=True)
class Rung:
    """One rung of a pool: its number (from 1), its budget fraction, and for every trial the step
    of the evaluation judged there (a trial's planned steps when the rung falls on its end)."""

    number: int
    fraction: float
    steps: dict[str, int]


def rung_plan(trials: Sequence[TrialSpec], n_train: int, cfg: Adaptive) -> list[Rung]:
    """The rungs of one pool, each moved to the first pause point at or after its fraction."""
    totals: dict[str, int] = {}
    points: dict[str, list[int]] = {}
    for t in trials:
        total = planned_steps(t, n_train)
        if total is None:
            raise ValueError("adaptive: a wall-clock budget has no planned steps")
        totals[t.trial_id], points[t.trial_id] = total, pause_points(t, n_train)
    rungs: list[Rung] = []
    for fraction in cfg.fractions():
        steps = {
            tid: next((p for p in points[tid] if p >= fraction * total - 1e-9), total)
            for tid, total in totals.items()
        }
        if all(steps[tid] == totals[tid] for tid in steps):
            continue  # every trial would already be finished: nothing to decide
        if rungs and steps == rungs[-1].steps:
            continue  # the same evaluations as the previous rung: no new evidence
        rungs.append(Rung(number=len(rungs) + 1, fraction=fraction, steps=steps))
    return rungs


# ---- the rule (a pure function) ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Candidate:
    """A configuration at a rung: its metric per seed (NaN where a seed diverged or failed before
    the rung), and whether any of its seeds is still training."""

    batch_size: int
    lr_base: float
    values: tuple[float, ...]
    live: bool

    @property
    def key(self) -> ConfigKey:
        return (self.batch_size, self.lr_base)


@dataclass(frozen=True, kw_only=True)
class Decision:
    """What the rule decided at one rung, with every number it used."""

    metric: str
    n: int  # configurations that reached the rung
    n_keep: int  # ceil(n / eta)
    cutoff: float  # the n_keep-th best score
    margin: float  # max(seed_std, sampling_se, min_margin)
    seed_std: float
    sampling_se: float
    scores: dict[ConfigKey, float]  # mean over seeds; -inf/+inf when a seed diverged or failed
    kept: frozenset[ConfigKey]
    stopped: tuple[ConfigKey, ...]  # live configurations to stop, best first


def _higher_is_better(metric: str) -> bool:
    return metric.endswith("acc")


def score(values: Sequence[float], metric: str) -> float:
    """Mean over seeds; the worst possible score when any seed has no finite value."""
    worst = -math.inf if _higher_is_better(metric) else math.inf
    if not values or not all(math.isfinite(v) for v in values):
        return worst
    return sum(values) / len(values)


def pooled_seed_std(candidates: Sequence[Candidate]) -> float:
    """sqrt of the mean within-configuration variance over configurations with >= 2 finite seeds
    (0 when there are none, e.g. with one seed)."""
    variances = [
        statistics.variance(c.values)
        for c in candidates
        if len(c.values) >= 2 and all(math.isfinite(v) for v in c.values)
    ]
    return math.sqrt(sum(variances) / len(variances)) if variances else 0.0


def decide(candidates: Sequence[Candidate], *, cfg: Adaptive, n_val: int) -> Decision:
    """Apply the rule of the module docstring to the configurations that reached one rung."""
    metric = cfg.metric
    sign = 1.0 if _higher_is_better(metric) else -1.0
    scores = {c.key: score(c.values, metric) for c in candidates}
    # Best first; Python's sort is stable, so ties keep the grid order (deterministic).
    ranked = sorted(candidates, key=lambda c: -sign * scores[c.key])
    n = len(ranked)
    n_keep = max(1, math.ceil(n / cfg.eta - 1e-9))
    cutoff = scores[ranked[min(n_keep, n) - 1].key] if ranked else math.nan
    seed_std = pooled_seed_std(candidates)
    sampling_se = 0.0
    if _higher_is_better(metric) and math.isfinite(cutoff) and n_val > 0:
        acc = min(max(cutoff, 0.0), 1.0)
        sampling_se = math.sqrt(acc * (1 - acc) / n_val)
    margin = max(seed_std, sampling_se, cfg.min_margin)
    kept = {c.key for c in ranked[:n_keep]}
    for c in ranked:
        # "within the margin": no further than `margin` on the wrong side of the cut-off
        if sign * (scores[c.key] - cutoff) >= -margin:
            kept.add(c.key)
    if cfg.keep_per_batch:
        best_at: dict[int, Candidate] = {}
        for c in ranked:  # best first, so the first seen at a batch size is its best
            best_at.setdefault(c.batch_size, c)
        kept.update(c.key for c in best_at.values())
    stopped = tuple(c.key for c in ranked if c.key not in kept and c.live)
    return Decision(
        metric=metric,
        n=n,
        n_keep=n_keep,
        cutoff=cutoff,
        margin=margin,
        seed_std=seed_std,
        sampling_se=sampling_se,
        scores=scores,
        kept=frozenset(kept),
        stopped=stopped,
    )


def prune_reason(
    key: ConfigKey, decision: Decision, *, rung: Rung, rungs: int, epoch: float, cfg: Adaptive
) -> str:
    """One line that says where a configuration was stopped and by how much it was behind."""
    s = decision.scores[key]
    worse = "below" if _higher_is_better(decision.metric) else "above"
    if math.isfinite(s):
        why = (
            f"{decision.metric} {s:.4f} is {worse} the cut-off {decision.cutoff:.4f}"
            f" by more than the margin {decision.margin:.4f}"
        )
    else:
        why = f"a seed diverged or failed before the rung (cut-off {decision.cutoff:.4f})"
    keep = f"the top 1/{cfg.eta:g} ({decision.n_keep} of {decision.n} configurations)"
    per_batch = ", and the best lr at each batch size" if cfg.keep_per_batch else ""
    return (
        f"adaptive rung {rung.number} of {rungs} ({rung.fraction:.3g} of the budget, epoch"
        f" {epoch:.3g}): {why}; kept {keep}, those within the margin{per_batch}"
        f" (margin = max(seed std {decision.seed_std:.4f}, sampling s.e."
        f" {decision.sampling_se:.4f}, min_margin {cfg.min_margin:g}))"
    )


def pruned_rung(trial: FrozenTrial) -> int | None:
    """The rung at which an adaptive sweep stopped this trial (None if it did not)."""
    if trial.state is not TrialState.PRUNED:
        return None
    m = _RUNG_RE.match(trial.error or "")
    return int(m.group(1)) if m else None


# ---- the driver ----------------------------------------------------------------------------------


def run_adaptive(
    store: Store,
    trials: Sequence[TrialSpec],
    prepared: PreparedStudy,
    reporter: Reporter,
    prov: dict[str, Any],
    *,
    run_one: RunOne,
) -> None:
    """Run a study's grid by successive halving, sequentially, resuming whatever a killed run
    left: a rung's decision depends only on stored evaluations, so deciding it again gives the
    same answer, and a trial already at (or past) a rung is not trained again."""
    cfg = prepared.spec.adaptive
    if cfg is None:
        raise ValueError("run_adaptive needs a spec with adaptive set")
    pools: dict[tuple[str, bool], list[TrialSpec]] = {}
    for t in trials:
        pools.setdefault((t.variant, t.control), []).append(t)
    for pool in pools.values():
        _run_pool(store, pool, prepared, reporter, prov, run_one=run_one, cfg=cfg)


def _run_pool(
    store: Store,
    pool: list[TrialSpec],
    prepared: PreparedStudy,
    reporter: Reporter,
    prov: dict[str, Any],
    *,
    run_one: RunOne,
    cfg: Adaptive,
) -> None:
    name = prepared.spec.name
    n_train = prepared.data.n_train
    n_val = len(prepared.data.val)
    totals: dict[str, int] = {}
    for t in pool:
        total = planned_steps(t, n_train)
        if total is None:
            raise ValueError("adaptive: a wall-clock budget has no planned steps")
        totals[t.trial_id] = total

    def advance(t: TrialSpec, stop: int | None) -> TrialState:
        reporter.trial_started(t, totals[t.trial_id])
        state = run_one(store, t, prepared, reporter, prov, stop_at_step=stop)
        if state.is_finished:
            reporter.trial_finished(t, state)
        return state

    rungs = rung_plan(pool, n_train, cfg)
    for rung in rungs:
        stored = {ft.trial_id: ft for ft in store.trials(name)}
        for t in pool:
            tid, at = t.trial_id, rung.steps[t.trial_id]
            ft = stored[tid]
            if ft.state.is_finished or any(e.step == at for e in ft.evals):
                continue
            advance(t, at if at < totals[tid] else None)
        stored = {ft.trial_id: ft for ft in store.trials(name)}
        # Everything not stopped at an earlier rung takes part, also trials stopped at this rung
        # by a run that was killed: the same evidence then gives the same decision.
        members = [
            t for t in pool if (r := pruned_rung(stored[t.trial_id])) is None or r >= rung.number
        ]
        configs: dict[ConfigKey, list[TrialSpec]] = {}
        for t in members:
            configs.setdefault((t.batch_size, t.lr_base), []).append(t)
        candidates = []
        epochs: dict[ConfigKey, float] = {}
        for (b, lr_base), ts in configs.items():
            values = []
            for t in ts:
                ft, at = stored[t.trial_id], rung.steps[t.trial_id]
                ev = next((e for e in ft.evals if e.step == at), None)
                if ev is None and not ft.state.is_finished:
                    raise BatchlabError(
                        f"adaptive: trial {t.trial_id} has no evaluation at its"
                        f" rung (step {at}); rerun to continue it"
                    )
                # no evaluation at the rung: the trial diverged or failed before it
                values.append(math.nan if ev is None else float(getattr(ev, cfg.metric)))
                if ev is not None:
                    epochs[(b, lr_base)] = ev.epoch
            live = any(not stored[t.trial_id].state.is_finished for t in ts)
            candidates.append(
                Candidate(batch_size=b, lr_base=lr_base, values=tuple(values), live=live)
            )
        decision = decide(candidates, cfg=cfg, n_val=n_val)
        for key in decision.stopped:
            epoch = epochs.get(key, math.nan)
            reason = prune_reason(key, decision, rung=rung, rungs=len(rungs), epoch=epoch, cfg=cfg)
            for t in configs[key]:
                if not stored[t.trial_id].state.is_finished:
                    store.finish_trial(t.trial_id, TrialState.PRUNED, error=reason)
                    reporter.trial_finished(t, TrialState.PRUNED)
    for t in pool:
        if not store.trial_state(t.trial_id).is_finished:
            advance(t, None)


# ---- reading an adaptive study back ------------------------------------------------------------


def describe_rule(cfg: Adaptive) -> str:
    """The rule in one line, with this study's settings."""
    rungs = ", ".join(f"{r:.3g}" for r in cfg.fractions())
    per_batch = ", and the best lr at each batch size" if cfg.keep_per_batch else ""
    return (
        f"successive halving: at budget fractions {rungs}, keep the top 1/{cfg.eta:g} of the"
        f" configurations by {cfg.metric}, those within the noise margin of the cut-off"
        f"{per_batch}; stop the rest"
    )


@dataclass(frozen=True, kw_only=True)
class PrunedConfig:
    """A configuration the rule stopped: where, and what it measured there."""

    variant: str
    batch_size: int
    lr_base: float
    lr: float
    seeds: tuple[int, ...]
    rung: int | None
    epoch: float  # epochs trained when stopped
    value: float  # mean over seeds of the ranking metric at the stop
    reason: str


def pruned_configs(trials: Sequence[FrozenTrial], metric: str = "val_acc") -> list[PrunedConfig]:
    """PRUNED trials grouped by configuration (variant, batch size, base lr), in grid order."""
    groups: dict[tuple[str, bool, int, float], list[FrozenTrial]] = {}
    for t in trials:
        if t.state is TrialState.PRUNED:
            key = (str(t.params.get("variant", "")), bool(t.params.get("control")), t.batch_size)
            groups.setdefault((*key, t.lr_base), []).append(t)
    out = []
    for (variant, _, b, lr_base), ts in groups.items():
        lasts = [t.last for t in ts if t.last is not None]
        values = [float(getattr(e, metric)) for e in lasts]
        out.append(
            PrunedConfig(
                variant=variant,
                batch_size=b,
                lr_base=lr_base,
                lr=ts[0].lr,
                seeds=tuple(t.seed for t in ts),
                rung=pruned_rung(ts[0]),
                epoch=lasts[0].epoch if lasts else math.nan,
                value=sum(values) / len(values) if values else math.nan,
                reason=ts[0].error or "",
            )
        )
    return out


@dataclass(frozen=True, kw_only=True)
class ComputeUsed:
    """What a study spent on training: examples processed (steps x batch) and training time."""

    trials: int
    states: dict[str, int]
    samples: int
    train_time_s: float


def compute_used(trials: Sequence[FrozenTrial]) -> ComputeUsed:
    """Sum over trials of the examples trained on (up to the last evaluation; a diverged trial
    adds its steps after it) and of the training time (evaluation excluded)."""
    samples, seconds = 0, 0.0
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.value] = states.get(t.state.value, 0) + 1
        last = t.last
        if last is None:
            continue
        samples += last.samples
        seconds += last.train_time_s
        if t.state is TrialState.DIVERGED and t.diverged_step is not None:
            samples += max(0, t.diverged_step - last.step) * t.batch_size
    return ComputeUsed(trials=len(trials), states=states, samples=samples, train_time_s=seconds)


@dataclass(frozen=True, kw_only=True)
class BestConfig:
    """The best base lr at one batch size: mean final metrics over its seeds."""

    batch_size: int
    lr_base: float
    val: float  # the selection metric (mean over seeds)
    test_acc: float
    seeds: int


def best_per_batch(
    trials: Sequence[FrozenTrial], metric: str = "val_acc", variant: str = ""
) -> dict[int, BestConfig]:
    """At each batch size, the configuration with the best mean final `metric` among those
    whose seeds all COMPLETEd (controls excluded)."""
    groups: dict[ConfigKey, list[FrozenTrial]] = {}
    for t in trials:
        if str(t.params.get("variant", "")) == variant and not t.params.get("control"):
            groups.setdefault((t.batch_size, t.lr_base), []).append(t)
    sign = 1.0 if _higher_is_better(metric) else -1.0
    best: dict[int, BestConfig] = {}
    for (b, lr_base), ts in sorted(groups.items()):
        lasts = [t.last for t in ts if t.state is TrialState.COMPLETE and t.last is not None]
        if len(lasts) != len(ts):
            continue
        cand = BestConfig(
            batch_size=b,
            lr_base=lr_base,
            val=statistics.fmean(float(getattr(e, metric)) for e in lasts),
            test_acc=statistics.fmean(e.test_acc for e in lasts),
            seeds=len(lasts),
        )
        if b not in best or sign * (cand.val - best[b].val) > 0:
            best[b] = cand
    return best


def best_overall(best: dict[int, BestConfig], metric: str = "val_acc") -> BestConfig | None:
    """The best of `best_per_batch` (ties: the smaller batch size)."""
    sign = 1.0 if _higher_is_better(metric) else -1.0
    ranked = sorted(best.values(), key=lambda c: (-sign * c.val, c.batch_size))
    return ranked[0] if ranked else None
