"""Executing a study's trials: in this process, in a pool of worker processes, or on Ray.

One design for every executor. The driver (the process running `run_study`) claims a trial in
the store right before it starts it (`Store.claim_trial`, atomic), so several drivers on one
store share the work and none runs a trial twice. Workers only compute: each streams back
events (where it runs, every evaluation with its checkpoint, progress, the outcome) and the
driver alone writes them, every write checked against its claim. A worker that dies mid-trial
is replaced and the trial restarted from its last stored checkpoint, at most `MAX_ATTEMPTS`
times, then recorded FAILED with the reason.

Threads (`threads_for`): small batches are overhead-bound and run faster side by side, one
thread each, than one at a time on every core; large batches are compute-bound and get the
cores to themselves (measured by `benchmarks/packing.py`, see docs/performance.md). A trial's
thread count depends on the trial and the machine only, never on timing, so a rerun computes
the same numbers; a trial given the same thread count as a sequential run matches it bit for bit.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch
import torch.multiprocessing  # registers torch's shared-memory pickling of tensors

from batchlab.data import Dataset
from batchlab.engine import (
    Checkpoint,
    EvalSink,
    Progress,
    resolve_device,
    train_trial,
)
from batchlab.errors import SpecError
from batchlab.fused import group_trials, train_group
from batchlab.plan import planned_steps
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, TrialSpec
from batchlab.store import LEASE_S, ClaimLost, Store, process_owner
from batchlab.tasks.classification import Classification
from batchlab.trial import EvalRecord, TrialState

if TYPE_CHECKING:
    from batchlab.prepared import PreparedStudy, Reporter

PACK_MAX_BATCH = 128
"""A trial whose (micro-)batch is at most this is overhead-bound: `workers = "auto"` runs it on
one thread, packed with others onto the cores; a larger one gets every core, alone."""
MAX_ATTEMPTS = 3
"""Runs of a trial whose worker died (crash, OOM kill, lost node) before it is marked FAILED."""
HEARTBEAT_S = LEASE_S / 4
WAIT_POLL_S = 0.5
RAY_GPU_SHARE = 0.25
"""The GPU fraction a packed (small) trial asks Ray for; a large trial asks for a whole GPU."""

# ---- what to run where ---------------------------------------------------------------------


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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


def check_executor(spec: StudySpec) -> None:
    """Fail early, before the store is touched, when the executor cannot run here."""
    if spec.executor == "ray":
        _import_ray()
    elif spec.ray_address is not None:
        raise SpecError("ray_address: only used with executor = ray; add --executor ray")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecError(
            "executor: ray is not installed; pip install 'batchlab[ray]' or use --executor local"
        ) from None
    return ray


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
class Progressed:
    progress: Progress


@dataclass(frozen=True)
class Finished:
    state: TrialState
    diverged_step: int | None = None
    probes: list[ProbeRecord] = field(default_factory=list)
    weights: bytes | None = None
    error: str | None = None


@dataclass(frozen=True)
class WorkerLost:
    reason: str


Event = Started | Evaluated | Progressed | Finished | WorkerLost


@dataclass(frozen=True, kw_only=True)
class Job:
    """One trial to run: picklable, so it travels to a worker process or a Ray task."""

    trial: TrialSpec
    threads: int | None  # None: leave this process's setting alone (the in-process run)
    resume: bytes | None
    save_weights: bool
    executor: str


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
        )
    except (ClaimLost, BrokenPipeError, EOFError):
        raise  # the driver is gone or no longer owns the trial: nothing to record here
    except Exception:  # any failure of one trial is recorded, and the study goes on
        emit(Finished(TrialState.FAILED, error=traceback.format_exc()))
        return
    weights = outcome.weights_bytes(save=job.save_weights)
    emit(Finished(outcome.state, outcome.diverged_step, outcome.probes, weights))


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


class InProcess:
    """The sequential executor: one trial at a time, in this process, on its threads."""

    def __init__(self, data: Dataset, device: torch.device) -> None:
        self._data, self._device = data, device
        self._job: Job | None = None
        self._cancelled = False

    def fits(self, threads: int) -> bool:
        return self._job is None

    def submit(self, job: Job) -> None:
        self._job, self._cancelled = job, False

    def wait(self, on_event: OnEvent, timeout: float) -> None:
        job, self._job = self._job, None
        if job is None:
            return
        tid = job.trial.trial_id

        def emit(event: Event) -> None:
            on_event(tid, event)
            if self._cancelled:
                raise _Cancelled

        with contextlib.suppress(_Cancelled):
            run_job(job, self._data, self._device, emit)

    def cancel(self, trial_id: str) -> None:
        self._cancelled = True

    def close(self) -> None:
        pass


def _worker_main(conn: Connection, data: Dataset, device_name: str) -> None:
    """A pool worker: run the jobs it is sent, streaming events back, until told to stop."""
    device = resolve_device(device_name)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            run_job(job, data, device, conn.send)
        except (BrokenPipeError, EOFError, OSError):
            return  # the driver is gone


def worker_entry() -> None:
    """Entry point of a pool worker process (`LocalPool` starts it with its end of a socket)."""
    # The driver's key lets this process fetch the dataset's shared-memory file descriptors.
    mp.current_process().authkey = bytes.fromhex(os.environ.pop(_KEY_ENV))
    conn = Connection(int(sys.argv[-1]))
    data, device_name = conn.recv()
    _worker_main(conn, data, device_name)


_KEY_ENV = "BATCHLAB_WORKER_KEY"
_WORKER_CODE = "from batchlab.executor import worker_entry; worker_entry()"


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    conn: Connection
    trial_id: str | None = None
    threads: int = 0


class LocalPool:
    """Worker processes on this machine, each trial with its own thread count, never more
    threads at once than `budget`. Workers are fresh interpreters (`python -c`), not forks: no
    OpenMP state is inherited, and the caller's script is not re-imported (as multiprocessing's
    spawn would do). The dataset's tensors are shared with them, not copied (torch's shared
    memory, sent over the worker's socket)."""

    def __init__(
        self, data: Dataset, device_name: str, *, workers: int, budget: int | None
    ) -> None:
        if data.in_memory and data.x_train.device.type == "cpu":
            for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
                getattr(data, name).share_memory_()
        self._data, self._device_name = data, device_name
        self._slots: list[_Worker | None] = [None] * workers
        self._budget = budget  # threads that may run at once; None: one job per worker

    def _busy(self) -> list[_Worker]:
        return [w for w in self._slots if w is not None and w.trial_id is not None]

    def fits(self, threads: int) -> bool:
        if not any(w is None or w.trial_id is None for w in self._slots):
            return False
        if self._budget is None or not self._busy():
            return True  # a job wider than the budget runs when nothing else does
        return threads <= self._budget - sum(w.threads for w in self._busy())

    def _start(self) -> _Worker:
        here, there = mp.Pipe()  # a socket pair: EOF on either end when the other dies
        env = {
            **os.environ,
            _KEY_ENV: mp.current_process().authkey.hex(),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),  # as the driver sees
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(there.fileno())],
            pass_fds=(there.fileno(),),
            env=env,
        )
        there.close()
        here.send((self._data, self._device_name))
        return _Worker(process=proc, conn=here)

    def submit(self, job: Job) -> None:
        i = next(i for i, w in enumerate(self._slots) if w is None or w.trial_id is None)
        worker = self._slots[i]
        if worker is not None and worker.process.poll() is not None:  # died while idle
            worker.conn.close()
            worker = None
        worker = worker or self._start()
        self._slots[i] = worker
        worker.trial_id, worker.threads = job.trial.trial_id, job.threads or 1
        with contextlib.suppress(OSError):  # it died just now: its socket will tell
            worker.conn.send(job)

    def wait(self, on_event: OnEvent, timeout: float) -> None:
        busy = self._busy()
        if not busy:
            return
        ready = set(wait_any([w.conn for w in busy], timeout))
        for w in busy:
            if w.conn in ready:
                self._drain(w, on_event)

    def _drain(self, w: _Worker, on_event: OnEvent) -> None:
        """Deliver what a worker sent; if it died, its trial's loss after what it sent."""
        while w.trial_id is not None:
            try:
                if not w.conn.poll():
                    return
                event: Event = w.conn.recv()
            except (EOFError, OSError):
                code = w.process.wait()
                tid, w.trial_id = w.trial_id, None
                self._forget(w)
                on_event(tid, WorkerLost(f"worker process exited with code {code}"))
                return
            tid = w.trial_id
            if isinstance(event, Finished):
                w.trial_id, w.threads = None, 0
            on_event(tid, event)

    def _forget(self, w: _Worker) -> None:
        w.conn.close()
        self._slots = [None if s is w else s for s in self._slots]

    def cancel(self, trial_id: str) -> None:
        for w in self._slots:
            if w is not None and w.trial_id == trial_id:
                w.process.kill()
                w.process.wait()
                self._forget(w)

    def close(self) -> None:
        live = [w for w in self._slots if w is not None]
        for w in live:
            if w.trial_id is None:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
            else:
                w.process.kill()
        for w in live:
            try:
                w.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
            w.conn.close()
        self._slots = [None] * len(self._slots)


