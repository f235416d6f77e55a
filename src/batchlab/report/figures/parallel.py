"""Figure 5: parallel coordinates over every COMPLETE trial (interactive: drag on an axis)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from matplotlib.figure import Figure as MplFigure

from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._style import plotly_layout
from batchlab.report.palette import Palette, mpl_text, plotly_text
from batchlab.report.stats import sweep_trials, trial_final
from batchlab.tasks.base import TaskInfo
from batchlab.trial import TrialState


@dataclass(frozen=True, kw_only=True)
class Axis:
    """One vertical axis: values, and whether they are shown on a log10 scale."""

    label: str
    values: tuple[float, ...]
    log: bool
    categories: tuple[str, ...] = ()  # for a categorical axis: values index into these


@dataclass(frozen=True, kw_only=True)
class ParallelData:
    batch_sizes: tuple[int, ...]  # one per line, for its colour
    axes: tuple[Axis, ...]


def extract_parallel(studies: Sequence[StudyLike]) -> ParallelData | None:
    """One line per COMPLETE trial with finite numbers on every axis."""
    task = task_of(studies)
    names = [s.name for s in studies]
    rows = []
    for t in (t for s in studies for t in sweep_trials(s) if t.state is TrialState.COMPLETE):
        f = trial_final(t)
        row = (f.batch_size, f.lr, f.train_time_s, f.train_loss, task.score_scale * f.test_acc)
        if all(math.isfinite(v) for v in row) and f.lr > 0 and f.train_time_s > 0:
            rows.append((names.index(t.study), row))
    if not rows:
        return None
    axes = [
        Axis(label="batch size", values=tuple(float(r[0]) for _, r in rows), log=True),
        Axis(label="peak lr", values=tuple(r[1] for _, r in rows), log=True),
        Axis(label="training time (s)", values=tuple(r[2] for _, r in rows), log=True),
        Axis(
            label=f"final train loss ({task.loss_short_unit})",
            values=tuple(r[3] for _, r in rows),
            log=False,
        ),
        Axis(label=task.score_axis("final test"), values=tuple(r[4] for _, r in rows), log=False),
    ]
    if len(studies) > 1:
        axes.insert(
            0,
            Axis(
                label="study",
                values=tuple(float(i) for i, _ in rows),
                log=False,
                categories=tuple(names),
            ),
        )
    return ParallelData(batch_sizes=tuple(int(r[0]) for _, r in rows), axes=tuple(axes))


def _ticks(axis: Axis) -> tuple[list[float], list[str]] | None:
    """Tick positions (in plotted units) and labels for a log or categorical axis."""
    if axis.categories:
        return [float(i) for i in range(len(axis.categories))], list(axis.categories)
    if not axis.log:
        return None
    distinct = sorted(set(axis.values))
    if len(distinct) <= 12:
        return [math.log10(v) for v in distinct], [f"{v:g}" for v in distinct]
    lo, hi = math.floor(math.log10(distinct[0])), math.ceil(math.log10(distinct[-1]))
    return [float(e) for e in range(lo, hi + 1)], [f"{10.0**e:g}" for e in range(lo, hi + 1)]


def _plotted(axis: Axis) -> list[float]:
    return [math.log10(v) for v in axis.values] if axis.log else list(axis.values)


def render_parallel_plotly(data: ParallelData, palette: Palette) -> Any:
    dims = []
    for axis in data.axes:
        dim: dict[str, Any] = {
            "label": axis.label + (" (log)" if axis.log and axis.label != "batch size" else ""),
            "values": _plotted(axis),
        }
        ticks = _ticks(axis)
        if ticks is not None:
            dim["tickvals"], dim["ticktext"] = ticks[0], [plotly_text(t) for t in ticks[1]]
        dims.append(dim)
    lo, hi = (math.log2(min(palette.batch_sizes)), math.log2(max(palette.batch_sizes)))
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={
                "color": [math.log2(b) for b in data.batch_sizes],
                "colorscale": palette.bs_colorscale(),
                "cmin": lo,
                "cmax": hi if hi > lo else lo + 1,
                "showscale": False,
            },
            labelangle=0,
            labelside="top",
        )
    )
    plotly_layout(fig, height=460)
    fig.update_layout(margin={"l": 80, "r": 80, "t": 80, "b": 40})
    return fig


def render_parallel_matplotlib(data: ParallelData, palette: Palette) -> MplFigure:
    n = len(data.axes)
    fig = MplFigure(figsize=(max(8.0, 2.4 * n), 4.8), layout="constrained")
    ax = fig.subplots()
    scaled = []
    for axis in data.axes:
        v = _plotted(axis)
        lo, hi = min(v), max(v)
        span = hi - lo if hi > lo else 1.0
        scaled.append([(x - lo) / span for x in v])
        i = len(scaled) - 1
        ax.axvline(i, color="#444", lw=1)
        ticks = _ticks(axis)
        if ticks is not None:
            for pos, text in zip(*ticks, strict=True):
                if lo - 1e-9 <= pos <= hi + 1e-9:
                    y = (pos - lo) / span
                    ax.text(i + 0.04, y, mpl_text(text), fontsize=8, va="center", color="#333")
        else:
            for y, val in ((0.0, lo), (1.0, hi)):
                ax.text(i + 0.04, y, f"{val:.4g}", fontsize=8, va="center", color="#333")
    for k, b in enumerate(data.batch_sizes):
        ax.plot(range(n), [col[k] for col in scaled], color=palette.bs_color(b), lw=1.4, alpha=0.8)
    ax.set_xticks(range(n), [mpl_text(a.label) for a in data.axes], fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_xlim(-0.1, n - 0.6)
    ax.set_ylim(-0.05, 1.05)
    for side in ("left", "right", "bottom", "top"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("line colour: batch size (same colours as every other figure)")
    return fig


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    return "Parallel coordinates", (
        "One line per COMPLETE trial across batch size, the peak learning rate it used, training"
        f" wall time, final train loss and final test {task.score_label}; the line colour is the"
        " batch size. Drag along an axis to select a range; batch size, lr and time are on log"
        " scales."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[ParallelData](
    name="parallel",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_parallel,
    render_plotly=render_parallel_plotly,
    render_matplotlib=render_parallel_matplotlib,
    text=figure_text,
)
