"""Figure 3: training curves per batch size, against epochs, updates, samples or wall time.

Equal-epoch and equal-update views are the same curves on different x axes: with an epoch
budget, large batches end early on the update axis. Buttons switch the x axis in the page; the
PNG shows epochs, updates and wall time as rows. Seeds are averaged evaluation by evaluation.
With several learning rates, each batch size is shown at its best lr_base: the highest mean final
validation score (test, and noted, for a study without a validation split).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from plotly.subplots import make_subplots

from batchlab.analysis.selection import Selection
from batchlab.fmt import lr_text
from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._style import (
    log_ticks,
    mpl_axes,
    mpl_log,
    plotly_layout,
    plotly_log_axis,
)
from batchlab.report.palette import Palette, mpl_text, plotly_text
from batchlab.report.stats import cells, sweep_trials
from batchlab.tasks.base import TaskInfo
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

# (field, axis title, log scale?, button label)
X_AXES: tuple[tuple[str, str, bool, str], ...] = (
    ("epoch", "epochs", False, "vs epochs"),
    ("step", "parameter updates (steps, log scale)", True, "vs updates"),
    ("samples", "training samples seen", False, "vs samples"),
    ("time_s", "training wall time (s, log scale)", True, "vs wall time"),
)
PANELS = ("train_loss", "heldout_loss", "train_acc", "heldout_acc")


@dataclass(frozen=True, kw_only=True)
class Curve:
    """Seed-averaged evaluations of one batch size (scores in display units: % or plain)."""

    study: str
    lr_base: float
    batch_size: int
    n_seeds: int
    epoch: tuple[float, ...]
    step: tuple[float, ...]
    samples: tuple[float, ...]
    time_s: tuple[float, ...]
    train_loss: tuple[float, ...]
    heldout_loss: tuple[float, ...]
    train_acc: tuple[float, ...]
    heldout_acc: tuple[float, ...]
    chosen_on_test: bool = False  # its lr_base was chosen on test: no validation split

    def values(self, name: str) -> tuple[float, ...]:
        v: tuple[float, ...] = getattr(self, name)
        return v


@dataclass(frozen=True, kw_only=True)
class CurvesData:
    curves: tuple[Curve, ...]
    heldout: str
    best_lr_note: str
    task: TaskInfo  # names the loss and the score on the axes


def _mean(values: Sequence[float]) -> float:
    xs = [v for v in values if math.isfinite(v)]
    return statistics.fmean(xs) if xs else math.nan


def _train(e: EvalRecord, acc: bool) -> float:
    running = e.train_acc if acc else e.train_loss
    if math.isfinite(running):
        return running
    return e.full_train_acc if acc else e.full_train_loss  # step 0 has only the full pass


def _average(
    trials: Sequence[FrozenTrial], heldout: str, scale: float
) -> dict[str, tuple[float, ...]]:
    n = min(len(t.evals) for t in trials)

    def col(get: Callable[[EvalRecord], float]) -> tuple[float, ...]:
        return tuple(_mean([get(t.evals[i]) for t in trials]) for i in range(n))

    return {
        "epoch": col(lambda e: e.epoch),
        "step": col(lambda e: float(e.step)),
        "samples": col(lambda e: float(e.samples)),
        "time_s": col(lambda e: e.train_time_s),
        "train_loss": col(lambda e: _train(e, False)),
        "heldout_loss": col(lambda e: getattr(e, f"{heldout}_loss")),
        "train_acc": col(lambda e: scale * _train(e, True)),
        "heldout_acc": col(lambda e: scale * getattr(e, f"{heldout}_acc")),
    }


def extract_curves(studies: Sequence[StudyLike]) -> CurvesData | None:
    """Per (study, batch size): the seed-mean curves of the best lr_base's COMPLETE trials."""
    done = [
        t for s in studies for t in sweep_trials(s) if t.state is TrialState.COMPLETE and t.evals
    ]
    if not done:
        return None
    task = task_of(studies)
    has_test = any(math.isfinite(e.test_acc) for t in done for e in t.evals)
    heldout = "test" if has_test else "val"
    selection = {s.name: Selection.of(s.trials) for s in studies}
    best: dict[tuple[str, int], float] = {}
    score: dict[tuple[str, int], float] = {}
    for c in cells(studies):  # lr_base ascending: ties go to the smaller
        k = (c.key.study, c.batch_size)
        v = (c.test_acc if selection[c.key.study].on_test else c.val_acc).mean
        v = v if math.isfinite(v) else -math.inf
        if c.n_complete and (k not in score or v > score[k]):
            best[k], score[k] = c.key.lr_base, v
    multi_lr = len({t.lr_base for t in done}) > 1
    curves = []
    for study in studies:
        for b in sorted({t.batch_size for t in sweep_trials(study)}):
            if (study.name, b) not in best:
                continue
            lr_base = best[(study.name, b)]
            trials = [
                t
                for t in done
                if t.study == study.name and t.batch_size == b and t.lr_base == lr_base
            ]
            if not trials:
                continue
            avg = _average(trials, heldout, task.score_scale)
            curves.append(
                Curve(
                    study=study.name,
                    lr_base=lr_base,
                    batch_size=b,
                    n_seeds=len(trials),
                    chosen_on_test=selection[study.name].on_test,
                    **avg,
                )
            )
    if not curves:
        return None
    note = "each batch size at its best lr_base" if multi_lr else ""
    return CurvesData(curves=tuple(curves), heldout=heldout, best_lr_note=note, task=task)


