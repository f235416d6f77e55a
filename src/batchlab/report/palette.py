"""Colours and line styles shared by every figure, so one batch size looks the same everywhere.

Batch sizes take colours from a truncated viridis ramp placed by log2(batch size) (the pale
yellow end is cut off; it is unreadable on white). Series (a study at one lr_base) are drawn in
dark colours outside that ramp and with distinct dashes, so they never read as a batch size.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.typing import LineStyleType

from batchlab.report._types import StudyLike
from batchlab.report.stats import SeriesKey, batch_sizes, series_keys

_RAMP = "viridis"
_RAMP_END = 0.88
SERIES_COLORS = ("#1a1a1a", "#d62728", "#8c564b", "#e377c2", "#ff7f0e", "#7f7f7f")
_PLOTLY_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
_MPL_DASHES: tuple[LineStyleType, ...] = ("-", "--", ":", "-.", (0, (8, 3)), (0, (8, 3, 2, 3)))
DIVERGED_COLOR = "#d62728"


def ramp_color(t: float) -> str:
    """The batch-size ramp at position t in [0, 1]."""
    return str(to_hex(colormaps[_RAMP](_RAMP_END * min(max(t, 0.0), 1.0))))


@dataclass(frozen=True, kw_only=True)
class Palette:
    """Colour per batch size, colour and dash per series, for one report."""

    batch_sizes: tuple[int, ...]
    series: tuple[SeriesKey, ...]

    @property
    def multi_study(self) -> bool:
        return len({k.study for k in self.series}) > 1

    def position(self, batch_size: int) -> float:
        """Where a batch size sits on the ramp: by log2 between the smallest and the largest."""
        lo, hi = math.log2(min(self.batch_sizes)), math.log2(max(self.batch_sizes))
        return 0.5 if hi == lo else (math.log2(batch_size) - lo) / (hi - lo)

    def bs_color(self, batch_size: int) -> str:
        return ramp_color(self.position(batch_size))

    def bs_colorscale(self) -> list[tuple[float, str]]:
        """The ramp as a plotly colorscale, for colour values given in log2(batch size)."""
        return [(i / 10, ramp_color(i / 10)) for i in range(11)]

    def _index(self, key: SeriesKey) -> int:
        return self.series.index(key) if key in self.series else 0

    def series_color(self, key: SeriesKey) -> str:
        return SERIES_COLORS[self._index(key) % len(SERIES_COLORS)]

    def series_dash_plotly(self, key: SeriesKey) -> str:
        return _PLOTLY_DASHES[self._index(key) % len(_PLOTLY_DASHES)]

    def series_dash_mpl(self, key: SeriesKey) -> LineStyleType:
        return _MPL_DASHES[self._index(key) % len(_MPL_DASHES)]

    def study_dash_plotly(self, study: str) -> str:
        return _PLOTLY_DASHES[self._study_index(study) % len(_PLOTLY_DASHES)]

    def study_dash_mpl(self, study: str) -> LineStyleType:
        return _MPL_DASHES[self._study_index(study) % len(_MPL_DASHES)]

    def _study_index(self, study: str) -> int:
        studies = list(dict.fromkeys(k.study for k in self.series))
        return studies.index(study) if study in studies else 0

    def label(self, key: SeriesKey) -> str:
        return key.label(multi_study=self.multi_study)


def palette_for(studies: Sequence[StudyLike]) -> Palette:
    return Palette(
        batch_sizes=tuple(batch_sizes(studies)) or (1,), series=tuple(series_keys(studies))
    )


def plotly_text(s: str) -> str:
    """Text for plotly labels: plotly reads a subset of HTML in them, so escape it."""
    return html.escape(s, quote=False)


def mpl_text(s: str) -> str:
    """Text for matplotlib labels: a `$` would start mathtext, so escape it."""
    return s.replace("$", r"\$")
