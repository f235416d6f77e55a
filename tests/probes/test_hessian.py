"""Power iteration on Hessian-vector products against the full Hessian's spectrum."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from batchlab.probes import Every, HessianTop, ProbeContext, hessian_top_eigenvalue, probe_generator

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]


def full_hessian_spectrum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> torch.Tensor:
    """Eigenvalues of the exact Hessian (torch.autograd.functional.hessian), float64, ascending."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(w: torch.Tensor) -> torch.Tensor:
        params = {
            n: c.view(s) for n, c, s in zip(names, torch.split(w, sizes), shapes, strict=True)
        }
        out: torch.Tensor = loss_fn(functional_call(model, params, (x,)), y)
        return out

    hess = torch.autograd.functional.hessian(loss, flat)  # type: ignore[no-untyped-call]
    assert isinstance(hess, torch.Tensor)
    eig: torch.Tensor = torch.linalg.eigvalsh(hess)
    return eig


def test_top_eigenvalue_matches_eigvalsh(toy_data: Data, make_mlp: ModelFactory) -> None:
    x, y = toy_data
    x = x.double()
    model = make_mlp(seed=3, dtype=torch.float64)
    eig = full_hessian_spectrum(model, x, y)
    dominant = float(eig[eig.abs().argmax()])
    lam, iters = hessian_top_eigenvalue(
        model, F.cross_entropy, x, y, generator=probe_generator(0), max_iters=1000, tol=1e-12
    )
    assert lam == pytest.approx(dominant, rel=1e-6)
    assert dominant == pytest.approx(float(eig[-1]))  # at this point the dominant one is the top
    assert 1 < iters < 1000


def test_top_eigenvalue_when_a_negative_one_dominates(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    """The top eigenvalue, not the dominant one: with loss -CE the most negative eigenvalue has
    the largest magnitude, and the shifted second run must still find the largest one."""
    x, y = toy_data
    x = x.double()
    model = make_mlp(seed=0, dtype=torch.float64)

    def neg_ce(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(out, target)

    eig = full_hessian_spectrum(model, x, y, neg_ce)
    assert float(eig[0]) < 0 and abs(float(eig[0])) > abs(float(eig[-1]))  # negative dominates
    assert float(eig[-1]) > 0.1  # and the top one is clearly positive: a real saddle
    lam, iters = hessian_top_eigenvalue(
        model, neg_ce, x, y, generator=probe_generator(0), max_iters=5000, tol=1e-12
    )
    assert lam == pytest.approx(float(eig[-1]), rel=1e-6)
    assert iters > 2


def test_probe_uses_a_fixed_subset_and_leaves_model_alone(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    x, y = toy_data
    model = make_mlp(noisy=True)
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    probe = HessianTop(schedule=Every(1), subset=40, max_iters=200, tol=1e-8)
    ctx = ProbeContext(
        model=model,
        loss_fn=F.cross_entropy,
        x_train=x,
        y_train=y,
        step=3,
        batch_size=8,
        generator=probe_generator(0),
    )
    first = probe.after_update(ctx)
    second = probe.after_update(ctx.at(4))
    assert first[0].key == "total" and first[0].step == 3 and second[0].step == 4
    assert first[0].value == pytest.approx(second[0].value, rel=1e-4)  # same subset, same weights
    assert probe._data is not None and isinstance(probe._data[0], torch.Tensor)
    assert probe._data[0].shape[0] == 40
    # The reference on the same subset, in eval mode (BatchNorm uses its running statistics).
    model.eval()
    eig = full_hessian_spectrum(model.double(), probe._data[0].double(), probe._data[1])
    model.float().train()
    assert first[0].value == pytest.approx(float(eig[eig.abs().argmax()]), rel=1e-3)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is not None and bool((p.grad == 7.0).all()) for p in model.parameters())
    assert all(m.training for m in model.modules())
