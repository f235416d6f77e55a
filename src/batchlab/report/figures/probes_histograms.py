"""Probes: gradient histograms over many batches at the final weights, and their spread vs 1/B.

The grad_histograms probe bins every gradient component of `draws` batches per batch size B into
one set of bins shared by all B (Chang & Pathak 2020; Hoffer et al. 2017). For i.i.d. batches a
component's variance across draws is Σ_jj / B, so the mean variance against 1/B is a line
through the origin whose slope is the mean per-example variance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib.figure import Figure as MplFigure

from batchlab.report._types import StudyLike
from batchlab.report.figure import Figure
from batchlab.report.figures._lines import (
    Line,
    LinePanel,
    LinesData,
    render_lines_matplotlib,
    render_lines_plotly,
)
from batchlab.report.figures._runs import LineKey, best_runs, bs_label, probe_frame, sweep_runs
from batchlab.report.palette import Palette

PROBE = "grad_histograms"
MAX_HIST_PANELS = 4
_BIN = re.compile(r"B=(\d+)/bin=(\d+)")
_EDGE = re.compile(r"edge=(\d+)")
_VAR = re.compile(r"B=(\d+)/variance")


@dataclass(frozen=True, kw_only=True)
class Histograms:
    """One trial's final grad_histograms record: shared edges, counts and variance per B."""

    step: int
    edges: tuple[float, ...]
    counts: dict[int, tuple[float, ...]]
    outside: dict[int, float]  # under + over
    variance: dict[int, float]


@dataclass(frozen=True, kw_only=True)
class VarianceFit:
    """Least-squares line through the origin of mean variance against 1/B for one trial."""

    label: str
    batch_size: int
    slope: float  # the mean per-example variance Σ_jj estimated from all B
    max_rel_dev: float  # max over B of |variance - slope / B| / variance


@dataclass(frozen=True, kw_only=True)
class HistogramsData:
    lines: LinesData
    hist_sizes: tuple[int, ...]
    fits: tuple[VarianceFit, ...]


def parse_histograms(rows: pd.DataFrame) -> Histograms | None:
    """The records of one trial's grad_histograms at its last step; None without any."""
    if not len(rows):
        return None
    step = int(rows["step"].max())
    last = rows.loc[rows["step"] == step]
    edges: dict[int, float] = {}
    bins: dict[int, dict[int, float]] = {}
    outside: dict[int, float] = {}
    variance: dict[int, float] = {}
    for key, value in zip(last["key"], last["value"], strict=True):
        k, v = str(key), float(value)
        if m := _EDGE.fullmatch(k):
            edges[int(m.group(1))] = v
        elif m := _BIN.fullmatch(k):
            bins.setdefault(int(m.group(1)), {})[int(m.group(2))] = v
        elif m := _VAR.fullmatch(k):
            variance[int(m.group(1))] = v
        elif k.startswith("B=") and k.endswith(("/under", "/over")):
            b = int(k[2:].split("/")[0])
            outside[b] = outside.get(b, 0.0) + v
    if len(edges) < 2 or not bins:
        return None
    n = len(edges) - 1
    return Histograms(
        step=step,
        edges=tuple(edges[i] for i in sorted(edges)),
        counts={b: tuple(c.get(i, 0.0) for i in range(n)) for b, c in sorted(bins.items())},
        outside=outside,
        variance=variance,
    )


