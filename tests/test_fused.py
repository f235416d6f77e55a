"""Fused trials against the engine: each member of a fused group must end where its own
`train_trial` run ends, record the same evaluations, and diverge on its own.

Tolerance: the fused step does the engine's arithmetic on stacked tensors, but batched matmuls
and per-member reductions may associate float32 additions differently (at some shapes they do,
at others the results are bit-identical), so members drift from the engine by a few ulps per
step. Over the ~50-100 steps here that stays below 1e-5 absolute on weights and metrics; a
bug (a wrong batch, lr, momentum or decay) moves them by 1e-3 or more.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from batchlab.data import Dataset, load_dataset
from batchlab.engine import Checkpoint, Outcome, train_trial
from batchlab.fused import can_fuse, group_trials, train_group
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, TrialSpec, spec_from_dict
from batchlab.trial import EvalRecord, TrialState
from tests.conftest import tiny_spec

ATOL = 1e-5
RTOL = 1e-4
CPU = torch.device("cpu")
# EvalRecord fields that are timings or memory, not results
UNTIMED = [
    c for c in EvalRecord.columns() if c not in {"train_time_s", "eval_time_s", "samples_per_s"}
]
UNTIMED.remove("peak_mem_bytes")

Run = tuple[Outcome, list[EvalRecord], list[Checkpoint | None]]


def _data(spec: StudySpec, device: torch.device = CPU) -> Dataset:
    return load_dataset(
        spec.dataset,
        args=spec.dataset_args,
        val_fraction=spec.val_fraction,
        data_seed=spec.data_seed,
        train_subset=spec.train_subset,
    ).to(device)


def _engine(
    trial: TrialSpec, data: Dataset, device: torch.device = CPU, resume: Checkpoint | None = None
) -> Run:
    recs: list[EvalRecord] = []
    ckpts: list[Checkpoint | None] = []

    def sink(rec: EvalRecord, ckpt: Checkpoint | None, probes: list[ProbeRecord]) -> None:
        recs.append(rec)
        ckpts.append(ckpt)

    out = train_trial(trial, data, device=device, on_eval=sink, resume=resume)
    return out, recs, ckpts


def _fused(trials: list[TrialSpec], data: Dataset, device: torch.device = CPU) -> list[Run]:
    recs: list[list[EvalRecord]] = [[] for _ in trials]
    ckpts: list[list[Checkpoint | None]] = [[] for _ in trials]

    def sink_for(k: int) -> Any:
        def sink(rec: EvalRecord, ckpt: Checkpoint | None, probes: list[ProbeRecord]) -> None:
            assert probes == []
            recs[k].append(rec)
            ckpts[k].append(ckpt)

        return sink

    outs = train_group(trials, data, device=device, sinks=[sink_for(k) for k in range(len(trials))])
    return [(o, r, c) for o, r, c in zip(outs, recs, ckpts, strict=True)]


def _assert_close_records(a: list[EvalRecord], b: list[EvalRecord]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        for col in UNTIMED:
            va, vb = getattr(ra, col), getattr(rb, col)
            if isinstance(va, float) and math.isnan(va):
                assert math.isnan(vb), col
            else:
                assert vb == pytest.approx(va, rel=RTOL, abs=ATOL), (ra.idx, col)


def _assert_same_run(ref: Run, got: Run) -> None:
    (o_ref, r_ref, c_ref), (o_got, r_got, c_got) = ref, got
    assert o_got.state == o_ref.state
    assert o_got.diverged_step == o_ref.diverged_step
    _assert_close_records(r_ref, r_got)
    assert [c is None for c in c_got] == [c is None for c in c_ref]
    if o_ref.weights is None:
        assert o_got.weights is None
        return
    assert o_got.weights is not None
    assert o_got.weights.keys() == o_ref.weights.keys()
    for k, w in o_ref.weights.items():
        torch.testing.assert_close(o_got.weights[k], w, atol=ATOL, rtol=RTOL)


def _check_against_engine(spec: StudySpec, device: torch.device = CPU) -> list[Run]:
    data = _data(spec, device)
    trials = spec.trials()
    assert can_fuse(trials)
    fused = _fused(trials, data, device)
    for t, got in zip(trials, fused, strict=True):
        _assert_same_run(_engine(t, data, device), got)
    return fused


def test_members_match_their_own_engine_runs() -> None:
    """Seeds (own data order each) x lrs with nesterov momentum and weight decay."""
    spec = spec_from_dict(
        tiny_spec(
            seeds=[0, 1, 2],
            lrs=[0.02, 0.05],
            batch_sizes=[8],
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-3,
        )
    )
    fused = _check_against_engine(spec)
    # The members really differ from each other (the test would be vacuous otherwise).
    finals = [run[1][-1].val_loss for run in fused]
    assert len(set(finals)) == len(finals)


def test_schedules_warmup_and_image_inputs_match() -> None:
    """Warmup from lr_base, a scaled lr, lr and batch schedules, a partial last batch, full-train
    evaluations every epoch, and (C, H, W) inputs that the MLP flattens."""
    spec = spec_from_dict(
        tiny_spec(
            dataset="digits",
            dataset_args={},
            train_subset=300,
            seeds=[0, 1],
            lrs=[0.01, 0.03],
            lr_scaling="linear",
            reference_batch_size=8,
            batch_sizes=[16],
            momentum=0.5,
            warmup_epochs=1.0,
            lr_schedule={"milestones": [2], "factor": 2.0},
            batch_schedule={"milestones": [1], "factor": 2.0},
            budget={"epochs": 3},
            train_eval_every=1,
        )
    )
    fused = _check_against_engine(spec)
    lrs = [rec.current_lr for rec in fused[0][1]]
    assert lrs[-1] < lrs[1]  # the lr schedule did act


def test_step_budget_stops_mid_epoch() -> None:
    spec = spec_from_dict(tiny_spec(seeds=[3, 4], batch_sizes=[8], budget={"steps": 30}))
    fused = _check_against_engine(spec)
    assert fused[0][1][-1].step == 30
    assert fused[0][2][-1] is None  # no checkpoint off an epoch boundary


def test_diverging_member_does_not_poison_the_others() -> None:
    spec = spec_from_dict(tiny_spec(seeds=[0, 1], lrs=[0.05, 1e6], batch_sizes=[8]))
    fused = _check_against_engine(spec)
    states = [run[0].state for run in fused]
    assert states.count(TrialState.DIVERGED) == 2  # both lr=1e6 members
    assert states.count(TrialState.COMPLETE) == 2
    assert all(run[0].weights is not None for run in fused if run[0].state == "COMPLETE")


def test_a_group_that_all_diverges_ends() -> None:
    spec = spec_from_dict(tiny_spec(seeds=[0, 1], lrs=[1e6], batch_sizes=[8]))
    fused = _check_against_engine(spec)
    assert {run[0].state for run in fused} == {TrialState.DIVERGED}


def test_fused_checkpoint_resumes_in_the_engine() -> None:
    """A checkpoint a fused member emits has the engine's layout: the engine can resume it and
    ends where the uninterrupted run ends."""
    spec = spec_from_dict(
        tiny_spec(seeds=[0, 5], batch_sizes=[8], momentum=0.9, budget={"epochs": 3})
    )
    data = _data(spec)
    trials = spec.trials()
    fused = _fused(trials, data)
    ckpt = fused[1][2][1]  # member 1, after its first epoch
    assert ckpt is not None and ckpt.step > 0
    assert ckpt.optimizer_state["state"]  # momentum buffers are there
    resumed = _engine(trials[1], data, resume=ckpt)
    full = _engine(trials[1], data)
    _assert_close_records(full[1][2:], resumed[1])
    assert resumed[0].weights is not None and full[0].weights is not None
    for k, w in full[0].weights.items():
        torch.testing.assert_close(resumed[0].weights[k], w, atol=ATOL, rtol=RTOL)


def _trials(**overrides: Any) -> list[TrialSpec]:
    return spec_from_dict(tiny_spec(**{"seeds": [0, 1], "batch_sizes": [8], **overrides})).trials()


@pytest.mark.parametrize(
    ("overrides", "fuses"),
    [
        ({}, True),
        ({"lrs": [0.1, 0.2], "seeds": [0]}, True),
        ({"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4}, True),
        ({"budget": {"samples": 500}}, True),
        ({"optimizer": "adam"}, False),
        ({"model": "cnn", "model_args": {}}, False),
        ({"probes": "cheap"}, False),
        ({"accumulate": 2}, False),
        ({"budget": {"seconds": 1.0}}, False),
        ({"seeds": [0]}, False),  # a group of one gains nothing
    ],
)
def test_can_fuse(overrides: dict[str, Any], fuses: bool) -> None:
    assert can_fuse(_trials(**overrides)) is fuses


def test_can_fuse_needs_one_batch_size() -> None:
    trials = spec_from_dict(tiny_spec(seeds=[0], batch_sizes=[8, 16])).trials()
    assert not can_fuse(trials)
    with pytest.raises(ValueError, match="more than seed and lr"):
        train_group(trials, _data(trials[0].study), device=CPU, sinks=[print, print])


def test_group_trials_partitions_the_grid() -> None:
    trials = spec_from_dict(
        tiny_spec(seeds=[0, 1, 2], lrs=[0.1, 0.2], batch_sizes=[8, 64])
    ).trials()
    groups = group_trials(trials, max_size=4)
    flat = [t.trial_id for g in groups for t in g]
    assert sorted(flat) == sorted(t.trial_id for t in trials)  # each trial exactly once
    assert sorted(len(g) for g in groups) == [2, 2, 4, 4]
    for g in groups:
        assert len({t.batch_size for t in g}) == 1
        assert can_fuse(g)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_members_match_engine_on_cuda() -> None:
    spec = spec_from_dict(
        tiny_spec(seeds=[0, 1, 2], lrs=[0.02, 1e6], batch_sizes=[8], momentum=0.9, device="cuda")
    )
    _check_against_engine(spec, torch.device("cuda"))


def test_a_study_with_fuse_trains_its_groups_together_and_stores_them_like_any_trial(
    tmp_path: Any,
) -> None:
    """run_study with fuse = true: each batch size's seeds x lrs train as one fused group, and
    every stored trial matches the same trial in the unfused study."""
    from batchlab.study import run_study

    base = tiny_spec(batch_sizes=[8, 32], seeds=[0, 1], lrs=[0.1, 0.05], budget={"epochs": 2})
    fused = run_study({**base, "name": "f", "fuse": True}, store=tmp_path / "f.db")
    plain = run_study({**base, "name": "p", "fuse": False}, store=tmp_path / "p.db")
    assert len(fused.trials) == len(plain.trials) == 8
    by_cell = {(t.batch_size, t.lr, t.seed): t for t in plain.trials}
    for t in fused.trials:
        assert t.state == TrialState.COMPLETE
        assert t.provenance["executor"] == "fused" and t.provenance["fused_with"] == 4
        ref = by_cell[(t.batch_size, t.lr, t.seed)]
        _assert_close_records(list(ref.evals), list(t.evals))
    assert all(t.provenance.get("executor") != "fused" for t in plain.trials)
