""" "What this study shows": statements computed from the results, each with its numbers.

Rules (docs/report.md explains them):
- Only COMPLETE trials count. A cell is one (lr_base, batch size); its scores are the mean final
  validation and test scores over seeds (the task's: accuracy, R², token accuracy), its spread
  the sample standard deviation over seeds. Scores are named and formatted by the study's
  `TaskInfo`.
- Choosing is on validation (`batchlab.analysis.selection`): cells are ranked by the validation
  score and the test score is reported for the chosen ones. A study without a validation split
  is ranked on test, and a "selection" warning says so; otherwise a "selection" line says that
  the choice was on validation.
- Best: the cell with the highest mean validation score (per lr_base, and overall).
- Neighbours: the best cell is compared on validation with the next smaller and larger batch size
  at the same lr_base. The difference counts as real when it exceeds the sum of the two standard
  deviations (the ±1 std bands do not overlap); with one seed on either side it cannot be told.
- Edge: a best batch size (or lr_base) at the end of the searched range means widen the range.
- Fastest: the cell with the least training time (for a wall-clock budget: the most samples/s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from batchlab.analysis.recommend import seed_spread
from batchlab.analysis.selection import Selection, has_validation
from batchlab.fmt import lr_text
from batchlab.report._types import StudyLike, task_of
from batchlab.report.stats import Cell, Stat, cells
from batchlab.tasks.base import TaskInfo
from batchlab.trial import FrozenTrial, TrialState

Level = Literal["info", "warning"]


@dataclass(frozen=True, kw_only=True)
class Finding:
    """One statement: a machine-readable `kind`, the sentence, and the numbers behind it."""

    kind: str
    level: Level
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "level": self.level, "text": self.text, "data": self.data}


def _score(x: float, task: TaskInfo) -> str:
    """A score: "88.38 %" for a fraction, "0.884" for R²."""
    return task.format_score(x, space=True)


def _diff(x: float, task: TaskInfo) -> str:
    """A difference of scores: "1.23 pp" (percentage points) for a fraction, "0.012" for R²."""
    return task.format_score_diff(x, unit="pp")


def _acc(c: Cell, task: TaskInfo) -> str:
    seeds = f"{c.test_acc.n} seed{'s' if c.test_acc.n != 1 else ''}"
    score = _score(c.test_acc.mean, task)
    if math.isfinite(c.test_acc.std):
        text = f"{score} ± {_diff(c.test_acc.std, task)} (std over {seeds})"
    else:
        text = f"{score} ({seeds}, no spread)"
    loss = task.loss_text(c.test_loss.mean)
    return f"{text}; {loss}" if loss else text


def _on(c: Cell, sel: Selection) -> Stat:
    """A cell's score on the split that chooses: validation, or test without one."""
    return c.test_acc if sel.on_test else c.val_acc


def _rank(c: Cell, sel: Selection) -> float:
    """The score that ranks a cell; a cell without one ranks last."""
    v = _on(c, sel).mean
    return v if math.isfinite(v) else -math.inf


def _cell_data(c: Cell, task: TaskInfo) -> dict[str, Any]:
    data: dict[str, Any] = {
        "lr_base": c.key.lr_base,
        "lr": c.lr,
        "batch_size": c.batch_size,
        "val_acc_mean": c.val_acc.mean,
        "val_acc_std": c.val_acc.std,
        "test_acc_mean": c.test_acc.mean,
        "test_acc_std": c.test_acc.std,
        "n_seeds": c.test_acc.n,
        "train_time_s_mean": c.train_time_s.mean,
        "steps_mean": c.steps.mean,
    }
    if task.shows_loss:
        data["test_loss_mean"] = c.test_loss.mean
    if task.has_perplexity:
        data["test_perplexity"] = task.perplexity(c.test_loss.mean)
    return data


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _sizes(values: Sequence[tuple[int, float]], fmt: str) -> str:
    return ", ".join(f"b={b}: {format(v, fmt)}" for b, v in values)


