# mypy: disable-error-code="comparison-overlap"
"""The experiment designs of the source documents, checked against what the literature predicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import batchlab
from batchlab.data import load_dataset
from batchlab.engine import Checkpoint, train_trial
from batchlab.errors import SpecError
from batchlab.models import GhostBatchNorm, build_model
from batchlab.plan import epoch_plan, planned_steps
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, spec_from_dict
from batchlab.trial import EvalRecord

SpecFactory = Callable[..., dict[str, Any]]


def final_weights(
    spec: StudySpec, index: int = 0
) -> tuple[dict[str, torch.Tensor], list[EvalRecord]]:
    data = load_dataset(spec.dataset, args=spec.dataset_args, val_fraction=spec.val_fraction)
    records: list[EvalRecord] = []
    ckpts: list[Checkpoint | None] = []

    def sink(rec: EvalRecord, ckpt: Checkpoint | None, _probes: list[ProbeRecord]) -> None:
        records.append(rec)
        ckpts.append(ckpt)

    train_trial(
        spec.trials(n_train=data.n_train)[index], data, device=torch.device("cpu"), on_eval=sink
    )
    last = ckpts[-1]
    assert last is not None
    return last.model_state, records


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_accumulation_matches_the_true_batch(make_spec: SpecFactory, optimizer: str) -> None:
    # 192 examples at batch 64 (3 updates/epoch) vs 4 micro-batches of 16: same weights.
    base = make_spec(
        batch_sizes=[64],
        optimizer=optimizer,
        momentum=0.0,
        budget={"epochs": 3},
        lrs=[0.05 if optimizer == "sgd" else 0.005],
    )
    true_w, true_r = final_weights(spec_from_dict(base))
    acc_w, acc_r = final_weights(spec_from_dict({**base, "accumulate": 4}))
    for k in true_w:
        torch.testing.assert_close(acc_w[k], true_w[k], rtol=1e-5, atol=1e-6)
    assert [r.step for r in acc_r] == [r.step for r in true_r]  # one update per full batch
    assert acc_r[-1].test_acc == pytest.approx(true_r[-1].test_acc, abs=1e-2)


def test_accumulation_handles_the_partial_last_batch(make_spec: SpecFactory) -> None:
    base = make_spec(batch_sizes=[80], budget={"epochs": 2})  # 192 = 80 + 80 + 32
    true_w, _ = final_weights(spec_from_dict(base))
    acc_w, _ = final_weights(spec_from_dict({**base, "accumulate": 4}))
    for k in true_w:
        torch.testing.assert_close(acc_w[k], true_w[k], rtol=1e-5, atol=1e-6)


def test_batch_schedule_replaces_lr_decay_with_fewer_updates(make_spec: SpecFactory) -> None:
    sched = {"milestones": [1, 2], "factor": 4}
    decay = spec_from_dict(make_spec(batch_sizes=[8], budget={"epochs": 3}, lr_schedule=sched))
    grow = spec_from_dict(make_spec(batch_sizes=[8], budget={"epochs": 3}, batch_schedule=sched))
    t_decay, t_grow = decay.trials()[0], grow.trials()[0]
    assert [epoch_plan(t_decay, e, 192) for e in range(3)] == [(8, 0.1), (8, 0.025), (8, 0.00625)]
    assert [epoch_plan(t_grow, e, 192) for e in range(3)] == [(8, 0.1), (32, 0.1), (128, 0.1)]
    # Smith et al.: the same number of epochs in far fewer parameter updates.
    assert planned_steps(t_decay, 192) == 3 * 24
    assert planned_steps(t_grow, 192) == 24 + 6 + 2
    _, records = final_weights(grow)
    assert [r.step for r in records] == [0, 24, 30, 32]
    assert [r.samples for r in records] == [0, 192, 384, 576]


def test_batch_schedule_cap_decays_the_lr_instead(make_spec: SpecFactory) -> None:
    sched = {"milestones": [1, 2], "factor": 4, "max_batch": 40}
    t = spec_from_dict(make_spec(batch_sizes=[8], budget={"epochs": 3}, batch_schedule=sched))
    assert epoch_plan(t.trials()[0], 2, 192) == (32, pytest.approx(0.025))


def test_controls_give_large_batches_the_updates_of_the_smallest(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(make_spec(batch_sizes=[8, 32, 64], controls=True, budget={"epochs": 2}))
    trials = spec.trials(n_train=192)
    controls = [t for t in trials if t.control]
    assert [t.batch_size for t in controls] == [32, 64]
    assert {t.budget.steps for t in controls} == {2 * 24}
    assert len({t.trial_id for t in trials}) == len(trials) == 5


def test_regime_adaptation_multiplies_epochs(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(
        make_spec(
            batch_sizes=[16, 64],
            reference_batch_size=16,
            regime_adaptation=True,
            budget={"epochs": 2},
        )
    )
    assert [(t.batch_size, t.budget.epochs) for t in spec.trials()] == [(16, 2), (64, 8)]
    # ... so the large batch gets as many updates as the small one.
    t16, t64 = spec.trials()
    assert planned_steps(t16, 192) == planned_steps(t64, 192) == 24


def test_lr_log_grid_and_per_example_rates(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(
        make_spec(lrs="1e-3:1:4", lr_scaling="linear", reference_batch_size=1, batch_sizes=[2, 8])
    )
    assert spec.lrs == pytest.approx((1e-3, 1e-2, 1e-1, 1.0))
    # Masters & Luschi: eta = B * eta_tilde.
    rates = sorted((t.batch_size, t.lr) for t in spec.trials() if t.lr_base == 1e-2)
    assert rates == [(2, pytest.approx(0.02)), (8, pytest.approx(0.08))]


def test_variants_run_side_by_side(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(
        make_spec(
            variants=[
                {"label": "sgd", "optimizer": "sgd", "lr_scaling": "linear"},
                {"label": "adam", "optimizer": "adam", "lr_scaling": "sqrt", "lrs": [0.001]},
            ]
        )
    )
    trials = spec.trials()
    assert [(t.variant, t.study.optimizer, t.batch_size, t.lr) for t in trials] == [
        ("sgd", "sgd", 8, pytest.approx(0.1 * 8 / 32)),
        ("sgd", "sgd", 64, pytest.approx(0.1 * 2)),
        ("adam", "adam", 8, pytest.approx(0.001 * 0.5)),
        ("adam", "adam", 64, pytest.approx(0.001 * 2**0.5)),
    ]


def test_ghost_batchnorm_normalizes_each_chunk() -> None:
    torch.manual_seed(0)
    gbn = GhostBatchNorm(nn.BatchNorm1d(3, affine=False), ghost_batch=4)
    x = torch.randn(12, 3) * 5 + 2
    out = gbn(x)
    for chunk, x_chunk in zip(torch.split(out, 4), torch.split(x, 4), strict=True):
        expected = (x_chunk - x_chunk.mean(0)) / torch.sqrt(x_chunk.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(chunk, expected)
    gbn.eval()
    torch.testing.assert_close(gbn(x), gbn.norm(x))
    m = build_model(
        "cnn",
        {"batchnorm": True, "ghost_batch": 8, "channels": [4]},
        input_shape=(1, 8, 8),
        num_classes=3,
        seed=0,
    )
    assert sum(isinstance(mod, GhostBatchNorm) for mod in m.modules()) == 1


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"accumulate": 3}, "field 'accumulate': 3 does not divide batch size 8"),
        ({"batch_schedule": {"milestones": [5], "factor": 2}}, "milestone 5 is past the budget"),
        (
            {"lr_schedule": {"milestones": [1], "factor": 2}, "budget": {"steps": 9}},
            "epochs budget",
        ),
        ({"batch_schedule": {"milestones": [1, 1], "factor": 2}}, "increasing"),
        ({"batch_schedule": {"milestones": [1], "factor": 0.5}}, "batch_schedule.factor"),
        ({"controls": True, "budget": {"steps": 10}}, "field 'controls': need an epochs or"),
        ({"controls": True, "batch_sizes": [8]}, "at least two batch sizes"),
        ({"variants": [{"optimizer": "adam"}]}, "unique label"),
        ({"lrs": "1:0.1:3"}, "need 0 < lo <= hi"),
        ({"model": "cnn", "model_args": {"ghost_batch": 4}}, "ghost_batch"),
    ],
)
def test_impossible_combinations_name_the_field(
    make_spec: SpecFactory, overrides: dict[str, Any], needle: str
) -> None:
    with pytest.raises(SpecError, match=needle):
        spec = spec_from_dict(make_spec(**overrides))
        data = load_dataset(spec.dataset, args=spec.dataset_args)
        build_model(
            spec.model, spec.model_args, input_shape=data.input_shape, num_classes=3, seed=0
        )


DESIGN_TOML = """
name = "d"
dataset = "synthetic"
dataset_args = { n_train = 256, n_test = 64, dim = 8, classes = 3 }
model = "mlp"
model_args = { widths = [16] }
lrs = [0.1]
batch_sizes = [8, 64]
seeds = [0]
budget = { epochs = 2 }
device = "cpu"
"""


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["accumulate=3"], "field 'accumulate': 3 does not divide batch size 8"),
        (["batch_schedule={milestones=[2], factor=2}"], "milestone 2 is past the budget"),
        (["lr_schedule={milestones=[3], factor=2}"], "milestone 3 is past the budget"),
        (['lrs="1:0.1:3"'], "field 'lrs'"),  # a log grid with no lr in it
        (['batch_sizes="3:3"'], "holds no power of two"),  # a grid with no batch size
        (["batch_sizes=[512]"], "exceed the 230 training examples"),
        (["controls=true", "budget={steps=10}"], "field 'controls': need an epochs or samples"),
        (["variants=[{label='a', accumulate=3}]"], "variants[0] (a)"),
        (["model=cnn", "model_args={ghost_batch=4}"], "ghost_batch"),
    ],
)
def test_impossible_designs_exit_2_in_one_line_and_store_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    overrides: list[str],
    needle: str,
) -> None:
    from batchlab.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.toml").write_text(DESIGN_TOML)
    sets = [arg for o in overrides for arg in ("--set", o)]
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "d.toml", "--store", "r.db", "--quiet", *sets])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r.db").exists()


def test_bad_variant_is_named(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(make_spec(variants=[{"label": "x", "optimizer": "lion"}]))
    with pytest.raises(SpecError, match=r"variants\[0\] \(x\): field 'optimizer'"):
        spec.trials()


@pytest.mark.slow
def test_linear_scaling_gives_close_curves_for_small_k(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    # Goyal et al.: (B, lr) and (kB, k lr) give close test curves against epochs for small k.
    spec = make_spec(
        dataset_args={"n_train": 2000, "n_test": 1000, "dim": 8, "classes": 3},
        lrs=[0.05],
        reference_batch_size=16,
        lr_scaling="linear",
        batch_sizes=[16, 32],
        seeds=[0, 1],
        budget={"epochs": 4},
    )
    df = batchlab.run_study(spec, store=tmp_path / "r.db").to_dataframe()
    curves = df[df.idx > 0].groupby(["batch_size", "epoch"])["test_acc"].mean().unstack(0)
    assert (curves[16] - curves[32]).abs().max() < 0.03


@pytest.mark.slow
def test_equal_step_controls_do_not_hurt_large_batches(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    spec = make_spec(
        dataset_args={"n_train": 1000, "n_test": 1000, "dim": 8, "classes": 3, "kind": "teacher"},
        lrs=[0.05],
        batch_sizes=[8, 128],
        seeds=[0, 1],
        budget={"epochs": 2},
        controls=True,
    )
    df = batchlab.run_study(spec, store=tmp_path / "r.db").to_dataframe()
    final = df.groupby("trial_id").tail(1)
    big = final[final.batch_size == 128].groupby("control")
    acc, steps = big["test_acc"].mean(), big["step"].max()
    assert steps[True] == final[final.batch_size == 8]["step"].max()  # as many updates as B=8
    assert acc[True] >= acc[False]
