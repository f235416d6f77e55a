"""batchlab: controlled batch-size studies for PyTorch.

>>> import batchlab
>>> study = batchlab.run_study("study.toml", store="batchlab.db")   # doctest: +SKIP
>>> df = batchlab.load_study("fmnist-sweep").to_dataframe()          # doctest: +SKIP

The exports are loaded on first use (module `__getattr__`), so `import batchlab` and the
`batchlab --help` / `ls` / `show` commands import no torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from batchlab._version import __version__

if TYPE_CHECKING:
    from batchlab.check import CheckResult, check
    from batchlab.spec import Budget, StudySpec, TrialSpec, load_spec
    from batchlab.study import Study, load_study, run_study
    from batchlab.suggest import Suggestion, suggest
    from batchlab.tasks import Task, TaskInfo
    from batchlab.trial import EvalRecord, FrozenTrial, TrialState

_HOME = {
    "CheckResult": "batchlab.check",
    "check": "batchlab.check",
    "Budget": "batchlab.spec",
    "StudySpec": "batchlab.spec",
    "TrialSpec": "batchlab.spec",
    "load_spec": "batchlab.spec",
    "Study": "batchlab.study",
    "load_study": "batchlab.study",
    "run_study": "batchlab.study",
    "Suggestion": "batchlab.suggest",
    "suggest": "batchlab.suggest",
    "Task": "batchlab.tasks",
    "TaskInfo": "batchlab.tasks",
    "EvalRecord": "batchlab.trial",
    "FrozenTrial": "batchlab.trial",
    "TrialState": "batchlab.trial",
}

__all__ = [
    "Budget",
    "CheckResult",
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
    "check",
    "load_spec",
    "load_study",
    "run_study",
    "suggest",
]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'batchlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing submodule `batchlab.check` sets `batchlab.check` to the module; the export
        # is the function of that name (as when this package imported it eagerly).
        if name == "check" and isinstance(value, types.ModuleType):
            value = value.check
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
