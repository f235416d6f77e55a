"""The engine's guarantees, once per task: bit-identical reruns, resume, accumulation, learning,
divergence, probes, and a whole study through the store with its task's labels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from batchlab.engine import Checkpoint
from batchlab.spec import spec_from_dict
from batchlab.study import load_study, run_study
from batchlab.trial import TrialState
from tests.conftest import SpecFactory
from tests.test_engine import metrics, run, same


def test_same_seed_is_bit_identical(task_spec: SpecFactory) -> None:
    spec = spec_from_dict(task_spec(seeds=[3]))
    a, _, _ = run(spec)
    b, _, _ = run(spec)
    assert same(metrics(a), metrics(b))
    c, _, _ = run(spec_from_dict(task_spec(seeds=[4])))
    assert not same(metrics(a), metrics(c))


def test_resume_matches_an_uninterrupted_run(task_spec: SpecFactory) -> None:
    spec = spec_from_dict(task_spec(batch_sizes=[16], momentum=0.9, budget={"epochs": 4}))
    full, ckpts, _ = run(spec)
    ckpt = ckpts[2]
    assert ckpt is not None
    rest, _, _ = run(spec, resume=Checkpoint.from_bytes(ckpt.to_bytes()))
    assert [r.idx for r in rest] == [3, 4]
    assert same(metrics(full[3:]), metrics(rest))


def test_accumulation_trains_like_the_whole_batch(task_spec: SpecFactory) -> None:
    # 4 micro-batches of 8 vs one batch of 32: the same updates up to float rounding.
    whole, _, _ = run(spec_from_dict(task_spec(batch_sizes=[32], budget={"epochs": 2})))
    acc, _, _ = run(spec_from_dict(task_spec(batch_sizes=[32], accumulate=4, budget={"epochs": 2})))
    for a, b in zip(whole, acc, strict=True):
        assert a.step == b.step
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-4)
        assert b.test_acc == pytest.approx(a.test_acc, abs=1e-3 * max(1.0, abs(a.test_acc)))


def test_training_lowers_the_loss_and_raises_the_score(task_spec: SpecFactory) -> None:
    records, _, out = run(spec_from_dict(task_spec(batch_sizes=[16], budget={"epochs": 6})))
    assert out.state == TrialState.COMPLETE
    first, last = records[0], records[-1]
    assert last.val_loss < 0.8 * first.val_loss
    assert last.val_acc > first.val_acc
    assert math.isfinite(last.train_loss) and math.isfinite(last.train_acc)


def test_a_blown_up_run_is_diverged(task_spec: SpecFactory) -> None:
    records, _, out = run(spec_from_dict(task_spec(batch_sizes=[8], lrs=[1e8])))
    assert out.state == TrialState.DIVERGED
    assert len(records) == 1


def test_probes_measure_every_task(task_spec: SpecFactory) -> None:
    spec = spec_from_dict(task_spec(batch_sizes=[16], probes=["noise_scale", "grad_norms"]))
    _, _, out = run(spec)
    assert out.state == TrialState.COMPLETE


def test_a_study_stores_its_task_and_tokens(task_spec: SpecFactory, tmp_path: Path) -> None:
    spec = task_spec(batch_sizes=[8, 32], seeds=[0, 1])
    run_study(spec, store=tmp_path / "s.db")
    study = load_study(spec["name"], store=tmp_path / "s.db")
    df = study.to_dataframe()
    assert set(df["state"]) == {"COMPLETE"}
    info = study.task
    assert set(df["task"]) == {info.task}
    last = df.groupby("trial_id").tail(1)
    if info.task == "language-model":
        assert info.unit == "token" and info.tokens_per_sample == 12  # the context length
        assert (last["batch_tokens"] == last["batch_size"] * 12).all()
    else:
        assert (last["batch_tokens"] == last["batch_size"]).all()
    assert (
        info.score_label
        == {
            "classification": "accuracy",
            "regression": "R²",
            "language-model": "token accuracy",
        }[info.task]
    )


def test_the_language_model_learns_the_chain(tmp_path: Path) -> None:
    """Next token = 3t + 1 mod 11 with probability 0.8 (else uniform): the best possible token
    accuracy is 0.8 + 0.2 / 11; a bigram model gets close."""
    from tests.conftest import TASK_SPECS

    spec = spec_from_dict({**TASK_SPECS["language-model"], "batch_sizes": [8], "lrs": [1.0]})
    spec = spec_from_dict({**spec.to_toml_dict(), "budget": {"epochs": 15}})
    records, _, _ = run(spec)
    bayes = 0.8 + 0.2 / 11
    assert records[-1].test_acc == pytest.approx(bayes, abs=0.08)
    assert records[0].test_acc < 0.3
    assert torch.isfinite(torch.tensor(records[-1].test_loss))


def test_a_users_task_trains_and_reports_its_own_score(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(
        make_spec(
            dataset_args={"kind": "regression", "n_train": 256, "n_test": 128, "dim": 8},
            task="tests.workloads:huber",
            task_args={"tol": 0.5},
            lrs=[0.05],
            batch_sizes=[16],
            budget={"epochs": 6},
        )
    )
    records, _, _ = run(spec)
    assert records[-1].val_loss < records[0].val_loss
    assert 0.0 <= records[0].test_acc < records[-1].test_acc <= 1.0
