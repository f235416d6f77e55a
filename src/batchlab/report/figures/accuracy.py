"""Figure 1: final test accuracy and test error against batch size, one line per lr_base."""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.report._types import StudyLike
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
from batchlab.report.stats import BAND, batch_sizes, cells


def _best(series: Sequence[Series]) -> tuple[Mark, ...]:
    out = []
    for s in series:
        i = max(range(len(s.mean)), key=lambda j: s.mean[j])
        out.append(
            Mark(
                key=s.key,
                batch_size=s.batch_sizes[i],
                value=s.mean[i],
                text=f"best at batch size {s.batch_sizes[i]}: {s.mean[i]:.2f} %",
            )
        )
    return tuple(out)


def extract_accuracy(studies: Sequence[StudyLike]) -> PanelsData | None:
    """Mean (± std over seeds) final test accuracy and error, in %, of COMPLETE trials."""
    cs = cells(studies)
    acc = series_from_cells(cs, lambda c: c.test_acc, scale=100.0)
    if not acc:
        return None
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
    best_acc = _best(acc)
    best_err = tuple(
        Mark(key=m.key, batch_size=m.batch_size, value=100.0 - m.value, text=m.text)
        for m in best_acc
    )
    diverged = diverged_marks(cs)
    # Log scale only where errors span a factor of 4 or more (and none is 0): then it shows the
    # relative change; over a narrow range it only hides the tick labels.
    errs = [m for s in err for m in s.mean]
    err_log = min(errs) > 0 and max(errs) / min(errs) >= 4
    return PanelsData(
        batch_sizes=tuple(batch_sizes(studies)),
        panels=(
            Panel(
                title="Final test accuracy",
                y_label="test accuracy",
                unit="%",
                log_y=False,
                series=acc,
                marks=best_acc,
                diverged=diverged,
            ),
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


FIGURE = Figure[PanelsData](
    name="accuracy",
    title="Test accuracy and error vs batch size",
    description=(
        "Final test accuracy and test error (100 − accuracy) of the COMPLETE trials, one line per"
        f" base learning rate. Band: {BAND}. The star marks each line's best batch size;"
        " red crosses along the bottom mark batch sizes where trials diverged."
    ),
    extract=extract_accuracy,
    render_plotly=render_panels_plotly,
    render_matplotlib=render_panels_matplotlib,
)
