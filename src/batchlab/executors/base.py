"""The vocabulary every executor shares: jobs, the events a worker streams back, the `Backend`
protocol, and the rule for threads and order (`threads_for`, `order_for_pool`).

Threads: small batches are overhead-bound and run faster side by side, one thread each, than
one at a time on every core; large batches are compute-bound and get the cores to themselves
(measured by `benchmarks/packing.py`, see docs/performance.md). A trial's thread count depends
on the trial and the machine only, never on timing, so a rerun computes the same numbers; a
trial given the same thread count as a sequential run matches it bit for bit.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.multiprocessing  # registers torch's shared-memory pickling of tensors

from batchlab.cpuload import usable_cores as usable_cores  # re-exported to the executors
from batchlab.data import Dataset
from batchlab.engine import (
    Checkpoint,
    Progress,
    train_trial,
)
from batchlab.errors import StoreError
from batchlab.plan import planned_steps
from batchlab.probes import ProbeRecord
from batchlab.spec import TrialSpec
from batchlab.store import LEASE_S, ClaimLost
from batchlab.trial import EvalRecord, TrialState

PACK_MAX_BATCH = 128
"""A trial whose (micro-)batch is at most this is overhead-bound: `workers = "auto"` runs it on
one thread, packed with others onto the cores; a larger one gets every core, alone."""
MAX_ATTEMPTS = 3
"""Runs of a trial whose worker died (crash, OOM kill, lost node) before it is marked FAILED."""
HEARTBEAT_S = LEASE_S / 4
WAIT_POLL_S = 0.5

# ---- what to run where ---------------------------------------------------------------------


def packs(trial: TrialSpec) -> bool:
    """Whether a trial is small enough to run single-threaded beside others."""
    return trial.batch_size // trial.study.accumulate <= PACK_MAX_BATCH


def threads_for(trial: TrialSpec, *, cores: int, workers: int | Literal["auto"]) -> int:
    """Torch threads for one trial in a worker: `threads` when the spec fixes it; under "auto"
    (and on Ray), 1 for a packed trial and every core otherwise; with N workers, an equal share
    of the cores."""
    if trial.study.threads is not None:
        return trial.study.threads
    if workers == "auto":
        return 1 if packs(trial) else cores
    return max(1, cores // workers)


def order_for_pool(trials: Sequence[TrialSpec], n_train: int) -> list[TrialSpec]:
    """Dispatch order for a pool: trials that take every core first (each one alone), then the
    packed ones longest first (most planned updates), which keeps the cores busy to the end."""
    wide = [t for t in trials if not packs(t)]
    small = [t for t in trials if packs(t)]
    small.sort(key=lambda t: -(planned_steps(t, n_train) or 0))
    return wide + small


# ---- events: what a worker tells the driver ----------------------------------------------------


@dataclass(frozen=True)
class Started:
    info: dict[str, Any]  # host, pid, threads, device: merged into the trial's provenance


@dataclass(frozen=True)
class Evaluated:
    record: EvalRecord
    checkpoint: bytes | None
    probes: list[ProbeRecord]


@dataclass(frozen=True)
class Snapshotted:
    step: int  # a reference trial's checkpoint at a branch point (batchlab.branched)
    checkpoint: bytes


@dataclass(frozen=True)
class Progressed:
    progress: Progress


@dataclass(frozen=True)
class Finished:
    state: TrialState
    diverged_step: int | None = None
    probes: list[ProbeRecord] = field(default_factory=list)
    weights: bytes | None = None
    error: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # how it ran: merged when stored


@dataclass(frozen=True)
class WorkerLost:
    reason: str


Event = Started | Evaluated | Snapshotted | Progressed | Finished | WorkerLost


@dataclass(frozen=True, kw_only=True)
class Job:
    """One trial to run: picklable, so it travels to a worker process or a Ray task."""

    trial: TrialSpec
    threads: int | None  # None: leave this process's setting alone (the in-process run)
    resume: bytes | None
    save_weights: bool
    executor: str
    start: bytes | None = None  # a branch trial's reference checkpoint (batchlab.branched)


class _Cancelled(BaseException):
    """Stops an in-process trial whose claim was lost (a BaseException, so that the trial's own
    `except Exception` does not record it as a failure)."""


def run_job(job: Job, data: Dataset, device: torch.device, emit: Callable[[Event], None]) -> None:
    """Run one trial here (driver, worker process or Ray task) and emit everything it produces;
    a failure of the trial is a `Finished(FAILED)` event, never an exception."""
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    emit(
        Started(
            {
                "executor": job.executor,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "threads": torch.get_num_threads(),
                "device": str(device),
            }
        )
    )

    def on_eval(record: EvalRecord, ckpt: Checkpoint | None, probes: list[ProbeRecord]) -> None:
        emit(Evaluated(record, ckpt.to_bytes() if ckpt is not None else None, probes))

    try:
        outcome = train_trial(
            job.trial,
            data,
            device=device,
            on_eval=on_eval,
            resume=Checkpoint.from_bytes(job.resume) if job.resume is not None else None,
            on_progress=lambda p: emit(Progressed(p)),
            start=Checkpoint.from_bytes(job.start) if job.start is not None else None,
            on_snapshot=lambda step, ckpt: emit(Snapshotted(step, ckpt.to_bytes())),
        )
    except (ClaimLost, StoreError, BrokenPipeError, EOFError):
        # The driver is gone, no longer owns the trial, or cannot write the store (locked,
        # full, damaged): nothing to record here; the trial stays resumable.
        raise
    except Exception:  # any failure of one trial is recorded, and the study goes on
        emit(Finished(TrialState.FAILED, error=traceback.format_exc()))
        return
    weights = outcome.weights_bytes(save=job.save_weights)
    ran = {"compile": outcome.compiled} if outcome.compiled is not None else {}  # or eager
    emit(
        Finished(
            outcome.state,
            outcome.diverged_step,
            outcome.probes,
            weights,
            outcome.reason,
            provenance=ran,
        )
    )


# ---- backends: where jobs run ------------------------------------------------------------------

OnEvent = Callable[[str, Event], None]


class Backend(Protocol):
    def fits(self, threads: int) -> bool:
        """Whether a job needing `threads` can start now."""

    def submit(self, job: Job) -> None: ...

    def wait(self, on_event: OnEvent, timeout: float) -> None:
        """Deliver the events that arrive within `timeout` (at least one, unless it expires)."""

    def cancel(self, trial_id: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Placement:
    """Where a study's trials run: the backend, the cores it offers and the `workers` setting
    `threads_for` reads; `in_process` when trials run in the driver itself."""

    backend: Backend
    cores: int
    workers: int | Literal["auto"]
    in_process: bool = False