def budget_text(kind: str, value: float) -> str:
    """ "1 epoch", "4 epochs", "2,048 samples", "30 s": a budget with its unit, in words."""
    if kind == "seconds":
        return f"{value:g} s"
    unit = kind[:-1] if value == 1 and kind.endswith("s") else kind
    return f"{value:,.0f} {unit}" if value >= 1e4 else f"{value:g} {unit}"


def _budget(study: StudyLike, scored: Sequence[Cell], task: TaskInfo) -> Finding:
    kind, value = study.spec.budget.kind, study.spec.budget.value
    per_bs: dict[int, Cell] = {}
    for c in scored:
        per_bs.setdefault(c.batch_size, c)
    steps = [(b, per_bs[b].steps.mean) for b in sorted(per_bs)]
    epochs = [(b, per_bs[b].epochs.mean) for b in sorted(per_bs)]
    data: dict[str, Any] = {
        "kind": kind,
        "value": value,
        "steps_by_batch_size": {str(b): s for b, s in steps},
        "epochs_by_batch_size": {str(b): e for b, e in epochs},
    }
    if kind == "epochs":
        text = f"Budget held equal: {budget_text(kind, value)} per trial (equal data)."
        if len(steps) > 1:
            text += (
                " So larger batches took fewer parameter updates: "
                + _sizes(steps, ",.0f")
                + f". Part of any {task.score_label} drop at large batch sizes may be these"
                " missing updates, not the batch size itself; compare on the update axis of the"
                " curves."
            )
    elif kind == "steps":
        text = f"Budget held equal: {value:,.0f} parameter updates per trial."
        if len(epochs) > 1:
            text += " So larger batches saw more data: " + _sizes(epochs, ".3g") + " epochs."
    elif kind == "samples":
        text = f"Budget held equal: {value:,.0f} training samples per trial (equal data)."
        if len(steps) > 1:
            text += " So larger batches took fewer updates: " + _sizes(steps, ",.0f") + "."
    else:
        text = f"Budget held equal: {value:g} s of training wall time per trial."
        if len(steps) > 1:
            text += " Updates made in that time: " + _sizes(steps, ",.0f") + "."
    return Finding(kind="budget", level="info", text=text, data=data)


def _lr_scaling(study: StudyLike) -> Finding:
    rule, ref = study.spec.lr_scaling, study.spec.reference_batch_size
    formulas = {"linear": "lr = lr_base × b / {ref}", "sqrt": "lr = lr_base × √(b / {ref})"}
    if rule in formulas:
        text = (
            f"Learning rate scaled with batch size ({rule}): "
            + formulas[rule].format(ref=ref)
            + f"; lr_base is the rate at the reference batch size {ref}."
        )
    else:
        text = "Learning rate held fixed across batch sizes (no scaling): lr = lr_base."
    return Finding(
        kind="lr_scaling", level="info", text=text, data={"rule": rule, "reference_batch_size": ref}
    )


