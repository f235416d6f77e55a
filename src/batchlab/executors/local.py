"""The local executors: `InProcess` (one trial at a time, in the driver) and `LocalPool`
(worker processes on this machine, the dataset's tensors shared with them, not copied)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any

import torch
import torch.multiprocessing  # registers torch's shared-memory pickling of tensors

from batchlab.data import Dataset
from batchlab.engine import resolve_device
from batchlab.errors import SpecError
from batchlab.executors import tempdirs
from batchlab.executors.base import (
    Event,
    Finished,
    Job,
    OnEvent,
    Placement,
    WorkerLost,
    _Cancelled,
    run_job,
    usable_cores,
)
from batchlab.nodynamo import skip_dynamo_import
from batchlab.prepared import PreparedStudy
from batchlab.spec import StudySpec


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
    # Ctrl-C reaches the whole process group: the driver alone answers it (and stops this
    # worker), so a worker prints no traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The driver's key lets this process fetch the dataset's shared-memory file descriptors.
    mp.current_process().authkey = bytes.fromhex(os.environ.pop(_KEY_ENV))
    conn = Connection(int(sys.argv[-1]))
    skip_dynamo_import()  # this process compiles no optimizer code
    data, device_name = conn.recv()
    _worker_main(conn, data, device_name)


_KEY_ENV = "BATCHLAB_WORKER_KEY"
_WORKER_CODE = "from batchlab.executors.local import worker_entry; worker_entry()"


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
        # The temp folders of drivers killed earlier go; this one's is marked as this process's.
        tempdirs.remove_stale()
        tempdirs.mark_own()
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


def check(spec: StudySpec) -> None:
    if spec.ray_address is not None:
        raise SpecError("ray_address: only used with executor = ray; add --executor ray")


def place(prepared: PreparedStudy) -> Placement:
    """In this process for `workers = 1` (or one core); else a pool of worker processes on
    the cores the study may use (`prepared.cores`: under `threads = "auto"`, the free ones)."""
    cores, workers = prepared.cores or usable_cores(), prepared.spec.workers
    if workers == 1 or (workers == "auto" and cores == 1):
        return Placement(
            backend=InProcess(prepared.data, prepared.device),
            cores=cores,
            workers=workers,
            in_process=True,
        )
    pool = LocalPool(
        prepared.data,
        str(prepared.device),
        workers=cores if workers == "auto" else workers,
        budget=cores if workers == "auto" else None,
    )
    return Placement(backend=pool, cores=cores, workers=workers)
