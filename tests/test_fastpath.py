"""The hand-written MLP + SGD step against autograd and torch.optim.SGD, the reference."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.data import load_dataset
from batchlab.engine import Checkpoint, train_trial
from batchlab.fastpath import MLPStep
from batchlab.models import CNN, MLP
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, spec_from_dict
from batchlab.trial import EvalRecord
from tests.conftest import SpecFactory

SETTINGS = [
    {"momentum": 0.0, "nesterov": False, "weight_decay": 0.0},
    {"momentum": 0.0, "nesterov": False, "weight_decay": 1e-3},
    {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0},
    {"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    {"momentum": 0.5, "nesterov": False, "weight_decay": 1e-2},
]


def pair(
    widths: list[int], settings: dict[str, float | bool], lr: float = 0.1
) -> tuple[MLP, torch.optim.SGD, MLP, torch.optim.SGD]:
    """Two identical MLPs on (3, 4, 4) inputs with identical SGD optimizers."""
    torch.manual_seed(0)
    ref = MLP(input_shape=(3, 4, 4), num_classes=5, widths=widths)
    fast = copy.deepcopy(ref)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=lr, **settings)  # type: ignore[arg-type]
    opt_fast = torch.optim.SGD(fast.parameters(), lr=lr, **settings)  # type: ignore[arg-type]
    return ref, opt_ref, fast, opt_fast


def reference_step(
    model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor
) -> tuple[float, int]:
    opt.zero_grad()
    out = model(xb)
    loss = F.cross_entropy(out, yb)
    loss.backward()  # type: ignore[no-untyped-call]
    opt.step()
    return float(loss.detach()), int((out.argmax(1) == yb).sum())


def max_rel_diff(a: nn.Module, b: nn.Module) -> float:
    return max(
        float((p - q).abs().max() / p.abs().max().clamp_min(1e-12))
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("widths", [[], [16], [32, 16]])
def test_steps_match_autograd_and_torch_sgd(
    widths: list[int], settings: dict[str, float | bool]
) -> None:
    ref, opt_ref, fast, opt_fast = pair(widths, settings)
    step = MLPStep(fast, opt_fast)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 3, 4, 4, generator=gen)
    y = torch.randint(0, 5, (64,), generator=gen)
    for i, n in enumerate([8, 8, 13, 1, 32, 8, 7, 64] * 3):  # partial batches and batch 1 too
        idx = torch.randint(0, 64, (n,), generator=gen)
        loss_ref, correct_ref = reference_step(ref, opt_ref, x[idx], y[idx])
        loss, correct = step(x[idx], y[idx])
        assert float(loss) == pytest.approx(loss_ref, rel=1e-5, abs=1e-6), i
        assert int(correct) == correct_ref
        # one rounding per update instead of two: a few float32 ulps, not more
        assert max_rel_diff(ref, fast) < 1e-5, i
    for p_ref, p_fast in zip(ref.parameters(), fast.parameters(), strict=True):
        assert p_fast.grad is None  # no gradient tensors were made
        if settings["momentum"]:
            buf_ref = opt_ref.state[p_ref]["momentum_buffer"]
            buf = opt_fast.state[p_fast]["momentum_buffer"]  # torch's own key: checkpoints agree
            torch.testing.assert_close(buf, buf_ref, rtol=1e-4, atol=1e-6)


def test_lr_changes_are_read_at_every_step() -> None:
    ref, opt_ref, fast, opt_fast = pair([8], SETTINGS[2])
    step = MLPStep(fast, opt_fast)
    x, y = torch.randn(16, 3, 4, 4), torch.randint(0, 5, (16,))
    for lr in (0.1, 0.01, 0.3):
        for opt in (opt_ref, opt_fast):
            opt.param_groups[0]["lr"] = lr
        reference_step(ref, opt_ref, x, y)
        step(x, y)
    assert max_rel_diff(ref, fast) < 1e-5


def test_supports_only_the_builtin_mlp_with_sgd() -> None:
    mlp = MLP(input_shape=(4,), num_classes=3, widths=[8])
    assert MLPStep.supports(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1))
    assert not MLPStep.supports(mlp, torch.optim.Adam(mlp.parameters()))
    assert not MLPStep.supports(mlp, torch.optim.SGD(mlp.parameters(), lr=0.1, dampening=0.1))
    cnn = CNN(input_shape=(1, 8, 8), num_classes=3, channels=[4], hidden=8)
    assert not MLPStep.supports(cnn, torch.optim.SGD(cnn.parameters(), lr=0.1))
    custom = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    assert not MLPStep.supports(custom, torch.optim.SGD(custom.parameters(), lr=0.1))


def final(spec: StudySpec) -> list[EvalRecord]:
    data = load_dataset(spec.dataset, args=spec.dataset_args, val_fraction=spec.val_fraction)
    recs: list[EvalRecord] = []

    def sink(rec: EvalRecord, ckpt: Checkpoint | None, probes: object) -> None:
        recs.append(rec)

    train_trial(spec.trials()[0], data, device=torch.device("cpu"), on_eval=sink)
    return recs


def test_an_engine_trial_matches_the_autograd_path(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same trial through the fast step and through autograd (forced): curves agree to
    float tolerance; the fast one is bit-identical from run to run."""
    spec = spec_from_dict(
        make_spec(batch_sizes=[8], momentum=0.9, weight_decay=1e-4, budget={"epochs": 3})
    )
    fast_a, fast_b = final(spec), final(spec)
    monkeypatch.setattr(MLPStep, "supports", staticmethod(lambda model, opt: False))
    slow = final(spec)
    assert [r.train_loss for r in fast_a[1:]] == [r.train_loss for r in fast_b[1:]]
    assert [r.test_loss for r in fast_a] == [r.test_loss for r in fast_b]
    for f, s in zip(fast_a, slow, strict=True):
        assert f.step == s.step and f.samples == s.samples
        assert f.test_loss == pytest.approx(s.test_loss, rel=1e-4)
        assert f.val_acc == pytest.approx(s.val_acc, abs=1e-2)


