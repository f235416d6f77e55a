"""Importing a user's `package.module:function` hook, with a one-line error naming the field.

A hook is code, and only the user names code: a spec they pass (a file, `--set`, the Python API)
may name hooks, a spec read back from a store may not, since a store is data anyone may hand over.
Code that rebuilds a stored study's data or model runs inside `only_hooks(...)`, which refuses to
import any hook but the ones it lists (`--trust-store` lists the store's own).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from batchlab.errors import BatchlabError, DataError, SpecError

_ALLOWED: ContextVar[frozenset[str] | None] = ContextVar("batchlab_allowed_hooks", default=None)
"""The hooks that may be imported here; None: any (a spec the user passed)."""


def is_hook(ref: str | None, *, field: str) -> bool:
    """Whether a spec field's value names code (`package.module:function`) rather than a
    built-in; `npz:PATH` and `text:PATH` datasets are files, not code."""
    if ref is None or ":" not in ref:
        return False
    return not (field == "dataset" and ref.split(":", 1)[0] in FILE_DATASETS)


FILE_DATASETS = frozenset({"npz", "text"})
"""Dataset prefixes that name a file (`batchlab.data.PREFIXED`), not code."""


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
    except Exception as err:  # the module's own code raised (or is no valid Python)
        raise DataError(
            f"{field}: importing module {module_name!r} raised {_raised(err)}; fix the module"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DataError(f"{field}: {module_name!r} has no function {attr!r}")
    return fn  # type: ignore[no-any-return]


def call_hook(
    fn: Callable[..., Any],
    *,
    ref: str,
    field: str,
    options: Mapping[str, Any],
    given: Mapping[str, Any] | None = None,
) -> Any:
    """Call the user's hook `ref` with `given` (passed only where it takes them) and `options`
    (the spec's `{field}_args`: each must be a parameter it takes, so a typo is an error naming
    it). What it raises becomes one line naming the hook; a BatchlabError it raises passes as is."""
    given = dict(given or {})
    try:
        params: Mapping[str, inspect.Parameter] | None = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no signature to read (a C function): call it as is
        params = None
    kwargs = {**given, **options}
    if params is not None:
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        unknown = [] if takes_any else sorted(set(options) - set(params))
        if unknown:
            takes = sorted(k for k in params if k not in given) or ["nothing"]
            raise SpecError(
                f"{field}_args: {ref} takes {', '.join(takes)}, not {', '.join(unknown)};"
                " fix or remove them"
            )
        kwargs = {k: v for k, v in given.items() if takes_any or k in params} | dict(options)
        try:
            inspect.signature(fn).bind(**kwargs)
        except TypeError as err:  # e.g. a required parameter the spec does not give
            raise SpecError(f"{field}_args: {ref}: {err}; give it in {field}_args") from None
    try:
        return fn(**kwargs)
    except BatchlabError:
        raise
    except Exception as err:
        raise DataError(
            f"{field}: {ref} raised {_raised(err)}; fix the function"
            " (call it in Python to see the traceback)"
        ) from None


def _raised(err: BaseException) -> str:
    """ "ValueError: no file data.csv", on one line and at most a few hundred characters."""
    text = " ".join(str(err).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def code_fingerprint(ref: str, *, field: str) -> str | None:
    """The sha256 of the source file of the module that defines hook `ref` (`package.module:
    function`), so a rerun can tell that the user's code changed since a study ran; None when
    the code has no source file to read (a compiled extension). Only that module is read: code
    it imports from elsewhere is not fingerprinted."""
    fn = resolve_callable(ref, field=field)
    module = sys.modules.get(getattr(fn, "__module__", "") or "") or inspect.getmodule(fn)
    try:
        path = inspect.getsourcefile(module) if module is not None else None
        if path is not None:
            with open(path, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def callable_ref(fn: object, *, field: str) -> str:
    """`package.module:function` naming `fn`, a spec field's value given as a Python callable
    (the Python API), so that the spec can store and hash it; a lambda, a closure or a function
    that is not importable by that name is a one-line error."""
    module_name = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not isinstance(module_name, str) or not isinstance(qualname, str):
        raise DataError(f"{field}: {fn!r} is not a function; give package.module:function")
    ref = f"{module_name}:{qualname}"
    fix = (
        "define it at the top level of an importable module (not a lambda, closure or"
        f" __main__), or give {field} as 'package.module:function'"
    )
    if "." in qualname or "<" in qualname or module_name == "__main__":
        raise DataError(f"{field}: {ref} cannot be stored in a spec by name; {fix}")
    try:
        found = getattr(importlib.import_module(module_name), qualname, None)
    except ImportError:
        found = None
    if found is not fn:
        raise DataError(f"{field}: {ref} does not import as that function; {fix}")
    return ref
