"""Shared selection for the probe and design figures: which trials a line stands for.

A *run* is a COMPLETE trial with an evaluation. Control runs (`params["control"]`, given the
updates of the smallest batch size) are kept apart from the equal-budget sweep: only the budget
figure reads them. Branch trials (`params["branch"]`) are never runs of the sweep: only the
branched figure reads them. A *line key* is (study, variant); with several learning rates each
batch size of a line is shown at its best lr_base (highest mean final validation score over
seeds; test score for a study without a validation split), as in the curves figure. Probe
records come from studies that are a `ProbeSource`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from batchlab.analysis.selection import Selection
from batchlab.report._types import ProbeSource, StudyLike
from batchlab.report.figures._lines import Line
from batchlab.report.stats import sweep_trials
from batchlab.trial import FrozenTrial, TrialState

PROBE_COLUMNS = ["trial_id", "step", "probe", "key", "value"]


@dataclass(frozen=True, kw_only=True, order=True)
class LineKey:
    """One line of a probe or design figure: a study's variant ("" when it has none)."""

    study: str
    variant: str

    def label(self, *, multi_study: bool) -> str:
        parts = [self.study] if multi_study else []
        if self.variant:
            parts.append(self.variant)
        return " · ".join(parts)


def variant(t: FrozenTrial) -> str:
    return str(t.params.get("variant", ""))


def is_control(t: FrozenTrial) -> bool:
    return bool(t.params.get("control", False))


def is_run(t: FrozenTrial) -> bool:
    return t.state is TrialState.COMPLETE and bool(t.evals)


def heldout_acc(t: FrozenTrial) -> float:
    """Final test score (as stored: accuracy a fraction, R² plain); validation score when no
    test was recorded."""
    last = t.evals[-1]
    return last.test_acc if math.isfinite(last.test_acc) else last.val_acc


def mean(values: Iterable[float]) -> float:
    xs = [v for v in values if math.isfinite(v)]
    return statistics.fmean(xs) if xs else math.nan


def std(values: Iterable[float]) -> float:
    """Sample standard deviation (ddof=1) of the finite values; NaN with fewer than two."""
    xs = [v for v in values if math.isfinite(v)]
    return statistics.stdev(xs) if len(xs) > 1 else math.nan


def line_key(t: FrozenTrial) -> LineKey:
    return LineKey(study=t.study, variant=variant(t))


def sweep_runs(studies: Sequence[StudyLike], *, control: bool = False) -> list[FrozenTrial]:
    """COMPLETE trials with evaluations: the sweep (or, with `control=True`, the controls);
    never a branch trial."""
    return [t for s in studies for t in sweep_trials(s) if is_run(t) and is_control(t) == control]


def best_runs(runs: Sequence[FrozenTrial]) -> dict[tuple[LineKey, int], list[FrozenTrial]]:
    """Per (line, batch size): the seeds at the lr_base with the best mean final validation score
    (test score for a study whose runs kept no validation split).

    Ties go to the smaller lr_base; an lr whose score is NaN never beats one with a number.
    Ordered by line (in the order the trials list them, i.e. the spec's variants) then batch size.
    """
    groups: dict[tuple[LineKey, int, float], list[FrozenTrial]] = {}
    by_study: dict[str, list[FrozenTrial]] = {}
    for t in runs:
        groups.setdefault((line_key(t), t.batch_size, t.lr_base), []).append(t)
        by_study.setdefault(t.study, []).append(t)
    selection = {name: Selection.of(ts) for name, ts in by_study.items()}
    order = list(dict.fromkeys(line_key(t) for t in runs))  # lines in the order of the spec
    best: dict[tuple[LineKey, int], tuple[float, list[FrozenTrial]]] = {}
    for (key, b, _), ts in sorted(groups.items(), key=lambda kv: kv[0]):
        score = mean(selection[key.study].score(t.evals[-1]) for t in ts)
        score = score if math.isfinite(score) else -math.inf
        if (key, b) not in best or score > best[(key, b)][0]:
            best[(key, b)] = (score, ts)
    ranked = sorted(best.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1]))
    return {k: ts for k, (_, ts) in ranked}


