"""Figure 2: what each batch size cost: training wall time and number of parameter updates."""

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


def extract_cost(studies: Sequence[StudyLike]) -> PanelsData | None:
    """Final cumulative training time (evaluation excluded) and update count, COMPLETE trials."""
    cs = cells(studies)
    time = series_from_cells(cs, lambda c: c.train_time_s)
    steps = series_from_cells(cs, lambda c: c.steps)
    if not time:
        return None
    return PanelsData(
        batch_sizes=tuple(batch_sizes(studies)),
        panels=(
            Panel(
                title="Training wall time",
                y_label="training time",
                unit="s, log scale",
                log_y=True,
                series=time,
            ),
            Panel(
                title="Parameter updates",
                y_label="updates",
                unit="steps, log scale",
                log_y=True,
                series=steps,
            ),
        ),
    )


FIGURE = Figure[PanelsData](
    name="cost",
    title="Training time and updates vs batch size",
    description=(
        "Cumulative training wall time (evaluation excluded) and the number of parameter"
        f" updates each COMPLETE trial made, both on log scales. Band: {BAND}."
    ),
    extract=extract_cost,
    render_plotly=render_panels_plotly,
    render_matplotlib=render_panels_matplotlib,
)
