"""The critical batch size over training, from a branched study (Merrill et al. 2025).

Left: B_crit(t), CBS_20(t) and B_simple(t) against the reference run's samples (tokens for a
language model) at each branch point, log-log, with 95% intervals over seeds as error bars; a
CBS_20 beyond the largest branch batch size is a bound, drawn as an upward triangle at B_max.
Right: at each branch point, the steps its branches need to reach the point's target against
batch size, with the fitted S(B) = S_min + E_min / B (one colour per point). The numbers are
`batchlab.analysis.branched.branched_critical`'s, as `batchlab critical NAME` prints them; a
point without a number is left out and its reason named in a note. One row per branched study.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure as MplFigure
from matplotlib.transforms import offset_copy
from plotly.subplots import make_subplots

from batchlab.analysis.branched import BranchedResult, PointResult, branched_critical, is_branch
from batchlab.analysis.critical import CriticalBatchError
from batchlab.analysis.critical import Interval as CI
from batchlab.report._types import ProbeSource, StudyLike
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
from batchlab.tasks.base import TaskInfo

# the three estimates: (key, legend label, colour, matplotlib marker, plotly symbol)
SERIES = (
    ("b_crit", "B_crit (fit of S(B) = S_min + E_min/B)", "#1a1a1a", "o", "circle"),
    ("cbs20", "CBS₂₀ (samples 20% over perfect scaling)", "#d62728", "s", "square"),
    ("b_simple", "B_simple (noise scale of the reference)", "#7f7f7f", "D", "diamond"),
)
BOUND_LABEL = "CBS₂₀ > B_max (beyond the largest batch size reaching the target)"
RANGE_COLOR = "#1f77b4"
_POINT_RAMP, _POINT_END = "plasma", 0.82  # the points' colours: not the batch sizes' viridis


def point_color(i: int, n: int) -> str:
    """Colour of branch point i of n: early points dark, late ones bright."""
    t = 0.0 if n <= 1 else i / (n - 1)
    return str(to_hex(colormaps[_POINT_RAMP](_POINT_END * t)))


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """One estimate at one branch point; lo/hi NaN without an interval."""

    at: float  # the reference's samples (or tokens) at the point
    value: float
    lo: float = math.nan
    hi: float = math.nan


@dataclass(frozen=True, kw_only=True)
class StepsCurve:
    """One branch point's steps to its target against batch size (NaN: not reached)."""

    point: int
    label: str
    batch_sizes: tuple[int, ...]
    steps: tuple[float, ...]
    fit_b: tuple[float, ...] = ()  # the fitted hyperbola over the batch sizes that reached the
    # target, drawn dashed; empty without a fit
    fit_s: tuple[float, ...] = ()

    def unreached(self) -> tuple[int, ...]:
        return tuple(
            b for b, s in zip(self.batch_sizes, self.steps, strict=True) if not math.isfinite(s)
        )


@dataclass(frozen=True, kw_only=True)
class BranchedRow:
    """One branched study: its estimates over training and its per-point S(B) curves."""

    study: str
    unit: str  # "samples" or "tokens"
    reference_batch_size: int
    seeds: int
    b_crit: tuple[Estimate, ...]
    cbs20: tuple[Estimate, ...]
    cbs20_above: tuple[Estimate, ...]  # value = B_max, the bound
    b_simple: tuple[Estimate, ...]
    curves: tuple[StepsCurve, ...]
    branch_sizes: tuple[int, int]  # the smallest and largest branch batch size
    notes: tuple[str, ...]  # points without a number, why; the seeds' CI note

    def series(self) -> list[tuple[str, str, str, str, str, tuple[Estimate, ...]]]:
        by_key = {"b_crit": self.b_crit, "cbs20": self.cbs20, "b_simple": self.b_simple}
        return [(*s, by_key[s[0]]) for s in SERIES]

    def values(self) -> list[float]:
        """Every batch size the left panel draws (for its log ticks)."""
        out = [float(b) for b in self.branch_sizes]
        for e in (*self.b_crit, *self.cbs20, *self.cbs20_above, *self.b_simple):
            out += [v for v in (e.value, e.lo, e.hi) if math.isfinite(v) and v > 0]
        return out

    def title(self) -> str:
        head = f"{self.study}: " if self.study else ""
        seeds = f"{self.seeds} seed{'s' * (self.seeds != 1)}"
        ref = f"ref. B = {self.reference_batch_size}"
        return f"{head}critical batch size by branch point ({ref}, {seeds})"