def _ray_trial(job: Job, data: Dataset) -> Iterator[Event]:
    """A Ray task (a streaming generator): run the trial in a thread, yield its events."""
    events: queue.Queue[Event | None] = queue.Queue()

    def work() -> None:
        try:
            run_job(job, data, resolve_device(job.trial.study.device), events.put)
        finally:
            events.put(None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while (event := events.get()) is not None:
        yield event
    thread.join()


class RayPool:
    """Each trial a Ray task declaring its CPUs (and GPU share); events stream back through
    Ray's generator tasks. Ray's own retries are off: a lost worker comes back to the driver,
    which restarts the trial from its last stored checkpoint like any other executor does."""

    def __init__(self, data: Dataset, spec: StudySpec) -> None:
        ray = self._ray = _import_ray()
        self._started_here = not ray.is_initialized()
        if self._started_here:
            if spec.ray_address is None:
                ray.init(num_cpus=usable_cores(), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=spec.ray_address, log_to_driver=False)
        resources = ray.cluster_resources()
        self._cpus = max(1, int(resources.get("CPU", 1)))
        node_cpus = [
            int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive", False)
        ]
        self._node_cpus = max(1, min((c for c in node_cpus if c > 0), default=1))
        self._gpus = spec.device != "cpu" and resources.get("GPU", 0) > 0
        self._data = ray.put(data.to(torch.device("cpu")))
        self._task = ray.remote(_ray_trial)
        self._running: dict[str, Any] = {}
        self._threads: dict[str, int] = {}

    @property
    def node_cpus(self) -> int:
        return self._node_cpus

    def fits(self, threads: int) -> bool:
        return sum(self._threads.values()) + threads <= self._cpus or not self._running

    def submit(self, job: Job) -> None:
        threads = job.threads or 1
        gpus = (RAY_GPU_SHARE if packs(job.trial) else 1.0) if self._gpus else 0
        gen = self._task.options(num_cpus=threads, num_gpus=gpus, max_retries=0).remote(
            job, self._data
        )
        self._running[job.trial.trial_id] = gen
        self._threads[job.trial.trial_id] = threads

    def wait(self, on_event: OnEvent, timeout: float) -> None:
        ray = self._ray
        if not self._running:
            return
        by_gen = {id(g): tid for tid, g in self._running.items()}
        ready, _ = ray.wait(list(self._running.values()), num_returns=1, timeout=timeout)
        for gen in ready:
            tid = by_gen[id(gen)]
            try:
                event: Event = ray.get(next(gen))
            except StopIteration:
                event = WorkerLost("the Ray task ended without an outcome")
            except ray.exceptions.RayError as err:
                event = WorkerLost(f"{type(err).__name__}: {str(err).strip().splitlines()[0]}")
            if isinstance(event, Finished | WorkerLost):
                self._running.pop(tid, None)
                self._threads.pop(tid, None)
            on_event(tid, event)

    def cancel(self, trial_id: str) -> None:
        gen = self._running.pop(trial_id, None)
        self._threads.pop(trial_id, None)
        if gen is not None:
            with contextlib.suppress(Exception):
                self._ray.cancel(gen, force=True)

    def close(self) -> None:
        for tid in list(self._running):
            self.cancel(tid)
        if self._started_here:
            self._ray.shutdown()


# ---- the driver --------------------------------------------------------------------------------


class _Heartbeat:
    """Renews this driver's claims from a thread with its own connection, so a long epoch in
    the driver's own thread does not let them lapse for processes on other hosts."""

    def __init__(self, path: Any, owner: str, every_s: float = HEARTBEAT_S) -> None:
        self._path, self._owner, self._every = path, owner, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="batchlab-heartbeat")

    def _run(self) -> None:
        with Store(self._path) as s:
            while not self._stop.wait(self._every):
                with contextlib.suppress(Exception):  # a busy store: try again next beat
                    s.heartbeat(self._owner)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class _Running:
    trial: TrialSpec
    attempts: int = 1


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
    cores = usable_cores()
    workers: int | Literal["auto"] = spec.workers
    backend: Backend
    if spec.executor == "ray":
        ray_pool = RayPool(prepared.data, spec)
        backend, cores, workers = ray_pool, ray_pool.node_cpus, "auto"
        order = order_for_pool(todo, prepared.data.n_train)
    elif workers == 1 or (workers == "auto" and cores == 1):
        backend, order = InProcess(prepared.data, prepared.device), list(todo)
    else:
        backend = LocalPool(
            prepared.data,
            str(prepared.device),
            workers=cores if workers == "auto" else workers,
            budget=cores if workers == "auto" else None,
        )
        order = order_for_pool(todo, prepared.data.n_train)
    in_process = isinstance(backend, InProcess)
    # The stacked step is cross-entropy's, on tensors held on the device.
    fuses = isinstance(prepared.data.task, Classification) and prepared.data.on_device
    if (
        in_process
        and fuses
        and (spec.fuse is True or (spec.fuse == "auto" and prepared.device.type == "cuda"))
    ):
        order = run_fused_groups(store, order, prepared, reporter, provenance)
    try:
        _Driver(
            store,
            backend,
            reporter,
            provenance,
            cores=cores,
            workers=workers,
            in_process=in_process,
        ).run(order, n_train=prepared.data.n_train)
    finally:
        backend.close()


