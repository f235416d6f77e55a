"""The report's first section: the answer of `batchlab recommend`, and its numbers for summary.json.

`study_recommendation` runs `batchlab.analysis.recommend.recommend` on one study with the default
target (0.98 of the best validation score; the test score when no validation split was kept),
adding the noise-scale comparison when the study has probe records. When no recommendation can be
made (one batch size, nothing COMPLETE, ...) it keeps the one-line reason instead of a number.
`recommendation_view` turns the result into plain strings for the page (escaped there), naming
and formatting the score as the study's task does (accuracy in %, R² as a plain number).
Every choice is made on the validation score (the test score is reported for the chosen cells);
a study without a validation split gets a "Selection on test" item first, saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchlab.analysis.critical import default_target
from batchlab.analysis.recommend import Recommendation, recommend
from batchlab.analysis.selection import Selection
from batchlab.errors import BatchlabError
from batchlab.fmt import lr_text
from batchlab.report._types import ProbeSource, StudyLike
from batchlab.tasks.base import TaskInfo

TOPICS = {
    "selection": "Selection on test",
    "best": "Best batch size and lr",
    "fastest": "Fastest to the target",
    "critical": "Critical batch size",
    "noise": "Gradient noise scale",
    "pareto": "Time vs {score}",
    "assumptions": "Assumptions",
}


def topic_title(topic: str, task: TaskInfo) -> str:
    """A topic's heading, naming the task's score ("Time vs accuracy", "Time vs R²")."""
    return TOPICS[topic].format(score=task.score_label)


def pareto_headers(task: TaskInfo, selection: Selection | None = None) -> tuple[str, ...]:
    """The Pareto table's columns, ending "val acc (mean ± std)" (the score that chose the front;
    left out when that is test), "test acc (mean ± std)" ("test R² ..." for regression)."""
    on_val = selection is not None and not selection.on_test
    return (
        "batch size",
        "lr (used)",
        "lr_base",
        "seeds",
        "training time (s)",
        *([f"val {task.score_short} (mean ± std)"] if on_val else []),
        f"test {task.score_short} (mean ± std)",
    )


@dataclass(frozen=True, kw_only=True)
class StudyRecommendation:
    """A study's recommendation, or the reason there is none (exactly one is set)."""

    study: str
    recommendation: Recommendation | None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        if self.recommendation is None:
            return {"available": False, "reason": self.reason}
        return {
            "available": True,
            **self.recommendation.to_dict(),
            "lines": self.recommendation.lines(),
        }


def study_recommendation(study: StudyLike, *, n_boot: int = 1000) -> StudyRecommendation:
    """Recommend for `study` with the default target; a BatchlabError becomes the reason."""
    probes = None
    try:
        target = default_target(study.trials)
        if isinstance(study, ProbeSource):
            probes = study.probes_dataframe()
        rec = recommend(study, target, probes=probes, n_boot=n_boot)
    except BatchlabError as err:
        return StudyRecommendation(study=study.name, recommendation=None, reason=str(err))
    return StudyRecommendation(study=study.name, recommendation=rec)


@dataclass(frozen=True, kw_only=True)
class RecommendationView:
    """What the page shows: (topic title, sentences) items and the Pareto front as a table."""

    heading: str
    items: tuple[tuple[str, tuple[str, ...]], ...]
    table_headers: tuple[str, ...]
    table_rows: tuple[tuple[str, ...], ...]
    unavailable: str  # the reason, when there is no recommendation ("" otherwise)


def recommendation_view(sr: StudyRecommendation, *, heading: str) -> RecommendationView:
    """Plain strings for the page; the sentences are exactly `Recommendation.parts()`."""
    rec = sr.recommendation
    if rec is None:
        return RecommendationView(
            heading=heading,
            items=(),
            table_headers=(),
            table_rows=(),
            unavailable=f"No recommendation: {sr.reason}",
        )
    task, on_val = rec.task, not rec.selection.on_test
    items = tuple((topic_title(topic, task), tuple(sents)) for topic, sents in rec.parts())
    rows = tuple(
        (
            str(c.batch_size) + (" (best)" if c == rec.best else ""),
            lr_text(c.lr),
            lr_text(c.lr_base),
            str(c.seeds),
            f"{c.train_time_s:.3g}",
            *([task.format_score_mean_std(c.val_acc, c.val_acc_std)] if on_val else []),
            task.format_score_mean_std(c.test_acc, c.test_acc_std),
        )
        for c in rec.pareto
    )
    return RecommendationView(
        heading=heading,
        items=items,
        table_headers=pareto_headers(task, rec.selection),
        table_rows=rows,
        unavailable="",
    )
