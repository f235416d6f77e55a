"""Which split chooses a cell: validation, so that the test score stays an honest estimate.

Every choice among cells (best batch size, best lr per batch size, fastest to a target, B_crit's
per-batch lr, the Pareto front, tie-breaks) ranks them by the validation score (`val_acc`: the
task's accuracy, R² or token accuracy); the test score is then reported for the chosen cells
only. A study that kept no validation split (`val_fraction = 0`, every `val_*` NaN) can only
choose on test: its `Selection` is then `on_test`, and every output says so in one line, since
the chosen cell's test number is then optimistically biased. A target naming a test metric
(`--target test_acc=...`) chooses on test by request; that is said too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from batchlab.tasks.base import TaskInfo
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

Split = Literal["val", "test"]
Why = Literal["", "no validation split", "test target"]


def has_validation(trials: Iterable[FrozenTrial]) -> bool:
    """Whether some COMPLETE trial recorded a finite validation score."""
    return any(
        math.isfinite(e.val_acc) for t in trials if t.state is TrialState.COMPLETE for e in t.evals
    )


@dataclass(frozen=True, kw_only=True)
class Selection:
    """The split that ranks cells, and why it is test when it is (`why` is "" for validation)."""

    split: Split = "val"
    why: Why = ""
    target_metric: str = ""  # the test metric a "test target" names

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial]) -> Selection:
        """Validation when the trials kept a validation split, else test (and why); validation
        when no COMPLETE trial evaluated yet (nothing to choose among)."""
        done = [t for t in trials if t.state is TrialState.COMPLETE and t.evals]
        if not done or has_validation(done):
            return cls()
        return cls(split="test", why="no validation split")

    @classmethod
    def of_metric(cls, metric: str, study: Selection | None = None) -> Selection:
        """The split a target on `metric` chooses on: a `val_*` metric chooses on validation; a
        `test_*` one on test, because the study has no validation split (when `study` says so)
        or because the target named it."""
        if metric.startswith("val_"):
            return cls()
        if study is not None and study.on_test:
            return study
        return cls(split="test", why="test target", target_metric=metric)

    @property
    def on_test(self) -> bool:
        return self.split == "test"

    @property
    def metric(self) -> str:
        """The stored score column that ranks cells: "val_acc" or "test_acc"."""
        return f"{self.split}_acc"

    def score(self, e: EvalRecord) -> float:
        """The ranking score of one evaluation."""
        return float(e.val_acc if self.split == "val" else e.test_acc)

    def name(self, task: TaskInfo) -> str:
        """ "validation accuracy", "test R²": the ranking score in words."""
        return f"{'validation' if self.split == 'val' else 'test'} {task.score_label}"

    def note(self, task: TaskInfo, what: str = "Cells are chosen") -> str:
        """One line saying that `what` ("Cells are chosen") happens on test, and why; "" on
        validation."""
        if self.why == "no validation split":
            return (
                f"{what} on test {task.score_label}: no validation split was kept"
                " (val_fraction = 0), so the chosen cells' test numbers are optimistic."
            )
        if self.why == "test target":
            return f"{what} on test: the target names {self.target_metric}."
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "metric": self.metric,
            "on_test": self.on_test,
            "why": self.why,
        }