def run_fused_groups(
    store: Store,
    todo: Sequence[TrialSpec],
    prepared: PreparedStudy,
    reporter: Reporter,
    provenance: dict[str, Any],
) -> list[TrialSpec]:
    """Train, in this process, the trials of `todo` that fuse (`fused.group_trials`: fresh trials
    that differ only in seed and lr) group by group, one batched step per group; return the
    others, in order, for the driver. Claims, evaluations and outcomes go to the store exactly as
    for a trial run alone, so an interrupted member resumes alone from its checkpoint."""
    fresh = [t for t in todo if store.trial_state(t.trial_id) == TrialState.WAITING]
    groups = [g for g in group_trials(fresh) if len(g) > 1]
    grouped = {t.trial_id for g in groups for t in g}
    rest = [t for t in todo if t.trial_id not in grouped]
    owner = process_owner()
    n_train = prepared.data.n_train
    with _Heartbeat(store.path, owner):
        for group in groups:
            members: list[TrialSpec] = []
            for t in group:
                prov = {**provenance, "executor": "fused", "fused_with": len(group)}
                claim = store.claim_trial(t.trial_id, prov, owner=owner)
                if claim is None or claim[1] is not None:  # taken by another process meanwhile
                    rest.append(t)
                else:
                    members.append(t)
                    reporter.trial_started(t, planned_steps(t, n_train))
            if members:
                _train_claimed_group(store, members, prepared, reporter, owner)
    return rest


