"""Figure 4: the generalization gap against batch size, in the task's score and in loss."""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._panels import (
    Panel,
    PanelsData,
    render_panels_matplotlib,
    render_panels_plotly,
    series_from_cells,
)
from batchlab.report.stats import BAND, batch_sizes, cells
from batchlab.tasks.base import TaskInfo


def extract_gap(studies: Sequence[StudyLike]) -> PanelsData | None:
    """Train − test score (percentage points for a fraction) and test − train loss at the final
    evaluation.

    The train side is the full pass over the training set where the final evaluation made one,
    else the running mean over the last window (then the note says so).
    """
    task = task_of(studies)
    cs = cells(studies)
    acc = series_from_cells(cs, lambda c: c.acc_gap, scale=task.score_scale)
    loss = series_from_cells(cs, lambda c: c.loss_gap)
    if not acc and not loss:
        return None
    done = [c for c in cs if c.n_complete > 0]
    running = not all(c.train_is_full_pass for c in done)
    source = "running mean over the last window" if running else "full pass"
    return PanelsData(
        batch_sizes=tuple(batch_sizes(studies)),
        panels=(
            Panel(
                title=f"{task.score_title} gap (train: {source})",
                y_label=f"train − test {task.score_label}",
                unit="percentage points" if task.score_is_fraction else "",
                log_y=False,
                series=acc,
            ),
            Panel(
                title=f"Loss gap (train: {source})",
                y_label="test − train loss",
                unit=task.loss_unit,
                log_y=False,
                series=loss,
            ),
        ),
    )


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    s = task.score_label
    return "Generalization gap vs batch size", (
        f"Train {s} minus test {s} and test loss minus train loss at the final evaluation"
        " of COMPLETE trials. Train numbers are a full pass over the training set where one was"
        " made at the end, else the running mean over the last evaluation window (titles say"
        f" which). Band: {BAND}. A small gap with a low {s} means underfitting, not good"
        f" generalization: read it next to the {s} figure."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[PanelsData](
    name="gap",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_gap,
    render_plotly=render_panels_plotly,
    render_matplotlib=render_panels_matplotlib,
    text=figure_text,
)
