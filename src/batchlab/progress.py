"""Progress of a running study: rich bars on a terminal (the study, trials done / total, ETA,
and each running trial), or a line per finished trial for a log (`LineReporter`), so that a
log file, CI or `nohup` is never silent for minutes. Both know which trials are running, for
the line that Ctrl-C prints."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import TextIO

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
from batchlab.fmt import lr_text
from batchlab.spec import StudySpec, TrialSpec
from batchlab.store import Store
from batchlab.tasks.base import TaskInfo
from batchlab.trial import TrialState


def trial_label(trial: TrialSpec) -> str:
    """ "B=64 lr=0.0224 seed=1" (and the variant, in a study of several)."""
    variant = f" {trial.variant}" if trial.variant else ""
    return f"B={trial.batch_size} lr={lr_text(trial.lr)} seed={trial.seed}{variant}"


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
        self._specs: dict[str, TrialSpec] = {}
        self._states: dict[str, int] = {}

    @property
    def running(self) -> list[TrialSpec]:
        """Trials started and not finished (what an interrupt stops)."""
        return list(self._specs.values())

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
        self._trial = self._bars.add_task(f"  {trial_label(trial)}", total=total_steps, status="")
        self._trials[trial.trial_id] = self._trial
        self._specs[trial.trial_id] = trial

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
        self._specs.pop(trial.trial_id, None)
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


class LineReporter:
    """A line per finished trial, flushed at once, for a log: "[3/18] B=64 lr=0.0224 seed=1:
    COMPLETE, test acc 84.30%, loss 0.4312, 12.3 s" (the final evaluation, read back from the
    store where the trial's process wrote it; the trial's wall time as seen here)."""

    def __init__(
        self, store: str | Path, out: TextIO | None = None, *, quiet: bool = False
    ) -> None:
        self.store = Path(store)
        self._out, self._quiet = out, quiet  # quiet: print nothing, only track what runs
        self._total = self._done = 0
        self._started: dict[str, tuple[TrialSpec, float]] = {}

    @property
    def running(self) -> list[TrialSpec]:
        return [t for t, _ in self._started.values()]

    def _say(self, line: str) -> None:
        if self._quiet:
            return
        out = self._out or sys.stdout
        print(line, file=out, flush=True)

    def study_started(self, spec: StudySpec, total: int, already_done: int) -> None:
        self._total, self._done = total, already_done
        resumed = f", {already_done} already finished" if already_done else ""
        self._say(f"study {spec.name}: {total} trials{resumed}")

    def trial_started(self, trial: TrialSpec, total_steps: int | None) -> None:
        self._started[trial.trial_id] = (trial, time.monotonic())

    def trial_progress(self, progress: engine.Progress) -> None:
        pass

    def trial_finished(self, trial: TrialSpec, state: TrialState) -> None:
        self._done += 1
        start = self._started.pop(trial.trial_id, None)
        if self._quiet:
            return
        took = f", {time.monotonic() - start[1]:.1f} s" if start else ", run by another process"
        self._say(
            f"[{self._done}/{self._total}] {trial_label(trial)}: {state.value}"
            f"{self._final(trial.trial_id)}{took}"
        )

    def _final(self, trial_id: str) -> str:
        """ ", test acc 84.30%, loss 0.4312" from the trial's last evaluation ("" if none)."""
        try:
            with Store.open_existing(self.store) as s:
                record, prov = s.last_eval(trial_id), s.trial_provenance(trial_id)
        except Exception:  # a line without its metric beats a study stopped by its log
            return ""
        if record is None or math.isnan(record.test_acc):
            return ""
        task = TaskInfo.from_dict(prov.get("task"))
        loss = "" if math.isnan(record.test_loss) else f", loss {record.test_loss:.4g}"
        return f", test {task.score_short} {task.format_score(record.test_acc)}{loss}"

    def study_finished(self) -> None:
        pass
