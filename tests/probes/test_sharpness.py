"""Keskar sharpness by L-BFGS-B against a brute-force grid search on a 2-parameter model."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.optimize
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import (
    Every,
    ProbeContext,
    Sharpness,
    probe_generator,
    random_subspace,
    sharpness,
)

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]


def logits(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcasting over any leading grid shape of (a, b): s = x (b + sin 4a), logits (s, -s, 0)."""
    s = x * (b + torch.sin(4 * a))
    return torch.stack([s, -s, torch.zeros_like(s)], dim=-1)


class TwoParam(nn.Module):
    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([a, b], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits(self.w[0], self.w[1], x)


@pytest.fixture
def line_data() -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, generator=g, dtype=torch.float64)
    return x, (x > 0).long()


def grid_loss(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy at every grid point (a, b), vectorized over the grid."""
    out = logits(a[..., None], b[..., None], x)  # (..., N, 3)
    return (
        -torch.log_softmax(out, dim=-1)
        .gather(-1, y.expand(*a.shape, -1)[..., None])[..., 0]
        .mean(dim=-1)
    )


def grid_phi(
    w: torch.Tensor, a_mat: torch.Tensor, bound: torch.Tensor, data: Data, points: int = 301
) -> float:
    """phi by brute force: f(w + A z) on a points x points grid over the box |z_i| <= bound_i."""
    x, y = data
    t = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    z0, z1 = torch.meshgrid(bound[0] * t, bound[1] * t, indexing="ij")
    z = torch.stack([z0, z1], dim=-1)  # (P, P, 2)
    wz = w + z @ a_mat.T
    f0 = float(grid_loss(w[0], w[1], x, y))
    fmax = float(grid_loss(wz[..., 0], wz[..., 1], x, y).max())
    return 100.0 * (fmax - f0) / (1.0 + f0)


@pytest.mark.parametrize(
    ("a", "b", "eps"), [(0.6, 1.5, 0.3), (0.5, 0.5, 0.3), (0.6, 1.5, 1e-3), (0.5, 0.5, 0.05)]
)
def test_full_space_matches_grid_search(a: float, b: float, eps: float, line_data: Data) -> None:
    model = TwoParam(a, b)
    w = model.w.detach().clone()
    got = sharpness(model, F.cross_entropy, *line_data, eps=eps, maxiter=10)
    ref = grid_phi(w, torch.eye(2, dtype=torch.float64), eps * (w.abs() + 1), line_data)
    assert got.phi >= ref - 1e-9  # the grid cannot beat the true max by more than rounding
    assert got.phi == pytest.approx(ref, rel=1e-4)
    with torch.no_grad():
        direct = float(F.cross_entropy(model(line_data[0]), line_data[1]))
    assert got.loss == pytest.approx(direct, rel=1e-12)
    assert torch.equal(model.w.detach(), w)  # weights untouched


def test_random_subspace_matches_grid_search(line_data: Data) -> None:
    model = TwoParam(0.6, 1.5)
    w = model.w.detach().clone()
    a_mat = random_subspace(2, 2, generator=probe_generator(0), dtype=torch.float64)
    assert torch.allclose(a_mat.T @ a_mat, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(a_mat.abs(), torch.eye(2, dtype=torch.float64))  # a real rotation
    eps = 0.3
    bound = eps * ((a_mat.T @ w).abs() + 1)  # box on z around A^+ x, with A^+ = A^T
    got = sharpness(model, F.cross_entropy, *line_data, eps=eps, maxiter=10, subspace=a_mat)
    ref = grid_phi(w, a_mat, bound, line_data)
    assert got.phi >= ref - 1e-9
    assert got.phi == pytest.approx(ref, rel=1e-3)


def test_one_dimensional_subspace(line_data: Data) -> None:
    model = TwoParam(0.5, 0.5)
    w = model.w.detach().clone()
    u = torch.tensor([[0.6], [0.8]], dtype=torch.float64)
    eps = 0.2
    got = sharpness(model, F.cross_entropy, *line_data, eps=eps, maxiter=10, subspace=u)
    bound = float(eps * ((u.T @ w).abs() + 1))
    z = torch.linspace(-bound, bound, 4001, dtype=torch.float64)
    wz = w + z[:, None] * u[:, 0]
    x, y = line_data
    f0 = float(grid_loss(w[0], w[1], x, y))
    ref = 100 * (float(grid_loss(wz[:, 0], wz[:, 1], x, y).max()) - f0) / (1 + f0)
    assert got.phi == pytest.approx(ref, rel=1e-5)


def test_probe_records(toy_data: Data, make_mlp: ModelFactory) -> None:
    x, y = toy_data
    model = make_mlp()
    assert Sharpness(schedule=Every(1)).eps == 1e-3  # Keskar's default
    probe = Sharpness(schedule=Every(1), subset=32, subspace_dim=5)
    ctx = ProbeContext(
        model=model,
        loss_fn=F.cross_entropy,
        x_train=x,
        y_train=y,
        step=9,
        batch_size=8,
        generator=probe_generator(0),
    )
    value = {r.key: r.value for r in probe.after_update(ctx)}
    assert set(value) == {"full", "loss", "max_loss/full", "subspace", "max_loss/subspace"}
    assert probe._data is not None
    sub_x, sub_y = probe._data
    model.eval()
    with torch.no_grad():
        direct = float(F.cross_entropy(model(sub_x), sub_y))
    assert value["loss"] == pytest.approx(direct, rel=1e-6)
    model.train()
    assert value["full"] == pytest.approx(
        100 * (value["max_loss/full"] - value["loss"]) / (1 + value["loss"])
    )
    assert value["full"] > 0 and value["subspace"] > 0
    assert probe._a is not None and probe._a.shape == (
        sum(p.numel() for p in model.parameters()),
        5,
    )


def test_lbfgsb_gets_the_keskar_box_and_a_consistent_objective(
    toy_data: Data, make_mlp: ModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spy on the scipy call: L-BFGS-B from z = 0 with maxiter 10 on the box
    |z_i| <= 1e-3 (|(A^T w)_i| + 1) (the defaults), and an objective that is -f(w + A z) for the
    model in eval mode (BatchNorm, dropout) whose gradient is the objective's own derivative
    (central finite differences), deterministic from call to call."""
    x, y = toy_data
    x = x.double()
    model = make_mlp(seed=2, noisy=True, dtype=torch.float64)
    model.train()
    with torch.no_grad():  # BatchNorm statistics away from their defaults
        model(x)
    w = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    n = w.numel()
    real = scipy.optimize.minimize  # imported by the probe when it runs
    checks: list[dict[str, Any]] = []

    def spy(fun: Callable[..., Any], x0: np.ndarray, **kw: Any) -> Any:
        rng = np.random.default_rng(0)
        ub = kw["bounds"].ub
        errors, values = [], []
        for _ in range(3):
            z = rng.uniform(-1.0, 1.0, size=x0.shape) * ub * 200  # well away from 0 (flat start)
            value, grad = fun(z)
            assert fun(z)[0] == value  # deterministic: eval mode, no dropout draws
            h = 1e-6
            fd = np.array(
                [(fun(z + h * e)[0] - fun(z - h * e)[0]) / (2 * h) for e in np.eye(z.size)]
            )
            errors.append(float(np.max(np.abs(fd - grad)) / np.max(np.abs(grad))))
            values.append((z, value))
        checks.append({"x0": x0.copy(), "kw": kw, "errors": errors, "values": values})
        return real(fun, x0, **kw)

    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    a_mat = random_subspace(n, 4, generator=probe_generator(0), dtype=torch.float64)
    sharpness(model, F.cross_entropy, x, y)
    sharpness(model, F.cross_entropy, x, y, subspace=a_mat)
    assert model.training  # restored after the eval-mode measurement

    reference = copy.deepcopy(model).eval()
    for check, a in zip(checks, (torch.eye(n, dtype=torch.float64), a_mat), strict=True):
        kw = check["kw"]
        assert kw["method"] == "L-BFGS-B" and kw["jac"] is True
        assert kw["options"]["maxiter"] == 10
        bound = 1e-3 * ((a.T @ w).abs() + 1).numpy()
        np.testing.assert_allclose(kw["bounds"].ub, bound, rtol=1e-15)
        np.testing.assert_allclose(kw["bounds"].lb, -bound, rtol=1e-15)
        assert np.array_equal(check["x0"], np.zeros(a.shape[1]))
        assert max(check["errors"]) < 1e-6
        for z, value in check["values"]:
            torch.nn.utils.vector_to_parameters(w + a @ torch.from_numpy(z), reference.parameters())
            with torch.no_grad():
                direct = float(F.cross_entropy(reference(x), y))
            assert value == pytest.approx(-direct, rel=1e-12)