@dataclass(frozen=True, kw_only=True)
class BranchedData:
    rows: tuple[BranchedRow, ...]
    batch_sizes: tuple[int, ...]  # ticks of the S(B) panels' batch-size axes


def _estimate(at: float, value: float | None, ci: CI | None) -> Estimate | None:
    if value is None or not math.isfinite(value) or value <= 0:
        return None
    lo, hi = (math.nan, math.nan) if ci is None else (ci.lo, ci.hi)
    return Estimate(at=at, value=value, lo=lo, hi=hi)


def _at(p: PointResult) -> float:
    return float(p.tokens if p.tokens is not None else p.samples)


def _curve(p: PointResult, unit: str) -> StepsCurve:
    bs = tuple(b.batch_size for b in p.batches)
    fit_b: tuple[float, ...] = ()
    fit_s: tuple[float, ...] = ()
    reached = [b.batch_size for b in p.batches if b.reached]
    if p.s_min is not None and p.e_min is not None and reached:
        lo, hi = min(reached), max(reached)  # the range it was fitted on
        fit_b = tuple(lo * (hi / lo) ** (k / 40) for k in range(41))
        fit_s = tuple(p.s_min + p.e_min / b for b in fit_b)
    return StepsCurve(
        point=p.point,
        label=f"point {p.point}: at {_at(p):,.0f} {unit}",
        batch_sizes=bs,
        steps=tuple(b.steps for b in p.batches),
        fit_b=fit_b,
        fit_s=fit_s,
    )


def _row(name: str, r: BranchedResult) -> BranchedRow:
    crit: list[Estimate] = []
    cbs: list[Estimate] = []
    above: list[Estimate] = []
    simple: list[Estimate] = []
    notes: list[str] = []
    for p in r.points:
        at = _at(p)
        for out, e in (
            (crit, _estimate(at, p.b_crit, p.b_crit_ci)),
            (cbs, _estimate(at, p.cbs20, p.cbs20_ci)),
            (simple, _estimate(at, p.b_simple, None)),
        ):
            if e is not None:
                out.append(e)
        if p.cbs20_above is not None:
            above.append(Estimate(at=at, value=float(p.cbs20_above)))
        if p.note:
            notes.append(f"point {p.point} ({at:,.0f} {r.unit}): {p.note}")
    if r.ci_note:
        notes.append(r.ci_note)
    if r.failed:
        notes.append(f"{len(r.failed)} branch trials did not complete")
    sizes = [b.batch_size for p in r.points for b in p.batches] or [r.reference_batch_size]
    return BranchedRow(
        study=name,
        unit=r.unit,
        reference_batch_size=r.reference_batch_size,
        seeds=len(r.seeds),
        b_crit=tuple(crit),
        cbs20=tuple(cbs),
        cbs20_above=tuple(above),
        b_simple=tuple(simple),
        curves=tuple(_curve(p, r.unit) for p in r.points if p.batches),
        branch_sizes=(min(sizes), max(sizes)),
        notes=tuple(notes),
    )


def extract_branched(studies: Sequence[StudyLike]) -> BranchedData | None:
    """None when no study has branch trials (the figure shows branched designs only)."""
    rows = []
    for s in studies:
        if not any(is_branch(t) for t in s.trials):
            continue
        task = TaskInfo.of(s)
        per = task.tokens_per_sample if task.unit != "example" else None
        probes = s.probes_dataframe() if isinstance(s, ProbeSource) else None
        try:
            result = branched_critical(s.trials, probes, tokens_per_sample=per)
        except CriticalBatchError:  # branches without their reference runs
            continue
        rows.append(_row(s.name if len(studies) > 1 else "", result))
    if not rows:
        return None
    sizes = sorted({b for row in rows for c in row.curves for b in c.batch_sizes})
    return BranchedData(rows=tuple(rows), batch_sizes=tuple(sizes))