def _titles(data: CurvesData) -> list[str]:
    h, s = data.heldout, data.task.score_label
    return ["train loss", f"{h} loss", f"train {s}", f"{h} {s}"]


def _curve_label(c: Curve, palette: Palette, data: CurvesData) -> str:
    label = f"b={c.batch_size}"
    if data.best_lr_note:
        label += f" (lr_base={lr_text(c.lr_base)}{', chosen on test' if c.chosen_on_test else ''})"
    return f"{c.study} · {label}" if palette.multi_study else label


def log_x(values: Sequence[float]) -> list[float | None]:
    """x values for a log axis: step 0 / time 0 become gaps.

    Plotly would place them far off to the left and draw the first segment as a flat line at the
    next value, as if each run had started where it ended."""
    return [v if math.isfinite(v) and v > 0 else None for v in values]


def render_curves_plotly(data: CurvesData, palette: Palette) -> Any:
    fig = make_subplots(rows=2, cols=2, subplot_titles=_titles(data), vertical_spacing=0.16)
    first_x = X_AXES[0][0]
    score_unit = f" {data.task.score_unit}" if data.task.score_unit else ""
    for c in data.curves:
        label = plotly_text(_curve_label(c, palette, data))
        for j, panel in enumerate(PANELS):
            unit = "" if panel.endswith("loss") else score_unit
            fig.add_scatter(
                x=list(c.values(first_x)),
                y=list(c.values(panel)),
                mode="lines+markers",
                name=label,
                legendgroup=label,
                showlegend=j == 0,
                line={
                    "color": palette.bs_color(c.batch_size),
                    "dash": palette.study_dash_plotly(c.study),
                    "width": 2,
                },
                marker={"size": 4},
                hovertemplate=f"{label}<br>%{{x:.4g}}: %{{y:.4g}}{unit}<extra></extra>",
                row=j // 2 + 1,
                col=j % 2 + 1,
            )
    axes = ("xaxis", "xaxis2", "xaxis3", "xaxis4")
    buttons = []
    for field, title, log, button in X_AXES:
        xs = [log_x(c.values(field)) if log else list(c.values(field)) for c in data.curves]
        xs = [x for x in xs for _ in PANELS]
        # No dtick here: a "D2" dtick reaching an axis that is still linear hangs plotly.js.
        # Explicit 1-2-5 ticks on the log views; "auto" ticks again on the linear ones.
        ticks = log_ticks([x for c in data.curves for x in c.values(field)]) if log else None
        layout: dict[str, Any] = {}
        for ax in axes:
            layout[f"{ax}.type"] = "log" if log else "linear"
            layout[f"{ax}.title.text"] = title
            layout[f"{ax}.tickmode"] = "auto" if ticks is None else "array"
            layout[f"{ax}.tickvals"] = None if ticks is None else ticks[0]
            layout[f"{ax}.ticktext"] = None if ticks is None else ticks[1]
        buttons.append({"label": button, "method": "update", "args": [{"x": xs}, layout]})
    fig.update_layout(
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "buttons": buttons,
                "x": 0.0,
                "xanchor": "left",
                "y": 1.16,
                "yanchor": "bottom",
                "showactive": True,
                "bgcolor": "#f4f4f4",
            }
        ]
    )
    fig.update_xaxes(title_text=X_AXES[0][1])
    losses = [v for c in data.curves for p in PANELS[:2] for v in c.values(p)]
    fig.update_yaxes(
        title_text=f"loss ({data.task.loss_unit}, log scale)", **plotly_log_axis(losses), row=1
    )
    fig.update_yaxes(title_text=data.task.score_axis(""), row=2)
    plotly_layout(fig, height=760)
    fig.update_layout(margin={"t": 110})
    return fig


