"""Panels of labelled lines: the shape of the probe and design figures.

Unlike `_panels` (one line per study at one lr_base), a `Line` here is anything with a label: a
batch size (`batch_size` set: the line takes that batch size's colour), or a variant, a budget or
a fitted line (`color`/`dash` index the series colours and dashes). On a batch-size x axis the
markers carry the batch-size colour, as everywhere in the report. Bands are mean ± 1 std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from matplotlib.axes import Axes
from matplotlib.figure import Figure as MplFigure
from matplotlib.typing import LineStyleType
from plotly.subplots import make_subplots

from batchlab.report.figures._style import (
    band_edges,
    mpl_axes,
    mpl_bs_axis,
    mpl_log,
    plotly_bs_axis,
    plotly_layout,
    plotly_log_axis,
)
from batchlab.report.palette import SERIES_COLORS, Palette, mpl_text, plotly_text

XKind = Literal["batch", "log", "linear"]
PLOTLY_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
MPL_DASHES: tuple[LineStyleType, ...] = ("-", "--", ":", "-.", (0, (8, 3)), (0, (8, 3, 2, 3)))


@dataclass(frozen=True, kw_only=True)
class Line:
    """One labelled line; `std` (same length as `y`, NaN where unknown) draws a band."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    std: tuple[float, ...] = ()
    batch_size: int | None = None  # colour of this batch size; else SERIES_COLORS[color]
    color: int = 0
    dash: int = 0
    markers: bool = True


@dataclass(frozen=True, kw_only=True)
class LinePanel:
    title: str
    x_label: str
    y_label: str
    x_kind: XKind
    log_y: bool
    lines: tuple[Line, ...]
    origin: bool = False  # both axes start at 0 (a line through the origin should look like one)
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class LinesData:
    batch_sizes: tuple[int, ...]  # the ticks of batch-size axes
    panels: tuple[LinePanel, ...]
    columns: int = 3


def line_color(line: Line, palette: Palette) -> str:
    if line.batch_size is not None:
        return palette.bs_color(line.batch_size)
    return SERIES_COLORS[line.color % len(SERIES_COLORS)]


def log_safe(values: Sequence[float]) -> bool:
    """Whether every finite value is positive (so a log axis shows them all)."""
    finite = [v for v in values if math.isfinite(v)]
    return bool(finite) and all(v > 0 for v in finite)


def wide_log(values: Sequence[float], *, factor: float = 4.0) -> bool:
    """Whether a log axis helps: every finite value positive and spanning `factor` or more."""
    finite = [v for v in values if math.isfinite(v)]
    return log_safe(finite) and max(finite) >= factor * min(finite)


def _points(line: Line, panel: LinePanel) -> list[tuple[float, float, float]]:
    """(x, y, std) with non-finite y dropped, and non-positive values dropped on log axes."""
    stds = line.std or (math.nan,) * len(line.y)
    out = []
    for x, y, s in zip(line.x, line.y, stds, strict=True):
        if not math.isfinite(y) or not math.isfinite(x):
            continue
        if (panel.x_kind != "linear" and x <= 0) or (panel.log_y and y <= 0):
            continue
        out.append((x, y, s))
    return out


def _ys(panel: LinePanel, *, bands: bool = False) -> list[float]:
    """Every y a panel draws; with `bands`, the band edges too (what log ticks must cover)."""
    out: list[float] = []
    for line in panel.lines:
        pts = _points(line, panel)
        out.extend(y for _, y, _ in pts)
        band = band_edges([y for _, y, _ in pts], [s for _, _, s in pts], log=panel.log_y)
        if bands and band is not None:
            out.extend(band[0] + band[1])
    return out


def _xs(panel: LinePanel) -> list[float]:
    return [x for line in panel.lines for x, _, _ in _points(line, panel)]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _grid(data: LinesData) -> tuple[int, int]:
    cols = max(1, min(data.columns, len(data.panels)))
    return (len(data.panels) + cols - 1) // cols, cols


