"""Shared look: plotly layout defaults, matplotlib axes setup, batch-size axis ticks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

FONT = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"
GRID = "#e6e6e6"


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
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
