"""The Ray executor: each trial a Ray task declaring its CPUs (and GPU share)."""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.multiprocessing  # registers torch's shared-memory pickling of tensors

from batchlab.data import Dataset
from batchlab.engine import resolve_device
from batchlab.errors import SpecError
from batchlab.executors.base import (
    Event,
    Finished,
    Job,
    OnEvent,
    Placement,
    WorkerLost,
    packs,
    run_job,
    usable_cores,
)
from batchlab.prepared import PreparedStudy
from batchlab.spec import StudySpec

RAY_CONNECT_TIMEOUT_S = 5.0
"""How long `--address` may take to answer a TCP connection before the run is refused."""
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for a loopback-only node (its default on macOS and Windows); 0 here too."""

RAY_GPU_SHARE = 0.25
"""The GPU fraction a packed (small) trial asks Ray for; a large trial asks for a whole GPU."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise SpecError(
            "executor: ray is not installed; pip install 'batchlab[ray]' or use --executor local"
        ) from None
    return ray


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
        self._env_before = os.environ.get(_LOOPBACK_ENV)
        if self._started_here:
            if spec.ray_address is None:
                _init_local(ray)
            else:
                try:
                    ray.init(address=spec.ray_address, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as err:
                    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    raise SpecError(
                        f"ray_address: cannot join the Ray cluster at {spec.ray_address!r}"
                        f" ({type(err).__name__}: {first}); check it, or drop --address"
                    ) from None
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
            if self._env_before is None:
                os.environ.pop(_LOOPBACK_ENV, None)
            else:
                os.environ[_LOOPBACK_ENV] = self._env_before


def _init_local(ray: Any) -> None:
    """Start a Ray instance on this machine that listens on the loopback interface only.

    Ray binds its servers (GCS, raylet, object manager, workers) to the node's IP, and on Linux
    that is the machine's external address. Ray's own switch for a loopback node (what it does
    on macOS and Windows) makes the node IP 127.0.0.1: set in the environment for the
    processes Ray starts, and in this process, whose `ray` may be imported already."""
    from ray._private import ray_constants

    os.environ[_LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=usable_cores(), include_dashboard=False, log_to_driver=False)


def check(spec: StudySpec) -> None:
    _import_ray()
    if spec.ray_address is not None:
        _reachable(spec.ray_address)


def _reachable(address: str) -> None:
    """Refuse, within RAY_CONNECT_TIMEOUT_S and before the store is touched, a cluster address
    that does not accept a TCP connection (`auto` and `local` are Ray's to resolve)."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, _, port_text = hostport.rpartition(":")
    if not host or not port_text.isdigit():
        host, port_text = hostport, "10001" if address.startswith("ray://") else "6379"
    try:
        with socket.create_connection((host, int(port_text)), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise SpecError(
            f"ray_address: no Ray cluster answers at {address!r} ({err.strerror or err}, waited"
            f" at most {RAY_CONNECT_TIMEOUT_S:g} s); start it (ray start --head) or drop"
            " --address for a local one"
        ) from None


def place(prepared: PreparedStudy) -> Placement:
    """Ray tasks; threads as a pool with `workers = "auto"` on the cluster's CPUs."""
    pool = RayPool(prepared.data, prepared.spec)
    return Placement(backend=pool, cores=pool.node_cpus, workers="auto")
