"""The learning-rate x batch-size stability grid of Masters & Luschi (seed 002).

The rule, per trial: DIVERGED (a non-finite loss) is "diverged"; FAILED is "failed"; a finished
trial whose final full-training-set loss is not below its initial one (or is not finite), or
whose final full-training-set score (`*_acc`: the task's accuracy, R², ...) is less than
`MIN_ACC_GAIN` (5 points, 0.05 of R²) above its initial one (a collapse to a near-constant
prediction, whose loss can still fall a little below a poor initial one), is "unstable";
anything else is "converged". A cell (variant, batch size, lr) takes the worst status over its
seeds. The usable band at a batch size is the range of lrs whose cells converged; the best lr is
the converged one with the highest mean validation score (ties: the smaller lr); the test score is
reported for it, never used to choose. A grid with no validation score (val_fraction = 0) chooses
on the test score, and its bands say so (`Band.selected_on`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from batchlab.analysis.selection import Split
from batchlab.trial import FrozenTrial, TrialState

Status = Literal["converged", "unstable", "diverged", "failed", "pending"]
_WORST: list[Status] = ["failed", "diverged", "unstable", "pending", "converged"]
MIN_ACC_GAIN = 0.05  # training score (accuracy, R²) a converged run must gain over its init


def classify(trial: FrozenTrial) -> Status:
    """One trial's status under the rule in the module docstring."""
    if trial.state == TrialState.DIVERGED:
        return "diverged"
    if trial.state == TrialState.FAILED:
        return "failed"
    if trial.state != TrialState.COMPLETE or not trial.evals:
        return "pending"
    first, last = trial.evals[0], trial.evals[-1]
    loss0, loss = first.full_train_loss, last.full_train_loss
    if not math.isfinite(loss) or (math.isfinite(loss0) and loss >= loss0):
        return "unstable"
    acc0, acc = first.full_train_acc, last.full_train_acc
    if math.isfinite(acc0) and math.isfinite(acc) and acc < acc0 + MIN_ACC_GAIN:
        return "unstable"  # learned next to nothing beyond the initial weights
    return "converged"


@dataclass(frozen=True, kw_only=True)
class Cell:
    variant: str
    batch_size: int
    lr_base: float
    lr: float
    status: Status
    seeds: int
    val_acc: float  # mean over seeds of the final validation accuracy (NaN unless converged)
    test_acc: float


@dataclass(frozen=True, kw_only=True)
class Band:
    """Usable lrs at one batch size (base lrs, i.e. per reference batch size)."""

    variant: str
    batch_size: int
    lo: float | None
    hi: float | None
    usable: int  # number of converged lrs
    tried: int
    best_lr: float | None
    best_test_acc: float
    best_val_acc: float = math.nan
    selected_on: Split = "val"  # "test" only when the grid has no validation score

    @property
    def width_decades(self) -> float:
        """log10(hi / lo): the band's width in decades (0 for a single lr, NaN for none)."""
        if self.lo is None or self.hi is None:
            return math.nan
        return math.log10(self.hi / self.lo)


def cells(trials: Iterable[FrozenTrial]) -> list[Cell]:
    groups: dict[tuple[str, int, float], list[FrozenTrial]] = {}
    for t in trials:
        if t.params.get("control") or t.params.get("branch"):  # not runs of the grid
            continue
        key = (str(t.params.get("variant", "")), t.batch_size, t.lr_base)
        groups.setdefault(key, []).append(t)
    out = []
    for (variant, b, lr_base), ts in sorted(groups.items()):
        status = min((classify(t) for t in ts), key=_WORST.index)
        ok = status == "converged"
        out.append(
            Cell(
                variant=variant,
                batch_size=b,
                lr_base=lr_base,
                lr=ts[0].lr,
                status=status,
                seeds=len(ts),
                val_acc=statistics.fmean(t.evals[-1].val_acc for t in ts) if ok else math.nan,
                test_acc=statistics.fmean(t.evals[-1].test_acc for t in ts) if ok else math.nan,
            )
        )
    return out


def bands(grid: Iterable[Cell]) -> list[Band]:
    """The usable band and best lr at every (variant, batch size): best by validation score, by
    test score only when no converged cell has a validation score."""
    grid = list(grid)
    on: Split = "val" if any(math.isfinite(c.val_acc) for c in grid) else "test"
    by_batch: dict[tuple[str, int], list[Cell]] = {}
    for c in grid:
        by_batch.setdefault((c.variant, c.batch_size), []).append(c)

    def score(c: Cell) -> tuple[float, float]:
        v = c.val_acc if on == "val" else c.test_acc
        return (v if math.isfinite(v) else -math.inf, -c.lr_base)  # ties: the smaller lr

    out = []
    for (variant, b), cs in sorted(by_batch.items()):
        good = [c for c in cs if c.status == "converged"]
        best = max(good, key=score) if good else None
        out.append(
            Band(
                variant=variant,
                batch_size=b,
                lo=min(c.lr_base for c in good) if good else None,
                hi=max(c.lr_base for c in good) if good else None,
                usable=len(good),
                tried=len(cs),
                best_lr=best.lr_base if best else None,
                best_test_acc=best.test_acc if best else math.nan,
                best_val_acc=best.val_acc if best else math.nan,
                selected_on=on,
            )
        )
    return out