def several_lrs(runs: Sequence[FrozenTrial]) -> bool:
    """Whether some line tried more than one lr_base (so 'best lr_base' needs saying)."""
    lrs: dict[LineKey, set[float]] = {}
    for t in runs:
        lrs.setdefault(line_key(t), set()).add(t.lr_base)
    return any(len(v) > 1 for v in lrs.values())


def multi_study(studies: Sequence[StudyLike]) -> bool:
    return len(studies) > 1


def probe_frame(studies: Sequence[StudyLike], probes: Sequence[str]) -> pd.DataFrame:
    """The records of the given probes from every study that has probes (columns PROBE_COLUMNS).

    Empty when no study is a `ProbeSource` or none recorded these probes.
    """
    frames = []
    for s in studies:
        if not isinstance(s, ProbeSource):
            continue
        df = s.probes_dataframe()
        if len(df):
            frames.append(df.loc[df["probe"].isin(list(probes)), PROBE_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=PROBE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def values_by_trial(
    frame: pd.DataFrame, probe: str, key: str
) -> dict[str, list[tuple[int, float]]]:
    """(step, value) pairs per trial id for one probe and key, by step."""
    rows = frame.loc[(frame["probe"] == probe) & (frame["key"] == key)]
    out: dict[str, list[tuple[int, float]]] = {}
    for tid, step, value in zip(rows["trial_id"], rows["step"], rows["value"], strict=True):
        out.setdefault(str(tid), []).append((int(step), float(value)))
    return {tid: sorted(pts) for tid, pts in out.items()}


def final_value(pts: Sequence[tuple[int, float]]) -> float:
    """The value at the last recorded step; NaN when there is none."""
    return pts[-1][1] if pts else math.nan


def seed_mean_by_step(
    per_trial: Sequence[Sequence[tuple[int, float]]],
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Steps, mean and sample std over trials (seeds) at every step any trial recorded."""
    by_step: dict[int, list[float]] = {}
    for pts in per_trial:
        for step, value in pts:
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (
        tuple(float(s) for s in steps),
        tuple(mean(by_step[s]) for s in steps),
        tuple(std(by_step[s]) for s in steps),
    )


def bs_label(key: LineKey, batch_size: int, *, multi_study: bool) -> str:
    """ "b=8", or "adam · b=8", or "study · adam · b=8" in a comparison."""
    head = key.label(multi_study=multi_study)
    return f"{head} · b={batch_size}" if head else f"b={batch_size}"


def lines_vs_batch(
    groups: dict[tuple[LineKey, int], list[FrozenTrial]],
    value: Callable[[FrozenTrial], float],
    *,
    multi_study: bool,
    scale: float = 1.0,
) -> tuple[Line, ...]:
    """One line per LineKey across batch sizes: mean and std over its trials of `value`.

    Batch sizes where no trial has a finite value are left out, and so are lines with none.
    """
    keys = list(dict.fromkeys(k for k, _ in groups))
    out = []
    for i, key in enumerate(keys):
        pts = []
        for (k, b), trials in sorted(groups.items(), key=lambda kv: kv[0][1]):
            vs = [value(t) * scale for t in trials]
            if k == key and any(math.isfinite(v) for v in vs):
                pts.append((float(b), mean(vs), std(vs)))
        if pts:
            out.append(
                Line(
                    label=key.label(multi_study=multi_study) or "mean over seeds",
                    x=tuple(p[0] for p in pts),
                    y=tuple(p[1] for p in pts),
                    std=tuple(p[2] for p in pts),
                    color=i,
                    dash=i,
                )
            )
    return tuple(out)


def final_of(vals: dict[str, list[tuple[int, float]]]) -> Callable[[FrozenTrial], float]:
    """A trial's value at its last recorded step in `vals` (from `values_by_trial`), or NaN."""
    return lambda t: final_value(vals.get(t.trial_id, []))
