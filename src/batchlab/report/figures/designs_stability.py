"""Designs: the lr × batch-size stability grid with its usable band (Masters & Luschi 2018).

Each (variant, batch size, lr_base) cell is converged, unstable, diverged or failed under the
rule of `batchlab.analysis.grid` (worst status over seeds); converged cells are coloured by the
test score (the task's: accuracy, R², ...), the usable band at each batch size (the lrs from the
lowest to the highest converged one) is outlined, and the best lr (highest validation score) is
starred.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from matplotlib.artist import Artist
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from plotly.subplots import make_subplots

from batchlab.analysis import grid
from batchlab.fmt import lr_text, lr_texts
from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import legend_columns
from batchlab.report.figures._style import plotly_layout
from batchlab.report.palette import DIVERGED_COLOR, Palette, mpl_text, plotly_text
from batchlab.tasks.base import TaskInfo

UNSTABLE_COLOR = "#ff7f0e"
FAILED_COLOR = "#7f7f7f"
BAND_COLOR = "#1a1a1a"
# status -> (legend text, plotly symbol, matplotlib marker, colour)
MARKS = {
    "unstable": ("unstable", "triangle-up", "^", UNSTABLE_COLOR),
    "diverged": ("diverged", "x-thin", "x", DIVERGED_COLOR),
    "failed": ("failed", "square-open", "s", FAILED_COLOR),
}


@dataclass(frozen=True, kw_only=True)
class StabilityGrid:
    """One (study, variant): rows lr_base ascending, columns batch size ascending."""

    study: str
    variant: str
    lr_bases: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    status: tuple[tuple[str, ...], ...]  # grid status, "" where the cell has no trial
    acc: tuple[tuple[float, ...], ...]  # mean final test score (% or plain), NaN unless converged
    band_lo: tuple[float | None, ...]  # per batch size: lowest converged lr_base
    band_hi: tuple[float | None, ...]
    best_lr: tuple[float | None, ...]

    def title(self, *, multi_study: bool) -> str:
        parts = [self.study] if multi_study else []
        return " · ".join([*parts, *([self.variant] if self.variant else [])])


@dataclass(frozen=True, kw_only=True)
class StabilityData:
    grids: tuple[StabilityGrid, ...]
    multi_study: bool
    task: TaskInfo  # names and formats the score
    on_test: bool = False  # some grid chose its best lr on test: no validation split

    @property
    def best_label(self) -> str:
        """The best-lr star's legend: "best lr (val. acc.)", "best lr (val. R²)"; "best lr (test
        acc., no val. split)" where a study kept no validation split."""
        short = self.task.score_short
        dot = "." if short != self.task.score_label else ""
        if self.on_test:
            return f"best lr (test {short}{dot}, no val. split)"
        return f"best lr (val. {short}{dot})"


def extract_stability(studies: Sequence[StudyLike]) -> StabilityData | None:
    """A grid per (study, variant) that tried at least two lr_base; None when none did."""
    task = task_of(studies)
    out = []
    on_test = False
    for study in studies:
        cells = grid.cells(study.trials)
        for variant in sorted({c.variant for c in cells}):
            mine = {(c.lr_base, c.batch_size): c for c in cells if c.variant == variant}
            lrs = tuple(sorted({lr for lr, _ in mine}))
            sizes = tuple(sorted({b for _, b in mine}))
            if len(lrs) < 2:
                continue
            bands = {band.batch_size: band for band in grid.bands(mine.values())}
            on_test = on_test or any(band.selected_on == "test" for band in bands.values())
            status, acc = [], []
            for lr in lrs:
                row = [mine.get((lr, b)) for b in sizes]
                status.append(tuple(c.status if c else "" for c in row))
                acc.append(tuple(task.score_scale * c.test_acc if c else math.nan for c in row))
            out.append(
                StabilityGrid(
                    study=study.name,
                    variant=variant,
                    lr_bases=lrs,
                    batch_sizes=sizes,
                    status=tuple(status),
                    acc=tuple(acc),
                    band_lo=tuple(bands[b].lo for b in sizes),
                    band_hi=tuple(bands[b].hi for b in sizes),
                    best_lr=tuple(bands[b].best_lr for b in sizes),
                )
            )
    if not out:
        return None
    return StabilityData(grids=tuple(out), multi_study=len(studies) > 1, task=task, on_test=on_test)


