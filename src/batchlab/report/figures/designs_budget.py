"""Designs: equal-epoch runs next to control runs given equal updates (seed 000/001 issue).

With an epoch budget a batch k times larger makes k times fewer updates. Control runs give every
larger batch size as many updates as the smallest one got, so a score drop (accuracy, R², ...)
that the controls do not show came from missing updates, not from the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from batchlab.fmt import lr_text
from batchlab.report._types import StudyLike, task_of
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import (
    Line,
    LinePanel,
    LinesData,
    render_lines_matplotlib,
    render_lines_plotly,
)
from batchlab.report.figures._runs import (
    LineKey,
    heldout_acc,
    line_key,
    mean,
    sweep_runs,
)
from batchlab.report.figures._runs import std as sample_std
from batchlab.tasks.base import TaskInfo
from batchlab.trial import FrozenTrial


def _budget_name(trials: Sequence[FrozenTrial]) -> str:
    kinds = {k for t in trials for k in dict(t.params.get("budget") or {})}
    return f"equal {kinds.pop()}" if len(kinds) == 1 else "equal budget"


def _line(
    label: str,
    groups: dict[int, list[FrozenTrial]],
    get: Callable[[FrozenTrial], float],
    color: int,
    dash: int,
) -> Line:

    sizes = sorted(groups)
    return Line(
        label=label,
        x=tuple(float(b) for b in sizes),
        y=tuple(mean(get(t) for t in groups[b]) for b in sizes),
        std=tuple(sample_std(get(t) for t in groups[b]) for b in sizes),
        color=color,
        dash=dash,
    )


def extract_budget(studies: Sequence[StudyLike]) -> LinesData | None:
    """Per (study, variant, lr_base) with control runs: final score and updates of the sweep
    and of the controls (whose line starts at the smallest batch size's sweep runs, the updates
    they match). Mean ± std over seeds. None when no study has a COMPLETE control run.
    """
    task = task_of(studies)

    def score(t: FrozenTrial) -> float:
        return task.score_scale * heldout_acc(t)

    def steps(t: FrozenTrial) -> float:
        return float(t.evals[-1].step)

    acc_lines: list[Line] = []
    step_lines: list[Line] = []
    sizes: set[int] = set()
    multi = len(studies) > 1
    for study in studies:
        controls = sweep_runs([study], control=True)
        if not controls:
            continue
        sweep = sweep_runs([study])
        several_lr = len({t.lr_base for t in sweep + controls}) > 1
        lines: dict[tuple[LineKey, float], tuple[dict[int, list[FrozenTrial]], ...]] = {}
        for t in sweep:
            eq, _ = lines.setdefault((line_key(t), t.lr_base), ({}, {}))
            eq.setdefault(t.batch_size, []).append(t)
        for t in controls:
            _, ctl = lines.setdefault((line_key(t), t.lr_base), ({}, {}))
            ctl.setdefault(t.batch_size, []).append(t)
        equal = _budget_name(sweep)
        for (key, lr), (eq, ctl) in sorted(lines.items()):
            if eq and ctl:  # the control line starts at the updates it matches
                b0 = min(eq)
                ctl = {b0: eq[b0], **{b: ts for b, ts in ctl.items() if b > b0}}
            head = key.label(multi_study=multi)
            if several_lr:
                head = f"{head} · lr_base={lr_text(lr)}" if head else f"lr_base={lr_text(lr)}"
            prefix = f"{head} · " if head else ""
            color = len(acc_lines) // 2
            for dash, (name, groups) in enumerate(((equal, eq), ("equal updates (control)", ctl))):
                if not groups:
                    continue
                sizes |= set(groups)
                acc_lines.append(_line(prefix + name, groups, score, color, dash))
                step_lines.append(_line(prefix + name, groups, steps, color, dash))
    if not acc_lines:
        return None
    return LinesData(
        batch_sizes=tuple(sorted(sizes)),
        panels=(
            LinePanel(
                title=f"Final test {task.score_label}",
                x_label="batch size",
                y_label=task.score_axis("test"),
                x_kind="batch",
                log_y=False,
                lines=tuple(acc_lines),
            ),
            LinePanel(
                title="Parameter updates made",
                x_label="batch size",
                y_label="updates (steps, log scale)",
                x_kind="batch",
                log_y=True,
                lines=tuple(step_lines),
            ),
        ),
        columns=2,
    )


def figure_text(task: TaskInfo) -> tuple[str, str]:
    """The figure's title and caption for `task`."""
    unit = f"{task.score_unit}; " if task.score_unit else ""
    return "Equal epochs vs equal updates (control runs)", (
        "Solid: the sweep, every batch size given the same budget (epochs or samples), so larger"
        " batches make fewer updates. Dashed: control runs, every larger batch size given as many"
        " updates as the smallest batch size got (the dashed line starts at the smallest batch"
        " size's own runs, whose update count the controls match). Left: final test"
        f" {task.score_label} ({unit}validation when no test was recorded); right: the updates"
        " each made. Where the solid line drops and the dashed one does not, the drop came from"
        " fewer updates, not from the batch size. Mean over seeds; band: ± 1 sample std over"
        " seeds; COMPLETE trials only."
    )


_TITLE, _DESCRIPTION = figure_text(TaskInfo())  # classification's, the default
FIGURE = Figure[LinesData](
    name="budget",
    title=_TITLE,
    description=_DESCRIPTION,
    extract=extract_budget,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
    text=figure_text,
)
