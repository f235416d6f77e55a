"""The vocabulary of results: trial states, evaluation records and finished (frozen) trials.

These are plain immutable records. The engine produces `EvalRecord`s, the store persists them,
and analysis and reports read `FrozenTrial`s; none of them knows how the others work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any


class TrialState(StrEnum):
    """Where a trial is in its life. Only COMPLETE, DIVERGED, FAILED and PRUNED are final."""

    WAITING = "WAITING"
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    DIVERGED = "DIVERGED"
    FAILED = "FAILED"
    PRUNED = "PRUNED"

    @property
    def is_finished(self) -> bool:
        return self in (
            TrialState.COMPLETE,
            TrialState.DIVERGED,
            TrialState.FAILED,
            TrialState.PRUNED,
        )


@dataclass(frozen=True, kw_only=True)
class EvalRecord:
    """One evaluation of a trial: where training stood and what it measured.

    `train_loss`/`train_acc` are the running mean over the minibatches since the previous
    evaluation (NaN at step 0); `full_train_*` are a full pass over the training set, present
    only where one was made. `train_time_s` is cumulative training time, evaluation excluded.
    """

    idx: int
    epoch: float
    step: int
    samples: int
    current_lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    test_loss: float
    test_acc: float
    full_train_loss: float = math.nan
    full_train_acc: float = math.nan
    train_time_s: float
    eval_time_s: float
    samples_per_s: float
    peak_mem_bytes: int

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.columns()}


@dataclass(frozen=True, kw_only=True)
class FrozenTrial:
    """A trial as stored: its resolved spec, its state and every evaluation it recorded."""

    trial_id: str
    study: str
    number: int
    batch_size: int
    lr_base: float
    lr: float
    seed: int
    state: TrialState
    params: dict[str, Any] = field(default_factory=dict)
    evals: tuple[EvalRecord, ...] = ()
    error: str | None = None
    diverged_step: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> EvalRecord | None:
        """The final evaluation, or None when the trial recorded none."""
        return self.evals[-1] if self.evals else None
