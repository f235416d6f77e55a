"""Probes: flatness of the final minimum against batch size (Keskar et al.'s question).

Three end-of-training measurements per trial: ε-sharpness in the full parameter space and in a
random 100-dimensional subspace (percent), and the top Hessian eigenvalue.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import (
    LinePanel,
    LinesData,
    render_lines_matplotlib,
    render_lines_plotly,
    wide_log,
)
from batchlab.report.figures._runs import (
    best_runs,
    final_of,
    lines_vs_batch,
    probe_frame,
    sweep_runs,
    values_by_trial,
)

# (probe, key, panel title, y label)
PANELS = (
    ("sharpness", "full", "ε-sharpness, full space", "ε-sharpness (%)"),
    ("sharpness", "subspace", "ε-sharpness, random 100-d subspace", "ε-sharpness (%)"),
    ("hessian", "total", "Top Hessian eigenvalue", "λ_max (loss / weight²)"),
)


def extract_sharpness(studies: Sequence[StudyLike]) -> LinesData | None:
    """Per panel, one line per (study, variant): mean ± std over seeds of the final value.

    Each batch size at its best lr_base. None when no trial recorded sharpness or hessian.
    """
    frame = probe_frame(studies, ["sharpness", "hessian"])
    best = best_runs(sweep_runs(studies))
    panels = []
    for probe, key, title, y_label in PANELS:
        vals = values_by_trial(frame, probe, key)
        lines = lines_vs_batch(best, final_of(vals), multi_study=len(studies) > 1)
        log = wide_log([y for line in lines for y in line.y])
        panels.append(
            LinePanel(
                title=title,
                x_label="batch size",
                y_label=y_label + (", log scale" if log else ""),
                x_kind="batch",
                log_y=log,
                lines=lines,
                note="" if lines else f"{probe} not recorded",
            )
        )
    if not any(p.lines for p in panels):
        return None
    return LinesData(batch_sizes=tuple(sorted({b for _, b in best})), panels=tuple(panels))


FIGURE = Figure[LinesData](
    name="sharpness",
    title="Sharpness and curvature of the final minimum vs batch size",
    description=(
        "At the end of training: Keskar et al.'s ε-sharpness (ε = 1e-3; the largest rise of the"
        " loss in a box around the final weights, in % of 1 + loss) in the full parameter space"
        " and in a random 100-dimensional subspace, and the top eigenvalue of the loss Hessian"
        " (power iteration), all on 1024 training examples. Log scale where every value is"
        " positive. Points: mean over seeds; band: ± 1 sample std over seeds. COMPLETE trials of"
        " the sweep (no controls); with several learning rates each batch size at its best"
        " lr_base."
    ),
    extract=extract_sharpness,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
)
