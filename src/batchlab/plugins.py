"""Importing a user's `package.module:function` hook, with a one-line error naming the field.

A hook is code, and only the user names code: a spec they pass (a file, `--set`, the Python API)
may name hooks, a spec read back from a store may not, since a store is data anyone may hand over.
Code that rebuilds a stored study's data or model runs inside `only_hooks(...)`, which refuses to
import any hook but the ones it lists (`--trust-store` lists the store's own).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from batchlab.errors import DataError

_ALLOWED: ContextVar[frozenset[str] | None] = ContextVar("batchlab_allowed_hooks", default=None)
"""The hooks that may be imported here; None: any (a spec the user passed)."""


def is_hook(ref: str | None, *, field: str) -> bool:
    """Whether a spec field's value names code (`package.module:function`) rather than a
    built-in; `npz:PATH` datasets are files, not code."""
    if ref is None or ":" not in ref:
        return False
    return not (field == "dataset" and ref.startswith("npz:"))


@contextmanager
def only_hooks(refs: Iterable[str] = ()) -> Iterator[None]:
    """Within this block import only the hooks `refs` (none by default); an outer block's
    limit still holds (this narrows it, never widens it)."""
    outer = _ALLOWED.get()
    allowed = frozenset(refs) if outer is None else outer & frozenset(refs)
    token = _ALLOWED.set(allowed)
    try:
        yield
    finally:
        _ALLOWED.reset(token)


def resolve_callable(ref: str, *, field: str) -> Callable[..., Any]:
    """Import `package.module:function`, with a one-line error naming the field.

    The current directory is importable, as under `python -m`, so a user's module next to their
    study file needs no PYTHONPATH (worker processes inherit the same path)."""
    allowed = _ALLOWED.get()
    if allowed is not None and ref not in allowed:
        raise DataError(
            f"{field}: {ref!r} names code to import, and it was read from a store, which is"
            " data: not imported. If you made this store, pass --trust-store"
            " (Python: load_study(..., trust_hooks=True)), or give the hook on the command line"
        )
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
