"""batchlab: controlled batch-size studies for PyTorch.

>>> import batchlab
>>> study = batchlab.run_study("study.toml", store="batchlab.db")   # doctest: +SKIP
>>> df = batchlab.load_study("fmnist-sweep").to_dataframe()          # doctest: +SKIP
"""

from __future__ import annotations

from batchlab._version import __version__
from batchlab.spec import Budget, StudySpec, TrialSpec, load_spec
from batchlab.study import Study, load_study, run_study
from batchlab.suggest import Suggestion, suggest
from batchlab.tasks import Task, TaskInfo
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

__all__ = [
    "Budget",
    "EvalRecord",
    "FrozenTrial",
    "Study",
    "StudySpec",
    "Suggestion",
    "Task",
    "TaskInfo",
    "TrialSpec",
    "TrialState",
    "__version__",
    "load_spec",
    "load_study",
    "run_study",
    "suggest",
]
