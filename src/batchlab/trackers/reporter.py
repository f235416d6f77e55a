"""`TrackingReporter`: feeds trackers from the store while a study runs; `log_study` after.

The store is the source of truth. When a trial finishes, its evaluations and probe records are
read back from the store (where the engine, in this process or a worker, already wrote them) and
handed to every tracker with their step numbers. A whole trial is sent at once, when it ends:
that works the same whichever process ran the trial, and a trial is never logged half. A tracker
that raises costs a warning, never a result; after three failures in a row it is dropped.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from batchlab.engine import Progress
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, TrialSpec
from batchlab.store import Store
from batchlab.trackers.base import Tracker, TrackerWarning, check_installed
from batchlab.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from batchlab.prepared import Reporter
    from batchlab.results import Study

MAX_FAILURES = 3


class _Guard:
    """Calls into trackers, turning their exceptions into warnings and dropping broken ones.

    A tracker whose package is missing is refused here, before anything runs, with the one-line
    pip hint (not three warnings and a study that ran untracked).
    """

    def __init__(self, trackers: Sequence[Tracker]) -> None:
        for tracker in trackers:
            check_installed(type(tracker), what=f"trackers: {type(tracker).__name__}")
        self.trackers = list(trackers)
        self._failures = dict.fromkeys(range(len(self.trackers)), 0)

    def each(self, what: str, call: str, *args: object) -> None:
        for i, tracker in enumerate(self.trackers):
            if self._failures[i] >= MAX_FAILURES:
                continue
            try:
                getattr(tracker, call)(*args)
            except Exception as err:  # a tracker must never stop the study
                self._failures[i] += 1
                msg = f"{tracker.name}: could not log {what}: {type(err).__name__}: {err}"
                msg = " ".join(msg.split())
                if self._failures[i] >= MAX_FAILURES:
                    msg += (
                        f"; {MAX_FAILURES} failures in a row, no longer logging to {tracker.name}"
                    )
                warnings.warn(f"{msg} (the results are in the store)", TrackerWarning, stacklevel=2)
            else:
                self._failures[i] = 0


def stored_trial(store: Path, study: str, trial_id: str) -> tuple[FrozenTrial, list[ProbeRecord]]:
    """A trial and its probe records, as the store holds them now."""
    with Store.open_existing(store) as s:
        trial = next(t for t in s.trials(study) if t.trial_id == trial_id)
        probes = [
            ProbeRecord(step, probe, key, value)
            for tid, step, probe, key, value in s.probe_rows(study)
            if tid == trial_id
        ]
    return trial, probes


class TrackingReporter:
    """A `batchlab.study.Reporter` that logs each trial this process ran to trackers.

    `inner` (a progress display, say) sees every event first and unchanged. Trials that other
    processes ran on the same store (`batchlab run --executor ...` elsewhere) are theirs to log.
    """

    def __init__(
        self, trackers: Sequence[Tracker], *, store: str | Path, inner: Reporter | None = None
    ) -> None:
        self.store = Path(store)
        self.inner = inner
        self._guard = _Guard(trackers)
        self._study: str | None = None
        self._ran_here: set[str] = set()

    def study_started(self, spec: StudySpec, total: int, already_done: int) -> None:
        if self.inner is not None:
            self.inner.study_started(spec, total, already_done)
        self._study = spec.name
        self._guard.each(f"study {spec.name!r}", "start_study", spec)

    def trial_started(self, trial: TrialSpec, total_steps: int | None) -> None:
        if self.inner is not None:
            self.inner.trial_started(trial, total_steps)
        self._ran_here.add(trial.trial_id)

    def trial_progress(self, progress: Progress) -> None:
        if self.inner is not None:
            self.inner.trial_progress(progress)

    def trial_finished(self, trial: TrialSpec, state: TrialState) -> None:
        if self.inner is not None:
            self.inner.trial_finished(trial, state)
        # A trial another process ran (and logs) is only reported here; a pruned one was
        # decided here, by the adaptive loop, possibly in a run before this one.
        if trial.trial_id not in self._ran_here and state != TrialState.PRUNED:
            return
        study = self._study or trial.study.name
        frozen, probes = stored_trial(self.store, study, trial.trial_id)
        self._guard.each(f"trial {trial.trial_id}", "log_trial", frozen, probes)

    def study_finished(self) -> None:
        self._guard.each("the end of the study", "close")
        if self.inner is not None:
            self.inner.study_finished()


def log_study(study: Study, trackers: Sequence[Tracker]) -> int:
    """Send an already stored study to trackers (every finished trial); returns how many.

    For a study that ran without `--log`, or to fill a tracker that was down during the run.
    """
    guard = _Guard(trackers)
    guard.each(f"study {study.name!r}", "start_study", study.spec)
    finished = [t for t in study.trials if t.state.is_finished]
    if finished:
        with Store.open_existing(study.store) as s:
            rows = s.probe_rows(study.name)
        by_trial: dict[str, list[ProbeRecord]] = {}
        for tid, step, probe, key, value in rows:
            by_trial.setdefault(tid, []).append(ProbeRecord(step, probe, key, value))
        for t in finished:
            guard.each(f"trial {t.trial_id}", "log_trial", t, by_trial.get(t.trial_id, []))
    guard.each("the end of the study", "close")
    return len(finished)
