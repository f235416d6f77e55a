"""The branched figure: its data checked on values against the hyperbola the branches follow, its
renderers for drawing what the data says; and every other figure blind to branch trials."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest

from batchlab.analysis.critical import MIN_BATCH_SIZES
from batchlab.report.figures import DEFAULT_FIGURES
from batchlab.report.figures.branched import (
    BOUND_LABEL,
    FIGURE,
    BranchedData,
    extract_branched,
)
from batchlab.report.palette import Palette, palette_for
from batchlab.tasks.base import TaskInfo
from batchlab.trial import FrozenTrial
from tests.analysis.test_branched import hyperbola_study
from tests.report.report_factories import FakeStudy, curve, grid_study, trial

SIZES = [16, 32, 64, 128, 256, 512]


@dataclass(frozen=True)
class _Study:
    trials: list[FrozenTrial]
    name: str = "s"
    spec: Any = None
    task: TaskInfo | None = None


def extract(*studies: _Study) -> BranchedData:
    data = extract_branched(list(studies))
    assert data is not None
    return data


def test_the_estimates_are_the_hyperbolas_at_each_point_against_the_references_samples() -> None:
    sizes = [round(16 * 2 ** (k / 4)) for k in range(0, 25)]  # 16 .. 1024, four per doubling
    (row,) = extract(_Study(hyperbola_study(sizes, [40.0, 150.0, 400.0]))).rows
    assert row.study == "" and row.unit == "samples" and row.reference_batch_size == 16
    assert [e.at for e in row.b_crit] == [1600.0, 3200.0, 4800.0]  # the points' samples
    assert [e.value for e in row.b_crit] == pytest.approx([40.0, 150.0, 400.0], rel=0.02)
    assert [e.value for e in row.cbs20] == pytest.approx(
        [1.2 * 16 + 0.2 * bn for bn in (40.0, 150.0, 400.0)], rel=0.03
    )
    assert all(math.isnan(e.lo) for e in row.b_crit)  # one seed: no interval
    assert row.cbs20_above == () and row.b_simple == ()
    assert row.branch_sizes == (16, 1024)
    # point 0's CBS_20 = 1.2*16 + 0.2*40 = 27.2 is below 2.4*16: it says so; points 1 and 2 do not
    low, one_seed = row.notes
    assert low.startswith("point 0 (1,600 samples): CBS_20 is below 2.4x the smallest batch (16)")
    assert one_seed == "one seed: no confidence intervals (add seeds for them)"
    # the right panel: per point, the steps S(B) = S_min (1 + B_noise / B) and the fit through them
    assert [c.point for c in row.curves] == [0, 1, 2]
    c = row.curves[1]
    assert c.batch_sizes == tuple(sizes)
    reached = [(b, st) for b, st in zip(c.batch_sizes, c.steps, strict=True) if math.isfinite(st)]
    assert len(reached) >= MIN_BATCH_SIZES
    for b, st in reached:
        assert st == pytest.approx(20.0 * (1 + 150.0 / b), rel=0.02)
    assert set(c.unreached()) == set(sizes) - {b for b, _ in reached}  # their runs end too soon
    assert c.fit_b[0] == 16 and c.fit_b[-1] == pytest.approx(max(b for b, _ in reached))
    assert c.fit_s[0] == pytest.approx(20.0 * (1 + 150.0 / 16), rel=0.02)
    assert c.label == "point 1: at 3,200 samples"


def test_intervals_and_a_cbs20_beyond_every_batch_size_as_a_bound() -> None:
    trials = hyperbola_study(SIZES, [60.0, 5000.0], seeds=3, jitter=0.05)
    (row,) = extract(_Study(trials)).rows
    # point 1: E(512) / E(16) = 5512 / 5016 < 1.2, so CBS_20 is a bound at B_max, not a number
    assert [(e.at, e.value) for e in row.cbs20_above] == [(3200.0, 512.0)]
    assert [e.at for e in row.cbs20] == [1600.0]
    assert BOUND_LABEL.startswith("CBS₂₀ > B_max")
    # three seeds: 95% intervals, each containing its estimate
    for e in (*row.b_crit, *row.cbs20):
        assert math.isfinite(e.lo) and e.lo <= e.value <= e.hi
    assert row.b_crit[0].lo < 60.0 < row.b_crit[0].hi


def test_a_point_without_b_crit_is_left_out_and_named_in_the_notes() -> None:
    (row,) = extract(_Study(hyperbola_study([16, 32, 64], [100.0]))).rows
    assert row.b_crit == ()  # 3 batch sizes: no fit
    assert len(row.cbs20) == 1  # CBS_20 needs only the measured points
    assert any(
        n.startswith("point 0 (1,600 samples): not enough batch sizes")
        and f"a fit needs {MIN_BATCH_SIZES}" in n
        for n in row.notes
    )
    assert row.curves[0].fit_b == ()  # no fit: no hyperbola on the right


def test_a_language_model_is_drawn_against_tokens() -> None:
    lm = TaskInfo(task="language-model", unit="token", tokens_per_sample=128.0)
    (row,) = extract(_Study(hyperbola_study(SIZES, [100.0]), task=lm)).rows
    assert row.unit == "tokens" and [e.at for e in row.b_crit] == [1600.0 * 128]
    assert "tokens" in FIGURE.text_for(lm)[1].split(".")[0]


def test_a_study_without_branches_has_no_figure() -> None:
    assert extract_branched([grid_study()]) is None
    branches_only = [t for t in hyperbola_study(SIZES, [1.0]) if t.params]
    assert extract_branched([_Study(branches_only)]) is None  # no reference runs


def test_renderers_draw_the_estimates_the_bound_and_one_curve_per_point() -> None:
    data = extract(_Study(hyperbola_study(SIZES, [20.0, 100.0, 5000.0], seeds=3, jitter=0.05)))
    (row,) = data.rows
    palette = Palette(batch_sizes=tuple(SIZES), series=())
    fig = FIGURE.render_plotly(data, palette)
    names = [t.name for t in fig.data if t.showlegend]
    assert any(n.startswith("B_crit") for n in names) and any(n.startswith("CBS") for n in names)
    bound = [t for t in fig.data if t.marker.symbol == "triangle-up-open"]
    assert len(bound) == 1 and list(bound[0].y) == [512.0]
    with_ci = [t for t in fig.data if t.error_y is not None and t.error_y.array is not None]
    assert with_ci  # three seeds: 95% intervals as error bars
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    mfig = FIGURE.render_matplotlib(data, palette)
    left, right = mfig.axes[:2]
    assert left.get_xscale() == left.get_yscale() == right.get_yscale() == "log"
    labels = left.get_legend_handles_labels()[1]
    assert BOUND_LABEL in labels and any(lab.startswith("B_crit") for lab in labels)
    curves = right.get_legend_handles_labels()[1]
    assert curves == [c.label for c in row.curves]
    colors = {str(c.get_facecolor()[0]) for c in right.collections}
    assert len(colors) == len(row.curves)  # one colour per point


def test_registered_once_among_the_analysis_figures() -> None:
    names = [f.name for f in DEFAULT_FIGURES]
    assert names.count("branched-critical") == 1
    assert names.index("branched-critical") > names.index("scaling-regimes")


# ---- the other figures leave branch trials out --------------------------------------------------


def with_branches(study: FakeStudy) -> FakeStudy:
    """`study` plus branch trials at batch sizes and scores of their own."""
    branches = [
        trial(
            study=study.name,
            number=1000 + i,
            batch_size=b,
            seed=s,
            evals=curve(b, 0.2, seed=s),
            params={
                "branch": {
                    "reference": study.trials[0].trial_id,
                    "point": 0,
                    "step": 10,
                    "samples": 320,
                    "window": 640,
                    "lr_factor": 1.0,
                }
            },
        )
        for i, (b, s) in enumerate((b, s) for b in (8, 32, 2048) for s in (0, 1))
    ]
    return replace(study, trials=[*study.trials, *branches])


@pytest.mark.parametrize(
    "figure", [f for f in DEFAULT_FIGURES if f is not FIGURE], ids=lambda f: f.name
)
def test_every_other_figure_is_blind_to_branch_trials(figure: Any) -> None:
    sweep = grid_study(lr_bases=(0.1, 0.3))
    assert repr(figure.extract([with_branches(sweep)])) == repr(figure.extract([sweep]))


def test_the_palette_spans_the_sweeps_batch_sizes_only() -> None:
    sweep = grid_study()
    assert palette_for([with_branches(sweep)]) == palette_for([sweep])
    # the same trials as runs of the sweep would change it: the test above is not vacuous
    plain = [replace(t, params={}) for t in with_branches(sweep).trials]
    assert palette_for([replace(sweep, trials=plain)]) != palette_for([sweep])