def _train_claimed_group(
    store: Store,
    members: Sequence[TrialSpec],
    prepared: PreparedStudy,
    reporter: Reporter,
    owner: str,
) -> None:
    def sink_for(tid: str) -> EvalSink:
        def sink(rec: EvalRecord, ckpt: Checkpoint | None, probes: list[ProbeRecord]) -> None:
            store.add_eval(tid, rec, ckpt.to_bytes() if ckpt else None, probes, owner=owner)

        return sink

    try:
        outcomes = train_group(
            members,
            prepared.data,
            device=prepared.device,
            sinks=[sink_for(t.trial_id) for t in members],
        )
    except Exception:  # a failing group fails its members, and the study goes on
        for t in members:
            store.finish_trial(
                t.trial_id, TrialState.FAILED, error=traceback.format_exc(), owner=owner
            )
            reporter.trial_finished(t, TrialState.FAILED)
        return
    for t, out in zip(members, outcomes, strict=True):
        store.finish_trial(
            t.trial_id,
            out.state,
            diverged_step=out.diverged_step,
            probes=out.probes,
            weights=out.weights_bytes(save=t.study.save_weights),
            owner=owner,
        )
        reporter.trial_finished(t, out.state)


class _Driver:
    def __init__(
        self,
        store: Store,
        backend: Backend,
        reporter: Reporter,
        provenance: dict[str, Any],
        *,
        cores: int,
        workers: int | Literal["auto"],
        in_process: bool,
    ) -> None:
        self.store, self.backend, self.reporter = store, backend, reporter
        self.provenance, self.cores, self.in_process = provenance, cores, in_process
        self.workers = workers
        self.owner = process_owner()
        self.running: dict[str, _Running] = {}

    def run(self, order: Sequence[TrialSpec], *, n_train: int) -> None:
        pending = deque(order)
        elsewhere: list[TrialSpec] = []  # claimed by another live process
        attempts: dict[str, int] = {}
        with _Heartbeat(self.store.path, self.owner):
            while pending or self.running or elsewhere:
                while pending:
                    trial = pending[0]
                    threads = (
                        None
                        if self.in_process
                        else threads_for(trial, cores=self.cores, workers=self.workers)
                    )
                    if not self.backend.fits(threads or 1):
                        break
                    pending.popleft()
                    if not self._start(trial, threads, attempts.get(trial.trial_id, 0), n_train):
                        elsewhere.append(trial)
                if self.running:
                    lost = self._wait()
                    for trial, n in lost:
                        attempts[trial.trial_id] = n
                        pending.appendleft(trial)
                elif elsewhere:
                    elsewhere = self._poll_elsewhere(elsewhere, pending)

    def _start(self, trial: TrialSpec, threads: int | None, tries: int, n_train: int) -> bool:
        prov = {**self.provenance, "threads": threads or self.provenance.get("threads")}
        claim = self.store.claim_trial(trial.trial_id, prov, owner=self.owner)
        if claim is None:
            return False
        _, payload = claim
        self.running[trial.trial_id] = _Running(trial, tries + 1)
        self.reporter.trial_started(trial, planned_steps(trial, n_train))
        self.backend.submit(
            Job(
                trial=trial,
                threads=threads,
                resume=payload,
                save_weights=trial.study.save_weights,
                executor=trial.study.executor if not self.in_process else "in-process",
            )
        )
        return True

    def _wait(self) -> list[tuple[TrialSpec, int]]:
        """Deliver events; the trials whose worker was lost and may run again."""
        retry: list[tuple[TrialSpec, int]] = []

        def on_event(tid: str, event: Event) -> None:
            run = self.running.get(tid)
            if run is None:
                return  # a trial already given up (claim lost)
            try:
                self._record(tid, run, event, retry)
            except ClaimLost:
                self.running.pop(tid, None)
                self.backend.cancel(tid)

        self.backend.wait(on_event, timeout=1.0)
        return retry

    def _record(
        self, tid: str, run: _Running, event: Event, retry: list[tuple[TrialSpec, int]]
    ) -> None:
        s, owner = self.store, self.owner
        if isinstance(event, Started):
            s.update_provenance(tid, event.info)
        elif isinstance(event, Evaluated):
            s.add_eval(tid, event.record, event.checkpoint, event.probes, owner=owner)
        elif isinstance(event, Progressed):
            if len(self.running) == 1:  # one bar per trial; live steps only when unambiguous
                self.reporter.trial_progress(event.progress)
        elif isinstance(event, Finished):
            s.finish_trial(
                tid,
                event.state,
                error=event.error,
                diverged_step=event.diverged_step,
                probes=event.probes,
                weights=event.weights,
                owner=owner,
            )
            self.running.pop(tid)
            self.reporter.trial_finished(run.trial, event.state)
        else:  # WorkerLost
            self.running.pop(tid)
            if run.attempts < MAX_ATTEMPTS:
                retry.append((run.trial, run.attempts))
                return
            s.finish_trial(
                tid,
                TrialState.FAILED,
                error=f"worker lost {run.attempts} times; last: {event.reason}",
                owner=owner,
            )
            self.reporter.trial_finished(run.trial, TrialState.FAILED)

    def _poll_elsewhere(
        self, elsewhere: list[TrialSpec], pending: deque[TrialSpec]
    ) -> list[TrialSpec]:
        """Trials other processes hold: report those they finished; take back those whose
        owner is gone (they go to `pending` and are claimed like any other)."""
        time.sleep(WAIT_POLL_S)
        states = self.store.claim_states([t.trial_id for t in elsewhere], owner=self.owner)
        still = []
        for t in elsewhere:
            state, claimable = states[t.trial_id]
            if state.is_finished:
                self.reporter.trial_finished(t, state)
            elif claimable:
                pending.append(t)
            else:
                still.append(t)
        return still