def render_lines_plotly(data: LinesData, palette: Palette) -> Any:
    rows, cols = _grid(data)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[plotly_text(p.title) for p in data.panels],
        horizontal_spacing=0.1 if cols > 1 else 0.0,
        vertical_spacing=0.2 if rows > 1 else 0.0,
    )
    seen: set[str] = set()
    for i, panel in enumerate(data.panels):
        row, col = i // cols + 1, i % cols + 1
        for line in panel.lines:
            pts = _points(line, panel)
            if not pts:
                continue
            xs, ys, ss = (list(v) for v in zip(*pts, strict=True))
            label = plotly_text(line.label)
            color = line_color(line, palette)
            band = band_edges(ys, ss, log=panel.log_y)
            if band is not None:
                hi, lo = band
                fig.add_scatter(
                    x=[*xs, *reversed(xs)],
                    y=[*hi, *reversed(lo)],
                    mode="lines",  # the default adds markers at the band's corners
                    fill="toself",
                    fillcolor=_rgba(color, 0.13),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=label,
                    row=row,
                    col=col,
                )
            marker: dict[str, Any] = {"size": 9 if panel.x_kind == "batch" else 5, "color": color}
            if panel.x_kind == "batch":
                marker["color"] = [palette.bs_color(round(x)) for x in xs]
                marker["line"] = {"color": color, "width": 1.5}
            hover = [
                f"{label}<br>{plotly_text(panel.x_label)}: {_fmt(x)}"
                f"<br>{plotly_text(panel.y_label)}: {_fmt(y)}"
                + (f" ± {_fmt(s)}" if math.isfinite(s) else "")
                for x, y, s in pts
            ]
            fig.add_scatter(
                x=xs,
                y=ys,
                mode="lines+markers" if line.markers else "lines",
                name=label,
                legendgroup=label,
                showlegend=label not in seen,
                line={
                    "color": color,
                    "dash": PLOTLY_DASHES[line.dash % len(PLOTLY_DASHES)],
                    "width": 2,
                },
                marker=marker,
                text=hover,
                hoverinfo="text",
                row=row,
                col=col,
            )
            seen.add(label)
        if panel.note:
            n = "" if i == 0 else str(i + 1)
            fig.add_annotation(
                x=0.5,
                y=0.5,
                xref=f"x{n} domain",
                yref=f"y{n} domain",
                text=plotly_text(panel.note),
                showarrow=False,
                font={"color": "#777", "size": 13},
            )
        if panel.x_kind == "batch":
            plotly_bs_axis(fig, data.batch_sizes, row=row, col=col)
        else:
            fig.update_xaxes(
                title_text=plotly_text(panel.x_label),
                **(plotly_log_axis(_xs(panel)) if panel.x_kind == "log" else {"type": "linear"}),
                rangemode="tozero" if panel.origin else "normal",
                row=row,
                col=col,
            )
        fig.update_yaxes(
            title_text=plotly_text(panel.y_label),
            **(plotly_log_axis(_ys(panel, bands=True)) if panel.log_y else {"type": "linear"}),
            rangemode="tozero" if panel.origin else "normal",
            row=row,
            col=col,
        )
    plotly_layout(fig, height=80 + 380 * rows)
    fig.update_layout(legend={"orientation": "h", "y": -0.1 - 0.15 / rows, "x": 0.0})
    return fig


def _mpl_panel(ax: Axes, panel: LinePanel, data: LinesData, palette: Palette) -> None:
    mpl_axes(ax)
    for line in panel.lines:
        pts = _points(line, panel)
        if not pts:
            continue
        xs, ys, ss = (list(v) for v in zip(*pts, strict=True))
        color = line_color(line, palette)
        band = band_edges(ys, ss, log=panel.log_y)
        if band is not None:
            ax.fill_between(
                xs,
                band[1],
                band[0],
                color=color,
                alpha=0.13,
                lw=0,
            )
        ax.plot(
            xs,
            ys,
            color=color,
            linestyle=MPL_DASHES[line.dash % len(MPL_DASHES)],
            lw=1.8,
            marker="o" if line.markers and panel.x_kind != "batch" else None,
            ms=3,
            label=mpl_text(line.label),
            zorder=2,
        )
        if panel.x_kind == "batch":
            ax.scatter(
                xs,
                ys,
                c=[palette.bs_color(round(x)) for x in xs],
                edgecolors=color,
                s=46,
                zorder=3,
            )
    if panel.note:
        ax.text(0.5, 0.5, mpl_text(panel.note), transform=ax.transAxes, ha="center", color="#777")
    if panel.log_y:
        ax.set_yscale("log")
        mpl_log(ax.yaxis)
    if panel.x_kind == "batch":
        mpl_bs_axis(ax, data.batch_sizes)
    else:
        if panel.x_kind == "log":
            ax.set_xscale("log")
            mpl_log(ax.xaxis)
        ax.set_xlabel(mpl_text(panel.x_label))
    if panel.origin:
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    ax.set_title(mpl_text(panel.title))
    ax.set_ylabel(mpl_text(panel.y_label))


def render_lines_matplotlib(data: LinesData, palette: Palette) -> MplFigure:
    rows, cols = _grid(data)
    width = 5.6 * cols if cols > 1 else 8.5
    fig = MplFigure(figsize=(width, 4.2 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, panel in enumerate(data.panels):
        _mpl_panel(axes[i // cols][i % cols], panel, data, palette)
    for j in range(len(data.panels), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(
            handles=list(handles.values()),
            labels=list(handles),
            loc="outside lower center",
            ncol=legend_columns(list(handles), width_in=width),
            frameon=False,
        )
    return fig


def legend_columns(labels: Sequence[str], *, width_in: float) -> int:
    """As many legend columns as fit the figure's width (about 0.075 in per character)."""
    entry_in = 0.6 + 0.075 * max((len(s) for s in labels), default=1)
    return max(1, min(len(labels), int(width_in / entry_in)))
