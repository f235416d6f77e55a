"""The report's figures, one module each; `DEFAULT_FIGURES` is the order they appear in.

`STUDY_FIGURES` need only the trials of an equal-budget sweep; `DESIGN_FIGURES` show study
designs (an lr grid, control runs, variants, schedules), `PROBE_FIGURES` probe records and
`ANALYSIS_FIGURES` fits over the study (the critical batch size, the scaling regimes, a
branched design's critical batch size over training) and the hardware profile of its model. A
figure whose data a study lacks is left out of its report.
"""

from __future__ import annotations

from typing import Any

from batchlab.report.figure import Figure
from batchlab.report.figures import (
    accuracy,
    branched,
    cost,
    critical,
    curves,
    designs_budget,
    designs_schedules,
    designs_stability,
    designs_variants,
    gap,
    hardware,
    heatmap,
    parallel,
    probes_distance,
    probes_histograms,
    probes_noise,
    probes_sharpness,
    regimes,
    throughput,
)

STUDY_FIGURES: tuple[Figure[Any], ...] = (
    accuracy.FIGURE,
    cost.FIGURE,
    curves.FIGURE,
    gap.FIGURE,
    parallel.FIGURE,
    heatmap.FIGURE,
    throughput.FIGURE,
)
DESIGN_FIGURES: tuple[Figure[Any], ...] = (
    designs_stability.FIGURE,
    designs_budget.FIGURE,
    designs_variants.FIGURE,
    designs_schedules.FIGURE,
)
PROBE_FIGURES: tuple[Figure[Any], ...] = (
    probes_noise.FIGURE,
    probes_sharpness.FIGURE,
    probes_distance.FIGURE,
    probes_histograms.FIGURE,
)
ANALYSIS_FIGURES: tuple[Figure[Any], ...] = (
    critical.FIGURE,
    regimes.FIGURE,
    branched.FIGURE,
    hardware.FIGURE,
)
DEFAULT_FIGURES: tuple[Figure[Any], ...] = (
    STUDY_FIGURES + DESIGN_FIGURES + PROBE_FIGURES + ANALYSIS_FIGURES
)

__all__ = [
    "ANALYSIS_FIGURES",
    "DEFAULT_FIGURES",
    "DESIGN_FIGURES",
    "PROBE_FIGURES",
    "STUDY_FIGURES",
]
