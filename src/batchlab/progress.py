"""Rich progress bars for a running study: the study (trials done / total, ETA) and the trial."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from batchlab import engine
from batchlab.spec import StudySpec, TrialSpec
from batchlab.trial import TrialState


class RichReporter:
    """Implements `batchlab.study.Reporter` with live bars: the study, and each running trial
    (several at once under a worker pool, where a bar shows the trial until it finishes)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=False,
        )
        self._study: TaskID | None = None
        self._trial: TaskID | None = None  # the latest trial started: what progress updates
        self._trials: dict[str, TaskID] = {}
        self._states: dict[str, int] = {}

    def study_started(self, spec: StudySpec, total: int, already_done: int) -> None:
        self._bars.start()
        if already_done:
            self.console.print(
                f"[bold]{spec.name}[/]: {already_done} of {total} trials already finished; resuming"
            )
        self._study = self._bars.add_task(
            f"study {spec.name}", total=total, completed=already_done, status=""
        )

    def trial_started(self, trial: TrialSpec, total_steps: int | None) -> None:
        label = f"  B={trial.batch_size} lr={trial.lr:.3g} seed={trial.seed}"
        self._trial = self._bars.add_task(label, total=total_steps, status="")
        self._trials[trial.trial_id] = self._trial

    def trial_progress(self, progress: engine.Progress) -> None:
        if self._trial is None:
            return
        status = ""
        if not math.isnan(progress.train_loss):
            status = f"loss {progress.train_loss:.4f} acc {progress.train_acc:.3f}"
        if status:
            self._bars.update(self._trial, completed=progress.step, status=status)
        else:
            self._bars.update(self._trial, completed=progress.step)

    def trial_finished(self, trial: TrialSpec, state: TrialState) -> None:
        bar = self._trials.pop(trial.trial_id, None)
        if bar is not None:
            self._bars.remove_task(bar)
            if bar == self._trial:
                self._trial = None
        self._states[state.value] = self._states.get(state.value, 0) + 1
        if self._study is not None:
            summary = " ".join(f"{k.lower()} {v}" for k, v in sorted(self._states.items()))
            self._bars.update(self._study, advance=1, status=summary)

    def study_finished(self) -> None:
        for bar in self._trials.values():
            self._bars.remove_task(bar)
        self._trials.clear()
        self._trial = None
        self._bars.stop()
