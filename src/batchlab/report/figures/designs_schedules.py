"""Designs: batch-size and learning-rate schedules (Smith et al. 2017), per variant.

Growing the batch instead of decaying the lr should give the same curve against epochs with far
fewer updates; the two x axes side by side show both, and the legend gives each line's updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import (
    Line,
    LinePanel,
    LinesData,
    render_lines_matplotlib,
    render_lines_plotly,
)
from batchlab.report.figures._runs import best_runs, bs_label, mean, sweep_runs
from batchlab.tasks.base import TaskInfo
from batchlab.trial import EvalRecord, FrozenTrial


def has_schedule(t: FrozenTrial) -> bool:
    return bool(t.params.get("batch_schedule") or t.params.get("lr_schedule"))


def _held_out(e: EvalRecord) -> float:
    """The test score as stored (validation when no test was recorded)."""
    return e.test_acc if math.isfinite(e.test_acc) else e.val_acc


def _by_eval(
    trials: Sequence[FrozenTrial], get: Callable[[EvalRecord], float]
) -> tuple[float, ...]:
    n = min(len(t.evals) for t in trials)
    return tuple(mean(get(t.evals[i]) for t in trials) for i in range(n))


def extract_schedules(studies: Sequence[StudyLike]) -> LinesData | None:
    """Per (study, variant, batch size) at its best lr_base: seed-mean test score (% for a
    fraction) at each evaluation against epochs and against updates; labels carry the mean final
    update count. Only studies where some COMPLETE sweep run has a batch or lr schedule; None
    otherwise.
    """
    runs = [t for s in studies for t in sweep_runs([s]) if any(map(has_schedule, sweep_runs([s])))]
    if not runs:
        return None
    task = task_of(studies)
    scale = task.score_scale
    best = best_runs(runs)
    by_epoch: list[Line] = []
    by_step: list[Line] = []
    for i, ((key, b), trials) in enumerate(best.items()):
        updates = round(mean(float(t.evals[-1].step) for t in trials))
        label = f"{bs_label(key, b, multi_study=len(studies) > 1)} ({updates:,} updates)"
        acc = _by_eval(trials, lambda e: scale * _held_out(e))
        dash = 0 if any(map(has_schedule, trials)) else 1
        epochs = _by_eval(trials, lambda e: e.epoch)
        steps = _by_eval(trials, lambda e: float(e.step))
        by_epoch.append(Line(label=label, x=epochs, y=acc, color=i, dash=dash))
        by_step.append(Line(label=label, x=steps, y=acc, color=i, dash=dash))
    return LinesData(
        batch_sizes=tuple(sorted({b for _, b in best})),
        panels=(
            LinePanel(
                title=f"Test {task.score_label} vs epochs (equal data)",
                x_label="epochs",
                y_label=task.score_axis("test"),
                x_kind="linear",
                log_y=False,
                lines=tuple(by_epoch),
            ),
            LinePanel(
                title=f"Test {task.score_label} vs updates",
                x_label="parameter updates (steps, log scale)",
                y_label=task.score_axis("test"),
                x_kind="log",
                log_y=False,
                lines=tuple(by_step),
            ),
        ),
        columns=2,
    )


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    unit = f" in {task.score_unit}" if task.score_unit else ""
    return f"Schedules: test {task.score_label} vs epochs and vs updates", (
        f"Held-out (test; validation when no test was recorded) {task.score_label}{unit} at every"
        " evaluation,"
        " mean over seeds evaluation by evaluation, one line per variant and batch size (its"
        " starting batch size when the batch grows), against epochs and against parameter updates"
        " (log scale). Solid lines have a batch or lr schedule, dashed ones do not; the legend"
        " gives each line's total updates (mean over seeds). Shown when a run has a batch_schedule"
        " or lr_schedule. COMPLETE trials of the sweep; with several learning rates each batch"
        " size at its best lr_base."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[LinesData](
    name="schedules",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_schedules,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
    text=figure_text,
)
