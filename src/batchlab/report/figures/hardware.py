"""The hardware profile of the study's model (`batchlab profile`): throughput, peak memory and
fraction of the matmul peak against batch size, with the knee and the largest batch that fits.

The profile is read from the study's store (the newest one of the same model on the same data);
a study without one leaves the figure out. `batchlab profile --study NAME` makes one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from matplotlib.figure import Figure as MplFigure
from plotly.subplots import make_subplots

from batchlab.report._types import ProfileSource, StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._style import (
    mpl_axes,
    mpl_bs_axis,
    mpl_log,
    plotly_bs_axis,
    plotly_layout,
    plotly_log_axis,
)
from batchlab.report.palette import Palette, mpl_text, plotly_text

MIB = 2.0**20
PANELS = (
    ("Throughput", "samples/s, log scale", "samples_per_s"),
    ("Peak memory", "MiB", "peak_mib"),
    ("Fraction of matmul peak", "%", "percent_of_peak"),
)


@dataclass(frozen=True, kw_only=True)
class HardwareData:
    """One profile, as plotted: a row per profiled batch size, plus what the profile found."""

    device: str
    threads: int
    measured: str  # UTC date and time of the profile
    batch_sizes: tuple[int, ...]
    samples_per_s: tuple[float, ...]
    peak_mib: tuple[float, ...]
    percent_of_peak: tuple[float, ...]
    knee: int
    knee_saturated: bool
    max_batch: int
    margin: float
    trained: tuple[int, ...]  # batch sizes the study trained at
    capped_at_train: bool = False  # the whole training set fits: memory is not the limit

    def summary(self) -> str:
        knee = (
            f"throughput stops improving at B={self.knee}"
            if self.knee_saturated
            else f"throughput still rising at B={self.knee}"
        )
        fits = f"largest batch that fits ({self.margin:.0%} margin): {self.max_batch:,}"
        if self.capped_at_train:
            fits += " = the whole training set"
        return f"{self.device}, {self.threads} thread(s), {self.measured}: {knee}; {fits}"


def extract_hardware(studies: Sequence[StudyLike]) -> HardwareData | None:
    """The newest stored profile of the first study that has one (None: no profile)."""
    for study in studies:
        if not isinstance(study, ProfileSource):
            continue
        profiles = study.hardware_profiles()
        if not profiles:
            continue
        created, device, prof = profiles[0]
        rows = sorted(prof["rows"], key=lambda r: int(r["batch_size"]))
        if not rows:
            continue
        return HardwareData(
            device=device,
            threads=int(prof["threads"]),
            measured=datetime.fromtimestamp(created, tz=UTC).strftime("%Y-%m-%d %H:%M UTC"),
            batch_sizes=tuple(int(r["batch_size"]) for r in rows),
            samples_per_s=tuple(float(r["samples_per_s"]) for r in rows),
            peak_mib=tuple(float(r["peak_mem_bytes"]) / MIB for r in rows),
            percent_of_peak=tuple(100.0 * float(r["fraction_of_peak"]) for r in rows),
            knee=int(prof["knee_batch_size"]),
            knee_saturated=bool(prof["knee_saturated"]),
            max_batch=int(prof["max_batch_size"]),
            margin=float(prof["margin"]),
            trained=tuple(sorted({t.batch_size for t in study.trials})),
            capped_at_train=bool(prof.get("capped_at_train", False)),
        )
    return None


def _values(data: HardwareData, attr: str) -> list[float]:
    values: tuple[float, ...] = getattr(data, attr)
    return list(values)


def render_hardware_plotly(data: HardwareData, palette: Palette) -> Any:
    fig = make_subplots(
        rows=1, cols=len(PANELS), subplot_titles=[p[0] for p in PANELS], horizontal_spacing=0.1
    )
    colors = [palette.bs_color(b) for b in data.batch_sizes]
    for col, (title, unit, attr) in enumerate(PANELS, start=1):
        ys = _values(data, attr)
        fig.add_scatter(
            x=list(data.batch_sizes),
            y=ys,
            mode="lines+markers",
            name=title,
            showlegend=False,
            line={"color": "#1a1a1a", "width": 2},
            marker={"color": colors, "size": 9, "line": {"color": "white", "width": 1}},
            hovertext=[
                f"batch size {b}<br>{title}: {y:,.3g} {unit}"
                for b, y in zip(data.batch_sizes, ys, strict=True)
            ],
            hoverinfo="text",
            row=1,
            col=col,
        )
        if data.knee_saturated:
            fig.add_vline(x=data.knee, line={"color": "#7f7f7f", "dash": "dash"}, row=1, col=col)
        plotly_bs_axis(fig, data.batch_sizes, row=1, col=col)
        fig.update_yaxes(title_text=f"{title.lower()} ({unit})", row=1, col=col)
        if col == 1 and all(y > 0 and math.isfinite(y) for y in ys):
            fig.update_yaxes(**plotly_log_axis(ys), row=1, col=col)
    fig.update_layout(
        title={"text": plotly_text(data.summary()), "font": {"size": 13}, "x": 0.0},
    )
    plotly_layout(fig, height=400)
    fig.update_layout(margin={"t": 90})
    return fig


def render_hardware_matplotlib(data: HardwareData, palette: Palette) -> MplFigure:
    fig = MplFigure(figsize=(13.5, 4.0), layout="constrained")
    axes = fig.subplots(1, len(PANELS))
    colors = [palette.bs_color(b) for b in data.batch_sizes]
    for ax, (title, unit, attr) in zip(axes, PANELS, strict=True):
        ys = _values(data, attr)
        ax.plot(data.batch_sizes, ys, color="#1a1a1a", linewidth=1.8, zorder=2)
        ax.scatter(data.batch_sizes, ys, c=colors, s=40, edgecolors="white", zorder=3)
        if data.knee_saturated:
            ax.axvline(data.knee, color="#7f7f7f", linestyle="--", linewidth=1)
        mpl_bs_axis(ax, data.batch_sizes)
        if attr == "samples_per_s" and all(y > 0 and math.isfinite(y) for y in ys):
            ax.set_yscale("log")
            mpl_log(ax.yaxis)
        ax.set_title(title)
        ax.set_ylabel(f"{title.lower()} ({unit})")
        mpl_axes(ax)
    fig.supxlabel(mpl_text(data.summary()), fontsize=10)
    return fig


FIGURE = Figure[HardwareData](
    name="hardware",
    title="Hardware profile of this model",
    description=(
        "From `batchlab profile` on this study's model and data (the newest stored profile):"
        " steady-state training samples per second, peak memory (CUDA: max allocated; CPU: peak"
        " resident set during the timed steps) and the share of the measured float32 matmul peak"
        " that the training FLOPs reach, per batch size. Dashed line (when reached): the knee,"
        " where a doubling of the batch gains under 10% throughput. One measurement per size,"
        " no band."
    ),
    extract=extract_hardware,
    render_plotly=render_hardware_plotly,
    render_matplotlib=render_hardware_matplotlib,
)
