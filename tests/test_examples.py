"""Every example study file validates, and runs when cut down to a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest

import batchlab
from batchlab.data import SYSTEM_FASHION_MNIST

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    spec = batchlab.load_spec(path)
    assert spec.trials()


@pytest.mark.skipif(
    not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist is not installed (make test installs it)",
)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_cut_down(path: Path, tmp_path: Path) -> None:
    study = batchlab.run_study(
        path,
        store=tmp_path / "r.db",
        overrides=["budget.steps=3", "train_subset=4096", "batch_sizes=[8, 2048]", "device=cpu"],
    )
    assert {t.state for t in study.trials} == {batchlab.TrialState.COMPLETE}
    assert {t.last.step for t in study.trials if t.last} == {3}
