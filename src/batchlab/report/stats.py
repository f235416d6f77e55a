"""Pure reductions of trials to the numbers the figures and findings use.

A trial's *final* numbers come from its last evaluation. Only COMPLETE trials enter the
statistics; every other state is counted so the report can say what is missing and why.
The spread over seeds is the sample standard deviation (ddof=1): NaN with fewer than two seeds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from batchlab.fmt import lr_text
from batchlab.report._types import StudyLike
from batchlab.trial import FrozenTrial, TrialState

BAND = "mean ± 1 standard deviation over seeds (sample std, ddof=1; no band with one seed)"


def is_branch(t: FrozenTrial) -> bool:
    """A branched design's branch trial (`params["branch"]`): a short run from a reference's
    stored state, not part of the sweep; only the branched figure reads them."""
    return t.params.get("branch") is not None


def sweep_trials(study: StudyLike) -> list[FrozenTrial]:
    """A study's trials without its branch trials (the sweep, with any controls)."""
    return [t for t in study.trials if not is_branch(t)]


@dataclass(frozen=True, kw_only=True, order=True)
class SeriesKey:
    """One line in a figure against batch size: a study at one base learning rate."""

    study: str
    lr_base: float

    def label(self, *, multi_study: bool) -> str:
        lr = f"lr_base={lr_text(self.lr_base)}"
        return f"{self.study} · {lr}" if multi_study else lr