def _problems(study: StudyLike) -> list[Finding]:
    out = []
    diverged = [t for t in study.trials if t.state is TrialState.DIVERGED]
    if diverged:
        by_cell: dict[tuple[float, int], list[FrozenTrial]] = {}
        for t in diverged:
            by_cell.setdefault((t.lr_base, t.batch_size), []).append(t)
        parts = []
        for (lr, b), ts in sorted(by_cell.items()):
            total = sum(1 for t in study.trials if t.lr_base == lr and t.batch_size == b)
            steps = sorted(t.diverged_step for t in ts if t.diverged_step is not None)
            at = f" at step {', '.join(str(s) for s in steps)}" if steps else ""
            parts.append(f"b={b} lr_base={lr_text(lr)} ({len(ts)} of {total} seeds{at})")
        out.append(
            Finding(
                kind="diverged",
                level="warning",
                text=f"{_count(len(diverged), 'trial')} diverged: " + "; ".join(parts) + ".",
                data={
                    "trials": [
                        {
                            "trial_id": t.trial_id,
                            "batch_size": t.batch_size,
                            "lr_base": t.lr_base,
                            "lr": t.lr,
                            "seed": t.seed,
                            "step": t.diverged_step,
                        }
                        for t in diverged
                    ]
                },
            )
        )
    failed = [t for t in study.trials if t.state is TrialState.FAILED]
    if failed:
        parts = []
        for t in failed:
            why = (t.error or "no error recorded").strip().splitlines()
            reason = why[-1] if why else "no error recorded"
            reason = reason if len(reason) <= 120 else reason[:117] + "..."
            parts.append(f"b={t.batch_size} lr_base={lr_text(t.lr_base)} seed {t.seed}: {reason}")
        out.append(
            Finding(
                kind="failed",
                level="warning",
                text=f"{_count(len(failed), 'trial')} failed: " + "; ".join(parts) + ".",
                data={"trials": [{"trial_id": t.trial_id, "error": t.error} for t in failed]},
            )
        )
    unfinished = [t for t in study.trials if not t.state.is_finished]
    pruned = [t for t in study.trials if t.state is TrialState.PRUNED]
    if unfinished or pruned:
        out.append(
            Finding(
                kind="unfinished",
                level="warning",
                text=(
                    f"{_count(len(unfinished), 'trial')} not finished and "
                    f"{_count(len(pruned), 'trial')} pruned: the numbers here may change when the"
                    " study is resumed."
                ),
                data={"unfinished": len(unfinished), "pruned": len(pruned)},
            )
        )
    return out


def _neighbours(
    best: Cell, scored: Sequence[Cell], task: TaskInfo, sel: Selection
) -> list[Finding]:
    same = sorted((c for c in scored if c.key == best.key), key=lambda c: c.batch_size)
    i = next(k for k, c in enumerate(same) if c.batch_size == best.batch_size)
    out = []
    for nb in (same[i - 1] if i > 0 else None, same[i + 1] if i + 1 < len(same) else None):
        if nb is None:
            continue
        a, z = _on(best, sel), _on(nb, sel)
        diff = a.mean - z.mean
        spread = seed_spread(a.std, z.std)
        data: dict[str, Any] = {"batch_size": nb.batch_size, "difference": diff, "spread": spread}
        if not math.isfinite(spread):
            verdict, separated = "with a single seed the seed spread is unknown", None
        elif diff > spread:
            verdict, separated = f"more than the seed spread ({_diff(spread, task)})", True
        else:
            verdict = f"within the seed spread ({_diff(spread, task)}): treat them as tied"
            separated = False
        data["separated"] = separated
        out.append(
            Finding(
                kind="neighbour",
                level="info",
                text=(
                    f"On {sel.name(task)}, against its neighbour b={nb.batch_size}"
                    f" ({_score(z.mean, task)}) the best batch size {best.batch_size} is ahead by"
                    f" {_diff(diff, task)}, {verdict}."
                ),
                data=data,
            )
        )
    return out


def _edges(study: StudyLike, best: Cell, neighbours: Sequence[Finding]) -> list[Finding]:
    out = []
    sizes = sorted({t.batch_size for t in study.trials})
    if len(sizes) > 1 and best.batch_size in (sizes[0], sizes[-1]):
        low = best.batch_size == sizes[0]
        direction = "smallest" if low else "largest"
        try_next = best.batch_size // 2 if low else best.batch_size * 2
        tied = [n.data["batch_size"] for n in neighbours if n.data["separated"] is False]
        plateau = (
            f" It is tied with b={tied[0]} within the seed spread, so this may be a plateau"
            " reaching past the edge."
            if tied
            else ""
        )
        out.append(
            Finding(
                kind="edge_batch_size",
                level="warning",
                text=(
                    f"The best batch size ({best.batch_size}) is the {direction} searched: the"
                    f" optimum may lie outside the range; widen it {'down' if low else 'up'}ward"
                    f" (e.g. {try_next}).{plateau}"
                ),
                data={
                    "batch_size": best.batch_size,
                    "side": "low" if low else "high",
                    "tied_with": tied,
                },
            )
        )
    lrs = sorted({t.lr_base for t in study.trials})
    if len(lrs) > 1 and best.key.lr_base in (lrs[0], lrs[-1]):
        low = best.key.lr_base == lrs[0]
        out.append(
            Finding(
                kind="edge_lr",
                level="warning",
                text=(
                    f"The best lr_base ({lr_text(best.key.lr_base)}) is the"
                    f" {'smallest' if low else 'largest'} tried: widen the learning-rate range"
                    f" {'down' if low else 'up'}ward."
                ),
                data={"lr_base": best.key.lr_base, "side": "low" if low else "high"},
            )
        )
    return out


