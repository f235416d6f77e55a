"""The Ray executor on a real local Ray instance (`ray.init(num_cpus=2)`, started once)."""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab.cli import main
from batchlab.store import Store
from batchlab.study import run_study
from batchlab.trial import TrialState
from tests.conftest import SpecFactory
from tests.test_executor import same, values


def test_a_missing_ray_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--preset", "quick", "--executor", "ray", "--store", str(tmp_path / "x.db")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'batchlab[ray]'" in err
    assert not (tmp_path / "x.db").exists()


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    # Ray's workers import the crash model from this repository's tests package.
    root = str(Path(__file__).parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def keep_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_ray_runs_a_study_like_a_sequential_run(
    ray_instance: Any, make_spec: SpecFactory, tmp_path: Path, keep_threads: None
) -> None:
    spec = make_spec(batch_sizes=[8, 16, 32], seeds=list(range(10)), threads=1)
    on_ray = run_study({**spec, "executor": "ray"}, store=tmp_path / "ray.db")
    local = {t.trial_id: t for t in run_study(spec, store=tmp_path / "one.db").trials}
    assert len(on_ray.trials) == 30
    for t in on_ray.trials:
        assert t.state == TrialState.COMPLETE and t.provenance["executor"] == "ray"
        assert t.provenance["threads"] == 1 and t.provenance["pid"] != os.getpid()
        assert all(  # same thread count: bit-identical, evaluation by evaluation
            same(values(a), values(b))
            for a, b in zip(t.evals, local[t.trial_id].evals, strict=True)
        )
    with Store(tmp_path / "ray.db") as s:  # one finished row per trial, every eval once
        assert len(s.trials("tiny")) == 30
    with sqlite3.connect(tmp_path / "ray.db") as con:
        assert con.execute("SELECT COUNT(*) FROM evals").fetchone() == (30 * 3,)


@pytest.mark.slow
def test_a_ray_worker_killed_mid_trial_is_retried_from_its_checkpoint(
    ray_instance: Any, make_spec: SpecFactory, tmp_path: Path, keep_threads: None
) -> None:
    marker = tmp_path / "crashed"
    model_args = {"widths": [16], "after": 30, "marker": str(marker)}
    spec = make_spec(
        model="tests.test_executor:crashing_mlp",
        model_args=model_args,
        batch_sizes=[8],
        budget={"epochs": 3},
        threads=1,
    )
    resumed = run_study({**spec, "executor": "ray"}, store=tmp_path / "ray.db").trials[0]
    assert marker.exists() and resumed.state == TrialState.COMPLETE
    with sqlite3.connect(tmp_path / "ray.db") as con:
        assert con.execute("SELECT attempts FROM trials").fetchone() == (2,)
    reference = run_study(spec, store=tmp_path / "clean.db").trials[0]  # marker set: no crash
    assert [e.idx for e in resumed.evals] == [0, 1, 2, 3]
    assert all(
        same(values(a), values(b)) for a, b in zip(resumed.evals, reference.evals, strict=True)
    )
