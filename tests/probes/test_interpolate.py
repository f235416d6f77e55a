"""Loss along w(alpha) = alpha w_a + (1 - alpha) w_b against a hand-built linear model."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import interpolate

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]


def test_linear_model_against_closed_form(toy_data: Data) -> None:
    x, y = toy_data
    model = nn.Linear(4, 3).double()
    g = torch.Generator().manual_seed(0)
    wa, wb = (
        torch.randn(3, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 4, generator=g, dtype=torch.float64),
    )
    ba, bb = (
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g, dtype=torch.float64),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    alphas = [-1.0, 0.0, 0.25, 1.0, 2.0]
    got = interpolate(
        model,
        {"weight": wa, "bias": ba},
        {"weight": wb, "bias": bb},
        x.double(),
        y,
        F.cross_entropy,
        alphas,
    )
    assert [a for a, _, _ in got] == alphas
    for alpha, loss, acc in got:
        logits = x.double() @ (alpha * wa + (1 - alpha) * wb).T + (alpha * ba + (1 - alpha) * bb)
        assert loss == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-12)
        assert acc == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_endpoints_are_the_two_models_with_batchnorm(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    x, y = toy_data
    a, b, probe_model = (
        make_mlp(seed=1, noisy=True),
        make_mlp(seed=2, noisy=True),
        make_mlp(seed=3, noisy=True),
    )
    for m in (a, b):  # move the BatchNorm statistics away from their defaults
        m.train()
        m(x)
    out = interpolate(
        probe_model, a.state_dict(), b.state_dict(), x, y, F.cross_entropy, [1.0, 0.0]
    )
    for (_, loss, _), ref_model in zip(out, (a, b), strict=True):
        ref_model.eval()
        with torch.no_grad():
            assert loss == pytest.approx(float(F.cross_entropy(ref_model(x), y)), rel=1e-6)
    assert probe_model.training


def test_default_alphas_span_minus_one_to_two(toy_data: Data) -> None:
    """31 evenly spaced points on [-1, 2], both endpoints and both models (0 and 1) included."""
    x, y = toy_data
    model = nn.Linear(4, 3).double()
    a = {k: v.detach().clone() for k, v in model.state_dict().items()}
    b = {k: torch.zeros_like(v) for k, v in a.items()}
    out = interpolate(model, a, b, x.double(), y)
    alphas = [alpha for alpha, _, _ in out]
    assert alphas == pytest.approx([-1.0 + 0.1 * i for i in range(31)], abs=1e-12)
    assert 0.0 in alphas and 1.0 in alphas
    # alpha = 0 is w_b = 0: uniform logits, loss log(3) exactly
    assert dict((al, loss) for al, loss, _ in out)[0.0] == pytest.approx(math.log(3), rel=1e-12)
