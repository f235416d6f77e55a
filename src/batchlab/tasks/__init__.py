"""Tasks: what a batch's targets are, the loss, and the reported metric (see `tasks.base`).

`resolve_task(name, args, arrays)` picks one: a registered name, a user's `package.module:function`
returning a `Task`, or (name None) the task the data implies: real-valued targets mean
regression, integer token ids `[N, T]` for inputs and targets mean a language model, anything
else is classification (every spec written before tasks existed).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from batchlab.tasks.base import Arrays, Task, TaskInfo
    from batchlab.tasks.registry import TASKS, infer_task, make_task, resolve_task

__all__ = ["TASKS", "Arrays", "Task", "TaskInfo", "infer_task", "make_task", "resolve_task"]

_HOME = {
    "Arrays": "base",
    "Task": "base",
    "TaskInfo": "base",
    "TASKS": "registry",
    "infer_task": "registry",
    "make_task": "registry",
    "resolve_task": "registry",
}


def __getattr__(name: str) -> Any:
    """Lazy exports: `TaskInfo` (reading results) must not import torch, the registry does."""
    if name in _HOME:
        return getattr(importlib.import_module(f"batchlab.tasks.{_HOME[name]}"), name)
    raise AttributeError(f"module 'batchlab.tasks' has no attribute {name!r}")
