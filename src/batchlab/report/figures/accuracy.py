"""Figure 1: final test score and test error (or loss) against batch size, one line per lr_base.

The score is the task's (accuracy, R², token accuracy). A score that is a fraction is shown in %
next to its error (100 − score); an unbounded one (R²) next to the test loss instead. The star on
each line marks its best batch size chosen on the validation score (on test, and noted, for a
study without a validation split), drawn at that batch size's test score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from batchlab.analysis.selection import Selection
from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._panels import (
    Mark,
    Panel,
    PanelsData,
    Series,
    diverged_marks,
    render_panels_matplotlib,
    render_panels_plotly,
    series_from_cells,
)
from batchlab.report.stats import BAND, Cell, SeriesKey, batch_sizes, cells
from batchlab.tasks.base import TaskInfo

ON_TEST = "chosen on test: no validation split"


def _best(
    series: Sequence[Series],
    task: TaskInfo,
    rank: dict[tuple[SeriesKey, int], float],
    on_test: set[str],
) -> tuple[Mark, ...]:
    """Per line, the batch size with the highest `rank` (the choosing score), at its value;
    the mark says so where its study (in `on_test`) chose on test."""
    out = []
    for s in series:
        i = max(range(len(s.mean)), key=lambda j: rank.get((s.key, s.batch_sizes[j]), -math.inf))
        score = task.format_score(s.mean[i], space=True, scaled=True)
        why = f" ({ON_TEST})" if s.key.study in on_test else ""
        out.append(
            Mark(
                key=s.key,
                batch_size=s.batch_sizes[i],
                value=s.mean[i],
                text=f"best at batch size {s.batch_sizes[i]}{why}: {score}",
            )
        )
    return tuple(out)


def _wide_log(series: Sequence[Series]) -> bool:
    """Log scale only where values span a factor of 4 or more (and none is 0 or below): then it
    shows the relative change; over a narrow range it only hides the tick labels."""
    values = [m for s in series for m in s.mean]
    return min(values) > 0 and max(values) / min(values) >= 4


def _rank(
    cs: Sequence[Cell], selection: dict[str, Selection]
) -> dict[tuple[SeriesKey, int], float]:
    """Each cell's choosing score: its mean validation score (test without a validation split)."""
    out = {}
    for c in cs:
        v = (c.test_acc if selection[c.key.study].on_test else c.val_acc).mean
        out[(c.key, c.batch_size)] = v if math.isfinite(v) else -math.inf
    return out


def extract_accuracy(studies: Sequence[StudyLike]) -> PanelsData | None:
    """Mean (± std over seeds) final test score of COMPLETE trials (in % for a fraction), and
    its error (100 − score) or, for a score that is not a fraction, the test loss."""
    task = task_of(studies)
    cs = cells(studies)
    acc = series_from_cells(cs, lambda c: c.test_acc, scale=task.score_scale)
    if not acc:
        return None
    selection = {s.name: Selection.of(s.trials) for s in studies}
    on_test = {name for name, sel in selection.items() if sel.on_test}
    best_acc = _best(acc, task, _rank(cs, selection), on_test)
    flag = f" (best {ON_TEST})" if on_test else ""
    diverged = diverged_marks(cs)
    score = Panel(
        title=f"Final test {task.score_label}{flag}",
        y_label=f"test {task.score_label}",
        unit=task.score_unit,
        log_y=False,
        series=acc,
        marks=best_acc,
        diverged=diverged,
    )
    if not task.score_is_fraction:
        loss = series_from_cells(cs, lambda c: c.test_loss)
        loss_log = bool(loss) and _wide_log(loss)
        return PanelsData(
            batch_sizes=tuple(batch_sizes(studies)),
            panels=(
                score,
                Panel(
                    title="Final test loss" + (" (log scale)" if loss_log else ""),
                    y_label="test loss",
                    unit=task.loss_unit,
                    log_y=loss_log,
                    series=loss,
                    diverged=diverged,
                ),
            ),
        )
    err = tuple(
        Series(
            key=s.key,
            batch_sizes=s.batch_sizes,
            mean=tuple(100.0 - m for m in s.mean),
            std=s.std,
            n=s.n,
        )
        for s in acc
    )
    best_err = tuple(
        Mark(key=m.key, batch_size=m.batch_size, value=100.0 - m.value, text=m.text)
        for m in best_acc
    )
    err_log = _wide_log(err)
    return PanelsData(
        batch_sizes=tuple(batch_sizes(studies)),
        panels=(
            score,
            Panel(
                title="Final test error" + (" (log scale)" if err_log else ""),
                y_label="test error",
                unit="%",
                log_y=err_log,
                series=err,
                marks=best_err,
                diverged=diverged,
            ),
        ),
    )


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    s = task.score_label
    if task.score_is_fraction:
        title = f"Test {s} and error vs batch size"
        what = f"Final test {s} and test error (100 − {s})"
    else:
        title = f"Test {s} and loss vs batch size"
        what = f"Final test {s} and test loss ({task.loss_unit})"
    return title, (
        f"{what} of the COMPLETE trials, one line per"
        f" base learning rate. Band: {BAND}. The star marks each line's best batch size, chosen"
        f" on the validation {s} (on test, and noted, without a validation split);"
        " red crosses along the bottom mark batch sizes where trials diverged."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[PanelsData](
    name="accuracy",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_accuracy,
    render_plotly=render_panels_plotly,
    render_matplotlib=render_panels_matplotlib,
    text=figure_text,
)
