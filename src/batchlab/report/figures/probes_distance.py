"""Probes: how far training moved the weights, ||w_t - w_0||, against batch size and updates.

Hoffer et al. (2017): the distance from the initialization grows roughly like log(t), so with an
epoch budget the large batches, which make fewer updates, end closer to where they started.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import (
    Line,
    LinePanel,
    LinesData,
    render_lines_matplotlib,
    render_lines_plotly,
    wide_log,
)
from batchlab.report.figures._runs import (
    best_runs,
    bs_label,
    final_of,
    lines_vs_batch,
    probe_frame,
    seed_mean_by_step,
    sweep_runs,
    values_by_trial,
)


def extract_distance(studies: Sequence[StudyLike]) -> LinesData | None:
    """Final ||w_T - w_0|| per (study, variant) against batch size; the trajectories per batch size.

    Panel 1: mean ± std over seeds of the distance at each trial's last recorded step. Panel 2:
    seed-mean distance at each recorded step against the step (step 0, where it is 0, is left to
    the linear axis' origin). None when no trial recorded `distance`.
    """
    vals = values_by_trial(probe_frame(studies, ["distance"]), "distance", "total")
    best = best_runs(sweep_runs(studies))
    multi = len(studies) > 1
    finals = lines_vs_batch(best, final_of(vals), multi_study=multi)
    if not finals:
        return None
    keys = list(dict.fromkeys(k for k, _ in best))
    paths = []
    for (key, b), trials in best.items():
        per_trial = [vals[t.trial_id] for t in trials if t.trial_id in vals]
        steps, means, stds = seed_mean_by_step(per_trial)
        if steps:
            paths.append(
                Line(
                    label=bs_label(key, b, multi_study=multi),
                    x=steps,
                    y=means,
                    std=stds,
                    batch_size=b,
                    dash=keys.index(key),
                )
            )
    log = wide_log([y for line in finals for y in line.y])
    return LinesData(
        batch_sizes=tuple(sorted({b for _, b in best})),
        panels=(
            LinePanel(
                title="Distance from initialization at the end",
                x_label="batch size",
                y_label="||w_T − w_0||" + (" (log scale)" if log else ""),
                x_kind="batch",
                log_y=log,
                lines=finals,
            ),
            LinePanel(
                title="Distance from initialization vs updates",
                x_label="parameter updates (steps, log scale)",
                y_label="||w_t − w_0||",
                x_kind="log",
                log_y=False,
                lines=tuple(paths),
            ),
        ),
        columns=2,
    )


FIGURE = Figure[LinesData](
    name="distance",
    title="Distance from initialization vs batch size and updates",
    description=(
        "Euclidean distance of the weights from their initial values, ||w_t − w_0|| (all trainable"
        " parameters), from the distance probe. Left: at the end of training against batch size"
        " (line per variant, markers in the batch-size colour). Right: during training against"
        " parameter updates on a log scale, one colour per batch size; Hoffer et al. (2017) report"
        " that it grows roughly like log(t), so the curves should line up when the distance"
        " depends on the update count alone. Mean over seeds; band: ± 1 sample std over seeds."
        " COMPLETE trials of the sweep (no controls); with several learning rates each batch size"
        " at its best lr_base."
    ),
    extract=extract_distance,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
)
