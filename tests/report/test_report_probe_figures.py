"""The probe figures' extracts on hand-built trials and probe records with known values."""

from __future__ import annotations

import functools
import math
import statistics

import pytest

from batchlab.report.figures._lines import LinePanel
from batchlab.report.figures.probes_distance import extract_distance
from batchlab.report.figures.probes_histograms import (
    extract_histograms,
    fit_through_origin,
)
from batchlab.report.figures.probes_noise import extract_noise
from batchlab.report.figures.probes_sharpness import extract_sharpness
from batchlab.trial import FrozenTrial, TrialState
from tests.report.report_factories import (
    FakeProbeStudy,
    FakeSpec,
    ProbeRow,
    final_only,
    grid_study,
    histogram_rows,
    probe_rows,
    trial,
)

# Final test accuracy per (batch size, lr_base): lr 0.1 wins at b=8, lr 1.0 at b=32.
ACC = {(8, 0.1): 0.9, (8, 1.0): 0.8, (32, 0.1): 0.7, (32, 1.0): 0.85}
EDGES = (-1.0, -0.5, 0.0, 0.5, 1.0)


def _value(t: FrozenTrial, base: float) -> float:
    """A probe value that tells batch size, lr and seed apart: a wrong pick shows at once."""
    return base * t.batch_size + 1000.0 * (t.lr_base == 1.0) + 2.0 * t.seed