def _x_label(row: BranchedRow) -> str:
    return f"reference's {row.unit} at the branch point (log scale)"


def _note_text(row: BranchedRow) -> str:
    return "\n".join(row.notes)


def _steps_values(row: BranchedRow) -> list[float]:
    return [v for c in row.curves for v in (*c.steps, *c.fit_s) if math.isfinite(v) and v > 0]


# ---- plotly ------------------------------------------------------------------------------------


def render_branched_plotly(data: BranchedData, palette: Palette) -> Any:
    n = len(data.rows)
    titles = []
    for row in data.rows:
        titles += [plotly_text(row.title()), "steps to the point's target vs batch size"]
    fig = make_subplots(
        rows=n, cols=2, subplot_titles=titles, horizontal_spacing=0.1, vertical_spacing=0.22
    )
    seen: set[str] = set()

    def legend(key: str) -> dict[str, Any]:
        shown = key not in seen
        seen.add(key)
        return {"name": plotly_text(key), "legendgroup": key, "showlegend": shown}

    for r, row in enumerate(data.rows, start=1):
        lo, hi = row.branch_sizes
        fig.add_hrect(
            y0=lo,
            y1=hi,
            fillcolor=RANGE_COLOR,
            opacity=0.07,
            line_width=0,
            layer="below",
            row=r,
            col=1,
        )
        for _key, label, color, _m, symbol, points in row.series():
            if not points:
                continue
            xs, ys = [e.at for e in points], [e.value for e in points]
            has_ci = any(math.isfinite(e.lo) for e in points)
            error = {
                "type": "data",
                "symmetric": False,
                "array": [e.hi - e.value if math.isfinite(e.hi) else 0.0 for e in points],
                "arrayminus": [e.value - e.lo if math.isfinite(e.lo) else 0.0 for e in points],
                "color": color,
                "thickness": 1.4,
                "width": 5,
            }
            fig.add_scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                line={"color": color, "width": 2, "dash": "dot" if _key == "b_simple" else "solid"},
                marker={"color": color, "size": 10, "symbol": symbol},
                error_y=error if has_ci else None,
                text=[
                    f"{plotly_text(label.split(' (')[0])} = {e.value:.4g}"
                    + (f" (95% CI {e.lo:.3g}–{e.hi:.3g})" if math.isfinite(e.lo) else "")
                    + f"<br>at {e.at:,.0f} {row.unit}"
                    for e in points
                ],
                hoverinfo="text",
                row=r,
                col=1,
                **legend(label),
            )
        if row.cbs20_above:
            fig.add_scatter(
                x=[e.at for e in row.cbs20_above],
                y=[e.value for e in row.cbs20_above],
                mode="markers",
                marker={
                    "color": SERIES[1][2],
                    "size": 14,
                    "symbol": "triangle-up-open",
                    "line": {"width": 2},
                },
                text=[f"CBS₂₀ > {e.value:g} at {e.at:,.0f} {row.unit}" for e in row.cbs20_above],
                hoverinfo="text",
                row=r,
                col=1,
                **legend(BOUND_LABEL),
            )
        fig.update_xaxes(
            title_text=plotly_text(_x_label(row)),
            **plotly_log_axis([e.at for c in (row.b_crit, row.cbs20, row.b_simple) for e in c]),
            row=r,
            col=1,
        )
        fig.update_yaxes(
            title_text="batch size (log scale)", **plotly_log_axis(row.values()), row=r, col=1
        )
        for i, c in enumerate(row.curves):
            color = point_color(i, len(row.curves))
            pts = [(b, s) for b, s in zip(c.batch_sizes, c.steps, strict=True) if math.isfinite(s)]
            if pts:
                fig.add_scatter(
                    x=[b for b, _ in pts],
                    y=[s for _, s in pts],
                    mode="markers",
                    marker={"color": color, "size": 9, "line": {"color": "white", "width": 1}},
                    text=[f"{plotly_text(c.label)}<br>B = {b}: {s:.4g} steps" for b, s in pts],
                    hoverinfo="text",
                    name=plotly_text(c.label),
                    legendgroup=c.label,
                    showlegend=False,
                    row=r,
                    col=2,
                )
            if c.fit_b:
                fig.add_scatter(
                    x=list(c.fit_b),
                    y=list(c.fit_s),
                    mode="lines",
                    line={"color": color, "width": 1.8, "dash": "dash"},
                    hoverinfo="skip",
                    name=plotly_text(c.label),
                    legendgroup=c.label,
                    showlegend=False,
                    row=r,
                    col=2,
                )
            elif len(pts) > 1:
                fig.add_scatter(
                    x=[b for b, _ in pts],
                    y=[s for _, s in pts],
                    mode="lines",
                    line={"color": color, "width": 1.2, "dash": "dot"},
                    hoverinfo="skip",
                    showlegend=False,
                    row=r,
                    col=2,
                )
            fig.add_annotation(  # the point's name at its largest reached batch size
                x=math.log10(pts[-1][0]) if pts else 0,
                y=math.log10(pts[-1][1]) if pts else 0,
                text=f"t{c.point}",
                showarrow=False,
                xshift=14,
                font={"color": color, "size": 12},
                row=r,
                col=2,
                visible=bool(pts),
            )
        plotly_bs_axis(fig, data.batch_sizes, row=r, col=2)
        fig.update_yaxes(
            title_text="steps to target (log scale)",
            **plotly_log_axis(_steps_values(row)),
            row=r,
            col=2,
        )
        if row.notes:
            fig.add_annotation(
                x=0.0,
                y=0.0,
                xref=f"x{2 * r - 1 if r > 1 else ''} domain",
                yref=f"y{2 * r - 1 if r > 1 else ''} domain",
                yanchor="top",
                yshift=-52,
                xanchor="left",
                align="left",
                text="<br>".join(plotly_text(s) for s in row.notes),
                showarrow=False,
                font={"color": "#777", "size": 11},
            )
    plotly_layout(fig, height=140 + 460 * n)
    fig.update_layout(legend={"orientation": "h", "y": -0.16 - 0.1 / n, "x": 0.0})
    return fig


