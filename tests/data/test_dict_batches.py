"""Dict batches (several inputs, e.g. token ids and a mask): in memory and read by index, with
gradient accumulation over micro-batches of unequal token counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab.data import load_dataset
from batchlab.engine import train_trial
from batchlab.probes import ProbeRecord
from batchlab.spec import spec_from_dict
from batchlab.study import load_study, run_study
from tests.conftest import SpecFactory
from tests.test_engine import metrics, run, same


def dict_spec(make_spec: SpecFactory, **overrides: Any) -> dict[str, Any]:
    spec = {
        "dataset": "tests.workloads:masked_tokens",
        "dataset_args": {"n_train": 128, "n_test": 32},
        "model": "tests.workloads:masked_bigram",
        "model_args": {"width": 16},
        "lrs": [0.5],
        "batch_sizes": [16],
    }
    return make_spec(**{**spec, **overrides})


def test_a_dict_batch_is_a_language_model_with_padding() -> None:
    data = load_dataset("tests.workloads:masked_tokens", args={"n_train": 64, "n_test": 16})
    assert data.task.name == "language-model" and data.num_classes == 11
    x, y = data.train.head(8)
    assert isinstance(x, dict) and set(x) == {"tokens", "mask"}
    assert int((y == -100).sum()) == int((x["mask"] == 0).sum()) > 0


def test_dict_batches_learn_and_accumulate_like_the_whole_batch(make_spec: SpecFactory) -> None:
    whole, _, out = run(spec_from_dict(dict_spec(make_spec, budget={"epochs": 4})))
    assert out.state.value == "COMPLETE"
    assert whole[-1].val_loss < 0.8 * whole[0].val_loss
    acc, _, _ = run(spec_from_dict(dict_spec(make_spec, budget={"epochs": 4}, accumulate=4)))
    for a, b in zip(whole, acc, strict=True):
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-4, nan_ok=True)


def test_dict_items_read_by_index_match_the_dict_batches_in_memory(make_spec: SpecFactory) -> None:
    memory, _, _ = run(spec_from_dict(dict_spec(make_spec)))
    spec = dict_spec(make_spec)
    spec["dataset"] = "tests.workloads:masked_token_items"
    items, _, _ = run(spec_from_dict(spec))
    assert same(metrics(memory), metrics(items))


def test_a_study_of_dict_batches_stores_tokens(make_spec: SpecFactory, tmp_path: Path) -> None:
    run_study(dict_spec(make_spec, batch_sizes=[8, 32]), store=tmp_path / "s.db")
    study = load_study("tiny", store=tmp_path / "s.db")
    assert {t.state.value for t in study.trials} == {"COMPLETE"}
    info = study.task
    assert info.unit == "token" and 2 <= info.tokens_per_sample < 12  # padding counts for nothing


def _probe_records(spec: dict[str, Any]) -> list[tuple[int, str, str, float]]:
    data = load_dataset(spec["dataset"], args=spec["dataset_args"], val_fraction=0.25)
    probes: list[ProbeRecord] = []
    trial = spec_from_dict(spec).trials(n_train=data.n_train)[0]
    out = train_trial(
        trial, data, device=torch.device("cpu"), on_eval=lambda _r, _c, p: probes.extend(p)
    )
    assert out.state.value == "COMPLETE"
    return [(r.step, r.probe, r.key, r.value) for r in probes]


def test_every_probe_measures_a_dict_batch_as_the_same_tensor_batch(
    make_spec: SpecFactory,
) -> None:
    """The same data and model, once as tensors and once as a dict batch read as `model(**x)`:
    every probe (gradient noise, Hessian, sharpness, histograms...) gives the same numbers."""
    base = make_spec(
        dataset="tests.workloads:tokens",
        dataset_args={"n_train": 64, "n_test": 16},
        model="tests.workloads:bigram",
        model_args={"width": 8},
        lrs=[0.5],
        batch_sizes=[16],
        budget={"epochs": 2},
        probes="full",
        probe_args={
            "hessian": {"subset": 32, "max_iters": 20},
            "sharpness": {"subset": 32, "maxiter": 5},
            "grad_histograms": {"batch_sizes": [4, 16], "draws": 20, "bins": 11},
            "noise_scale": {"every": 4},
        },
    )
    tensor = _probe_records(base)
    as_dict = _probe_records(
        {**base, "dataset": "tests.workloads:dict_tokens", "model": "tests.workloads:dict_bigram"}
    )
    assert {p for _, p, _, _ in tensor} == {
        "grad_norms", "update_size", "distance", "noise_scale", "hessian", "sharpness",
        "grad_histograms",
    }  # fmt: skip
    assert as_dict == tensor


def test_dict_batch_helpers_split_and_take_every_entry() -> None:
    from batchlab import batch

    x = {"a": torch.arange(10), "b": torch.arange(10) * 2}
    parts = batch.split(x, 4)
    assert [batch.rows(p) for p in parts] == [4, 4, 2]
    assert all(torch.equal(p["b"], 2 * p["a"]) for p in parts)  # type: ignore[index]
    taken = batch.take(x, torch.tensor([3, 1]))
    assert (
        isinstance(taken, dict) and taken["a"].tolist() == [3, 1] and taken["b"].tolist() == [6, 2]
    )
    with pytest.raises(ValueError, match="different lengths"):
        batch.rows({"a": torch.zeros(2), "b": torch.zeros(3)})
