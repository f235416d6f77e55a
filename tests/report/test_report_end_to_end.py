"""A real tiny study, run and stored, through to a report with the design and probe figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import batchlab
from batchlab.report import build_report
from batchlab.report.figures.designs_budget import extract_budget
from batchlab.report.figures.designs_schedules import extract_schedules
from batchlab.report.figures.designs_stability import extract_stability
from batchlab.report.figures.designs_variants import extract_variants
from batchlab.report.figures.probes_distance import extract_distance
from batchlab.report.figures.probes_histograms import extract_histograms
from batchlab.report.figures.probes_noise import extract_noise
from batchlab.report.figures.probes_sharpness import extract_sharpness
from batchlab.study import Study
from tests.report.report_browser import CHROMIUM, inspect

pytestmark = pytest.mark.slow

SPEC = {
    "name": "tiny",
    "dataset": "synthetic",
    "dataset_args": {"n_train": 256, "n_test": 128, "dim": 8, "classes": 3},
    "model": "mlp",
    "model_args": {"widths": [16]},
    "batch_sizes": [8, 64],
    "lrs": [0.05, 0.2],
    "budget": {"epochs": 2},
    "probes": "full",
    # Cheap settings for the end-of-training probes (their defaults are for real studies).
    "probe_args": {
        "grad_histograms": {"draws": 20, "batch_sizes": [8, 32]},
        "hessian": {"subset": 128, "max_iters": 20},
        "sharpness": {"subset": 128, "subspace_dim": 10},
    },
    "device": "cpu",
    "val_fraction": 0.25,
    "controls": True,
}
N_TRAIN = 192  # 256 minus the validation quarter


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return batchlab.run_study(SPEC, store=tmp_path_factory.mktemp("store") / "r.db")


@pytest.fixture(scope="module")
def report(study: Study, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_report(study, tmp_path_factory.mktemp("report"))


def _shown(report: Path) -> list[str]:
    summary = json.loads((report.parent / "summary.json").read_text(encoding="utf-8"))
    return [f["name"] for f in summary["figures"] if f["shown"]]


def test_the_page_holds_the_figures_whose_data_exist(report: Path) -> None:
    html = report.read_text(encoding="utf-8")
    for name in ("stability", "budget", "noise-scale", "distance"):
        assert name in _shown(report)
        assert f'id="chart-{name}"' in html
        assert (report.parent / "figures" / f"{name}.png").stat().st_size > 10_000
    for name in ("variants", "schedules"):  # no variants, no schedules in this study
        assert name not in _shown(report) and f'id="chart-{name}"' not in html


def test_extracts_give_one_series_per_batch_size_lr_and_budget(study: Study) -> None:
    per_epoch = {8: 2 * N_TRAIN // 8, 64: 2 * 3}  # ceil(192 / 64) = 3 updates per epoch
    noise = extract_noise([study])
    assert noise is not None
    assert [line.batch_size for line in noise.panels[0].lines] == [8, 64]
    assert [line.x[-1] for line in noise.panels[0].lines] == [per_epoch[8], per_epoch[64]]

    distance = extract_distance([study])
    assert distance is not None
    final, paths = distance.panels
    assert len(final.lines) == 1 and final.lines[0].x == (8.0, 64.0)
    assert [line.batch_size for line in paths.lines] == [8, 64]
    for line in paths.lines:
        assert line.x[0] == 0.0 and line.y[0] == 0.0  # exactly 0 at the initial weights
        assert line.y[-1] > 0.0

    budget = extract_budget([study])
    assert budget is not None
    acc, steps = budget.panels
    assert len(acc.lines) == 4  # 2 lrs x (equal epochs, equal updates)
    for line in steps.lines:
        if "control" in line.label:
            assert line.y == pytest.approx((per_epoch[8], per_epoch[8]))
        else:
            assert line.y == pytest.approx((per_epoch[8], per_epoch[64]))

    stability = extract_stability([study])
    assert stability is not None
    (grid,) = stability.grids
    assert grid.lr_bases == (0.05, 0.2) and grid.batch_sizes == (8, 64)
    assert all(s in ("converged", "unstable", "diverged", "failed") for r in grid.status for s in r)

    assert extract_variants([study]) is None and extract_schedules([study]) is None


def test_end_of_training_probes_reach_the_report(study: Study, report: Path) -> None:
    probes = set(study.probes_dataframe()["probe"])
    assert {"hessian", "sharpness", "grad_histograms"} <= probes
    assert extract_sharpness([study]) is not None and extract_histograms([study]) is not None
    assert {"sharpness", "grad-histograms"} <= set(_shown(report))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get chromium)")
def test_the_real_study_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    """The issue's browser check on a real run: every figure its data allows, drawn, no errors."""
    result = inspect(report, tmp_path, screenshot=tmp_path / "shot.png")
    assert result.errors == [] and result.resources == []
    assert result.charts == [f"chart-{name}" for name in _shown(report)]
    assert result.drawn == result.charts
    assert result.pressed == 5  # the curves' x-axis buttons
    assert result.title == "Batch-size study: tiny"
    assert (tmp_path / "shot.png").stat().st_size > 50_000
