"""The report's figures, one module each; `DEFAULT_FIGURES` is the order they appear in."""

from __future__ import annotations

from typing import Any

from batchlab.report.figure import Figure
from batchlab.report.figures import accuracy, cost, curves, gap, heatmap, parallel, throughput

DEFAULT_FIGURES: tuple[Figure[Any], ...] = (
    accuracy.FIGURE,
    cost.FIGURE,
    curves.FIGURE,
    gap.FIGURE,
    parallel.FIGURE,
    heatmap.FIGURE,
    throughput.FIGURE,
)

__all__ = ["DEFAULT_FIGURES"]