def render_curves_matplotlib(data: CurvesData, palette: Palette) -> MplFigure:
    rows = [x for x in X_AXES if x[0] != "samples"]
    fig = MplFigure(figsize=(18, 4.0 * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), len(PANELS), squeeze=False)
    titles = _titles(data)
    for r, (field, xtitle, log, button) in enumerate(rows):
        for j, panel in enumerate(PANELS):
            ax = axes[r][j]
            mpl_axes(ax)
            for c in data.curves:
                x, y = c.values(field), c.values(panel)
                if log:  # a log axis has no room for step 0 / time 0
                    pts = [(a, v) for a, v in zip(x, y, strict=True) if a > 0]
                    x, y = tuple(a for a, _ in pts), tuple(v for _, v in pts)
                ax.plot(
                    x,
                    y,
                    color=palette.bs_color(c.batch_size),
                    linestyle=palette.study_dash_mpl(c.study),
                    lw=1.5,
                )
            if log:
                ax.set_xscale("log")
                mpl_log(ax.xaxis)
            if panel.endswith("loss"):
                ax.set_yscale("log")
                mpl_log(ax.yaxis)
                ax.set_ylabel(f"loss ({data.task.loss_short_unit}, log scale)")
            else:
                ax.set_ylabel(data.task.score_axis(""))
            ax.set_xlabel(xtitle)
            ax.set_title(f"{titles[j]} {button}")
    handles = [
        Line2D(
            [],
            [],
            color=palette.bs_color(c.batch_size),
            linestyle=palette.study_dash_mpl(c.study),
            lw=2,
            label=mpl_text(_curve_label(c, palette, data)),
        )
        for c in data.curves
    ]
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    return fig


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    return "Training curves per batch size", (
        f"Train and held-out loss and {task.score_label} at every evaluation, one colour per"
        " batch size,"
        " averaged over seeds evaluation by evaluation (COMPLETE trials). Switch the x axis between"
        " epochs (equal data), updates (equal optimizer steps), samples and training wall time:"
        " with an epoch budget, large batches stop early on the update axis. Train numbers are the"
        " running mean since the previous evaluation (a full pass at step 0). With several"
        " learning rates each batch size is shown at its best lr_base, chosen on the validation"
        f" {task.score_label}."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[CurvesData](
    name="curves",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_curves,
    render_plotly=render_curves_plotly,
    render_matplotlib=render_curves_matplotlib,
    text=figure_text,
)
