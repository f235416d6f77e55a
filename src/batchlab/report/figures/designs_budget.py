"""Designs: equal-epoch runs next to control runs given equal updates (seed 000/001 issue).

With an epoch budget a batch k times larger makes k times fewer updates. Control runs give every
larger batch size as many updates as the smallest one got, so an accuracy drop that the controls
do not show came from missing updates, not from the batch size.
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
)
from batchlab.report.figures._runs import (
    LineKey,
    heldout_acc,
    line_key,
    mean,
    sweep_runs,
)
from batchlab.report.figures._runs import std as sample_std
from batchlab.trial import FrozenTrial


def _budget_name(trials: Sequence[FrozenTrial]) -> str:
    kinds = {k for t in trials for k in dict(t.params.get("budget") or {})}
    return f"equal {kinds.pop()}" if len(kinds) == 1 else "equal budget"


def _line(
    label: str, groups: dict[int, list[FrozenTrial]], value: str, color: int, dash: int
) -> Line:
    def get(t: FrozenTrial) -> float:
        return 100.0 * heldout_acc(t) if value == "acc" else float(t.evals[-1].step)

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
    """Per (study, variant, lr_base) with control runs: final accuracy and updates of the sweep
    and of the controls (whose line starts at the smallest batch size's sweep runs, the updates
    they match). Mean ± std over seeds. None when no study has a COMPLETE control run.
    """
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
                head = f"{head} · lr_base={lr:g}" if head else f"lr_base={lr:g}"
            prefix = f"{head} · " if head else ""
            color = len(acc_lines) // 2
            for dash, (name, groups) in enumerate(((equal, eq), ("equal updates (control)", ctl))):
                if not groups:
                    continue
                sizes |= set(groups)
                acc_lines.append(_line(prefix + name, groups, "acc", color, dash))
                step_lines.append(_line(prefix + name, groups, "steps", color, dash))
    if not acc_lines:
        return None
    return LinesData(
        batch_sizes=tuple(sorted(sizes)),
        panels=(
            LinePanel(
                title="Final test accuracy",
                x_label="batch size",
                y_label="test accuracy (%)",
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


FIGURE = Figure[LinesData](
    name="budget",
    title="Equal epochs vs equal updates (control runs)",
    description=(
        "Solid: the sweep, every batch size given the same budget (epochs or samples), so larger"
        " batches make fewer updates. Dashed: control runs, every larger batch size given as many"
        " updates as the smallest batch size got (the dashed line starts at the smallest batch"
        " size's own runs, whose update count the controls match). Left: final test accuracy (%;"
        " validation when no test was recorded); right: the updates each made. Where the solid"
        " line drops and the dashed one does not, the drop came from fewer updates, not from the"
        " batch size. Mean over seeds; band: ± 1 sample std over seeds; COMPLETE trials only."
    ),
    extract=extract_budget,
    render_plotly=render_lines_plotly,
    render_matplotlib=render_lines_matplotlib,
)
