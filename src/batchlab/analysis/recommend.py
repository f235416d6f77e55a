"""A short, plain recommendation from a finished study: which batch size and lr, and why.

Rules (see docs/critical-batch-size.md):
- A cell is (variant, batch size, lr_base) over seeds; control trials are left out. A cell is
  eligible when every one of its trials is COMPLETE (a diverged or failed seed disqualifies the
  lr rather than being averaged away).
- Every choice is made on the validation split (`batchlab.analysis.selection`): cells are ranked
  by their mean final validation score (`val_acc`: the task's accuracy, R² or token accuracy) and
  the test score (`test_acc`) is reported for the chosen cells only. A study without a validation
  split is ranked on test, and the recommendation says so (`Selection.note`).
- Best: the eligible cell with the highest mean final validation score (ties: the faster). Its
  lead over the runner-up "exceeds the seed spread" when it is larger than `seed_spread` of the
  two cells' validation scores: the sum of their sample standard deviations over seeds (the
  report's findings use the same rule); with one seed per cell that cannot be told (None).
- Fastest: the eligible cell whose seeds all reach the target with the least mean training time
  to it (interpolated, evaluation excluded). The default target is on validation; a target on a
  test metric chooses on test, and that is said.
- Pareto front over eligible cells: mean final training time (lower is better) against mean final
  validation score (higher is better); a cell is on it when no other cell is at least as good on
  both and better on one.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import pandas as pd

from batchlab.analysis.critical import (
    CriticalBatchError,
    CriticalFit,
    NoiseScale,
    Target,
    critical_batch_size,
    default_target,
    noise_scale_summary,
    reach,
)
from batchlab.analysis.selection import Selection, Split
from batchlab.errors import BatchlabError
from batchlab.tasks.base import TaskInfo
from batchlab.trial import FrozenTrial, TrialState


def seed_spread(std_a: float, std_b: float) -> float:
    """How far apart two cells' means may lie by seed noise alone: the sum of their sample
    standard deviations over seeds (NaN with a single seed). A difference larger than this is
    "more than the seed spread"; the recommendation and the report's findings both use it."""
    return std_a + std_b


