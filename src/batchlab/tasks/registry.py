"""The task registry: built-in tasks by name, `make_task`, and the task the data implies.

Kept apart from `batchlab.tasks` so that reading results (`TaskInfo`) imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from batchlab.errors import DataError
from batchlab.plugins import call_hook, resolve_callable
from batchlab.tasks.base import Arrays, Task
from batchlab.tasks.classification import Classification
from batchlab.tasks.language_model import LanguageModel
from batchlab.tasks.regression import Regression

TASKS: dict[str, type[Task]] = {
    Classification.name: Classification,
    Regression.name: Regression,
    LanguageModel.name: LanguageModel,
}
"""The built-in tasks by name; a new task is one module plus one line here."""


def infer_task(arrays: Arrays) -> str:
    """The task a loader's arrays imply (see the module docstring)."""
    x_train, y_train = arrays[0], arrays[1]
    if y_train.is_floating_point() and not bool(torch.all(y_train == y_train.round())):
        return Regression.name
    if y_train.is_floating_point() or y_train.ndim != 2:
        return Classification.name
    if isinstance(x_train, dict):  # a dict batch with a target per position: token ids
        return LanguageModel.name
    same = not x_train.is_floating_point() and x_train.shape == y_train.shape
    return LanguageModel.name if same else Classification.name


def make_task(name: str, args: Mapping[str, Any] | None = None) -> Task:
    """Build a task by name (or `package.module:function`) with its `task_args`."""
    args = dict(args or {})
    if name in TASKS:
        try:
            return TASKS[name](**args)
        except TypeError as err:
            raise DataError(f"task_args: {err}") from None
    if ":" in name:
        fn = resolve_callable(name, field="task")
        task = call_hook(fn, ref=name, field="task", options=args)
        if not isinstance(task, Task):
            raise DataError(
                f"task: {name} returned {type(task).__name__}, not a batchlab.tasks.Task"
            )
        return task
    valid = ", ".join([*TASKS, "package.module:function"])
    raise DataError(f"task: unknown task {name!r}; use one of {valid}")


def resolve_task(name: str | None, args: Mapping[str, Any] | None, arrays: Arrays) -> Task:
    """The study's task: the one named, or the one the data implies when none is."""
    return make_task(name if name is not None else infer_task(arrays), args)