def _range(data: StabilityData) -> tuple[float, float]:
    vals = [v for g in data.grids for row in g.acc for v in row if math.isfinite(v)]
    return (min(vals), max(vals)) if vals else (0.0, 100.0)


def _band_rows(g: StabilityGrid, j: int) -> tuple[int, int] | None:
    lo, hi = g.band_lo[j], g.band_hi[j]
    if lo is None or hi is None:
        return None
    return g.lr_bases.index(lo), g.lr_bases.index(hi)


def render_stability_plotly(data: StabilityData, palette: Palette) -> Any:
    n = len(data.grids)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    titles = [plotly_text(g.title(multi_study=data.multi_study)) for g in data.grids]
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.18
    )
    zmin, zmax = _range(data)
    task = data.task
    unit = f" {task.score_unit}" if task.score_unit else ""
    hover = f"converged, test {task.score_short} %{{z:{task.score_format}}}{unit}"
    shown: set[str] = set()
    for i, g in enumerate(data.grids):
        row, col = i // cols + 1, i % cols + 1
        xs = [str(b) for b in g.batch_sizes]
        ys = lr_texts(g.lr_bases)
        fig.add_heatmap(
            x=xs,
            y=ys,
            z=[[v if math.isfinite(v) else None for v in r] for r in g.acc],
            text=[
                [format(v, task.score_cell_format) if math.isfinite(v) else "" for v in r]
                for r in g.acc
            ],
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=zmin,
            zmax=zmax,
            showscale=i == 0,
            colorbar={"title": {"text": task.score_axis("test", short=True)}},
            hovertemplate=f"batch size %{{x}}<br>lr_base %{{y}}<br>{hover}<extra></extra>",
            xgap=2,
            ygap=2,
            row=row,
            col=col,
        )
        for status, (text, symbol, _, color) in MARKS.items():
            pts = [
                (xs[j], ys[k])
                for k in range(len(g.lr_bases))
                for j in range(len(g.batch_sizes))
                if g.status[k][j] == status
            ]
            if pts:
                fig.add_trace(
                    go.Scatter(
                        x=[p[0] for p in pts],
                        y=[p[1] for p in pts],
                        mode="markers",
                        marker={
                            "symbol": symbol,
                            "size": 16,
                            "color": color,
                            "line": {"width": 3, "color": color},
                        },
                        name=text,
                        legendgroup=status,
                        showlegend=status not in shown,
                        hovertemplate=f"batch size %{{x}}<br>lr_base %{{y}}<br>{status}"
                        "<extra></extra>",
                    ),
                    row=row,
                    col=col,
                )
                shown.add(status)
        label = dict(zip(g.lr_bases, ys, strict=True))
        best = [(xs[j], label.get(lr, lr_text(lr))) for j, lr in enumerate(g.best_lr) if lr]
        if best:
            fig.add_trace(
                go.Scatter(
                    x=[p[0] for p in best],
                    y=[p[1] for p in best],
                    mode="markers",
                    marker={"symbol": "star", "size": 11, "color": "#ffd400", "line": {"width": 1}},
                    name=data.best_label,
                    legendgroup="best",
                    showlegend="best" not in shown,
                    hovertemplate="batch size %{x}: best lr_base %{y}<extra></extra>",
                ),
                row=row,
                col=col,
            )
            shown.add("best")
        n_ax = "" if i == 0 else str(i + 1)
        for j in range(len(g.batch_sizes)):
            band = _band_rows(g, j)
            if band is not None:
                fig.add_shape(
                    type="rect",
                    x0=j - 0.46,
                    x1=j + 0.46,
                    y0=band[0] - 0.46,
                    y1=band[1] + 0.46,
                    xref=f"x{n_ax}",
                    yref=f"y{n_ax}",
                    line={"color": BAND_COLOR, "width": 2},
                )
        fig.update_xaxes(title_text="batch size", type="category", row=row, col=col)
        fig.update_yaxes(title_text="lr_base", type="category", row=row, col=col)
    height = max(360, 140 + 42 * max(len(g.lr_bases) for g in data.grids)) * rows
    plotly_layout(fig, height=height)
    fig.update_layout(legend={"orientation": "h", "y": -0.12, "x": 0.0})
    fig.add_annotation(
        text="black outline: usable band (lowest to highest converged lr_base)",
        x=1.0,
        y=1.0,
        xref="paper",
        yref="paper",
        xanchor="right",
        yanchor="bottom",
        yshift=24,
        showarrow=False,
        font={"color": "#555", "size": 12},
    )
    return fig


