"""Executing a study's trials: in this process, in a pool of worker processes, or on Ray.

One design for every executor. The driver (the process running `run_study`) claims a trial in
the store right before it starts it (`Store.claim_trial`, atomic), so several drivers on one
store share the work and none runs a trial twice. Workers only compute: each streams back
events (where it runs, every evaluation with its checkpoint, progress, the outcome) and the
driver alone writes them, every write checked against its claim. A worker that dies mid-trial
is replaced and the trial restarted from its last stored checkpoint, at most `MAX_ATTEMPTS`
times, then recorded FAILED with the reason.

An executor is one module with a `check(spec)` (refuse, before the store is touched, what cannot
run here) and a `place(prepared)` (the `Placement`: a `Backend` and the cores it offers), plus one
line in `EXECUTORS` and its name in `StudySpec.executor`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from batchlab.executors import local, ray_pool
from batchlab.executors.base import (
    MAX_ATTEMPTS,
    PACK_MAX_BATCH,
    Placement,
    order_for_pool,
    packs,
    threads_for,
    usable_cores,
)
from batchlab.executors.driver import Driver, run_fused_groups
from batchlab.prepared import PreparedStudy, Reporter
from batchlab.spec import StudySpec, TrialSpec
from batchlab.store import Store
from batchlab.tasks.classification import Classification

__all__ = [
    "EXECUTORS",
    "MAX_ATTEMPTS",
    "PACK_MAX_BATCH",
    "Executor",
    "check_executor",
    "order_for_pool",
    "packs",
    "run_trials",
    "threads_for",
    "usable_cores",
]


@dataclass(frozen=True)
class Executor:
    """How one kind of executor is checked and placed (see the module docstring)."""

    check: Callable[[StudySpec], None]
    place: Callable[[PreparedStudy], Placement]


EXECUTORS: dict[str, Executor] = {
    "local": Executor(check=local.check, place=local.place),
    "ray": Executor(check=ray_pool.check, place=ray_pool.place),
}


def check_executor(spec: StudySpec) -> None:
    """Fail early, before the store is touched, when the executor cannot run here."""
    EXECUTORS[spec.executor].check(spec)


def run_trials(
    store: Store,
    todo: Sequence[TrialSpec],
    prepared: PreparedStudy,
    reporter: Reporter,
    provenance: dict[str, Any],
) -> None:
    """Run the unfinished trials `todo` with the spec's executor, claiming each before it
    starts; return when every one is finished, here or by another process on the store."""
    spec = prepared.spec
    where = EXECUTORS[spec.executor].place(prepared)
    n_train = prepared.data.n_train
    order = list(todo) if where.in_process else order_for_pool(todo, n_train)
    # Fused groups (one stacked step for trials differing in seed and lr) are cross-entropy's,
    # on tensors held on the device, and run in this process.
    fuses = isinstance(prepared.data.task, Classification) and prepared.data.on_device
    wanted = spec.fuse is True or (spec.fuse == "auto" and prepared.device.type == "cuda")
    wanted = wanted and spec.branched is None  # branches start from stored checkpoints
    if where.in_process and fuses and wanted:
        order = run_fused_groups(store, order, prepared, reporter, provenance)
    try:
        Driver(
            store,
            where.backend,
            reporter,
            provenance,
            cores=where.cores,
            workers=where.workers,
            in_process=where.in_process,
        ).run(order, n_train=n_train)
    finally:
        where.backend.close()
