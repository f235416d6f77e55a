"""Shallue et al.'s regimes, checked against McCandlish's hyperbola S(B) = S_min (1 + B_noise / B).

The independent references are closed forms of the hyperbola: relative to perfect scaling from
B_0, r(B) = S(B) B / (S(B_0) B_0) = (B + B_noise) / (B_0 + B_noise), so r = 1.2 at
B = 1.2 B_0 + 0.2 B_noise; a doubling from B saves B_noise / (2 (B + B_noise)), under 10% once
B > 4 B_noise; the local rate per doubling, 1 - 2^(-B_noise / (B + B_noise)), falls under 10% at
B = B_noise (1 / c - 1) with c = -log2(0.9).
"""

from __future__ import annotations

import math

import pytest

from batchlab.analysis.critical import (
    MIN_BATCH_SIZES,
    BatchPoint,
    CriticalBatchError,
    Target,
    critical_batch_size,
)
from batchlab.analysis.regimes import (
    MIN_DOUBLING_GAIN,
    PERFECT_TOLERANCE,
    scaling_regimes,
    untuned_batch_sizes,
)
from tests.analysis.test_critical import linear_trial

S_MIN = 100.0
DOUBLING = tuple(8 * 2**i for i in range(8))  # 8 .. 1024
FINE = tuple(sorted({round(8 * 1.02**i) for i in range(400)}))  # 8 .. ~22,000, 2% apart


def hyperbola(b: float, b_noise: float) -> float:
    return S_MIN * (1 + b_noise / b)


def points(
    sizes: tuple[int, ...], steps: list[float] | None = None, b_noise: float = 50.0
) -> list[BatchPoint]:
    """One seed per batch size; steps on the hyperbola unless given."""
    steps = steps if steps is not None else [hyperbola(b, b_noise) for b in sizes]
    return [
        BatchPoint(
            batch_size=b,
            lr_base=0.1,
            lr=0.1,
            seeds=1,
            steps=s,
            samples=b * s,
            time_s=0.01 * s,
            steps_std=math.nan,
            time_std=math.nan,
        )
        for b, s in zip(sizes, steps, strict=True)
    ]


def analytic_end(b0: float, b_noise: float, tol: float = PERFECT_TOLERANCE) -> float:
    return (1 + tol) * b0 + tol * b_noise


@pytest.mark.parametrize("b_noise", [20.0, 50.0, 300.0])
def test_perfect_scaling_ends_where_the_hyperbola_is_20_percent_over_it(b_noise: float) -> None:
    r = scaling_regimes(points(FINE, b_noise=b_noise))
    assert r.perfect_end == pytest.approx(analytic_end(8, b_noise), rel=2e-3)
    # the tolerance is the CBS_20 rule: S = 1.2 S_perfect there (on the hyperbola itself)
    b = analytic_end(8, b_noise)
    assert hyperbola(b, b_noise) / (hyperbola(8, b_noise) * 8 / b) == pytest.approx(1.2)


def test_between_measured_sizes_the_end_is_interpolated_in_log_b() -> None:
    r = scaling_regimes(points(DOUBLING, b_noise=50.0))
    ratio = [(b + 50) / (8 + 50) for b in (16, 32)]  # r(16) = 1.10 <= 1.2 < r(32) = 1.41
    t = math.log(1.2 / ratio[0]) / math.log(ratio[1] / ratio[0])
    end = r.perfect_end
    assert end is not None and end == pytest.approx(16 * 2**t, rel=1e-12)
    assert 16 < end < 32 and end == pytest.approx(19.6, rel=0.05)
    # on the log-log line the report draws, the steps there are 1.2 x perfect scaling
    assert r.steps_at(end) == pytest.approx(1.2 * r.perfect_steps(end))
    assert r.excess[:3] == pytest.approx([0.0, ratio[0] - 1, ratio[1] - 1])


def test_a_different_tolerance_moves_the_end_as_the_closed_form_says() -> None:
    r = scaling_regimes(points(FINE, b_noise=50.0), tolerance=0.5)
    assert r.perfect_end == pytest.approx(analytic_end(8, 50.0, 0.5), rel=2e-3)


@pytest.mark.parametrize("b_noise", [10.0, 50.0, 70.0])
def test_maximal_batch_on_a_doubling_grid_is_the_first_size_above_4_b_noise(
    b_noise: float,
) -> None:
    r = scaling_regimes(points(DOUBLING, b_noise=b_noise))
    assert r.maximal_start == min(b for b in DOUBLING[:-1] if b > 4 * b_noise)
    expected = [b_noise / (2 * (b + b_noise)) for b in DOUBLING[:-1]]
    assert r.gains == pytest.approx(expected)


