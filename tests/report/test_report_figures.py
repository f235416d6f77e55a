"""Each figure's extract, checked on values; each renderer, checked only for not breaking."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest

from batchlab.report.figure import Figure
from batchlab.report.figures import STUDY_FIGURES
from batchlab.report.figures.accuracy import extract_accuracy
from batchlab.report.figures.cost import extract_cost
from batchlab.report.figures.curves import extract_curves
from batchlab.report.figures.gap import extract_gap
from batchlab.report.figures.heatmap import extract_heatmap
from batchlab.report.figures.parallel import extract_parallel
from batchlab.report.figures.throughput import MIB, extract_throughput
from batchlab.report.palette import palette_for
from batchlab.report.stats import SeriesKey
from batchlab.trial import TrialState
from tests.report.report_factories import (
    N_TRAIN,
    FakeSpec,
    FakeStudy,
    final_only,
    grid_study,
    record,
    rich_study,
    trial,
)


def study(*trials: Any, name: str = "s") -> FakeStudy:
    return FakeStudy(name=name, spec=FakeSpec(), trials=list(trials))


def test_accuracy_is_mean_and_std_over_seeds_in_percent_with_best_marked() -> None:
    s = study(
        trial(number=0, batch_size=8, seed=0, evals=final_only(test_acc=0.80)),
        trial(number=1, batch_size=8, seed=1, evals=final_only(test_acc=0.90)),
        trial(number=2, batch_size=16, seed=0, evals=final_only(test_acc=0.88)),
        trial(number=3, batch_size=16, seed=1, evals=final_only(test_acc=0.92)),
        trial(number=4, batch_size=32, state=TrialState.DIVERGED, diverged_step=3),
        trial(number=5, batch_size=32, seed=1, state=TrialState.FAILED),
    )
    data = extract_accuracy([s])
    assert data is not None
    acc, err = data.panels
    (line,) = acc.series
    assert line.batch_sizes == (8, 16)  # 32 has nothing COMPLETE
    assert line.mean == pytest.approx((85.0, 90.0))
    assert line.std[0] == pytest.approx(statistics.stdev([80.0, 90.0]))
    assert line.n == (2, 2)
    assert err.series[0].mean == pytest.approx((15.0, 10.0))
    assert [m.batch_size for m in acc.marks] == [16] == [m.batch_size for m in err.marks]
    assert acc.marks[0].value == pytest.approx(90.0)
    assert err.marks[0].value == pytest.approx(10.0)
    assert [(d.batch_size, d.value) for d in acc.diverged] == [(32, 1.0)]
    assert data.batch_sizes == (8, 16, 32)


def test_accuracy_has_one_line_per_lr_and_none_without_complete_trials() -> None:
    data = extract_accuracy([rich_study()])
    assert data is not None
    lines = data.panels[0].series
    assert [s.key.lr_base for s in lines] == [0.1, 1.0]
    assert lines[1].batch_sizes == (32, 64, 128, 256)  # lr 1.0 diverged at 8 and 16
    assert extract_accuracy([study(trial(state=TrialState.DIVERGED))]) is None
    assert extract_accuracy([study()]) is None


def test_error_axis_is_log_only_over_a_wide_range() -> None:
    narrow = extract_accuracy([grid_study(seeds=(0,))])
    assert narrow is not None and not narrow.panels[1].log_y
    wide = extract_accuracy([grid_study(seeds=(0,), acc=lambda b, lr: 0.99 if b == 8 else 0.5)])
    assert wide is not None and wide.panels[1].log_y


def test_cost_is_final_training_time_and_update_count() -> None:
    s = grid_study(batch_sizes=(8, 64), seeds=(0,))
    data = extract_cost([s])
    assert data is not None
    time, steps = data.panels
    assert steps.series[0].mean == (4 * N_TRAIN / 8, 4 * N_TRAIN / 64)  # 4 epochs
    speed = [4000.0 * b / (b + 64) for b in (8, 64)]
    assert time.series[0].mean == pytest.approx(tuple(4 * N_TRAIN / v for v in speed))
    assert time.log_y and steps.log_y


def test_gap_uses_the_full_pass_and_says_when_it_falls_back() -> None:
    s = grid_study(batch_sizes=(32,), seeds=(0,), acc=lambda b, lr: 0.9)
    data = extract_gap([s])
    assert data is not None
    acc, loss = data.panels
    # conftest's full pass is test accuracy + 0.02 at the last evaluation
    assert acc.series[0].mean == pytest.approx((2.0,))
    assert loss.series[0].mean == pytest.approx((-math.log(0.9) + math.log(0.92),))
    assert "full pass" in acc.title
    running = study(trial(evals=final_only(test_acc=0.8, train_acc=0.9)))
    data2 = extract_gap([running])
    assert data2 is not None and "running mean" in data2.panels[0].title
    assert data2.panels[0].series[0].mean == pytest.approx((10.0,))


def test_throughput_and_memory_units() -> None:
    s = grid_study(batch_sizes=(8, 64), seeds=(0,))
    data = extract_throughput([s])
    assert data is not None
    speed, mem = data.panels
    assert speed.series[0].mean == pytest.approx((4000 * 8 / 72, 4000 * 64 / 128))
    assert mem.series[0].mean == pytest.approx(
        ((50_000_000 + 20_000 * 8) / MIB, (50_000_000 + 20_000 * 64) / MIB)
    )
    # a single window is kept (nothing to drop); memory 0 means "not measured"
    bare = extract_throughput([study(trial(evals=final_only(test_acc=0.5, samples_per_s=500.0)))])
    assert bare is not None and bare.panels[0].series[0].mean == (500.0,)
    assert bare.panels[1].note == "peak memory not recorded"
    assert extract_throughput([study(trial(evals=final_only(test_acc=0.5)))]) is None


def test_curves_average_seeds_per_evaluation_at_the_best_lr() -> None:
    data = extract_curves([rich_study()])
    assert data is not None and data.heldout == "test"
    assert [c.batch_size for c in data.curves] == [8, 16, 32, 64, 128, 256]
    assert {c.lr_base for c in data.curves} == {0.1}  # lr 0.1 is best at every size
    c32 = data.curves[2]
    assert c32.n_seeds == 2
    assert c32.epoch == (0.0, 1.0, 2.0, 3.0, 4.0)
    assert c32.step == (0.0, 32.0, 64.0, 96.0, 128.0)
    # seeds 0 and 1 differ by 0.002 in accuracy: the mean sits halfway (in %)
    assert c32.heldout_acc[-1] == pytest.approx(100 * (0.9 + 0.001))
    # at step 0 the running train number is NaN: the full pass stands in
    assert math.isfinite(c32.train_loss[0]) and math.isfinite(c32.train_acc[0])


def test_curves_show_val_when_no_test_was_recorded() -> None:
    evals = [
        record(idx=i, step=i, test_acc=math.nan, train_acc=0.5, train_loss=1.0) for i in range(3)
    ]
    data = extract_curves([study(trial(evals=evals))])
    assert data is not None and data.heldout == "val"


def test_parallel_has_one_line_per_complete_trial_and_a_study_axis_when_comparing() -> None:
    data = extract_parallel([rich_study()])
    assert data is not None
    complete = [t for t in rich_study().trials if t.state is TrialState.COMPLETE]
    assert len(data.batch_sizes) == len(complete) == 20
    assert [a.label for a in data.axes] == [
        "batch size",
        "peak lr",
        "training time (s)",
        "final train loss (nats)",
        "final test accuracy (%)",
    ]
    assert max(data.axes[4].values) == pytest.approx(100 * 0.902)
    other = grid_study("other", seeds=(0,))
    both = extract_parallel([rich_study(), other])
    assert both is not None and both.axes[0].categories == ("rich", "other")
    assert both.axes[0].values.count(1.0) == 6


def test_heatmap_grid_and_diverged_cells() -> None:
    assert extract_heatmap([grid_study()]) is None  # one learning rate: no heatmap
    data = extract_heatmap([rich_study()])
    assert data is not None
    (g,) = data.grids
    assert g.lr_bases == (0.1, 1.0) and g.batch_sizes == (8, 16, 32, 64, 128, 256)
    assert g.acc[0][2] == pytest.approx(90.1)  # lr 0.1, b=32: 0.9 + mean seed offset 0.001
    assert math.isnan(g.acc[1][0])  # lr 1.0, b=8: every seed diverged
    assert g.diverged[1][:3] == (2, 2, 0)
    assert g.trials[1][0] == 2


@pytest.mark.parametrize("figure", STUDY_FIGURES, ids=lambda f: f.name)
def test_renderers_do_not_break_on_a_comparison(figure: Figure[Any]) -> None:
    studies = [rich_study(), grid_study("b", seeds=(0,))]
    data = figure.extract(studies)
    assert data is not None
    palette = palette_for(studies)
    fig = figure.render_plotly(data, palette)
    assert len(fig.data) > 0
    mfig = figure.render_matplotlib(data, palette)
    assert len(mfig.axes) > 0


def test_series_keys_are_per_study_and_lr() -> None:
    data = extract_cost([grid_study("a", seeds=(0,)), grid_study("b", seeds=(0,))])
    assert data is not None
    assert [s.key for s in data.panels[0].series] == [
        SeriesKey(study="a", lr_base=0.1),
        SeriesKey(study="b", lr_base=0.1),
    ]