# ---- matplotlib --------------------------------------------------------------------------------


def _mpl_left(fig: MplFigure, ax: Axes, row: BranchedRow) -> None:
    mpl_axes(ax)
    lo, hi = row.branch_sizes
    ax.axhspan(lo, hi, color=RANGE_COLOR, alpha=0.06, lw=0, label=f"branch batch sizes {lo}–{hi}")
    for key, label, color, marker, _s, points in row.series():
        if not points:
            continue
        xs, ys = [e.at for e in points], [e.value for e in points]
        yerr = [
            [e.value - e.lo if math.isfinite(e.lo) else 0.0 for e in points],
            [e.hi - e.value if math.isfinite(e.hi) else 0.0 for e in points],
        ]
        ax.errorbar(
            xs,
            ys,
            yerr=yerr if any(math.isfinite(e.lo) for e in points) else None,
            color=color,
            ls=":" if key == "b_simple" else "-",
            lw=1.8,
            marker=marker,
            ms=7,
            mec="white",
            capsize=4,
            elinewidth=1.3,
            label=mpl_text(label),
            zorder=3,
        )
    if row.cbs20_above:
        color = SERIES[1][2]
        xs, ys = [e.at for e in row.cbs20_above], [e.value for e in row.cbs20_above]
        ax.scatter(xs, ys, marker="^", s=110, facecolors="none", edgecolors=color, lw=1.8, zorder=4)
        up = offset_copy(ax.transData, fig=fig, y=30, units="points")
        for x, y in zip(xs, ys, strict=True):  # an arrow up from the bound, 30 points long
            ax.annotate(
                "",
                xy=(x, y),
                xycoords=up,
                xytext=(x, y),
                textcoords="data",
                arrowprops={
                    "arrowstyle": "-|>",
                    "color": color,
                    "lw": 1.6,
                    "shrinkA": 8,
                    "shrinkB": 0,
                },
            )
        ax.scatter(
            [], [], marker="^", s=110, facecolors="none", edgecolors=color, label=BOUND_LABEL
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    mpl_log(ax.xaxis)
    mpl_log(ax.yaxis)
    values = row.values()
    if values:  # room for the bound's arrows; a far-off interval runs off the axis
        ax.set_ylim(max(min(values) / 1.6, lo / 16), min(max(values) * 2.6, hi * 16))
    ax.set_xlabel(mpl_text(_x_label(row)))
    ax.set_ylabel("batch size (log scale)")
    ax.set_title(mpl_text(row.title()), fontsize=11)


def _mpl_right(ax: Axes, row: BranchedRow, data: BranchedData) -> None:
    mpl_axes(ax)
    for i, c in enumerate(row.curves):
        color = point_color(i, len(row.curves))
        pts = [(b, s) for b, s in zip(c.batch_sizes, c.steps, strict=True) if math.isfinite(s)]
        if c.fit_b:
            ax.plot(c.fit_b, c.fit_s, color=color, ls="--", lw=1.5, zorder=2)
        if len(pts) > 1:  # the measured points of one branch point, joined
            ax.plot([b for b, _ in pts], [s for _, s in pts], color=color, lw=1.0, alpha=0.45)
        if pts:
            ax.scatter(
                [b for b, _ in pts],
                [s for _, s in pts],
                color=color,
                edgecolors="white",
                s=46,
                zorder=3,
                label=mpl_text(c.label),
            )
            b, s = pts[-1]
            ax.annotate(
                f"t{c.point}",
                (b, s),
                xytext=(7, 0),
                textcoords="offset points",
                va="center",
                color=color,
                fontsize=9,
                fontweight="bold",
            )
    ax.set_yscale("log")
    mpl_log(ax.yaxis)
    if data.batch_sizes:
        mpl_bs_axis(ax, data.batch_sizes)
    ax.set_ylabel("steps to target (log scale)")
    ax.set_title("steps to the point's target vs batch size (dashed: fit)", fontsize=11)
    if row.curves:
        ax.legend(frameon=False, fontsize=8.5, loc="best")


def render_branched_matplotlib(data: BranchedData, palette: Palette) -> MplFigure:
    n = len(data.rows)
    width = 13.0
    fig = MplFigure(figsize=(width, 4.8 * n + 1.2), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    for (left, right), row in zip(axes, data.rows, strict=True):
        _mpl_left(fig, left, row)
        _mpl_right(right, row, data)
        if row.notes:
            left.text(
                0.0,
                -0.2,
                mpl_text(_note_text(row)),
                transform=left.transAxes,
                ha="left",
                va="top",
                color="#777",
                fontsize=8.5,
                wrap=True,
            )
    handles: dict[str, Any] = {}
    for left, _ in axes:
        for h, lab in zip(*left.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(
        handles=list(handles.values()),
        labels=list(handles),
        loc="outside lower center",
        ncol=min(3, legend_columns(list(handles), width_in=width)),
        frameon=False,
    )
    return fig


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    unit = "tokens" if task.unit != "example" else "samples"
    return "Critical batch size over training, by branching", (
        f"Left: at each branch point of the reference run (x: its {unit} so far, log scale),"
        " short branches from its stored state train at several batch sizes to a target, the"
        " validation loss the reference batch size's branch reaches after its window (curves"
        " smoothed by isotonic regression). Black: B_crit = E_min / S_min from the fit"
        " S(B) = S_min + E_min / B (McCandlish et al. 2018); red: CBS₂₀, where the samples to"
        " the target exceed perfect scaling from the smallest batch size by 20% (Zhang et al."
        " 2024); an open triangle with an arrow: CBS₂₀ beyond the largest batch size that"
        " reached the target (a bound at that B_max, not a number); grey dotted: the"
        " reference's noise scale B_simple. Error bars: 95% intervals resampling seeds (none"
        " with one seed; one far beyond the branch batch sizes runs off the axis). Shaded: the"
        " range of branch batch sizes. A point without a number is left out and its reason"
        " given under the panel. Right: at each point (colour; t0 earliest), the steps each"
        " batch size needs to reach that point's target, at its fastest lr factor, mean over"
        " seeds (a batch size that did not reach it is not drawn); dashed: the fitted"
        " hyperbola. Method: Merrill et al. 2025; `batchlab critical NAME` prints the numbers."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[BranchedData](
    name="branched-critical",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_branched,
    render_plotly=render_branched_plotly,
    render_matplotlib=render_branched_matplotlib,
    text=figure_text,
)
