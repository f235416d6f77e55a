"""Figure 4: the generalization gap against batch size, in accuracy and in loss."""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._panels import (
    Panel,
    PanelsData,
    render_panels_matplotlib,
    render_panels_plotly,
    series_from_cells,
)
from batchlab.report.stats import BAND, batch_sizes, cells


def extract_gap(studies: Sequence[StudyLike]) -> PanelsData | None:
    """Train − test accuracy (percentage points) and test − train loss at the final evaluation.

    The train side is the full pass over the training set where the final evaluation made one,
    else the running mean over the last window (then the note says so).
    """
    cs = cells(studies)
    acc = series_from_cells(cs, lambda c: c.acc_gap, scale=100.0)
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
                title=f"Accuracy gap (train: {source})",
                y_label="train − test accuracy",
                unit="percentage points",
                log_y=False,
                series=acc,
            ),
            Panel(
                title=f"Loss gap (train: {source})",
                y_label="test − train loss",
                unit="cross-entropy, nats",
                log_y=False,
                series=loss,
            ),
        ),
    )


FIGURE = Figure[PanelsData](
    name="gap",
    title="Generalization gap vs batch size",
    description=(
        "Train accuracy minus test accuracy and test loss minus train loss at the final evaluation"
        " of COMPLETE trials. Train numbers are a full pass over the training set where one was"
        " made at the end, else the running mean over the last evaluation window (titles say"
        f" which). Band: {BAND}. A small gap with a low accuracy means underfitting, not good"
        " generalization: read it next to the accuracy figure."
    ),
    extract=extract_gap,
    render_plotly=render_panels_plotly,
    render_matplotlib=render_panels_matplotlib,
)
