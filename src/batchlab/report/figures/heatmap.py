"""Figure 6: test score over base learning rate × batch size, with diverged cells marked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from matplotlib.figure import Figure as MplFigure
from plotly.subplots import make_subplots

from batchlab.fmt import lr_texts
from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._style import plotly_layout
from batchlab.report.palette import DIVERGED_COLOR, Palette, mpl_text, plotly_text
from batchlab.report.stats import cells
from batchlab.tasks.base import TaskInfo


@dataclass(frozen=True, kw_only=True)
class Grid:
    """One study's grid: rows are lr_base (ascending), columns batch sizes (ascending)."""

    study: str
    lr_bases: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    acc: tuple[tuple[float, ...], ...]  # mean final test score (display units), NaN: none done
    diverged: tuple[tuple[int, ...], ...]
    trials: tuple[tuple[int, ...], ...]


@dataclass(frozen=True, kw_only=True)
class HeatmapData:
    grids: tuple[Grid, ...]
    task: TaskInfo  # names and formats the score


def extract_heatmap(studies: Sequence[StudyLike]) -> HeatmapData | None:
    """A grid per study that tried more than one lr_base; None when none did."""
    task = task_of(studies)
    cs = cells(studies)
    grids = []
    for study in studies:
        mine = {(c.key.lr_base, c.batch_size): c for c in cs if c.key.study == study.name}
        lrs = tuple(sorted({lr for lr, _ in mine}))
        sizes = tuple(sorted({b for _, b in mine}))
        if len(lrs) < 2:
            continue
        acc, div, n = [], [], []
        for lr in lrs:
            row = [mine.get((lr, b)) for b in sizes]
            acc.append(tuple(task.score_scale * c.test_acc.mean if c else math.nan for c in row))
            div.append(tuple(c.n_diverged if c else 0 for c in row))
            n.append(tuple(c.n_trials if c else 0 for c in row))
        grids.append(
            Grid(
                study=study.name,
                lr_bases=lrs,
                batch_sizes=sizes,
                acc=tuple(acc),
                diverged=tuple(div),
                trials=tuple(n),
            )
        )
    return HeatmapData(grids=tuple(grids), task=task) if grids else None


def _range(data: HeatmapData) -> tuple[float, float]:
    vals = [v for g in data.grids for row in g.acc for v in row if math.isfinite(v)]
    return (min(vals), max(vals)) if vals else (0.0, 100.0)


def render_heatmap_plotly(data: HeatmapData, palette: Palette) -> Any:
    n = len(data.grids)
    titles = [plotly_text(g.study) for g in data.grids] if n > 1 else [""]
    fig = make_subplots(rows=1, cols=n, subplot_titles=titles, horizontal_spacing=0.08)
    zmin, zmax = _range(data)
    task = data.task
    unit = f" {task.score_unit}" if task.score_unit else ""
    score = f"test {task.score_short} %{{z:{task.score_format}}}{unit}"
    for col, g in enumerate(data.grids, start=1):
        xs = [str(b) for b in g.batch_sizes]
        ys = lr_texts(g.lr_bases)
        z = [[v if math.isfinite(v) else None for v in row] for row in g.acc]
        cell = task.score_cell_format
        text = [[format(v, cell) if math.isfinite(v) else "" for v in row] for row in g.acc]
        fig.add_heatmap(
            x=xs,
            y=ys,
            z=z,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=zmin,
            zmax=zmax,
            showscale=col == n,
            colorbar={"title": {"text": task.score_axis("test", short=True)}},
            hovertemplate=f"batch size %{{x}}<br>lr_base %{{y}}<br>{score}<extra></extra>",
            xgap=2,
            ygap=2,
            row=1,
            col=col,
        )
        cells_x, cells_y, hover = [], [], []
        for i, label in enumerate(ys):
            for j, b in enumerate(g.batch_sizes):
                if g.diverged[i][j]:
                    cells_x.append(str(b))
                    cells_y.append(label)
                    hover.append(f"{g.diverged[i][j]} of {g.trials[i][j]} diverged")
        if cells_x:
            fig.add_trace(
                go.Scatter(
                    x=cells_x,
                    y=cells_y,
                    mode="markers",
                    marker={
                        "symbol": "x-thin",
                        "size": 22,
                        "line": {"width": 3, "color": DIVERGED_COLOR},
                    },
                    text=hover,
                    hoverinfo="text",
                    name="diverged",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="batch size", type="category", row=1, col=col)
        fig.update_yaxes(title_text="lr_base", type="category", row=1, col=col)
    plotly_layout(fig, height=max(320, 120 + 48 * max(len(g.lr_bases) for g in data.grids)))
    fig.update_layout(legend={"orientation": "h", "y": 1.08, "x": 1.0, "xanchor": "right"})
    return fig


def render_heatmap_matplotlib(data: HeatmapData, palette: Palette) -> MplFigure:
    n = len(data.grids)
    rows = max(len(g.lr_bases) for g in data.grids)
    fig = MplFigure(figsize=(6.5 * n + 1, 1.6 + 0.55 * rows), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    zmin, zmax = _range(data)
    image = None
    for ax, g in zip(axes, data.grids, strict=True):
        image = ax.imshow(g.acc, cmap="Blues", vmin=zmin, vmax=zmax, aspect="auto", origin="lower")
        mid = (zmin + zmax) / 2
        for i in range(len(g.lr_bases)):
            for j in range(len(g.batch_sizes)):
                v = g.acc[i][j]
                if math.isfinite(v):
                    color = "white" if v > mid else "#222"
                    text = format(v, data.task.score_cell_format)
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
                if g.diverged[i][j]:
                    ax.plot(j, i, marker="x", ms=16, mew=2.5, color=DIVERGED_COLOR)
        ax.set_xticks(range(len(g.batch_sizes)), [str(b) for b in g.batch_sizes])
        ax.set_yticks(range(len(g.lr_bases)), lr_texts(g.lr_bases))
        ax.set_xlabel("batch size")
        ax.set_ylabel("lr_base")
        if n > 1:
            ax.set_title(mpl_text(g.study))
    if image is not None:
        fig.colorbar(image, ax=list(axes), label=data.task.score_axis("final test"))
    return fig


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    return f"Test {task.score_label} over learning rate × batch size", (
        f"Mean {task.score_axis('final test')} of the COMPLETE trials in each (lr_base, batch"
        " size) cell; red crosses mark cells where trials diverged, empty cells had no COMPLETE"
        " trial. Shown only when the study tried more than one learning rate."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[HeatmapData](
    name="heatmap",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_heatmap,
    render_plotly=render_heatmap_plotly,
    render_matplotlib=render_heatmap_matplotlib,
    text=figure_text,
)
