"""The driver: claims each trial in the store right before it starts, hands it to a backend,
and alone writes what the backend's workers stream back (every write checked against its claim).
Fused groups of trials are trained here too, claimed and recorded like any other trial."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from batchlab.engine import (
    Checkpoint,
    EvalSink,
)
from batchlab.errors import StoreError
from batchlab.executors.base import (
    HEARTBEAT_S,
    MAX_ATTEMPTS,
    WAIT_POLL_S,
    Backend,
    Evaluated,
    Event,
    Finished,
    Job,
    Progressed,
    Snapshotted,
    Started,
    threads_for,
)
from batchlab.fused import group_trials, train_group
from batchlab.plan import planned_steps
from batchlab.prepared import PreparedStudy, Reporter
from batchlab.probes import ProbeRecord
from batchlab.spec import TrialSpec
from batchlab.store import ClaimLost, Store, WriteRetry, process_owner
from batchlab.trial import EvalRecord, TrialState

# ---- the driver --------------------------------------------------------------------------------


class _Heartbeat:
    """Renews this driver's claims from a thread with its own connection, so a long epoch in
    the driver's own thread does not let them lapse for processes on other hosts."""

    def __init__(self, path: Any, owner: str, every_s: float = HEARTBEAT_S) -> None:
        self._path, self._owner, self._every = path, owner, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="batchlab-heartbeat")

    def _run(self) -> None:
        try:
            s = Store(self._path, retry=WriteRetry(attempts=1))  # a failed beat: the next one
        except Exception:  # the driver's own writes report what is wrong with the store
            return
        with s:
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
    except StoreError:  # the store failed, not the group: its members stay resumable
        raise
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
            error=out.reason,
            diverged_step=out.diverged_step,
            probes=out.probes,
            weights=out.weights_bytes(save=t.study.save_weights),
            owner=owner,
        )
        reporter.trial_finished(t, out.state)


class Driver:
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
        start = None
        if trial.branch is not None and payload is None:  # a fresh branch: its reference's state
            start = self.store.snapshot(trial.branch.reference, trial.branch.step)
        self.running[trial.trial_id] = _Running(trial, tries + 1)
        self.reporter.trial_started(trial, planned_steps(trial, n_train))
        self.backend.submit(
            Job(
                trial=trial,
                threads=threads,
                resume=payload,
                save_weights=trial.study.save_weights,
                executor=trial.study.executor if not self.in_process else "in-process",
                start=start,
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
        elif isinstance(event, Snapshotted):
            s.add_snapshot(tid, event.step, event.checkpoint, owner=owner)
        elif isinstance(event, Progressed):
            if len(self.running) == 1:  # one bar per trial; live steps only when unambiguous
                self.reporter.trial_progress(event.progress)
        elif isinstance(event, Finished):
            if event.provenance:
                s.update_provenance(tid, event.provenance)
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
