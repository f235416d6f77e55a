"""The report's first section: the answer of `batchlab recommend`, and its numbers for summary.json.

`study_recommendation` runs `batchlab.analysis.recommend.recommend` on one study with the default
target (0.98 of the best validation accuracy; test accuracy when no validation split was kept),
adding the noise-scale comparison when the study has probe records. When no recommendation can be
made (one batch size, nothing COMPLETE, ...) it keeps the one-line reason instead of a number.
`recommendation_view` turns the result into plain strings for the page (escaped there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from batchlab.analysis.critical import default_target
from batchlab.analysis.recommend import Recommendation, recommend
from batchlab.errors import BatchlabError
from batchlab.report._types import ProbeSource, StudyLike

TOPICS = {
    "best": "Best batch size and lr",
    "fastest": "Fastest to the target",
    "critical": "Critical batch size",
    "noise": "Gradient noise scale",
    "pareto": "Time vs accuracy",
    "assumptions": "Assumptions",
}
PARETO_HEADERS = (
    "batch size",
    "lr (used)",
    "lr_base",
    "seeds",
    "training time (s)",
    "test acc (mean ± std)",
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


def _pct(mean: float, std: float) -> str:
    s = f"{100 * mean:.2f}%"
    return s if math.isnan(std) else f"{s} ± {100 * std:.2f}"


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
    items = tuple((TOPICS[topic], tuple(sentences)) for topic, sentences in rec.parts())
    rows = tuple(
        (
            str(c.batch_size) + (" (best)" if c == rec.best else ""),
            f"{c.lr:.4g}",
            f"{c.lr_base:g}",
            str(c.seeds),
            f"{c.train_time_s:.3g}",
            _pct(c.test_acc, c.test_acc_std),
        )
        for c in rec.pareto
    )
    return RecommendationView(
        heading=heading,
        items=items,
        table_headers=PARETO_HEADERS,
        table_rows=rows,
        unavailable="",
    )
