"""Training recipes: lr_decay (warmup, cosine, linear, warmup-stable-decay), gradient clipping,
no weight decay on biases and norms, Adam's epsilon; each against its formula or torch's own."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from batchlab.cli import main
from batchlab.engine import Checkpoint, make_optimizer
from batchlab.plan import TrialPlan
from batchlab.spec import StudySpec, spec_from_dict
from batchlab.step import AutogradStep, make_step
from batchlab.tasks.regression import Regression
from tests.conftest import SpecFactory
from tests.test_engine import data_for, metrics, run, same


def nanogpt_lr(it: int, *, lr: float, warmup: int, total: int, min_lr: float) -> float:
    """nanoGPT's `get_lr` (train.py), written out as it is there, with lr_decay_iters = total."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > total:
        return min_lr
    decay_ratio = (it - warmup) / (total - warmup)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (lr - min_lr)


def toml_value(v: object) -> str:
    """A TOML value (inline tables for dicts) for the plain data of a spec."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def plan_for(spec: StudySpec, n_train: int = 256) -> TrialPlan:
    return TrialPlan(spec.trials(n_train=n_train)[0], n_train)


def steps_spec(make_spec: SpecFactory, total: int, **decay: object) -> StudySpec:
    return spec_from_dict(
        make_spec(batch_sizes=[8], budget={"steps": total}, lr_decay=decay, lrs=[0.2])
    )


def test_cosine_with_warmup_is_nanogpts_schedule(make_spec: SpecFactory) -> None:
    spec = steps_spec(make_spec, 100, kind="cosine", warmup_steps=10, final=0.1)
    plan = plan_for(spec)
    for it in (0, 1, 9, 10, 11, 50, 99):
        expected = nanogpt_lr(it, lr=0.2, warmup=10, total=100, min_lr=0.02)
        assert plan.lr(it, 0.2) == pytest.approx(expected, rel=1e-12)
    assert all(plan.lr_per_step(s) for s in (0, 50, 99))


def test_linear_wsd_and_constant_follow_their_formulas(make_spec: SpecFactory) -> None:
    linear = plan_for(steps_spec(make_spec, 100, kind="linear", warmup_fraction=0.1, final=0.0))
    assert linear.lr(10, 0.2) == pytest.approx(0.2)  # warmup = round(0.1 * 100) = 10 updates
    assert linear.lr(55, 0.2) == pytest.approx(0.2 * (1 - 45 / 90))
    wsd = plan_for(steps_spec(make_spec, 100, kind="wsd", decay_fraction=0.2, final=0.0))
    assert [wsd.lr(s, 0.2) for s in (0, 79)] == pytest.approx([0.2, 0.2])  # stable
    assert wsd.lr(90, 0.2) == pytest.approx(0.2 * (1 - 10 / 20))  # decaying over the last 20
    const = plan_for(steps_spec(make_spec, 100, kind="constant", warmup_steps=4))
    assert [const.lr(s, 0.2) for s in (0, 3, 4, 99)] == pytest.approx([0.04, 0.16, 0.2, 0.2])


def test_under_a_batch_schedule_the_decay_follows_the_samples(make_spec: SpecFactory) -> None:
    """A batch-size warmup (8, then 32 from epoch 2 of 4, 256 examples) makes 32 + 32 + 8 + 8 =
    80 updates; its cosine is at the point the constant batch 8 is at the same samples: after
    epoch 1 (32 updates, a quarter of the samples) at 0.25, not at 32 / 80 of its updates."""
    decay = {"kind": "cosine", "warmup_steps": 0, "final": 0.0}
    warm = spec_from_dict(
        make_spec(
            batch_sizes=[8],
            budget={"epochs": 4},
            lrs=[0.2],
            lr_decay=decay,
            batch_schedule={"milestones": [2], "batch_sizes": [32]},
        )
    )
    plan = plan_for(warm)
    assert plan.total_steps == 80
    # updates 0, 32 (a quarter of the samples), 64 (a half), 68 (4 of epoch 2's 8 batches of 32)
    for step, fraction in ((0, 0.0), (32, 0.25), (64, 0.5), (68, 0.5 + 4 * 32 / 1024)):
        assert plan.decay_step(step) == pytest.approx(80 * fraction)
        assert plan.lr(step, 0.2) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * fraction)))
    # the constant batch 8 over the same samples: 128 updates, the decay counted in them
    const = plan_for(
        spec_from_dict(make_spec(batch_sizes=[8], budget={"epochs": 4}, lr_decay=decay))
    )
    assert const.total_steps == 128 and const.decay_step(32) == 32
    assert const.lr(32, 0.2) == pytest.approx(plan.lr(32, 0.2))  # equal at equal samples


def test_the_engine_trains_with_the_schedule_and_resumes_bit_for_bit(
    make_spec: SpecFactory,
) -> None:
    base = make_spec(batch_sizes=[16], budget={"epochs": 4}, momentum=0.9)
    recipe = {
        "lr_decay": {"kind": "cosine", "warmup_fraction": 0.1, "final": 0.0},
        "clip_grad_norm": 0.5,
    }
    spec = spec_from_dict({**base, **recipe})
    full, ckpts, out = run(spec)
    assert out.state.value == "COMPLETE"
    plan = plan_for(spec, n_train=data_for(spec).n_train)
    total = plan.total_steps
    assert total is not None and full[-1].step == total
    # The lr of the last update: cosine at its end, near zero
    assert full[-1].current_lr == pytest.approx(plan.lr(total - 1, 0.1))
    assert full[-1].current_lr < 0.01 * 0.1
    plain, _, _ = run(spec_from_dict(base))
    assert plain[-1].val_loss != full[-1].val_loss
    ckpt = ckpts[2]
    assert ckpt is not None
    rest, _, _ = run(spec, resume=Checkpoint.from_bytes(ckpt.to_bytes()))
    assert same(metrics(full[3:]), metrics(rest))


def test_clipping_matches_clip_grad_norm_and_records_the_clipped_fraction() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(16, 4), torch.randn(16, 2) * 10
    task = Regression()
    for clip, fraction in ((1e-3, 1.0), (1e6, 0.0)):
        ref = nn.Linear(4, 2)
        ref.load_state_dict(model.state_dict())
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
        opt_ref.zero_grad()
        task.mean_loss(ref(x), y).backward()  # type: ignore[no-untyped-call]
        grads = [p.grad.clone() for p in ref.parameters() if p.grad is not None]
        norm = float(torch.sqrt(sum((g**2).sum() for g in grads)))  # type: ignore[arg-type]
        scale = min(1.0, clip / (norm + 1e-6))  # clip_grad_norm_'s rule
        expected = [
            p.detach() - 0.1 * scale * g for p, g in zip(ref.parameters(), grads, strict=True)
        ]
        m = nn.Linear(4, 2)
        m.load_state_dict(model.state_dict())
        step = AutogradStep(
            m, torch.optim.SGD(m.parameters(), lr=0.1), task, accumulate=1, clip=clip
        )
        step.backward(x, y, torch.zeros(()))
        step.update()
        for p, e in zip(m.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)
        records = {r.key: r.value for r in step.clip_records(1)}
        assert records["fraction"] == fraction
        assert records["grad_norm"] == pytest.approx(norm, rel=1e-5)
        assert step.clip_records(2) == []  # reset after reading


def test_the_fast_step_is_not_taken_with_clipping() -> None:
    from batchlab.models import build_model
    from batchlab.tasks.classification import Classification

    model = build_model("mlp", {"widths": [8]}, input_shape=(4,), num_classes=3, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert type(make_step(model, opt, Classification())).__name__ == "FastMLPStep"
    step = AutogradStep(model, opt, Classification(), accumulate=1, clip=1.0)
    assert step.clip == 1.0


def test_no_decay_skips_biases_and_norms_and_eps_reaches_adam(make_spec: SpecFactory) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    spec = spec_from_dict(
        make_spec(optimizer="adamw", weight_decay=0.5, no_decay="biases-and-norms", eps=1e-6)
    )
    opt = make_optimizer(spec, model.parameters(), 0.1)
    decayed, plain = opt.param_groups
    assert {p.dim() for p in decayed["params"]} == {2} and decayed["weight_decay"] == 0.5
    assert {p.dim() for p in plain["params"]} == {1} and plain["weight_decay"] == 0.0
    assert all(g["eps"] == 1e-6 for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only the decoupled decay moves a weight, by lr * wd
    for p, b in zip(model.parameters(), before, strict=True):
        factor = 1 - 0.1 * 0.5 if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), b * factor)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lr_decay": {"kind": "cosine"}, "budget": {"seconds": 5}}, "lr_decay"),
        (
            {"lr_decay": {"kind": "cosine"}, "lr_schedule": {"milestones": [1], "factor": 2}},
            "lr_decay",
        ),
        ({"lr_decay": {"warmup_steps": 50}, "budget": {"steps": 50}}, "lr_decay"),
        ({"lr_decay": {"warmup_steps": 400}, "budget": {"epochs": 2}}, "lr_decay"),
        ({"lr_decay": {"warmup_steps": 4, "warmup_fraction": 0.1}}, "lr_decay"),
        ({"lr_decay": {"kind": "step"}}, "lr_decay"),
        ({"clip_grad_norm": 0}, "clip_grad_norm"),
        ({"no_decay": "biases"}, "no_decay"),
    ],
)
def test_bad_recipes_are_one_line_errors(
    make_spec: SpecFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    overrides: dict[str, object],
    field: str,
) -> None:
    path = tmp_path / "s.toml"
    spec = make_spec(batch_sizes=[8, 64], **overrides)
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in spec.items()))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--store", str(tmp_path / "r.db")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err
    assert not (tmp_path / "r.db").exists()


def test_bf16_autocasts_the_forward_pass_where_the_device_has_it(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp32, _, _ = run(spec_from_dict(make_spec(batch_sizes=[16])))
    monkeypatch.setattr("batchlab.step.bf16_unsupported", lambda _device_type: None)
    bf16, _, out = run(spec_from_dict(make_spec(batch_sizes=[16], precision="bf16")))
    assert out.state.value == "COMPLETE"
    for a, b in zip(fp32[1:], bf16[1:], strict=True):  # bf16 rounds: close, not equal
        assert b.val_loss == pytest.approx(a.val_loss, rel=0.05)
        assert b.val_loss != a.val_loss


def test_bf16_where_the_device_has_none_runs_fp32_and_says_so(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchlab.study import run_study

    monkeypatch.setattr("batchlab.step.bf16_unsupported", lambda _t: "this CPU has no bf16")
    said: list[str] = []
    spec = make_spec(batch_sizes=[16], precision="bf16")
    study = run_study(spec, store=tmp_path / "s.db", notify=said.append)
    assert [s for s in said if "precision" in s] == [
        "batchlab: precision: bf16 asked, but this CPU has no bf16; running fp32 (stored per trial)"
    ]
    (trial,) = study.trials
    assert trial.provenance["precision"] == "fp32"
    fp32, _, _ = run(spec_from_dict(make_spec(batch_sizes=[16])))
    assert trial.last is not None and trial.last.val_loss == fp32[-1].val_loss


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"optimizer": "adam"}, True),
        ({"optimizer": "adam", "lr_scaling": "none"}, False),  # chosen: silent
        ({"optimizer": "adam", "lr_scaling": "sqrt"}, False),
        ({"optimizer": "sgd"}, False),
        ({"variants": [{"label": "a", "optimizer": "adamw"}]}, True),
        ({"optimizer": "adam", "batch_sizes": [8]}, False),  # one batch size: nothing to scale
    ],
)
def test_an_adaptive_sweep_without_a_scaling_rule_hears_of_the_sqrt_default(
    make_spec: SpecFactory, fields: dict[str, Any], said: bool
) -> None:
    from batchlab.study import recipe_notes

    notes = recipe_notes(spec_from_dict(make_spec(**fields)))
    assert bool(notes) == said
    if said:
        assert 'lr_scaling = "sqrt"' in notes[0] and "Malladi" in notes[0]
