"""Reports on batch-size studies: one self-contained HTML page, PNGs and summary.json.

    from batchlab.report import build_report
    build_report(study, Path("report"))

Each figure is a pure `extract` of numbers from the studies plus two renderers (plotly for the
page, matplotlib for the PNG); see `Figure` to add one.
"""

from __future__ import annotations

from batchlab.report._types import BudgetLike, ReportError, SpecLike, StudyLike
from batchlab.report.build import build_comparison, build_report
from batchlab.report.figure import Figure
from batchlab.report.figures import DEFAULT_FIGURES
from batchlab.report.findings import Finding, comparison_findings, study_findings
from batchlab.report.palette import Palette
from batchlab.report.stats import BAND

__all__ = [
    "BAND",
    "DEFAULT_FIGURES",
    "BudgetLike",
    "Figure",
    "Finding",
    "Palette",
    "ReportError",
    "SpecLike",
    "StudyLike",
    "build_comparison",
    "build_report",
    "comparison_findings",
    "study_findings",
]
