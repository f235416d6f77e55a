"""A user's map-style Dataset read by index trains exactly like the same data held in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab.data import load_dataset
from batchlab.data.rows import MappedRows, TensorRows
from batchlab.errors import DataError
from batchlab.spec import spec_from_dict
from batchlab.study import load_study, run_study
from tests.conftest import SpecFactory
from tests.test_engine import metrics, run, same

ARGS = {"n_train": 256, "n_test": 128, "dim": 8, "classes": 3}


def mapped(make_spec: SpecFactory, **overrides: Any) -> dict[str, Any]:
    return make_spec(
        dataset="tests.workloads:synthetic_items", dataset_args=dict(ARGS), **overrides
    )


def test_the_dataset_is_read_by_index_with_the_same_split() -> None:
    a = load_dataset("synthetic", args=ARGS, val_fraction=0.25)
    b = load_dataset("tests.workloads:synthetic_items", args=ARGS, val_fraction=0.25)
    assert isinstance(a.train, TensorRows) and isinstance(b.train, MappedRows)
    assert not b.in_memory and b.n_train == a.n_train and b.input_shape == a.input_shape
    assert b.num_classes == a.num_classes == 3
    for split in ("train", "val", "test"):
        xa, ya = getattr(a, split).head(1000)
        xb, yb = getattr(b, split).head(1000)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_trial_gives_the_same_numbers_from_memory_and_from_a_dataset(
    make_spec: SpecFactory, accumulate: int
) -> None:
    common = {"batch_sizes": [16], "momentum": 0.9, "accumulate": accumulate}
    memory, _, _ = run(spec_from_dict(make_spec(dataset_args=dict(ARGS), **common)))
    dataset, _, _ = run(spec_from_dict(mapped(make_spec, **common)))
    assert same(metrics(memory), metrics(dataset))


def test_dict_items_and_dataloader_workers_give_the_same_numbers(make_spec: SpecFactory) -> None:
    plain, _, _ = run(spec_from_dict(mapped(make_spec, batch_sizes=[64])))
    args = {**ARGS, "as_dict": True}
    spec = make_spec(
        dataset="tests.workloads:synthetic_items",
        dataset_args=args,
        batch_sizes=[64],
        data_workers=2,
    )
    workers, _, _ = run(spec_from_dict(spec))
    assert same(metrics(plain), metrics(workers))


def test_a_dataset_study_resumes_and_probes(make_spec: SpecFactory, tmp_path: Path) -> None:
    spec = mapped(make_spec, probes=["noise_scale", "grad_norms"], seeds=[0, 1])
    run_study(spec, store=tmp_path / "s.db")
    study = load_study("tiny", store=tmp_path / "s.db")
    assert {t.state.value for t in study.trials} == {"COMPLETE"}
    assert not study.probes_dataframe().empty


def test_an_item_of_the_wrong_shape_is_a_one_line_error() -> None:
    from batchlab.data.rows import collate
    from batchlab.tasks.classification import Classification

    with pytest.raises(DataError, match="one target key"):
        collate([{"a": torch.zeros(2), "b": torch.zeros(2)}], Classification(), where="ds")
    with pytest.raises(DataError, match=r"\(x, y\) tuples"):
        collate([torch.zeros(3)], Classification(), where="ds")


def test_data_over_the_budget_stays_on_the_host_and_trains_the_same(
    make_spec: SpecFactory,
) -> None:
    from dataclasses import replace as dc_replace

    from batchlab.engine import train_trial
    from batchlab.study import load_study_data

    spec = spec_from_dict(make_spec(dataset_args=dict(ARGS), batch_sizes=[16]))
    cpu = torch.device("cpu")
    data = load_study_data(spec)
    host = data.to(cpu, budget_bytes=100)  # far less than the data: served per batch
    assert isinstance(host.train, TensorRows) and host.train.host_for == cpu
    assert not host.on_device and data.to(cpu, budget_bytes=10**9).on_device

    def records(d: Any) -> list[Any]:
        out: list[Any] = []
        train_trial(spec.trials()[0], d, device=cpu, on_eval=lambda r, c, p: out.append(r))
        return out

    assert same(metrics(records(data)), metrics(records(dc_replace(host, memo={}))))
