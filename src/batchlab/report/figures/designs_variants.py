"""Designs: variants of one study overlaid (optimizers, accumulation vs true batch, ghost BN).

One line per variant against batch size, coloured by variant: final test score, training
time and peak memory, so the cost of a variant sits next to what it buys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from batchlab.report._types import StudyLike, task_of
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
    heldout_acc,
    lines_vs_batch,
    sweep_runs,
    variant,
)
from batchlab.tasks.base import TaskInfo
from batchlab.trial import FrozenTrial

MIB = 2.0**20


def _time(t: FrozenTrial) -> float:
    return t.evals[-1].train_time_s


def _peak_mem(t: FrozenTrial) -> float:
    peak = max((e.peak_mem_bytes for e in t.evals), default=0)
    return float(peak) if peak > 0 else math.nan


def extract_variants(studies: Sequence[StudyLike]) -> LinesData | None:
    """Per (study, variant), each batch size at its best lr_base: mean ± std over seeds of the
    final test score (% for a fraction), training time (s) and peak memory (MiB). Only studies
    whose COMPLETE sweep runs have at least two variants; None when none has.
    """
    runs = [
        t
        for s in studies
        for t in sweep_runs([s])
        if len({variant(u) for u in sweep_runs([s])}) >= 2
    ]
    if not runs:
        return None
    task = task_of(studies)
    best = best_runs(runs)
    multi = len(studies) > 1
    acc = lines_vs_batch(best, heldout_acc, multi_study=multi, scale=task.score_scale)
    time = lines_vs_batch(best, _time, multi_study=multi)
    mem = lines_vs_batch(best, _peak_mem, multi_study=multi, scale=1.0 / MIB)
    log_time = wide_log([y for line in time for y in line.y])
    return LinesData(
        batch_sizes=tuple(sorted({b for _, b in best})),
        panels=(
            LinePanel(
                title=f"Final test {task.score_label}",
                x_label="batch size",
                y_label=task.score_axis("test"),
                x_kind="batch",
                log_y=False,
                lines=acc,
            ),
            LinePanel(
                title="Training time",
                x_label="batch size",
                y_label="training time (s" + (", log scale)" if log_time else ")"),
                x_kind="batch",
                log_y=log_time,
                lines=time,
            ),
            LinePanel(
                title="Peak memory",
                x_label="batch size",
                y_label="peak memory (MiB)",
                x_kind="batch",
                log_y=False,
                lines=mem,
                note="" if mem else "peak memory not recorded",
            ),
        ),
    )


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    unit = f"{task.score_unit}; " if task.score_unit else ""
    return "Variants side by side vs batch size", (
        "One line per variant of the study (colour and dash by variant; markers in the batch-size"
        f" colour): final test {task.score_label} ({unit}validation when no test was recorded),"
        " cumulative"
        " training wall time (s, evaluation excluded) and peak memory (MiB; on CPU the process's"
        " peak resident set, an upper bound). Mean over seeds; band: ± 1 sample std over seeds."
        " COMPLETE trials of the sweep (no controls); with several learning rates each batch size"
        " at its best lr_base. Shown when a study has at least two variants."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[LinesData](
    name="variants",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_variants,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
    text=figure_text,
)
