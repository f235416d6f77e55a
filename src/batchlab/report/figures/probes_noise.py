"""Probes: the gradient noise scale B_simple over training, one line per batch size.

McCandlish et al.: B_simple = tr(Σ) / |G|² is the batch size beyond which larger batches stop
paying off. Seeds are averaged step by step (they share the probe schedule).
"""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import (
    Line,
    LinePanel,
    LinesData,
    log_safe,
    render_lines_matplotlib,
    render_lines_plotly,
)
from batchlab.report.figures._runs import (
    best_runs,
    bs_label,
    probe_frame,
    seed_mean_by_step,
    sweep_runs,
    values_by_trial,
)


def extract_noise(studies: Sequence[StudyLike]) -> LinesData | None:
    """Per (study, variant, batch size) at its best lr_base: seed-mean B_simple at each step.

    None when no COMPLETE trial recorded `noise_scale`.
    """
    frame = probe_frame(studies, ["noise_scale"])
    vals = values_by_trial(frame, "noise_scale", "total")
    best = best_runs(sweep_runs(studies))
    keys = list(dict.fromkeys(k for k, _ in best))
    lines = []
    for (key, b), trials in best.items():
        per_trial = [vals[t.trial_id] for t in trials if t.trial_id in vals]
        steps, means, stds = seed_mean_by_step(per_trial)
        if not any(m == m for m in means):  # all NaN (|G|² never positive) or nothing
            continue
        lines.append(
            Line(
                label=bs_label(key, b, multi_study=len(studies) > 1),
                x=steps,
                y=means,
                std=stds,
                batch_size=b,
                dash=keys.index(key),
                markers=True,
            )
        )
    if not lines:
        return None
    return LinesData(
        batch_sizes=tuple(sorted({b for _, b in best})),
        panels=(
            LinePanel(
                title="Simple noise scale B_simple = tr(Σ) / |G|²",
                x_label="parameter updates (steps, log scale)",
                y_label="B_simple (samples" + (", log scale)" if _log(lines) else ")"),
                x_kind="log",
                log_y=_log(lines),
                lines=tuple(lines),
            ),
        ),
        columns=1,
    )


def _log(lines: Sequence[Line]) -> bool:
    return log_safe([v for line in lines for v in line.y])


FIGURE = Figure[LinesData](
    name="noise-scale",
    title="Gradient noise scale over training",
    description=(
        "The simple noise scale B_simple = tr(Σ)/|G|² (samples; McCandlish et al. 2018), measured"
        " by the noise_scale probe with its EMA, against parameter updates (log scale), one colour"
        " per batch size. Batch sizes well below B_simple use each sample almost fully; well above"
        " it, larger batches buy little. Line: mean over seeds at each measured step; band: ± 1"
        " sample std over seeds. COMPLETE trials of the sweep (no controls); with several"
        " learning rates each batch size at its best lr_base."
    ),
    extract=extract_noise,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
)