class _Budget(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def value(self) -> float: ...


class _Spec(Protocol):
    @property
    def budget(self) -> _Budget: ...
    @property
    def lr_scaling(self) -> str: ...
    @property
    def reference_batch_size(self) -> int: ...


class StudyLike(Protocol):
    """What a recommendation reads: `batchlab.study.Study` satisfies it (its `task`, if it has
    one, names the score; without one the score reads as classification accuracy)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> _Spec: ...
    @property
    def trials(self) -> Sequence[FrozenTrial]: ...


class RecommendError(BatchlabError):
    """The study cannot support a recommendation (one line, says what is missing)."""


@dataclass(frozen=True, kw_only=True)
class CellSummary:
    """One (variant, batch size, lr_base) cell: means and sample stds over its seeds."""

    variant: str
    batch_size: int
    lr_base: float
    lr: float
    seeds: int
    test_acc: float
    test_acc_std: float
    train_time_s: float
    time_to_target_s: float  # NaN unless every seed reached the target
    reached: int  # seeds that reached the target
    test_loss: float = math.nan  # mean over seeds of the final test loss
    val_acc: float = math.nan  # mean over seeds of the final validation score (ranks cells)
    val_acc_std: float = math.nan

    def score(self, split: Split) -> float:
        """The mean final score on `split` ("val" ranks cells, "test" is reported)."""
        return self.val_acc if split == "val" else self.test_acc

    def score_std(self, split: Split) -> float:
        return self.val_acc_std if split == "val" else self.test_acc_std

    def label(self) -> str:
        v = f"{self.variant}: " if self.variant else ""
        return f"{v}B={self.batch_size}, lr={self.lr:.4g} (lr_base {self.lr_base:g})"


@dataclass(frozen=True, kw_only=True)
class Recommendation:
    study: str
    target: str
    threshold: float
    best: CellSummary
    runner_up: CellSummary | None
    lead: float
    spread: float
    lead_exceeds_spread: bool | None
    fastest: CellSummary | None
    critical: CriticalFit | None
    critical_reason: str
    noise: NoiseScale | None
    pareto: tuple[CellSummary, ...]
    excluded: int  # cells left out because a seed is not COMPLETE
    assumptions: tuple[str, ...] = field(default_factory=tuple)
    task: TaskInfo = field(default_factory=TaskInfo)  # names and formats the score
    selection: Selection = field(default_factory=Selection)  # ranks best, runner-up, Pareto
    target_selection: Selection = field(default_factory=Selection)  # fastest, B_crit's lrs

    def selection_notes(self) -> list[str]:
        """One line for each choice made on test (none when every choice is on validation)."""
        notes = [self.selection.note(self.task)]
        if self.target_selection.on_test and self.target_selection != self.selection:
            notes.append(
                self.target_selection.note(
                    self.task, "The fastest cell and B_crit's lr per batch size are chosen"
                )
            )
        return [n for n in notes if n]

    def to_dict(self) -> dict[str, Any]:
        def cell(c: CellSummary | None) -> dict[str, Any] | None:
            return None if c is None else asdict(c)

        return {
            "study": self.study,
            "target": self.target,
            "threshold": self.threshold,
            "best": cell(self.best),
            "runner_up": cell(self.runner_up),
            "lead": self.lead,
            "spread": self.spread,
            "lead_exceeds_spread": self.lead_exceeds_spread,
            "fastest_to_target": cell(self.fastest),
            "critical": None if self.critical is None else self.critical.to_dict(),
            "critical_reason": self.critical_reason,
            "noise_scale": None if self.noise is None else self.noise.to_dict(),
            "noise_to_critical": self.noise_to_critical,
            "pareto": [asdict(c) for c in self.pareto],
            "excluded_cells": self.excluded,
            "assumptions": list(self.assumptions),
            "task": self.task.as_dict(),
            "selection": {
                **self.selection.to_dict(),
                "target_split": self.target_selection.split,
                "target_on_test": self.target_selection.on_test,
                "notes": self.selection_notes(),
            },
        }

    @property
    def noise_to_critical(self) -> float | None:
        """B_simple (overall) / B_crit, when both were measured."""
        if self.noise is None or self.critical is None or not math.isfinite(self.noise.overall):
            return None
        return self.noise.overall / self.critical.b_crit

    def parts(self) -> list[tuple[str, list[str]]]:
        """The recommendation as (topic, sentences) pairs, in reading order.

        Topics: "selection" (only when a choice is made on test), "best", "fastest", "critical",
        "noise" (only when probed), "pareto", "assumptions". The first sentence of each states
        the answer; later ones qualify it.
        """
        b, task, sel = self.best, self.task, self.selection
        loss = task.loss_text(b.test_loss)  # "" for classification
        best = [
            f"Best final test {task.score_label}: {b.label()}:"
            f" {task.format_score_mean_std(b.test_acc, b.test_acc_std)} over {b.seeds} seed(s)"
            + (f"; {loss}." if loss else "."),
            (
                f"Chosen on test {task.score_label} (no validation split), so this test number"
                " is optimistic."
                if sel.on_test
                else f"Chosen on {sel.name(task)}"
                f" ({task.format_score_mean_std(b.val_acc, b.val_acc_std)}); the test"
                f" {task.score_label} is reported for this cell, not tuned on."
            ),
        ]
        if self.runner_up is None:
            best.append("No runner-up to compare with (one eligible cell).")
        else:
            spread = task.format_score_diff(self.spread, unit="points")
            verdict = {
                None: "one seed per cell, so whether it exceeds the seed spread cannot be told",
                True: f"larger than the seed spread ({spread})",
                False: f"within the seed spread ({spread}): a tie",
            }[self.lead_exceeds_spread]
            best.append(
                f"Lead over the runner-up ({self.runner_up.label()}) on {sel.name(task)}:"
                f" {task.format_score_diff(self.lead, unit='points')}, {verdict}."
            )
        notes = self.selection_notes()
        out: list[tuple[str, list[str]]] = [("selection", notes)] if notes else []
        out.append(("best", best))
        target = f"{self.target} (= {self.threshold:.4g})"
        if self.fastest is None:
            out.append(("fastest", [f"Fastest to {target}: no cell reached it with every seed."]))
        else:
            f = self.fastest
            out.append(
                (
                    "fastest",
                    [
                        f"Fastest to {target}: {f.label()}: {f.time_to_target_s:.3g} s of"
                        f" training (mean over {f.seeds} seed(s))."
                    ],
                )
            )
        if self.critical is None:
            why = self.critical_reason
            if not why.startswith("not enough batch sizes"):  # that one says it all already
                why = f"not available: {why}"
            out.append(("critical", [f"Critical batch size: {why}"]))
        else:
            c = self.critical
            ci = (
                f", 95% CI {c.b_crit_ci.lo:.3g} .. {c.b_crit_ci.hi:.3g}"
                if c.b_crit_ci is not None
                else f" ({c.ci_note})"
                if c.ci_note
                else ""
            )
            out.append(
                (
                    "critical",
                    [
                        f"Critical batch size: B_crit = E_min / S_min = {c.b_crit:.3g}{ci}"
                        f" (S_min = {c.s_min:.4g} steps, E_min = {c.e_min:.4g} samples,"
                        f" {len(c.points)} batch sizes, R² = {c.r2:.3f}).",
                        *([c.caveat()] if c.caveat() else []),
                        "Below B_crit doubling the batch nearly halves the steps; above it,"
                        " larger batches mostly cost more samples.",
                    ],
                )
            )
        if self.noise is not None:
            per = ", ".join(f"B={k}: {v:.3g}" for k, v in self.noise.per_batch.items())
            noise = [
                "Gradient noise scale B_simple (median, last"
                f" {100 * self.noise.late_fraction:.0f}% of training):"
                f" {self.noise.overall:.3g} overall ({per})."
            ]
            ratio = self.noise_to_critical
            if ratio is not None:
                noise.append(
                    f"B_simple / B_crit = {ratio:.2g}: {_order_of_magnitude(ratio)}"
                    " (McCandlish et al.: B_simple predicts B_crit in order of magnitude)."
                )
            out.append(("noise", noise))
        front = "; ".join(
            f"B={c.batch_size}, lr={c.lr:.3g}: {c.train_time_s:.3g} s, "
            + (
                task.format_score(c.test_acc)
                if sel.on_test
                else f"{task.format_score(c.val_acc)} (test {task.format_score(c.test_acc)})"
            )
            for c in self.pareto
        )
        pareto = [f"Pareto front (training time vs final {sel.name(task)}): {front}."]
        if self.excluded:
            pareto.append(f"{self.excluded} cell(s) left out: a seed did not COMPLETE.")
        out.append(("pareto", pareto))
        out.append(("assumptions", ["Assumptions: " + " ".join(self.assumptions)]))
        return out

    def lines(self) -> list[str]:
        """The recommendation as plain sentences, one per line (qualifications indented)."""
        return [
            line if i == 0 else "  " + line
            for _, sentences in self.parts()
            for i, line in enumerate(sentences)
        ]


def _order_of_magnitude(ratio: float) -> str:
    """Whether B_simple and B_crit agree within a factor 10 (McCandlish et al.'s claim)."""
    if 0.1 <= ratio <= 10:
        return "within a factor 10, the agreement the model predicts"
    return "more than a factor 10 apart, not the agreement the model predicts"


def _stdev(xs: Sequence[float]) -> float:
    """Sample std; NaN with one value or a NaN among them (no validation split)."""
    return statistics.stdev(xs) if len(xs) > 1 and all(map(math.isfinite, xs)) else math.nan


def summarize_cells(
    trials: Sequence[FrozenTrial], target: Target, threshold: float
) -> tuple[list[CellSummary], int]:
    """Eligible cells (every seed COMPLETE with an evaluation) and the number left out."""
    groups: dict[tuple[str, int, float], list[FrozenTrial]] = {}
    for t in trials:
        if t.params.get("control"):
            continue
        groups.setdefault((str(t.params.get("variant", "")), t.batch_size, t.lr_base), []).append(t)
    cells, excluded = [], 0
    for (variant, b, lr_base), ts in sorted(groups.items()):
        if not all(t.state is TrialState.COMPLETE and t.evals for t in ts):
            excluded += 1
            continue
        accs = [t.evals[-1].test_acc for t in ts]
        vals = [t.evals[-1].val_acc for t in ts]
        reaches = [reach(t, target, threshold) for t in ts]
        done = all(r.reached for r in reaches)
        cells.append(
            CellSummary(
                variant=variant,
                batch_size=b,
                lr_base=lr_base,
                lr=ts[0].lr,
                seeds=len(ts),
                test_acc=statistics.fmean(accs),
                test_acc_std=_stdev(accs),
                train_time_s=statistics.fmean(t.evals[-1].train_time_s for t in ts),
                time_to_target_s=(
                    statistics.fmean(r.time_s for r in reaches) if done else math.nan
                ),
                reached=sum(r.reached for r in reaches),
                test_loss=statistics.fmean(t.evals[-1].test_loss for t in ts),
                val_acc=statistics.fmean(vals),
                val_acc_std=_stdev(vals),
            )
        )
    return cells, excluded


def _cells_split(cells: Sequence[CellSummary]) -> Split:
    """The split that ranks these cells: validation when any has a validation score."""
    return "val" if any(math.isfinite(c.val_acc) for c in cells) else "test"


def _rank(c: CellSummary, split: Split) -> float:
    """The score that ranks a cell; a cell without one ranks last."""
    v = c.score(split)
    return v if math.isfinite(v) else -math.inf


def pareto_front(cells: Sequence[CellSummary], split: Split | None = None) -> list[CellSummary]:
    """Cells not dominated in (lower training time, higher score on `split`: by default the
    validation score, the test score when no cell has one), fastest first."""
    on = split or _cells_split(cells)
    ok = [c for c in cells if math.isfinite(c.train_time_s) and math.isfinite(c.score(on))]

    def dominates(a: CellSummary, b: CellSummary) -> bool:
        return (
            a.train_time_s <= b.train_time_s
            and a.score(on) >= b.score(on)
            and (a.train_time_s < b.train_time_s or a.score(on) > b.score(on))
        )

    front = [c for c in ok if not any(dominates(o, c) for o in ok)]
    return sorted(front, key=lambda c: (c.train_time_s, -c.score(on)))


def assumptions(
    study: StudyLike, selection: Selection | None = None, target: Target | None = None
) -> tuple[str, ...]:
    spec, task = study.spec, TaskInfo.of(study)
    selection = selection or Selection.of(study.trials)
    metric = (target or default_target(study.trials)).metric
    if selection.on_test:
        chosen = (
            f"With no validation split, cells are chosen on the final test {task.score_label},"
            " so the test numbers of the chosen cells are optimistic;"
        )
    else:
        chosen = (
            f"Cells are chosen on the final validation {task.score_label}; the final test"
            f" {task.score_label} is reported for the chosen cells, not tuned on;"
        )
    return (
        f"Every trial got the same budget ({spec.budget.kind} = {spec.budget.value:g}),"
        " so results compare batch sizes at equal " + spec.budget.kind + ".",
        f"Learning rates follow the {spec.lr_scaling!r} scaling rule from lr_base at reference"
        f" batch size {spec.reference_batch_size}.",
        f"{chosen} the target and the best lr per batch size for B_crit use the target metric"
        f" ({metric}).",
        *check_assumption(getattr(study, "check", None)),
    )


def check_assumption(verdict: object) -> tuple[str, ...]:
    """The sentence on a stored `batchlab check` verdict (a study with gradient accumulation):
    whether its accumulated batches are the batches they stand for; none when never checked."""
    if not isinstance(verdict, dict) or "ok" not in verdict:
        return ()
    ks = ", ".join(str(k) for k in verdict.get("factors", []))
    if verdict["ok"]:
        return (
            f"batchlab check: accumulating k = {ks} micro-batches gives the gradient of the whole"
            f" batch ({verdict.get('verdict', 'equivalent')}, relative difference <="
            f" {float(verdict.get('tolerance', 0.0)):.2g}) at every batch size.",
        )
    sizes = ", ".join(str(b.get("batch_size")) for b in verdict.get("not_equivalent", []))
    why = "; ".join(str(f) for f in verdict.get("findings", [])) or "unexplained"
    return (
        f"batchlab check: accumulated batches are NOT equivalent to the whole batch at B ="
        f" {sizes} ({why}); results at those batch sizes compare different batches.",
    )


def recommend(
    study: StudyLike,
    target: Target | None = None,
    *,
    probes: pd.DataFrame | None = None,
    n_boot: int = 1000,
) -> Recommendation:
    """The recommendation for one study; `probes` (long form) adds the noise-scale comparison.

    Without a `target`: 0.98 of the best validation score (of the test score when the study kept
    no validation split)."""
    trials = list(study.trials)
    target = target or default_target(trials)
    selection = Selection.of(trials)
    target_selection = Selection.of_metric(target.metric, selection)
    done = [t for t in trials if t.state is TrialState.COMPLETE and t.evals]
    if not done:
        raise RecommendError(f"recommend: study {study.name!r} has no COMPLETE trial yet")
    sizes = sorted({t.batch_size for t in trials if not t.params.get("control")})
    if len(sizes) < 2:
        raise RecommendError(
            f"recommend: study {study.name!r} has one batch size ({sizes[0] if sizes else '-'});"
            " a recommendation compares several: add batch sizes"
        )
    try:
        threshold = target.threshold(done)
    except CriticalBatchError as err:
        raise RecommendError(str(err)) from None
    cells, excluded = summarize_cells(trials, target, threshold)
    if not cells:
        raise RecommendError(
            f"recommend: study {study.name!r} has no (batch size, lr) cell whose seeds all COMPLETE"
        )
    on = selection.split
    ranked = sorted(cells, key=lambda c: (-_rank(c, on), c.train_time_s))
    best = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    lead = best.score(on) - runner.score(on) if runner else math.nan
    spread = seed_spread(best.score_std(on), runner.score_std(on)) if runner else math.nan
    exceeds = None if runner is None or math.isnan(spread) else lead > spread
    reached = [c for c in cells if math.isfinite(c.time_to_target_s)]
    fastest = min(reached, key=lambda c: (c.time_to_target_s, -_rank(c, on))) if reached else None
    fit: CriticalFit | None = None
    reason = ""
    try:
        fit = critical_batch_size(trials, target, variant=best.variant, n_boot=n_boot)
    except CriticalBatchError as err:
        reason = str(err).removeprefix("critical batch size: ")
    noise = None
    if probes is not None:
        chosen = [t for t in trials if str(t.params.get("variant", "")) == best.variant]
        noise = noise_scale_summary(probes, chosen)
    return Recommendation(
        study=study.name,
        target=target.describe(),
        threshold=threshold,
        best=best,
        runner_up=runner,
        lead=lead,
        spread=spread,
        lead_exceeds_spread=exceeds,
        fastest=fastest,
        critical=fit,
        critical_reason=reason,
        noise=noise,
        pareto=tuple(pareto_front(cells, on)),
        excluded=excluded,
        assumptions=assumptions(study, selection, target),
        task=TaskInfo.of(study),
        selection=selection,
        target_selection=target_selection,
    )
