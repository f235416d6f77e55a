"""Figure 7: hardware efficiency: steady-state throughput and peak memory against batch size."""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._panels import (
    Panel,
    PanelsData,
    Series,
    render_panels_matplotlib,
    render_panels_plotly,
    series_from_cells,
)
from batchlab.report.stats import BAND, batch_sizes, cells

MIB = 2.0**20
CPU_MEMORY_TREND = 0.10
"""On CPU, peak memory is the process's peak resident set (interpreter, torch, the data and
every trial run before): a spread across batch sizes under this share of its level is the
set's wobble, not a trend, and the panel says so instead of drawing it."""


def on_cpu(studies: Sequence[StudyLike]) -> bool:
    """Whether every trial that says where it ran ran on a CPU."""
    devices = {
        str(t.provenance.get("device", "")) for s in studies for t in s.trials if t.provenance
    }
    devices.discard("")
    return bool(devices) and all(d.startswith("cpu") for d in devices)


def memory_is_wobble(series: Sequence[Series]) -> tuple[bool, float]:
    """(whether the peak memories lie within CPU_MEMORY_TREND of their level, the spread MiB)."""
    values = [m for s in series for m in s.mean]
    if len(values) < 2 or min(values) <= 0:
        return False, 0.0
    spread = max(values) - min(values)
    return spread < CPU_MEMORY_TREND * min(values), spread


def extract_throughput(studies: Sequence[StudyLike]) -> PanelsData | None:
    """Median training samples/s over the evaluation windows (first discarded) and peak MiB."""
    cs = cells(studies)
    speed = series_from_cells(cs, lambda c: c.samples_per_s)
    mem = series_from_cells(cs, lambda c: c.peak_mem_bytes, scale=1.0 / MIB)
    if not speed and not mem:
        return None
    mem_note = "" if mem else "peak memory not recorded"
    wobble, spread = memory_is_wobble(mem)
    if mem and on_cpu(studies) and wobble:
        level = min(m for s in mem for m in s.mean)
        mem_note = (
            f"n/a on CPU: the process's peak resident set ({level:,.0f} MiB) moved by"
            f" {spread:.0f} MiB across batch sizes, under {CPU_MEMORY_TREND:.0%}: no trend"
        )
        mem = ()
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
                note=mem_note,
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