def test_a_probed_trial_takes_autograd_only_where_a_probe_reads_gradients(
    make_spec: SpecFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = spec_from_dict(
        make_spec(
            batch_sizes=[8],
            momentum=0.9,
            probes=["grad_norms"],
            probe_args={"grad_norms": {"every": 5}},
            budget={"epochs": 2},
        )
    )
    calls = 0
    original = MLPStep.__call__

    def counting(self: MLPStep, xb: torch.Tensor, yb: torch.Tensor) -> Any:
        nonlocal calls
        calls += 1
        return original(self, xb, yb)

    monkeypatch.setattr(MLPStep, "__call__", counting)
    data = load_dataset(spec.dataset, args=spec.dataset_args, val_fraction=spec.val_fraction)
    recs: list[EvalRecord] = []
    probes: list[ProbeRecord] = []

    def sink(rec: EvalRecord, ckpt: Checkpoint | None, got: list[ProbeRecord]) -> None:
        recs.append(rec)
        probes.extend(got)

    out = train_trial(spec.trials()[0], data, device=torch.device("cpu"), on_eval=sink)
    probes += out.probes
    probed_steps = {p.step for p in probes if p.probe == "grad_norms"}
    total = recs[-1].step
    assert len(probed_steps) >= total // 5 - 1
    assert calls == total - len(probed_steps)  # every other step took the hand-written path
    monkeypatch.setattr(MLPStep, "supports", staticmethod(lambda model, opt: False))
    ref: list[EvalRecord] = []
    train_trial(
        spec.trials()[0], data, device=torch.device("cpu"), on_eval=lambda r, c, p: ref.append(r)
    )
    for a, b in zip(recs, ref, strict=True):
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-4)
