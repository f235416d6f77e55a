"""The scaling-regimes figure: its data checked on values, its renderers for not breaking."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest

from batchlab.report.figures import DEFAULT_FIGURES
from batchlab.report.figures.regimes import FIGURE, RegimesData, extract_regimes
from batchlab.report.palette import Palette
from batchlab.trial import FrozenTrial
from tests.analysis.test_critical import ev, trial

S_MIN, B_NOISE = 100.0, 50.0
BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)


def steps(b: int, b_noise: float = B_NOISE) -> float:
    return S_MIN * (1 + b_noise / b)


@dataclass(frozen=True)
class _Study:
    trials: list[FrozenTrial]
    name: str = "s"
    spec: Any = None


def exact_trial(b: int, s_true: float) -> FrozenTrial:
    """val_acc = 0.98 step / s_true around s_true, 1.0 at the end: the default target (0.98 of
    the best) is met at exactly s_true (both evaluations around it lie on the line)."""
    at = [round(f * s_true) for f in (0.0, 0.5, 0.9, 1.01)]  # the score is linear in the step
    evals = [ev(i, step, b, 0.98 * step / s_true) for i, step in enumerate(at)]
    return trial(b, (*evals, ev(4, round(3 * s_true), b, 1.0)))


def study(b_noise: float = B_NOISE, sizes: tuple[int, ...] = BATCHES, name: str = "s") -> _Study:
    return _Study([exact_trial(b, steps(b, b_noise)) for b in sizes], name=name)


def extract(*studies: _Study) -> RegimesData:
    data = extract_regimes(list(studies))
    assert data is not None
    return data


def test_the_panel_is_the_measured_steps_the_perfect_line_and_the_two_boundaries() -> None:
    data = extract(study())  # default target: 0.98 of the best val_acc; curves cap at 1.0
    (panel,) = data.panels
    assert panel.batch_sizes == BATCHES
    assert panel.steps == pytest.approx([steps(b) for b in BATCHES], rel=1e-9)
    s0 = panel.steps[0]
    assert panel.perfect == pytest.approx([s0 * 8 / b for b in BATCHES])
    assert panel.perfect_end is not None and 16 < panel.perfect_end < 32  # analytic: 19.6
    assert panel.maximal_start == 256  # the first doubling-grid size above 4 B_noise = 200
    # the marks sit on the measured log-log curve; at the end it is 1.2 x perfect scaling
    (end_b, end_s), (start_b, start_s) = panel.marks()
    assert end_b == panel.perfect_end
    assert end_s == pytest.approx(1.2 * s0 * 8 / panel.perfect_end)
    assert start_b == 256.0 and start_s == pytest.approx(panel.steps[BATCHES.index(256)])
    # three regimes, back to back over the measured range
    spans = panel.spans()
    regimes = ["perfect scaling", "diminishing returns", "maximal data parallelism"]
    assert [s[0] for s in spans] == regimes
    assert [s[2] for s in spans] == [8, panel.perfect_end, 256]
    assert [s[3] for s in spans] == [panel.perfect_end, 256, 1024]
    assert panel.title() == f"perfect scaling to B ≈ {panel.perfect_end:.3g}, maximal from B = 256"


def test_a_boundary_not_reached_is_not_drawn() -> None:
    data = extract(study(b_noise=1e5, sizes=BATCHES[:5]))
    (panel,) = data.panels
    assert panel.perfect_end is None and panel.maximal_start is None
    assert all(b is None and math.isnan(s) for b, s in panel.marks())
    assert panel.spans() == [("perfect scaling", "#2ca02c", 8.0, 128.0)]
    assert panel.title() == "perfect scaling past B = 128, maximal not reached by B = 128"
    assert panel.summary[0].startswith("not reached in the measured range")
    palette = Palette(batch_sizes=BATCHES[:5], series=())
    fig = FIGURE.render_plotly(data, palette)
    assert [t.name for t in fig.data if t.mode == "markers"] == []  # no boundary marker


def test_too_few_batch_sizes_leave_the_figure_out_and_others_are_named() -> None:
    assert extract_regimes([study(sizes=BATCHES[:3])]) is None
    data = extract(study(name="a"), study(sizes=BATCHES[:3], name="b"))
    assert [p.label for p in data.panels] == ["a"]
    assert data.note == "no regimes for: b"


def test_renderers_draw_every_panel_and_mark() -> None:
    data = extract(study(name="a"), study(b_noise=10.0, name="b"), study(b_noise=1e5, name="c"))
    palette = Palette(batch_sizes=BATCHES, series=())
    fig = FIGURE.render_plotly(data, palette)
    marks = [t for t in fig.data if t.mode == "markers"]
    assert len(marks) == 4  # two each for a and b, none for c
    assert sum(1 for t in fig.data if t.mode == "lines+markers") == 3
    mfig = FIGURE.render_matplotlib(data, palette)
    assert sum(ax.get_visible() for ax in mfig.axes) == 3
    assert all(ax.get_yscale() == "log" and ax.get_xscale() == "log" for ax in mfig.axes[:3])


def test_registered_once_after_the_critical_batch_figure() -> None:
    names = [f.name for f in DEFAULT_FIGURES]
    assert names.count("scaling-regimes") == 1
    assert names.index("scaling-regimes") == names.index("critical-batch") + 1
