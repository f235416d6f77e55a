"""Importing a user's `package.module:function` hook, with a one-line error naming the field."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from batchlab.errors import DataError


def resolve_callable(ref: str, *, field: str) -> Callable[..., Any]:
    """Import `package.module:function`, with a one-line error naming the field.

    The current directory is importable, as under `python -m`, so a user's module next to their
    study file needs no PYTHONPATH (worker processes inherit the same path)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)  # after everything installed: it never shadows a package
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise DataError(f"{field}: cannot import module {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DataError(f"{field}: {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]
