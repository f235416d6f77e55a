"""Side-by-side panels of per-series values against batch size: the shape of most figures.

`PanelsData` is plain numbers; `render_panels_plotly` and `render_panels_matplotlib` draw it:
one line per series (a study at one lr_base) in the series colour, markers in the batch-size
colour, a band of mean ± 1 std over seeds, stars on marked points and red crosses along the
bottom edge where trials diverged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
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
from batchlab.report.palette import DIVERGED_COLOR, Palette, mpl_text, plotly_text
from batchlab.report.stats import Cell, SeriesKey, Stat


@dataclass(frozen=True, kw_only=True)
class Series:
    """One line: mean and std over seeds at each batch size that has a value."""

    key: SeriesKey
    batch_sizes: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    n: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class Mark:
    """A point to point out (a best result), or trials that diverged at a batch size."""

    key: SeriesKey
    batch_size: int
    value: float
    text: str


@dataclass(frozen=True, kw_only=True)
class Panel:
    title: str
    y_label: str
    unit: str  # "" for a plain number (R²): the axis is then labelled `y_label` alone
    log_y: bool
    series: tuple[Series, ...]
    marks: tuple[Mark, ...] = ()
    diverged: tuple[Mark, ...] = ()
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class PanelsData:
    batch_sizes: tuple[int, ...]
    panels: tuple[Panel, ...]


def series_from_cells(
    cells: Sequence[Cell], stat: Callable[[Cell], Stat], *, scale: float = 1.0
) -> tuple[Series, ...]:
    """One `Series` per key, keeping the batch sizes where the statistic has a value."""
    by_key: dict[SeriesKey, list[tuple[int, Stat]]] = {}
    for c in cells:
        s = stat(c)
        by_key.setdefault(c.key, [])
        if s.n > 0:
            by_key[c.key].append((c.batch_size, s))
    out = []
    for key, pts in by_key.items():
        if not pts:
            continue
        out.append(
            Series(
                key=key,
                batch_sizes=tuple(b for b, _ in pts),
                mean=tuple(s.mean * scale for _, s in pts),
                std=tuple(s.std * scale for _, s in pts),
                n=tuple(s.n for _, s in pts),
            )
        )
    return tuple(out)


def diverged_marks(cells: Sequence[Cell]) -> tuple[Mark, ...]:
    return tuple(
        Mark(
            key=c.key,
            batch_size=c.batch_size,
            value=float(c.n_diverged),
            text=f"{c.n_diverged} of {c.n_trials} diverged",
        )
        for c in cells
        if c.n_diverged > 0
    )


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def _band(s: Series, panel: Panel) -> tuple[list[float], list[float]] | None:
    return band_edges(s.mean, s.std, log=panel.log_y)


def _y_title(panel: Panel) -> str:
    return f"{panel.y_label} ({panel.unit})" if panel.unit else panel.y_label


def _panel_values(panel: Panel) -> list[float]:
    """Every y value a panel draws (means, band edges, marks): what its log ticks must cover."""
    out = [m.value for m in panel.marks]
    for s in panel.series:
        out.extend(s.mean)
        band = _band(s, panel)
        if band is not None:
            out.extend(band[0] + band[1])
    return out


def _with_alpha(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def render_panels_plotly(data: PanelsData, palette: Palette) -> Any:
    n = len(data.panels)
    fig = make_subplots(
        rows=1,
        cols=n,
        subplot_titles=[p.title for p in data.panels],
        horizontal_spacing=0.1 if n > 1 else 0.0,
    )
    legend_seen: set[SeriesKey] = set()
    for col, panel in enumerate(data.panels, start=1):
        for s in panel.series:
            label = plotly_text(palette.label(s.key))
            color = palette.series_color(s.key)
            band = _band(s, panel)
            if band is not None:
                hi, lo = band
                fig.add_scatter(
                    x=[*s.batch_sizes, *reversed(s.batch_sizes)],
                    y=[*hi, *reversed(lo)],
                    mode="lines",  # the default adds markers at the band's corners
                    fill="toself",
                    fillcolor=_with_alpha(color, 0.13),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=label,
                    row=1,
                    col=col,
                )
            hover = [
                f"{label}<br>batch size {b}<br>{panel.y_label}: {_fmt(m)}"
                + (f" ± {_fmt(d)}" if math.isfinite(d) else "")
                + (f" {panel.unit}" if panel.unit else "")
                + f"<br>{k} seed{'s' if k != 1 else ''}"
                for b, m, d, k in zip(s.batch_sizes, s.mean, s.std, s.n, strict=True)
            ]
            fig.add_scatter(
                x=list(s.batch_sizes),
                y=list(s.mean),
                mode="lines+markers",
                name=label,
                legendgroup=label,
                showlegend=s.key not in legend_seen,
                line={"color": color, "dash": palette.series_dash_plotly(s.key), "width": 2},
                marker={
                    "color": [palette.bs_color(b) for b in s.batch_sizes],
                    "size": 10,
                    "line": {"color": color, "width": 1.5},
                },
                text=hover,
                hoverinfo="text",
                row=1,
                col=col,
            )
            legend_seen.add(s.key)
        for m in panel.marks:
            fig.add_scatter(
                x=[m.batch_size],
                y=[m.value],
                mode="markers",
                marker={
                    "symbol": "star",
                    "size": 20,
                    "color": "#ffd400",
                    "line": {"color": palette.series_color(m.key), "width": 1.5},
                },
                name=plotly_text(m.text),
                text=[plotly_text(m.text)],
                hoverinfo="text",
                showlegend=False,
                row=1,
                col=col,
            )
        xref = "x" if col == 1 else f"x{col}"
        yref = "y domain" if col == 1 else f"y{col} domain"
        for d in panel.diverged:
            fig.add_annotation(
                x=math.log10(d.batch_size),
                y=0.03,
                xref=xref,
                yref=yref,
                text="✕",
                showarrow=False,
                font={"color": DIVERGED_COLOR, "size": 18},
                hovertext=plotly_text(
                    f"{palette.label(d.key)}, batch size {d.batch_size}: {d.text}"
                ),
            )
        if panel.note:
            fig.add_annotation(
                x=0.5,
                y=0.5,
                xref=f"{xref} domain",
                yref=yref,
                text=plotly_text(panel.note),
                showarrow=False,
                font={"color": "#777", "size": 13},
            )
        plotly_bs_axis(fig, data.batch_sizes, row=1, col=col)
        fig.update_yaxes(
            title_text=_y_title(panel),
            **(plotly_log_axis(_panel_values(panel)) if panel.log_y else {"type": "linear"}),
            row=1,
            col=col,
        )
    plotly_layout(fig, height=440)
    fig.update_layout(legend={"orientation": "h", "y": -0.25, "x": 0.0})
    return fig


def render_panels_matplotlib(data: PanelsData, palette: Palette) -> MplFigure:
    n = len(data.panels)
    fig = MplFigure(figsize=(5.6 * n, 4.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, panel in zip(axes, data.panels, strict=True):
        mpl_axes(ax)
        for s in panel.series:
            color = palette.series_color(s.key)
            band = _band(s, panel)
            if band is not None:
                ax.fill_between(s.batch_sizes, band[1], band[0], color=color, alpha=0.13, lw=0)
            ax.plot(
                s.batch_sizes,
                s.mean,
                color=color,
                linestyle=palette.series_dash_mpl(s.key),
                lw=1.8,
                label=mpl_text(palette.label(s.key)),
                zorder=2,
            )
            ax.scatter(
                s.batch_sizes,
                s.mean,
                c=[palette.bs_color(b) for b in s.batch_sizes],
                edgecolors=color,
                s=46,
                zorder=3,
            )
        for m in panel.marks:
            ax.scatter(
                [m.batch_size],
                [m.value],
                marker="*",
                s=260,
                c="#ffd400",
                edgecolors=palette.series_color(m.key),
                zorder=4,
            )
        for d in panel.diverged:
            ax.plot(
                [d.batch_size],
                [0.03],
                marker="x",
                color=DIVERGED_COLOR,
                markersize=10,
                mew=2.5,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                zorder=5,
            )
        if panel.note:
            ax.text(
                0.5,
                0.5,
                mpl_text(panel.note),
                transform=ax.transAxes,
                ha="center",
                color="#777",
            )
        if panel.log_y:
            ax.set_yscale("log")
            mpl_log(ax.yaxis)
        mpl_bs_axis(ax, data.batch_sizes)
        ax.set_title(mpl_text(panel.title))
        ax.set_ylabel(_y_title(panel))
    handles, labels = axes[0].get_legend_handles_labels()
    extra = []
    if any(p.marks for p in data.panels):
        extra.append(
            Line2D([], [], marker="*", ls="", ms=14, mfc="#ffd400", mec="#1a1a1a", label="best")
        )
    if any(p.diverged for p in data.panels):
        extra.append(
            Line2D([], [], marker="x", ls="", ms=9, mew=2.5, color=DIVERGED_COLOR, label="diverged")
        )
    if handles or extra:
        fig.legend(
            handles=[*handles, *extra],
            labels=[*labels, *(h.get_label() for h in extra)],
            loc="outside lower center",
            ncol=min(6, len(handles) + len(extra)),
            frameon=False,
        )
    return fig