@dataclass(frozen=True, kw_only=True)
class Stat:
    """Mean and sample standard deviation of the finite values; `n` counts them."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: Iterable[float]) -> Stat:
        xs = [float(v) for v in values if math.isfinite(v)]
        if not xs:
            return Stat(mean=math.nan, std=math.nan, n=0)
        std = statistics.stdev(xs) if len(xs) > 1 else math.nan
        return Stat(mean=statistics.fmean(xs), std=std, n=len(xs))


@dataclass(frozen=True, kw_only=True)
class TrialFinal:
    """A trial reduced to its final evaluation (accuracies as fractions, like the store)."""

    key: SeriesKey
    batch_size: int
    lr: float
    seed: int
    state: TrialState
    test_acc: float
    test_loss: float
    train_acc: float
    train_loss: float
    train_is_full_pass: bool
    train_time_s: float
    steps: float
    samples: float
    epochs: float
    samples_per_s: float
    peak_mem_bytes: float
    val_acc: float = math.nan  # the final validation score: what chooses among cells

    @property
    def acc_gap(self) -> float:
        """Train minus test accuracy (fraction): positive when the model fits train better."""
        return self.train_acc - self.test_acc

    @property
    def loss_gap(self) -> float:
        """Test minus train loss: positive when held-out loss is higher."""
        return self.test_loss - self.train_loss


def _steady_throughput(trial: FrozenTrial) -> float:
    """Median samples/s over the evaluation windows after the first, discarding warm-up."""
    windows = [e.samples_per_s for e in trial.evals if e.idx > 0 and math.isfinite(e.samples_per_s)]
    if len(windows) > 1:
        windows = windows[1:]  # the first window holds the warm-up (compilation, caches)
    return statistics.median(windows) if windows else math.nan


def trial_final(trial: FrozenTrial) -> TrialFinal:
    """The numbers a trial ended with; NaN where it recorded no evaluation."""
    last = trial.last
    nan = math.nan
    key = SeriesKey(study=trial.study, lr_base=trial.lr_base)
    if last is None:
        return TrialFinal(
            key=key,
            batch_size=trial.batch_size,
            lr=trial.lr,
            seed=trial.seed,
            state=trial.state,
            test_acc=nan,
            test_loss=nan,
            train_acc=nan,
            train_loss=nan,
            train_is_full_pass=False,
            train_time_s=nan,
            steps=nan,
            samples=nan,
            epochs=nan,
            samples_per_s=nan,
            peak_mem_bytes=nan,
            val_acc=nan,
        )
    # The full pass over the training set is the honest train number; the running mean over
    # the last window (taken while the weights moved) is the fallback.
    full = math.isfinite(last.full_train_acc) and math.isfinite(last.full_train_loss)
    mem = float(max((e.peak_mem_bytes for e in trial.evals), default=0))
    return TrialFinal(
        key=key,
        batch_size=trial.batch_size,
        lr=trial.lr,
        seed=trial.seed,
        state=trial.state,
        test_acc=last.test_acc,
        test_loss=last.test_loss,
        train_acc=last.full_train_acc if full else last.train_acc,
        train_loss=last.full_train_loss if full else last.train_loss,
        train_is_full_pass=full,
        train_time_s=last.train_time_s,
        steps=float(last.step),
        samples=float(last.samples),
        epochs=last.epoch,
        samples_per_s=_steady_throughput(trial),
        peak_mem_bytes=mem if mem > 0 else nan,
        val_acc=last.val_acc,
    )


@dataclass(frozen=True, kw_only=True)
class Cell:
    """Everything at one (study, lr_base, batch size): counts by state and stats over seeds."""

    key: SeriesKey
    batch_size: int
    lr: float
    n_trials: int
    n_complete: int
    n_diverged: int
    n_failed: int
    n_unfinished: int
    test_acc: Stat
    test_loss: Stat
    train_acc: Stat
    train_loss: Stat
    acc_gap: Stat
    loss_gap: Stat
    train_time_s: Stat
    steps: Stat
    samples: Stat
    epochs: Stat
    samples_per_s: Stat
    peak_mem_bytes: Stat
    train_is_full_pass: bool
    val_acc: Stat = Stat(mean=math.nan, std=math.nan, n=0)  # chooses among cells; NaN: no split


def cells(studies: Sequence[StudyLike]) -> list[Cell]:
    """One cell per (study, lr_base, batch size) that has any trial, in study, lr, b order."""
    groups: dict[tuple[int, float, int], list[FrozenTrial]] = {}
    for i, study in enumerate(studies):
        for t in sweep_trials(study):
            groups.setdefault((i, t.lr_base, t.batch_size), []).append(t)
    out = []
    for (i, lr_base, b), trials in sorted(groups.items()):
        finals = [trial_final(t) for t in trials]
        done = [f for f in finals if f.state is TrialState.COMPLETE]

        out.append(
            Cell(
                key=SeriesKey(study=studies[i].name, lr_base=lr_base),
                batch_size=b,
                lr=statistics.fmean(t.lr for t in trials),
                n_trials=len(trials),
                n_complete=len(done),
                n_diverged=sum(t.state is TrialState.DIVERGED for t in trials),
                n_failed=sum(t.state is TrialState.FAILED for t in trials),
                n_unfinished=sum(
                    t.state not in (TrialState.COMPLETE, TrialState.DIVERGED, TrialState.FAILED)
                    for t in trials
                ),
                test_acc=Stat.of(f.test_acc for f in done),
                test_loss=Stat.of(f.test_loss for f in done),
                train_acc=Stat.of(f.train_acc for f in done),
                train_loss=Stat.of(f.train_loss for f in done),
                acc_gap=Stat.of(f.acc_gap for f in done),
                loss_gap=Stat.of(f.loss_gap for f in done),
                train_time_s=Stat.of(f.train_time_s for f in done),
                steps=Stat.of(f.steps for f in done),
                samples=Stat.of(f.samples for f in done),
                epochs=Stat.of(f.epochs for f in done),
                samples_per_s=Stat.of(f.samples_per_s for f in done),
                peak_mem_bytes=Stat.of(f.peak_mem_bytes for f in done),
                train_is_full_pass=bool(done) and all(f.train_is_full_pass for f in done),
                val_acc=Stat.of(f.val_acc for f in done),
            )
        )
    return out


def series_keys(studies: Sequence[StudyLike]) -> list[SeriesKey]:
    """Every (study, lr_base) with a trial, in study order then by lr_base."""
    seen: dict[SeriesKey, None] = {}
    for c in cells(studies):
        seen.setdefault(c.key, None)
    return list(seen)


def batch_sizes(studies: Sequence[StudyLike]) -> list[int]:
    """Every batch size any trial of the sweep used, ascending."""
    return sorted({t.batch_size for s in studies for t in sweep_trials(s)})
