"""Shared fixtures: a tiny synthetic study that trains in a fraction of a second."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SpecFactory = Callable[..., dict[str, Any]]


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A study spec dict on a small synthetic task; override any field by keyword."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "dataset": "synthetic",
        "dataset_args": {"n_train": 256, "n_test": 128, "dim": 8, "classes": 3},
        "model": "mlp",
        "model_args": {"widths": [16]},
        "lrs": [0.1],
        "batch_sizes": [8, 64],
        "seeds": [0],
        "budget": {"epochs": 2},
        "val_fraction": 0.25,
        "device": "cpu",
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


@pytest.fixture
def make_spec() -> SpecFactory:
    """`make_spec(**overrides)` -> a tiny synthetic study spec dict."""
    return tiny_spec


TASK_SPECS: dict[str, dict[str, Any]] = {
    "classification": tiny_spec(),
    "regression": tiny_spec(
        dataset_args={"kind": "regression", "n_train": 256, "n_test": 128, "dim": 8},
        lrs=[0.05],
    ),
    "language-model": tiny_spec(
        dataset="tests.workloads:tokens",
        dataset_args={"n_train": 128, "n_test": 32},
        model="tests.workloads:bigram",
        model_args={"width": 16},
        lrs=[0.5],
    ),
}
"""A tiny study per built-in task (the task inferred from the data, as a user would leave it)."""


@pytest.fixture(params=sorted(TASK_SPECS))
def task_spec(request: pytest.FixtureRequest) -> SpecFactory:
    """`task_spec(**overrides)` -> a tiny study spec dict, once per built-in task."""
    base = TASK_SPECS[request.param]

    def make(**overrides: Any) -> dict[str, Any]:
        return {**base, **overrides}

    return make


@pytest.fixture(autouse=True)
def idle_machine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see an idle machine: `threads = "auto"` then keeps torch's default, whatever the
    load of the box the suite runs on (tests/test_cpuload.py passes its own loads)."""
    from batchlab import cpuload

    if request.node.path.name == "test_cpuload.py":
        return

    monkeypatch.setattr(
        cpuload,
        "read_load",
        lambda since=None: cpuload.CpuLoad(
            load=0.0, cpus=cpuload.usable_cores(), usable=cpuload.usable_cores()
        ),
    )
