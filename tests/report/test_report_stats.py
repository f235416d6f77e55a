from __future__ import annotations

import math
import statistics

import pytest

from batchlab.report.stats import SeriesKey, Stat, cells, trial_final
from batchlab.trial import TrialState
from tests.report.report_factories import FakeSpec, FakeStudy, final_only, record, trial


def test_stat_is_mean_and_sample_std_of_finite_values() -> None:
    s = Stat.of([0.8, 0.9, math.nan, 1.0])
    assert s.n == 3
    assert s.mean == pytest.approx(0.9)
    assert s.std == pytest.approx(statistics.stdev([0.8, 0.9, 1.0]))  # ddof=1
    one = Stat.of([0.5])
    assert (one.mean, one.n) == (0.5, 1) and math.isnan(one.std)
    assert Stat.of([]).n == 0


def test_final_prefers_the_full_train_pass_over_the_running_mean() -> None:
    full = trial(
        evals=final_only(test_acc=0.8, train_acc=0.9, full_train_acc=0.95, full_train_loss=0.1)
    )
    f = trial_final(full)
    assert f.train_is_full_pass and f.train_acc == 0.95
    assert f.acc_gap == pytest.approx(0.15)
    running = trial(evals=final_only(test_acc=0.8, train_acc=0.9, train_loss=0.3, test_loss=0.5))
    g = trial_final(running)
    assert not g.train_is_full_pass and g.train_acc == 0.9
    assert g.loss_gap == pytest.approx(0.2)


def test_throughput_is_the_median_window_after_dropping_warm_up() -> None:
    evals = [record(idx=0, step=0, test_acc=0.1)] + [
        record(idx=i, step=10 * i, test_acc=0.5, samples_per_s=v)
        for i, v in enumerate([10.0, 100.0, 200.0, 300.0], start=1)
    ]
    assert trial_final(trial(evals=evals)).samples_per_s == 200.0  # median of 100, 200, 300


def test_a_trial_without_evaluations_is_all_nan() -> None:
    f = trial_final(trial(state=TrialState.FAILED))
    assert math.isnan(f.test_acc) and math.isnan(f.train_time_s)


def test_cells_count_states_and_use_only_complete_trials() -> None:
    trials = [
        trial(number=0, seed=0, evals=final_only(test_acc=0.8)),
        trial(number=1, seed=1, evals=final_only(test_acc=0.9)),
        # a failed trial with a great final number must not count
        trial(number=2, seed=2, state=TrialState.FAILED, evals=final_only(test_acc=0.99)),
        trial(number=3, seed=3, state=TrialState.DIVERGED, evals=final_only(test_acc=0.1)),
        trial(number=4, seed=4, state=TrialState.WAITING),
        trial(number=5, batch_size=64, evals=final_only(test_acc=0.7)),
    ]
    cs = cells([FakeStudy(name="s", spec=FakeSpec(), trials=trials)])
    assert [(c.batch_size, c.n_trials) for c in cs] == [(32, 5), (64, 1)]
    c = cs[0]
    assert c.key == SeriesKey(study="s", lr_base=0.1)
    assert (c.n_complete, c.n_failed, c.n_diverged, c.n_unfinished) == (2, 1, 1, 1)
    assert c.test_acc.mean == pytest.approx(0.85)
    assert c.test_acc.n == 2
