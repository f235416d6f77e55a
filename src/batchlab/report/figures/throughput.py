"""Figure 7: hardware efficiency: steady-state throughput and peak memory against batch size."""

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

MIB = 2.0**20


def extract_throughput(studies: Sequence[StudyLike]) -> PanelsData | None:
    """Median training samples/s over the evaluation windows (first discarded) and peak MiB."""
    cs = cells(studies)
    speed = series_from_cells(cs, lambda c: c.samples_per_s)
    mem = series_from_cells(cs, lambda c: c.peak_mem_bytes, scale=1.0 / MIB)
    if not speed and not mem:
        return None
    return PanelsData(
        batch_sizes=tuple(batch_sizes(studies)),
        panels=(
            Panel(
                title="Training throughput",
                y_label="throughput",
                unit="samples/s, log scale",
                log_y=True,
                series=speed,
                note="" if speed else "throughput not recorded",
            ),
            Panel(
                title="Peak memory",
                y_label="peak memory",
                unit="MiB",
                log_y=False,
                series=mem,
                note="" if mem else "peak memory not recorded",
            ),
        ),
    )


FIGURE = Figure[PanelsData](
    name="throughput",
    title="Throughput and peak memory vs batch size",
    description=(
        "Training throughput: the median over evaluation windows of samples per second of"
        " training time (the first window, which holds the warm-up, is dropped when there are"
        " more). Peak memory: on a GPU the peak allocated device memory; on CPU the process's peak"
        " resident set, which only grows across the trials one process runs, so read it as an"
        f" upper bound. Band: {BAND}."
    ),
    extract=extract_throughput,
    render_plotly=render_panels_plotly,
    render_matplotlib=render_panels_matplotlib,
)
