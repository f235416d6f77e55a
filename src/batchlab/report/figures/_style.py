"""Shared look: plotly layout defaults, matplotlib axes setup, batch-size axis ticks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

FONT = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"
GRID = "#e6e6e6"


def band_edges(
    mean: Sequence[float], std: Sequence[float], *, log: bool
) -> tuple[list[float], list[float]] | None:
    """Upper and lower edge of a mean ± std band; None when no point has a spread.

    A point without a spread (NaN std) gets zero width. On a log axis an edge at or below zero
    cannot be drawn (plotly and matplotlib then drop or smear the band): it is clipped to half the
    smallest positive mean or edge, so the band runs visibly past the lowest point instead.
    """
    if all(not math.isfinite(d) for d in std):
        return None
    half = [d if math.isfinite(d) else 0.0 for d in std]
    hi = [m + h for m, h in zip(mean, half, strict=True)]
    lo = [m - h for m, h in zip(mean, half, strict=True)]
    if log:
        positive = [v for v in (*mean, *lo) if math.isfinite(v) and v > 0]
        floor = min(positive) / 2 if positive else 1.0
        lo = [v if v > 0 else floor for v in lo]
    return hi, lo


def _tick_text(v: float) -> str:
    return f"{v:,.0f}" if v >= 1e4 else f"{v:g}"


def log_ticks(values: Sequence[float]) -> tuple[list[float], list[str]] | None:
    """Tick positions and labels at 1, 2, 5 × 10^k for a log axis over `values`.

    Plotly's own log ticks label 2 and 5 in a smaller font than the decades (and over a narrow
    range label only one decade): explicit ticks give every label the same size. None when fewer
    than two such ticks fall inside the range (plotly's own ticks are then fine).
    """
    finite = [v for v in values if math.isfinite(v) and v > 0]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    ticks = [
        m * 10.0**e
        for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
        for m in (1.0, 2.0, 5.0)
    ]
    # one tick either side of the data, so the ends of the (padded) axis carry a label too
    below = [t for t in ticks if t < lo * (1 - 1e-9)]
    above = [t for t in ticks if t > hi * (1 + 1e-9)]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    if len(inside) < 2:
        return None
    vals = [*below[-1:], *inside, *above[:1]]
    return vals, [_tick_text(float(f"{v:.3g}")) for v in vals]


def plotly_log_axis(values: Sequence[float]) -> dict[str, Any]:
    """Keyword arguments for `update_xaxes`/`update_yaxes` that make a readable log axis."""
    ticks = log_ticks(values)
    if ticks is None:
        return {"type": "log"}
    return {"type": "log", "tickmode": "array", "tickvals": ticks[0], "ticktext": ticks[1]}


def plotly_layout(fig: Any, *, height: int = 420) -> None:
    """White background, light grid, legend on the right, room for axis titles."""
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
        font={"family": FONT, "size": 13},
        hoverlabel={"font": {"family": FONT}},
        legend={"title": {"text": ""}},
    )


def plotly_bs_axis(fig: Any, sizes: Sequence[int], *, row: int, col: int) -> None:
    """Batch size on a log2 axis with one labelled tick per searched size."""
    fig.update_xaxes(
        type="log",
        tickvals=list(sizes),
        ticktext=[str(b) for b in sizes],
        title_text="batch size (samples per update, log₂ scale)",
        row=row,
        col=col,
    )


def mpl_bs_axis(ax: Axes, sizes: Sequence[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(sizes), [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size (log₂ scale)")


def mpl_axes(ax: Axes) -> None:
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def mpl_log(axis: Axis) -> None:
    """Log scale with plain tick labels at 1, 2, 5 × 10^k (no 3×10⁻¹ style labels)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: _tick_text(v)))
    axis.set_minor_formatter(NullFormatter())