def render_stability_matplotlib(data: StabilityData, palette: Palette) -> MplFigure:
    n = len(data.grids)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    lr_rows = max(len(g.lr_bases) for g in data.grids)
    size = (6.2 * cols + 1, (1.8 + 0.5 * lr_rows) * rows + 0.6)
    fig = MplFigure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    zmin, zmax = _range(data)
    image = None
    for ax, g in zip(axes, data.grids, strict=False):
        image = ax.imshow(g.acc, cmap="Blues", vmin=zmin, vmax=zmax, aspect="auto", origin="lower")
        mid = (zmin + zmax) / 2
        for k in range(len(g.lr_bases)):
            for j in range(len(g.batch_sizes)):
                v, status = g.acc[k][j], g.status[k][j]
                if math.isfinite(v):
                    color = "white" if v > mid else "#222"
                    text = format(v, data.task.score_cell_format)
                    ax.text(j, k, text, ha="center", va="center", fontsize=8, color=color)
                if status in MARKS:
                    _, _, marker, mcolor = MARKS[status]
                    face = "none" if status == "failed" else mcolor
                    ax.plot(j, k, marker=marker, ms=11, mew=2.5, color=mcolor, mfc=face)
        for j in range(len(g.batch_sizes)):
            band = _band_rows(g, j)
            if band is not None:
                ax.add_patch(
                    Rectangle(
                        (j - 0.46, band[0] - 0.46),
                        0.92,
                        band[1] - band[0] + 0.92,
                        fill=False,
                        edgecolor=BAND_COLOR,
                        lw=2,
                    )
                )
            best = g.best_lr[j]
            if best is not None:
                k = g.lr_bases.index(best)
                ax.plot(j + 0.3, k + 0.22, marker="*", ms=12, color="#ffd400", mec="#1a1a1a")
        ax.set_xticks(range(len(g.batch_sizes)), [str(b) for b in g.batch_sizes])
        ax.set_yticks(range(len(g.lr_bases)), lr_texts(g.lr_bases))
        ax.set_xlabel("batch size")
        ax.set_ylabel("lr_base")
        ax.set_title(mpl_text(g.title(multi_study=data.multi_study)))
    for ax in axes[n:]:
        ax.set_visible(False)
    if image is not None:
        label = f"{data.task.score_axis('final test')}, converged cells"
        fig.colorbar(image, ax=list(axes[:n]), label=label)
    handles: list[Artist] = [
        Line2D([], [], ls="", marker=m, ms=9, mew=2, color=c, mfc=c if s != "failed" else "none")
        for s, (_, _, m, c) in MARKS.items()
    ]
    labels = [t for t, _, _, _ in MARKS.values()]
    handles += [
        Rectangle((0, 0), 1, 1, fill=False, edgecolor=BAND_COLOR, lw=2),
        Line2D([], [], ls="", marker="*", ms=12, color="#ffd400", mec="#1a1a1a"),
    ]
    labels += ["usable band", data.best_label]
    ncol = legend_columns(labels, width_in=size[0])
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)
    return fig


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    s = task.score_label
    unit = f", {task.score_unit}" if task.score_unit else ""
    return "Stability over learning rate × batch size, with the usable band", (
        "Each (variant, batch size, lr_base) cell takes the worst status over its seeds:"
        " diverged (a non-finite loss, red cross), failed (an error, grey square), unstable (the"
        " final full-training-set loss is not below the initial one, orange triangle) or"
        f" converged (coloured by the mean final test {s}{unit}). The black outline at each"
        " batch size spans the usable band, from the lowest to the highest converged lr_base; the"
        f" star marks the converged lr_base with the best mean validation {s} (test {s}"
        " is shown, not used to choose). Control runs are left out. One panel per variant that"
        " tried at least two learning rates (Masters & Luschi 2018)."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[StabilityData](
    name="stability",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_stability,
    render_plotly=render_stability_plotly,
    render_matplotlib=render_stability_matplotlib,
    text=figure_text,
)