def test_maximal_batch_on_a_fine_grid_is_where_the_local_rate_falls_under_10_percent() -> None:
    c = -math.log2(1 - MIN_DOUBLING_GAIN)
    b_star = 50.0 * (1 / c - 1)  # 278.9
    r = scaling_regimes(points(FINE, b_noise=50.0))
    assert r.maximal_start is not None
    assert b_star / 1.02 <= r.maximal_start <= b_star


def test_a_range_still_scaling_perfectly_reaches_neither_boundary() -> None:
    r = scaling_regimes(points((8, 16, 32, 64, 128), b_noise=1e5))  # B_noise far above the range
    assert r.perfect_end is None and r.maximal_start is None
    assert r.perfect_text().startswith("not reached in the measured range")
    assert "128" in r.perfect_text()
    assert r.maximal_text().startswith("not reached in the measured range: from 64 to 128")
    d = r.to_dict()
    assert d["perfect_scaling_end"] is None and d["perfect_scaling_end_reached"] is False
    assert d["maximal_batch_start"] is None and d["maximal_batch_start_reached"] is False


def test_perfect_scaling_ended_but_maximal_not_reached() -> None:
    r = scaling_regimes(points(DOUBLING[:5], b_noise=50.0))  # 8 .. 128, 4 B_noise = 200
    assert r.perfect_end == pytest.approx(scaling_regimes(points(DOUBLING)).perfect_end)
    assert r.maximal_start is None


def test_steps_that_do_not_fall_are_maximal_from_the_start() -> None:
    r = scaling_regimes(points(DOUBLING[:4], steps=[500.0] * 4))
    assert r.maximal_start == 8  # no doubling saves anything
    assert r.perfect_end == pytest.approx(1.2 * 8)  # r = B / 8: exact on a log-log line


def test_a_later_drop_of_10_percent_or_more_moves_the_start_past_it() -> None:
    steps = [1000.0, 950.0, 920.0, 700.0, 690.0]  # 32 -> 64 still saves 24%
    r = scaling_regimes(points(DOUBLING[:5], steps=steps))
    assert r.maximal_start == 64
    assert r.gains[2] == pytest.approx(1 - 700 / 920)


def test_a_non_doubling_step_is_measured_per_doubling() -> None:
    # 8 -> 32 is two doublings: 22% fewer steps is 11.7% per doubling (still useful), 17% is
    # 8.9% per doubling (no longer)
    r = scaling_regimes(points((1, 8, 32, 64), steps=[1000.0, 100.0, 78.0, 77.0]))
    assert r.gains[1] == pytest.approx(1 - math.sqrt(0.78))
    assert r.maximal_start == 32
    r = scaling_regimes(points((1, 8, 32, 64), steps=[1000.0, 100.0, 83.0, 82.0]))
    assert r.gains[1] == pytest.approx(1 - math.sqrt(0.83))
    assert r.maximal_start == 8


def test_too_few_batch_sizes_or_zero_steps_give_no_number() -> None:
    with pytest.raises(CriticalBatchError, match="not enough batch sizes: 3 .* at least 4"):
        scaling_regimes(points(DOUBLING[: MIN_BATCH_SIZES - 1]))
    with pytest.raises(CriticalBatchError, match="steps to target are 0 at B = 8"):
        scaling_regimes(points(DOUBLING[:4], steps=[0.0, 50.0, 40.0, 35.0]))


def test_regimes_of_the_critical_fit_points() -> None:
    trials = [
        linear_trial(b, hyperbola(b, 50.0) * slow, lr=lr)
        for b in DOUBLING
        for lr, slow in ((0.03, 1.4), (0.1, 1.0), (0.3, 1.2))
    ]
    fit = critical_batch_size(trials, Target(metric="val_acc", value=0.9, fraction=None))
    r = scaling_regimes(fit.points)
    assert r.steps == pytest.approx([hyperbola(b, 50.0) for b in DOUBLING], rel=1e-9)
    assert r.maximal_start == 256
    assert untuned_batch_sizes(fit.points, trials) == []  # 0.1 is inside 0.03 .. 0.3
    edge = [t for t in trials if t.lr_base != 0.03]  # now 0.1 is the smallest lr tried
    assert untuned_batch_sizes(fit.points, edge) == list(DOUBLING)
