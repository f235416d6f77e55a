from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest
import torch

from batchlab.data import Dataset
from batchlab.engine import (
    Checkpoint,
    peak_memory_bytes,
    reset_peak_memory,
    train_trial,
)
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, spec_from_dict
from batchlab.step import sgd_step
from batchlab.study import load_study_data
from batchlab.trial import EvalRecord, TrialState

SpecFactory = Callable[..., dict[str, Any]]
TIMES = {"train_time_s", "eval_time_s", "samples_per_s", "peak_mem_bytes"}


def data_for(spec: StudySpec) -> Dataset:
    return load_study_data(spec)


def run(
    spec: StudySpec, index: int = 0, resume: Checkpoint | None = None
) -> tuple[list[EvalRecord], list[Checkpoint | None], Any]:
    records: list[EvalRecord] = []
    ckpts: list[Checkpoint | None] = []

    def sink(rec: EvalRecord, ckpt: Checkpoint | None, _probes: list[ProbeRecord]) -> None:
        records.append(rec)
        ckpts.append(ckpt)

    trial = spec.trials()[index]
    out = train_trial(
        trial, data_for(spec), device=torch.device("cpu"), on_eval=sink, resume=resume
    )
    return records, ckpts, out


def metrics(records: list[EvalRecord]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k not in TIMES} for r in records]


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal, counting NaN == NaN (bit-identical floats otherwise)."""

    def norm(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in rows
        ]

    return norm(a) == norm(b)


def test_same_spec_and_seed_is_bit_identical_on_cpu(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(make_spec(seeds=[3]))
    a, _, _ = run(spec)
    b, _, _ = run(spec)
    assert same(metrics(a), metrics(b))
    c, _, _ = run(spec_from_dict(make_spec(seeds=[4])))
    assert not same(metrics(a), metrics(c))


def test_epoch_budget_keeps_the_last_partial_batch(make_spec: SpecFactory) -> None:
    # 192 training examples at batch 64 -> 3 steps/epoch; at batch 50 -> 4 steps, last one of 42.
    spec = spec_from_dict(make_spec(batch_sizes=[50], budget={"epochs": 3}))
    records, ckpts, out = run(spec)
    assert out.state == TrialState.COMPLETE
    assert [r.idx for r in records] == [0, 1, 2, 3]
    assert [r.step for r in records] == [0, 4, 8, 12]
    assert [r.samples for r in records] == [0, 192, 384, 576]
    assert [r.epoch for r in records] == [0.0, 1.0, 2.0, 3.0]
    assert math.isnan(records[0].train_loss) and not math.isnan(records[0].full_train_loss)
    assert not math.isnan(records[-1].full_train_acc)  # full train pass at the end
    assert math.isnan(records[1].full_train_acc)
    assert all(c is not None for c in ckpts)


@pytest.mark.parametrize(
    ("budget", "steps"),
    [({"steps": 7}, 7), ({"samples": 500}, 8), ({"epochs": 2}, 6)],
)
def test_step_and_sample_budgets(
    make_spec: SpecFactory, budget: dict[str, int], steps: int
) -> None:
    spec = spec_from_dict(make_spec(batch_sizes=[64], budget=budget))
    records, ckpts, _ = run(spec)
    assert records[-1].step == steps
    if steps % 3:  # ends mid-epoch: a final evaluation without a checkpoint
        assert ckpts[-1] is None and records[-1].epoch == pytest.approx(records[-1].samples / 192)


def test_seconds_budget_stops_near_the_limit(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(make_spec(batch_sizes=[8], budget={"seconds": 0.3}))
    records, _, out = run(spec)
    assert out.state == TrialState.COMPLETE
    assert 0.3 <= records[-1].train_time_s < 2.0


def test_training_learns(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(make_spec(batch_sizes=[16], budget={"epochs": 8}, lrs=[0.2]))
    records, _, _ = run(spec)
    assert records[-1].test_acc > 0.8 > records[0].test_acc
    assert records[-1].full_train_loss < records[0].full_train_loss / 2


def test_nonfinite_loss_ends_the_trial_as_diverged(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(make_spec(batch_sizes=[8], lrs=[1e6], budget={"epochs": 5}))
    records, _, out = run(spec)
    assert out.state == TrialState.DIVERGED
    assert out.diverged_step is not None and 1 <= out.diverged_step < 24 * 5
    assert len(records) == 1  # only the initial evaluation


def test_warmup_reaches_the_scaled_lr(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(
        make_spec(
            batch_sizes=[64],
            lrs=[0.01],
            reference_batch_size=16,
            lr_scaling="linear",
            warmup_epochs=2,
            budget={"epochs": 3},
        )
    )
    records, _, _ = run(spec)
    # 3 steps/epoch, 6 warmup steps from 0.01 to 0.04; after epoch 1 the last update was step 2.
    assert records[1].current_lr == pytest.approx(0.01 + 0.03 * 2 / 6)
    assert records[3].current_lr == pytest.approx(0.04)


def test_resume_from_checkpoint_matches_an_uninterrupted_run(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(make_spec(batch_sizes=[16], optimizer="sgd", momentum=0.9))
    spec = spec_from_dict({**spec.to_toml_dict(), "budget": {"epochs": 4}})
    full, ckpts, _ = run(spec)
    ckpt = ckpts[2]
    assert ckpt is not None
    restored = Checkpoint.from_bytes(ckpt.to_bytes())  # through bytes, as the store keeps it
    rest, _, _ = run(spec, resume=restored)
    assert [r.idx for r in rest] == [3, 4]
    assert same(metrics(full[3:]), metrics(rest))


def test_peak_memory_window_sees_a_large_allocation() -> None:
    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    before = peak_memory_bytes(cpu)
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert float(block.sum()) == block.numel()
    during = peak_memory_bytes(cpu)
    del block
    assert during - before >= 60 * 2**20
    # a peak does not fall when memory is freed (Linux counts RSS lazily: allow 4 MiB)
    assert peak_memory_bytes(cpu) >= during - 4 * 2**20


@pytest.mark.parametrize(
    ("momentum", "nesterov", "weight_decay"),
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 1e-3), (0.5, False, 1e-2)],
)
def test_fast_sgd_step_is_torch_sgd_bit_for_bit(
    momentum: float, nesterov: bool, weight_decay: float
) -> None:
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))]
    models.append(copy.deepcopy(models[0]))
    opts = [
        torch.optim.SGD(
            m.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
        )
        for m in models
    ]
    for step in range(5):
        x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
        for i, (m, opt) in enumerate(zip(models, opts, strict=True)):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()  # type: ignore[no-untyped-call]
            if i == 0:
                opt.step()
            else:
                sgd_step(opt, list(m.parameters()))
        for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
            assert torch.equal(a, b), f"step {step}"
    if momentum:
        sa, sb = opts[0].state_dict(), opts[1].state_dict()
        for k in sa["state"]:
            assert torch.equal(sa["state"][k]["momentum_buffer"], sb["state"][k]["momentum_buffer"])


def test_the_initial_evaluation_is_shared_by_trials_from_the_same_weights(
    make_spec: SpecFactory,
) -> None:
    """Trials at two batch sizes and one seed start from the same weights: the second reuses the
    first's initial evaluation from the dataset's memo, bit for bit equal to computing it; a
    different seed computes its own."""
    spec = spec_from_dict(make_spec(batch_sizes=[8, 64], seeds=[0, 1]))
    shared = data_for(spec)
    firsts: dict[tuple[int, int], EvalRecord] = {}
    for trial in spec.trials():
        recs: list[EvalRecord] = []
        train_trial(
            trial,
            shared,
            device=torch.device("cpu"),
            on_eval=lambda rec, _c, _p, recs=recs: recs.append(rec),  # type: ignore[misc]
        )
        firsts[(trial.batch_size, trial.seed)] = recs[0]
        alone, _, _ = run(spec, spec.trials().index(trial))  # a fresh dataset: nothing memoised
        assert same(metrics(recs[:1]), metrics(alone[:1]))
    assert len(shared.memo) == 2  # one initial evaluation per seed
    assert same(metrics([firsts[(8, 0)]]), metrics([firsts[(64, 0)]]))
    assert firsts[(8, 0)].val_loss != firsts[(8, 1)].val_loss
