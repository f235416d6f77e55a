"""Critical batch size: steps against samples to a target with the fitted hyperbola, and the
training time to that target against batch size (McCandlish et al. 2018).

The target is the default of `batchlab.analysis.critical.default_target`: 0.98 of the best
validation score (the task's accuracy, R², ...; the test score when there is no validation split).
One line per (study, variant); a line whose fit fails is left out and named in a panel note.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from batchlab.analysis.critical import (
    CriticalBatchError,
    CriticalFit,
    critical_batch_size,
    default_target,
)
from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import (
    Line,
    LinePanel,
    LinesData,
    render_lines_matplotlib,
    render_lines_plotly,
)
from batchlab.report.stats import sweep_trials
from batchlab.tasks.base import TaskInfo

CURVE_POINTS = 60


def _fits(studies: Sequence[StudyLike]) -> tuple[list[tuple[str, CriticalFit]], list[str]]:
    fits, failed = [], []
    for s in studies:
        sweep = [t for t in sweep_trials(s) if not t.params.get("control")]
        for variant in sorted({str(t.params.get("variant", "")) for t in sweep}):
            label = " · ".join(p for p in (s.name if len(studies) > 1 else "", variant) if p)
            try:
                fit = critical_batch_size(sweep, default_target(sweep), variant=variant, n_boot=0)
            except CriticalBatchError:
                failed.append(label or s.name)
                continue
            fits.append((label, fit))
    return fits, failed


def hyperbola(fit: CriticalFit, lo: float, hi: float) -> tuple[list[float], list[float]]:
    """(E, S) along S = S_min + E_min / B for B log-spaced over [lo, hi]."""
    bs = [lo * (hi / lo) ** (i / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)]
    return [fit.samples_at(b) for b in bs], [fit.steps_at(b) for b in bs]


def extract_critical(studies: Sequence[StudyLike]) -> LinesData | None:
    """None when no (study, variant) gives a fit (see `critical_batch_size`'s errors)."""
    fits, failed = _fits(studies)
    if not fits:
        return None
    trade: list[Line] = []
    timing: list[Line] = []
    for i, (label, fit) in enumerate(fits):
        name = f"{label}: " if label else ""
        bs = [p.batch_size for p in fit.points]
        trade.append(
            Line(
                label=f"{name}measured",
                x=tuple(p.samples for p in fit.points),
                y=tuple(p.steps for p in fit.points),
                color=i,
            )
        )
        e, s = hyperbola(fit, min(bs) / 4, max(bs) * 4)
        trade.append(
            Line(
                label=f"{name}fit, B_crit = {fit.b_crit:.3g}",
                x=tuple(e),
                y=tuple(s),
                color=i,
                dash=1,
                markers=False,
            )
        )
        timing.append(
            Line(
                label=f"{name}time to target" if name else "time to target",
                x=tuple(float(b) for b in bs),
                y=tuple(p.time_s for p in fit.points),
                std=tuple(p.time_std for p in fit.points),
                color=i,
            )
        )
    note = f"no fit for: {', '.join(failed)}" if failed else ""
    target = fits[0][1].target.describe()
    sizes = sorted({p.batch_size for _, f in fits for p in f.points})
    return LinesData(
        batch_sizes=tuple(sizes),
        panels=(
            LinePanel(
                title=f"Steps vs samples to {target}",
                x_label="samples E (log scale)",
                y_label="steps S (log scale)",
                x_kind="log",
                log_y=True,
                lines=tuple(trade),
                note=note,
            ),
            LinePanel(
                title=f"Training time to {target}",
                x_label="batch size",
                y_label="training time (s)",
                x_kind="batch",
                log_y=all(math.isfinite(v) and v > 0 for line in timing for v in line.y),
                lines=tuple(timing),
                note=note,
            ),
        ),
        columns=2,
    )


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    s = task.score_label
    return "Critical batch size: steps vs samples to a target", (
        "Left: steps S against samples E (both log scale) needed to first reach 0.98 of the best"
        f" validation {s} (test {s} without a validation split), interpolated between"
        " evaluations; each point is a batch size at the lr reaching the target in the fewest"
        " steps, mean over seeds (an lr counts only when every seed reaches it). Dashed: the fit"
        " S(B) = S_min + E_min / B, i.e. (S/S_min - 1)(E/E_min - 1) = 1 (McCandlish et al. 2018),"
        " with B_crit = E_min / S_min in the legend. Right: training time to the target"
        " (seconds, evaluation excluded) against batch size; band: ± 1 sample std over seeds."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[LinesData](
    name="critical-batch",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_critical,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
    text=figure_text,
)
