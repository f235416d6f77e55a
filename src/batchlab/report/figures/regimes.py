"""Shallue et al.'s (2019) scaling regimes: steps to a target against batch size (log-log), the
perfect-scaling line S(B_0) B_0 / B, and where perfect scaling ends and maximal data
parallelism begins (`batchlab.analysis.regimes`).

Same target and points as the critical-batch figure (0.98 of the best validation score, each
batch size at its fastest lr). One panel per (study, variant); a (study, variant) without a
fit or with too few batch sizes is left out and named in a note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure as MplFigure
from plotly.subplots import make_subplots

from batchlab.analysis.critical import CriticalBatchError, critical_batch_size, default_target
from batchlab.analysis.regimes import Regimes, scaling_regimes
from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import legend_columns
from batchlab.report.figures._style import (
    mpl_axes,
    mpl_bs_axis,
    mpl_log,
    plotly_bs_axis,
    plotly_layout,
    plotly_log_axis,
)
from batchlab.report.palette import Palette, mpl_text, plotly_text
from batchlab.report.stats import sweep_trials
from batchlab.tasks.base import TaskInfo

MEASURED = "#1a1a1a"
PERFECT = "#7f7f7f"
# the two boundaries: end of perfect scaling, start of maximal data parallelism
MARKS = (("#2ca02c", "end"), ("#d62728", "start"))
PLOTLY_SYMBOLS = ("diamond", "square")
MPL_SYMBOLS = ("D", "s")
# the three regimes' shading: perfect, diminishing returns, maximal data parallelism
SHADES = (
    ("perfect scaling", "#2ca02c"),
    ("diminishing returns", "#ff7f0e"),
    ("maximal data parallelism", "#7f7f7f"),
)
SHADE_ALPHA = 0.08


@dataclass(frozen=True, kw_only=True)
class RegimePanel:
    """One (study, variant): measured steps, the perfect-scaling line and the two boundaries."""

    label: str  # "study · variant", "" for a single study without variants
    batch_sizes: tuple[int, ...]
    steps: tuple[float, ...]
    steps_std: tuple[float, ...]
    perfect: tuple[float, ...]  # S(B_0) B_0 / B at each measured batch size
    perfect_end: float | None
    perfect_end_steps: float  # measured steps (log-log interpolated) there; NaN when None
    maximal_start: int | None
    maximal_start_steps: float
    summary: tuple[str, str]  # the two boundaries in words (`Regimes.perfect_text`, ...)

    def spans(self) -> list[tuple[str, str, float, float]]:
        """(regime, colour, from, to) of each regime seen in the measured range."""
        lo, hi = float(self.batch_sizes[0]), float(self.batch_sizes[-1])
        end = hi if self.perfect_end is None else self.perfect_end
        start = hi if self.maximal_start is None else float(max(self.maximal_start, end))
        edges = (lo, end, start, hi)
        return [
            (name, color, a, b)
            for (name, color), a, b in zip(SHADES, edges, edges[1:], strict=False)
            if b > a
        ]

    def marks(self) -> tuple[tuple[float | None, float], tuple[float | None, float]]:
        """(batch size, measured steps there) of the two boundaries (None: not reached)."""
        return (
            (self.perfect_end, self.perfect_end_steps),
            (
                None if self.maximal_start is None else float(self.maximal_start),
                self.maximal_start_steps,
            ),
        )

    def title(self) -> str:
        hi = self.batch_sizes[-1]
        end = (
            f"perfect scaling past B = {hi}"
            if self.perfect_end is None
            else f"perfect scaling to B ≈ {self.perfect_end:.3g}"
        )
        start = (
            f"maximal not reached by B = {hi}"
            if self.maximal_start is None
            else f"maximal from B = {self.maximal_start}"
        )
        head = f"{self.label}: " if self.label else ""
        return f"{head}{end}, {start}"


@dataclass(frozen=True, kw_only=True)
class RegimesData:
    target: str
    tolerance: float
    min_gain: float
    batch_sizes: tuple[int, ...]  # ticks of the batch-size axes
    panels: tuple[RegimePanel, ...]
    note: str = ""  # the (study, variant)s left out


def _panel(label: str, r: Regimes, stds: Sequence[float]) -> RegimePanel:
    def at(b: float | None) -> float:
        return math.nan if b is None else r.steps_at(b)

    return RegimePanel(
        label=label,
        batch_sizes=r.batch_sizes,
        steps=r.steps,
        steps_std=tuple(stds),
        perfect=tuple(r.perfect_steps(b) for b in r.batch_sizes),
        perfect_end=r.perfect_end,
        perfect_end_steps=at(r.perfect_end),
        maximal_start=r.maximal_start,
        maximal_start_steps=at(r.maximal_start),
        summary=(r.perfect_text(), r.maximal_text()),
    )


def extract_regimes(studies: Sequence[StudyLike]) -> RegimesData | None:
    """None when no (study, variant) gives a fit with `MIN_BATCH_SIZES` points."""
    panels, failed, target = [], [], ""
    regimes: Regimes | None = None
    for s in studies:
        sweep = [t for t in sweep_trials(s) if not t.params.get("control")]
        for variant in sorted({str(t.params.get("variant", "")) for t in sweep}):
            label = " · ".join(p for p in (s.name if len(studies) > 1 else "", variant) if p)
            try:
                fit = critical_batch_size(sweep, default_target(sweep), variant=variant, n_boot=0)
                regimes = scaling_regimes(fit.points)
            except CriticalBatchError:
                failed.append(label or s.name)
                continue
            target = target or fit.target.describe()
            panels.append(_panel(label, regimes, [p.steps_std for p in fit.points]))
    if not panels or regimes is None:
        return None
    return RegimesData(
        target=target,
        tolerance=regimes.tolerance,
        min_gain=regimes.min_gain,
        batch_sizes=tuple(sorted({b for p in panels for b in p.batch_sizes})),
        panels=tuple(panels),
        note=f"no regimes for: {', '.join(failed)}" if failed else "",
    )


def _labels(data: RegimesData, panel: RegimePanel) -> dict[str, str]:
    tol, gain = f"{data.tolerance:.0%}", f"{data.min_gain:.0%}"
    return {
        "measured": f"steps to {data.target}, best lr per B",
        "perfect": f"perfect scaling S(B₀)·B₀/B, B₀ = {panel.batch_sizes[0]}",
        "end": f"end of perfect scaling (steps {tol} over it)",
        "start": f"start of maximal batch (a doubling saves < {gain})",
    }


def _grid(n: int) -> tuple[int, int]:
    cols = min(2, n)
    return (n + cols - 1) // cols, cols


def _ys(panel: RegimePanel) -> list[float]:
    return [v for v in (*panel.steps, *panel.perfect) if math.isfinite(v) and v > 0]


def render_regimes_plotly(data: RegimesData, palette: Palette) -> Any:
    rows, cols = _grid(len(data.panels))
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[plotly_text(p.title()) for p in data.panels],
        horizontal_spacing=0.1 if cols > 1 else 0.0,
        vertical_spacing=0.2 if rows > 1 else 0.0,
    )
    seen: set[str] = set()

    def legend(key: str) -> dict[str, Any]:
        shown = key not in seen
        seen.add(key)
        return {"name": plotly_text(key), "legendgroup": key, "showlegend": shown}

    for i, panel in enumerate(data.panels):
        row, col = i // cols + 1, i % cols + 1
        labels = _labels(data, panel)
        for name, color, a, b in panel.spans():
            fig.add_vrect(
                x0=a,
                x1=b,
                fillcolor=color,
                opacity=SHADE_ALPHA * 2,
                line_width=0,
                layer="below",
                row=row,
                col=col,
                **legend(f"regime: {name}"),
            )
        bs = list(panel.batch_sizes)
        fig.add_scatter(
            x=bs,
            y=list(panel.perfect),
            mode="lines",
            line={"color": PERFECT, "dash": "dash", "width": 1.8},
            hoverinfo="skip",
            row=row,
            col=col,
            **legend(labels["perfect"]),
        )
        fig.add_scatter(
            x=bs,
            y=list(panel.steps),
            mode="lines+markers",
            line={"color": MEASURED, "width": 2},
            marker={
                "color": [palette.bs_color(b) for b in bs],
                "size": 9,
                "line": {"color": MEASURED, "width": 1.5},
            },
            text=[
                f"batch size {b}<br>steps {s:.4g}"
                + (f" ± {d:.3g}" if math.isfinite(d) else "")
                + f"<br>perfect scaling {p:.4g} ({s / p:.2f}×)"
                for b, s, d, p in zip(bs, panel.steps, panel.steps_std, panel.perfect, strict=True)
            ],
            hoverinfo="text",
            row=row,
            col=col,
            **legend(labels["measured"]),
        )
        for which, (at_b, at_s) in enumerate(panel.marks()):
            if at_b is None:
                continue
            color, key = MARKS[which]
            line = {"color": color, "dash": "dot", "width": 1.2}
            fig.add_vline(x=at_b, line=line, row=row, col=col)
            fig.add_scatter(
                x=[at_b],
                y=[at_s],
                mode="markers",
                marker={
                    "symbol": PLOTLY_SYMBOLS[which],
                    "size": 13,
                    "color": color,
                    "line": {"color": "white", "width": 1},
                },
                text=[plotly_text(f"B = {at_b:.4g}: {panel.summary[which]}")],
                hoverinfo="text",
                row=row,
                col=col,
                **legend(labels[key]),
            )
        plotly_bs_axis(fig, data.batch_sizes, row=row, col=col)
        fig.update_yaxes(
            title_text="steps to target (log scale)",
            **plotly_log_axis(_ys(panel)),
            row=row,
            col=col,
        )
    if data.note:
        fig.add_annotation(
            x=0.0,
            y=1.0,
            xref="paper",
            yref="paper",
            yanchor="bottom",
            yshift=28,
            text=plotly_text(data.note),
            showarrow=False,
            font={"color": "#777", "size": 12},
        )
    plotly_layout(fig, height=80 + 400 * rows)
    fig.update_layout(legend={"orientation": "h", "y": -0.12 - 0.15 / rows, "x": 0.0})
    return fig


def render_regimes_matplotlib(data: RegimesData, palette: Palette) -> MplFigure:
    rows, cols = _grid(len(data.panels))
    width = 6.2 * cols if cols > 1 else 8.5
    fig = MplFigure(figsize=(width, 4.4 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for j in range(len(data.panels), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    for i, panel in enumerate(data.panels):
        ax = axes[i // cols][i % cols]
        mpl_axes(ax)
        labels = _labels(data, panel)
        for name, color, a, b in panel.spans():
            ax.axvspan(a, b, color=color, alpha=SHADE_ALPHA, lw=0, label=f"regime: {name}")
        bs = list(panel.batch_sizes)
        ax.plot(bs, panel.perfect, color=PERFECT, ls="--", lw=1.6, label=labels["perfect"])
        ax.plot(bs, panel.steps, color=MEASURED, lw=1.8, zorder=2, label=labels["measured"])
        ax.scatter(
            bs,
            panel.steps,
            c=[palette.bs_color(b) for b in bs],
            edgecolors=MEASURED,
            s=46,
            zorder=3,
        )
        for which, (at_b, at_s) in enumerate(panel.marks()):
            if at_b is None:
                continue
            color, key = MARKS[which]
            symbol = MPL_SYMBOLS[which]
            ax.axvline(at_b, color=color, ls=":", lw=1.2, zorder=1)
            ax.scatter(
                [at_b], [at_s], marker=symbol, s=80, color=color, edgecolors="white", zorder=4
            )
            ax.annotate(
                f"B = {at_b:.3g}",
                (at_b, at_s),
                xytext=(6, 8),
                textcoords="offset points",
                color=color,
                fontsize=9,
                fontweight="bold",
            )
            ax.scatter([], [], marker=symbol, s=80, color=color, label=mpl_text(labels[key]))
        ax.set_yscale("log")
        mpl_log(ax.yaxis)
        mpl_bs_axis(ax, data.batch_sizes)
        ax.set_ylabel("steps to target (log scale)")
        ax.set_title(mpl_text(panel.title()), fontsize=11)
    if data.note:
        fig.suptitle(mpl_text(data.note), color="#777", fontsize=10)
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(
        handles=list(handles.values()),
        labels=list(handles),
        loc="outside lower center",
        ncol=legend_columns(list(handles), width_in=width),
        frameon=False,
    )
    return fig


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    s = task.score_label
    return "Scaling regimes: steps to a target vs batch size", (
        "Steps needed to first reach 0.98 of the best validation"
        f" {s} (test {s} without a validation split) against batch size, both log scale; each"
        " point is a batch size at its lr reaching the target in the fewest steps, mean over"
        " seeds. Dashed: perfect scaling S(B₀)·B₀/B from the smallest batch size B₀. Green"
        " diamond: where perfect scaling ends, the steps first exceed it by 20% (CBS₂₀, Zhang"
        " et al. 2024; interpolated in log B). Red square: where maximal data parallelism"
        " begins, the smallest measured batch size from which every doubling saves under 10% of"
        " the steps. Shading: the three regimes of Shallue et al. 2019 (perfect scaling,"
        " diminishing returns, maximal data parallelism). A boundary not reached in the"
        " measured range is not drawn, and the panel title says so."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[RegimesData](
    name="scaling-regimes",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_regimes,
    render_plotly=render_regimes_plotly,
    render_matplotlib=render_regimes_matplotlib,
    text=figure_text,
)