@functools.cache
def probed() -> FakeProbeStudy:
    """Two batch sizes x two lrs x two seeds with every probe, plus records to be ignored."""
    trials: list[FrozenTrial] = []
    rows: list[ProbeRow] = []
    for (b, lr), acc in ACC.items():
        for seed in (0, 1):
            t = trial(
                study="p",
                number=len(trials),
                batch_size=b,
                lr_base=lr,
                seed=seed,
                evals=final_only(test_acc=acc, step=1024 // b),
            )
            trials.append(t)
            last = 1024 // b
            rows += probe_rows(t, "noise_scale", {"total": _value(t, 1.0)}, 1)
            rows += probe_rows(t, "noise_scale", {"total": _value(t, 3.0), "g2/total": -1}, 10)
            if seed == 1:  # a step only one seed measured
                rows += probe_rows(t, "noise_scale", {"total": _value(t, 5.0)}, 20)
            rows += probe_rows(t, "distance", {"total": 0.0, "layer:0.weight": 0.0}, 0)
            rows += probe_rows(t, "distance", {"total": _value(t, 0.01)}, 10)
            rows += probe_rows(t, "distance", {"total": _value(t, 0.1)}, last)
            rows += probe_rows(t, "sharpness", {"full": _value(t, 1.0), "subspace": 0.5}, last)
            rows += probe_rows(t, "hessian", {"total": _value(t, 2.0), "iterations": 9}, last)
            counts = {B: (0.0, B + seed, 2.0 * B, 1.0) for B in (4, 16)}
            variance = {4: 0.25 + 0.01 * seed, 16: 0.0625}  # Σ_jj = 1 exactly at seed 0
            rows += histogram_rows(t, step=last, edges=EDGES, counts=counts, variance=variance)
            rows += histogram_rows(  # an earlier record that must not be read
                t, step=1, edges=EDGES, counts={4: (9.0,) * 4}, variance={4: 9.0}
            )
    control = trial(
        study="p",
        number=len(trials),
        batch_size=32,
        lr_base=1.0,
        evals=final_only(test_acc=0.99, step=128),
        params={"control": True},
    )
    diverged = trial(study="p", number=len(trials) + 1, batch_size=8, state=TrialState.DIVERGED)
    for t in (control, diverged):
        trials.append(t)
        rows += probe_rows(t, "noise_scale", {"total": 1e6}, 1)
        rows += probe_rows(t, "distance", {"total": 1e6}, 5)
        rows += probe_rows(t, "sharpness", {"full": 1e6, "subspace": 1e6}, 5)
    return FakeProbeStudy(name="p", spec=FakeSpec(), trials=trials, rows=rows)


def _labels(panel: LinePanel) -> list[str]:
    return [line.label for line in panel.lines]


def test_probe_figures_need_probe_records() -> None:
    plain = grid_study()  # a StudyLike without probes_dataframe
    empty = FakeProbeStudy(name="e", spec=FakeSpec(), trials=plain.trials)
    for extract in (extract_noise, extract_sharpness, extract_distance, extract_histograms):
        assert extract([plain]) is None
        assert extract([empty]) is None


def test_noise_scale_is_the_seed_mean_per_step_at_the_best_lr() -> None:
    data = extract_noise([probed()])
    assert data is not None
    (panel,) = data.panels
    assert _labels(panel) == ["b=8", "b=32"]
    b8, b32 = panel.lines
    assert b8.batch_size == 8 and b32.batch_size == 32
    assert b8.x == (1.0, 10.0, 20.0)
    # b=8 at lr 0.1: seeds 0 and 1 add 0 and 2; step 20 only has seed 1.
    assert b8.y == pytest.approx((8.0 + 1.0, 24.0 + 1.0, 40.0 + 2.0))
    assert b8.std[0] == pytest.approx(statistics.stdev([8.0, 10.0]))
    assert math.isnan(b8.std[2])
    # b=32 at lr 1.0 (its best), not 0.1; the control run's 1e6 never enters.
    assert b32.y[0] == pytest.approx(32.0 + 1000.0 + 1.0)
    assert panel.log_y and panel.x_kind == "log"


def test_sharpness_and_hessian_are_final_values_against_batch_size() -> None:
    data = extract_sharpness([probed()])
    assert data is not None
    full, sub, hess = data.panels
    (line,) = full.lines
    assert line.x == (8.0, 32.0)
    assert line.y == pytest.approx((8.0 + 1.0, 32.0 + 1000.0 + 1.0))
    assert line.std[0] == pytest.approx(statistics.stdev([8.0, 10.0]))
    assert sub.lines[0].y == pytest.approx((0.5, 0.5))
    assert not sub.log_y  # a constant: no log axis over less than a factor of 4
    assert full.log_y
    assert hess.lines[0].y == pytest.approx((16.0 + 1.0, 64.0 + 1000.0 + 1.0))
    assert data.batch_sizes == (8, 32)


def test_distance_final_and_trajectories() -> None:
    data = extract_distance([probed()])
    assert data is not None
    final, paths = data.panels
    assert final.lines[0].y == pytest.approx((0.8 + 1.0, 3.2 + 1000.0 + 1.0))
    assert _labels(paths) == ["b=8", "b=32"]
    b8 = paths.lines[0]
    assert b8.x == (0.0, 10.0, 128.0)  # step 0 (exactly 0) kept; the log axis drops it
    assert b8.y == pytest.approx((0.0, 0.08 + 1.0, 0.8 + 1.0))


def test_histograms_read_the_final_step_and_fit_variance_through_the_origin() -> None:
    data = extract_histograms([probed()])
    assert data is not None
    assert data.hist_sizes == (4, 16)
    *hists, var = data.lines.panels
    assert [p.title for p in hists] == [
        "Gradient components, trained at b=8",
        "Gradient components, trained at b=32",
    ]
    b4, b16 = hists[0].lines
    assert b4.batch_size == 4 and b16.batch_size == 16
    assert b4.x == pytest.approx((-0.75, -0.25, 0.25, 0.75))  # bin centres of the shared edges
    total = 0.0 + 4 + 8 + 1  # seed 0 is the trial shown
    assert b4.y == pytest.approx(tuple(100 * c / total for c in (0.0, 4, 8, 1)))
    assert var.origin and not var.log_y
    data_lines = [line for line in var.lines if line.markers]
    assert [line.x for line in data_lines] == [(0.25, 0.0625)] * 2
    assert [f.slope for f in data.fits] == pytest.approx([1.0, 1.0])
    assert [f.max_rel_dev for f in data.fits] == pytest.approx([0.0, 0.0])


def test_fit_through_origin_reports_the_largest_relative_deviation() -> None:
    slope, dev = fit_through_origin([1.0, 2.0], [1.0, 2.2])
    assert slope == pytest.approx((1.0 + 4.4) / 5.0)
    assert dev == pytest.approx(max(abs(1 - slope), abs(2.2 - 2 * slope) / 2.2))