def fit_through_origin(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Slope of y = s·x by least squares, and the largest |y - s·x| / |y|."""
    sxx = sum(a * a for a in x)
    slope = sum(a * b for a, b in zip(x, y, strict=True)) / sxx if sxx else math.nan
    dev = max((abs(b - slope * a) / abs(b) for a, b in zip(x, y, strict=True) if b), default=0.0)
    return slope, dev


def _hist_line(h: Histograms, b: int) -> Line:
    total = sum(h.counts[b]) + h.outside.get(b, 0.0)
    centres = tuple((lo + hi) / 2 for lo, hi in zip(h.edges, h.edges[1:], strict=False))
    return Line(
        label=f"B={b} per draw",
        x=centres,
        y=tuple(100.0 * c / total if total else math.nan for c in h.counts[b]),
        batch_size=b,
        markers=False,
    )


def extract_histograms(studies: Sequence[StudyLike]) -> HistogramsData | None:
    """Histogram panels (smallest and largest trained batch size of each variant, at most 4) and
    the variance-against-1/B panel (one line per trained batch size with its fit).

    Per (study, variant, trained batch size) the trial is the lowest seed at the best lr_base
    that recorded histograms. None when no COMPLETE trial did.
    """
    frame = probe_frame(studies, [PROBE])
    if not len(frame):
        return None
    multi = len(studies) > 1
    chosen: dict[tuple[LineKey, int], Histograms] = {}
    for (key, b), trials in best_runs(sweep_runs(studies)).items():
        for t in sorted(trials, key=lambda t: (t.seed, t.number)):
            h = parse_histograms(frame.loc[frame["trial_id"] == t.trial_id])
            if h is not None:
                chosen[(key, b)] = h
                break
    if not chosen:
        return None
    keys = list(dict.fromkeys(k for k, _ in chosen))
    hist_panels = []
    for key in keys:
        sizes = sorted(b for k, b in chosen if k == key)
        for b in dict.fromkeys((sizes[0], sizes[-1])):
            h = chosen[(key, b)]
            where = bs_label(key, b, multi_study=multi).replace("b=", "trained at b=")
            hist_panels.append(
                LinePanel(
                    title=f"Gradient components, {where}",
                    x_label="gradient component value",
                    y_label="share of components (% per bin, log scale)",
                    x_kind="linear",
                    log_y=True,
                    lines=tuple(_hist_line(h, B) for B in h.counts),
                )
            )
    var_lines, fits = [], []
    for (key, b), h in chosen.items():
        sizes = sorted(B for B in h.variance if h.variance[B] > 0)
        if len(sizes) < 2:
            continue
        x = tuple(1.0 / B for B in sizes)
        y = tuple(h.variance[B] for B in sizes)
        slope, dev = fit_through_origin(x, y)
        label = bs_label(key, b, multi_study=multi).replace("b=", "trained at b=")
        fits.append(VarianceFit(label=label, batch_size=b, slope=slope, max_rel_dev=dev))
        var_lines.append(Line(label=label, x=x, y=y, batch_size=b, dash=keys.index(key)))
        var_lines.append(
            Line(
                label="least squares through the origin",
                x=(0.0, max(x)),
                y=(0.0, slope * max(x)),
                batch_size=b,
                dash=2,
                markers=False,
            )
        )
    panels = hist_panels[:MAX_HIST_PANELS]
    if var_lines:
        panels.append(
            LinePanel(
                title="Variance across draws vs 1/B",
                x_label="1 / B (B = samples per draw)",
                y_label="mean per-component variance",
                x_kind="linear",
                log_y=False,
                lines=tuple(var_lines),
                origin=True,
            )
        )
    hist_sizes = sorted({B for h in chosen.values() for B in h.counts})
    return HistogramsData(
        lines=LinesData(
            batch_sizes=tuple(sorted({b for _, b in chosen})), panels=tuple(panels), columns=3
        ),
        hist_sizes=tuple(hist_sizes),
        fits=tuple(fits),
    )


def _palette(data: HistogramsData, palette: Palette) -> Palette:
    """The report's ramp, widened to the probe's B when they reach past the studied sizes."""
    sizes = tuple(sorted({*palette.batch_sizes, *data.hist_sizes}))
    return Palette(batch_sizes=sizes, series=palette.series)


def render_histograms_plotly(data: HistogramsData, palette: Palette) -> Any:
    return render_lines_plotly(data.lines, _palette(data, palette))


def render_histograms_matplotlib(data: HistogramsData, palette: Palette) -> MplFigure:
    return render_lines_matplotlib(data.lines, _palette(data, palette))


FIGURE = Figure[HistogramsData](
    name="grad-histograms",
    title="Gradient histograms and variance vs 1/B",
    description=(
        "At the final weights, the grad_histograms probe draws many batches of B samples per B and"
        " bins every gradient component of every draw in one set of bins shared by all B."
        " Histogram panels (one trial each: lowest seed at the best lr_base, for the smallest and"
        " the largest trained batch size): share of components per bin in %, log scale, one colour"
        " per draw size B; larger B narrows the distribution. Last panel: the mean over components"
        " of each component's variance across draws against 1/B, one line per trained batch size"
        " with its least-squares line through the origin (dotted); for i.i.d. draws it is"
        " Σ_jj / B, a line through the origin. Colours place the trained and the drawn batch sizes"
        " on one ramp."
    ),
    extract=extract_histograms,
    render_plotly=render_histograms_plotly,
    render_matplotlib=render_histograms_matplotlib,
)