def _fastest(
    study: StudyLike, best: Cell, scored: Sequence[Cell], task: TaskInfo, sel: Selection
) -> Finding:
    if study.spec.budget.kind == "seconds":
        timed = [c for c in scored if math.isfinite(c.samples_per_s.mean)]
        if not timed:
            return Finding(kind="fastest", level="info", text="No throughput was recorded.")
        top = max(timed, key=lambda c: c.samples_per_s.mean)
        return Finding(
            kind="fastest",
            level="info",
            text=(
                f"Every trial had the same wall time; batch size {top.batch_size} processed the"
                f" most data, {top.samples_per_s.mean:,.0f} samples/s."
            ),
            data=_cell_data(top, task),
        )
    timed = [c for c in scored if math.isfinite(c.train_time_s.mean)]
    fast = min(timed, key=lambda c: (c.train_time_s.mean, -_rank(c, sel)), default=None)
    if fast is None:
        return Finding(kind="fastest", level="info", text="No training time was recorded.")
    if fast.batch_size == best.batch_size and fast.key == best.key:
        text = (
            f"The best batch size is also the fastest: {fast.train_time_s.mean:.3g} s of training."
        )
    else:
        behind = best.test_acc.mean - fast.test_acc.mean  # both reported on test
        text = (
            f"Fastest: batch size {fast.batch_size} (lr_base={lr_text(fast.key.lr_base)})"
            f" trained in {fast.train_time_s.mean:.3g} s against"
            f" {best.train_time_s.mean:.3g} s for the best batch size {best.batch_size}"
            f" ({best.train_time_s.mean / fast.train_time_s.mean:.1f}× longer),"
            f" reaching test {_score(fast.test_acc.mean, task)}, "
            f"{_diff(abs(behind), task)} {'below' if behind >= 0 else 'above'} the best."
        )
    return Finding(kind="fastest", level="info", text=text, data=_cell_data(fast, task))


def _selection(sel: Selection, best: Cell, task: TaskInfo) -> Finding:
    """Which split chose the cells: a warning when it had to be test."""
    if sel.on_test:
        return Finding(kind="selection", level="warning", text=sel.note(task), data=sel.to_dict())
    v = best.val_acc
    spread = f" ± {_diff(v.std, task)}" if math.isfinite(v.std) else ""
    return Finding(
        kind="selection",
        level="info",
        text=(
            f"Cells are chosen on the final {sel.name(task)} (the best:"
            f" {_score(v.mean, task)}{spread}); test numbers are reported for the chosen cells,"
            " never used to choose."
        ),
        data=sel.to_dict(),
    )


