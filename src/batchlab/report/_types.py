"""What the report needs from a study, as a Protocol, so it stays independent of the store.

`batchlab.study.Study` satisfies `StudyLike`; tests build tiny fakes from `FrozenTrial`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from batchlab.errors import BatchlabError
from batchlab.tasks.base import TaskInfo
from batchlab.trial import FrozenTrial

if TYPE_CHECKING:
    import pandas as pd


class ReportError(BatchlabError):
    """A report cannot be built from what was given (one line, says how to fix it)."""


class BudgetLike(Protocol):
    """The budget every trial was given: its kind ("epochs", "steps", "samples", "seconds")."""

    @property
    def kind(self) -> str: ...
    @property
    def value(self) -> float: ...


class SpecLike(Protocol):
    """The parts of a study spec the report reads."""

    @property
    def budget(self) -> BudgetLike: ...
    @property
    def lr_scaling(self) -> str: ...
    @property
    def reference_batch_size(self) -> int: ...
    @property
    def dataset(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def optimizer(self) -> str: ...


class StudyLike(Protocol):
    """A stored study: its name, its spec and its (finished or not) trials.

    A study may also have a `task` (a `batchlab.tasks.TaskInfo`, as `batchlab.study.Study` has)
    naming its loss and score; without one they read as classification's (see `task_of`).
    """

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> SpecLike: ...
    @property
    def trials(self) -> Sequence[FrozenTrial]: ...


@runtime_checkable
class ProbeSource(Protocol):
    """Optional: a study that also has probe records (`batchlab.study.Study` does).

    `probes_dataframe()` is long form, one row per record, with at least the columns trial_id,
    step, probe, key and value. Probe figures check `isinstance(study, ProbeSource)` and are left
    out for studies without it, so a `StudyLike` need not have probes.
    """

    def probes_dataframe(self) -> pd.DataFrame: ...


@runtime_checkable
class ProfileSource(Protocol):
    """Optional: a study whose store holds hardware profiles of its model (`batchlab profile`);
    (created_at, device, profile dict) newest first. The hardware figure needs it."""

    def hardware_profiles(self) -> list[tuple[float, str, dict[str, Any]]]: ...


def task_of(studies: Sequence[StudyLike]) -> TaskInfo:
    """What the studies' loss and score are (a report overlays studies of one task only)."""
    return TaskInfo.of(studies[0]) if studies else TaskInfo()