def study_findings(study: StudyLike) -> list[Finding]:
    """Every finding for one study, most important first."""
    if not study.trials:
        return [
            Finding(
                kind="empty",
                level="warning",
                text=f"Study {study.name!r} has no trials yet: run it, then build the report.",
            )
        ]
    task = TaskInfo.of(study)
    all_cells = cells([study])
    scored = [c for c in all_cells if c.test_acc.n > 0]
    out: list[Finding] = []
    if not scored:
        states: dict[str, int] = {}
        for t in study.trials:
            states[t.state.value] = states.get(t.state.value, 0) + 1
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        out.append(
            Finding(
                kind="no_complete",
                level="warning",
                text=(
                    f"None of the {_count(len(study.trials), 'trial')} completed ({counts}):"
                    f" there is no {task.score_label} to compare. Lower the learning rate or fix"
                    " the failures below, then rerun."
                ),
                data={"states": states},
            )
        )
        out.extend(_problems(study))
        out.append(_lr_scaling(study))
        return out
    sel = Selection.of(study.trials)
    best = max(scored, key=lambda c: (_rank(c, sel), -c.batch_size))
    multi_lr = len({c.key.lr_base for c in scored}) > 1
    where = f" at lr_base={lr_text(best.key.lr_base)}" if multi_lr else ""
    out.append(
        Finding(
            kind="best",
            level="info",
            text=(
                f"Best batch size: {best.batch_size}{where},"
                f" test {task.score_label} {_acc(best, task)}."
            ),
            data={**_cell_data(best, task), "selected_on": sel.split},
        )
    )
    out.append(_selection(sel, best, task))
    neighbours = _neighbours(best, scored, task, sel)
    out.extend(neighbours)
    if multi_lr:
        for lr in sorted({c.key.lr_base for c in scored}):
            mine = [c for c in scored if c.key.lr_base == lr]
            top = max(mine, key=lambda c: (_rank(c, sel), -c.batch_size))
            out.append(
                Finding(
                    kind="best_per_lr",
                    level="info",
                    text=(
                        f"At lr_base={lr_text(lr)} the best batch size is {top.batch_size}:"
                        f" {_acc(top, task)}."
                    ),
                    data=_cell_data(top, task),
                )
            )
    out.extend(_edges(study, best, neighbours))
    out.append(_fastest(study, best, scored, task, sel))
    out.extend(_problems(study))
    out.append(_budget(study, scored, task))
    out.append(_lr_scaling(study))
    return out


def comparison_findings(studies: Sequence[StudyLike]) -> list[Finding]:
    """Which study did best, and whether its lead exceeds the seed spread."""
    task = task_of(studies)
    # one split for every study, so that their bests compare: test if any kept no validation
    every_val = all(has_validation(s.trials) for s in studies)
    sel = Selection() if every_val else Selection(split="test", why="no validation split")
    bests = []
    for s in studies:
        scored = [c for c in cells([s]) if c.test_acc.n > 0]
        if scored:
            bests.append(max(scored, key=lambda c: (_rank(c, sel), -c.batch_size)))
    if len(bests) < 2:
        return []
    bests.sort(key=lambda c: -_rank(c, sel))
    top, second = bests[0], bests[1]
    a, z = _on(top, sel), _on(second, sel)
    diff = a.mean - z.mean
    spread = seed_spread(a.std, z.std)
    if not math.isfinite(spread):
        verdict = "with a single seed the seed spread is unknown"
    elif diff > spread:
        verdict = f"more than the seed spread ({_diff(spread, task)})"
    else:
        verdict = f"within the seed spread ({_diff(spread, task)}): treat them as tied"
    text = (
        f"Best overall on {sel.name(task)}: {top.key.study!r} at batch size {top.batch_size}"
        f" (lr_base={lr_text(top.key.lr_base)}), test {_acc(top, task)}; ahead of"
        f" {second.key.study!r} (batch size {second.batch_size}, {_score(z.mean, task)})"
        f" by {_diff(diff, task)}, {verdict}."
    )
    if sel.on_test:
        text += " " + sel.note(task, "The studies are compared")
    return [
        Finding(
            kind="comparison_best",
            level="info",
            text=text,
            data={
                "best": {"study": top.key.study, **_cell_data(top, task)},
                "runner_up": {"study": second.key.study, **_cell_data(second, task)},
                "difference": diff,
                "spread": spread,
                "selection": sel.to_dict(),
            },
        )
    ]
