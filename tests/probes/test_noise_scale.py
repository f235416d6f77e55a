"""The noise-scale estimator against exact tr(Sigma) and |G|^2 from every per-example gradient."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import Every, NoiseScale, ProbeContext, estimate_noise, probe_generator
from batchlab.probes.base import LossFn

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]


def exact_noise(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """Brute force: per-example gradients one at a time; Sigma is their (1/N) covariance."""
    per_example: list[dict[str, torch.Tensor]] = []
    for i in range(x.shape[0]):
        model.zero_grad(set_to_none=True)
        loss_fn(model(x[i : i + 1]), y[i : i + 1]).backward()  # type: ignore[no-untyped-call]
        per_example.append(
            {
                n: p.grad.detach().double().clone()
                for n, p in model.named_parameters()
                if p.grad is not None
            }
        )
    model.zero_grad(set_to_none=True)
    trace, g2 = {}, {}
    for name in per_example[0]:
        g = torch.stack([d[name] for d in per_example])
        mean = g.mean(dim=0)
        g2[name] = float(mean.square().sum())
        trace[name] = float((g - mean).square().sum() / x.shape[0])
    return trace, g2


def _mean_and_se(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values)
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))


def _check_unbiased(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *, small_batch: int
) -> None:
    trace, g2 = exact_noise(model, loss_fn, x, y)
    gen = probe_generator(0)
    ests = [
        estimate_noise(model, loss_fn, x, y, small_batch=small_batch, draws=4, generator=gen)
        for _ in range(300)
    ]
    # Tolerance: 4 standard errors of the mean over the 300 measurements, and the test only has
    # teeth if that band is narrow, so also require the standard error itself to be small.
    for exact, got in (
        (sum(trace.values()), [e.trace_total for e in ests]),
        (sum(g2.values()), [e.g2_total for e in ests]),
    ):
        mean, se = _mean_and_se(got)
        assert abs(mean - exact) <= 4 * se
        assert se <= 0.1 * exact
    names = ests[0].names
    assert set(names) == set(trace)
    for i, name in enumerate(names):  # per layer, same tolerance, both estimators
        mean, se = _mean_and_se([e.trace[i] for e in ests])
        assert abs(mean - trace[name]) <= 4 * se
        mean, se = _mean_and_se([e.g2[i] for e in ests])
        assert abs(mean - g2[name]) <= 4 * se


def test_two_batch_estimator_is_unbiased_for_an_mlp(toy_data: Data, make_mlp: ModelFactory) -> None:
    x, y = toy_data
    model = make_mlp(dtype=torch.float64)
    _check_unbiased(model, F.cross_entropy, x.double(), y, small_batch=4)


def _half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out.squeeze(-1) - target).square().mean()


def test_linear_regression_closed_form() -> None:
    """f = mean 0.5 (w.x - y)^2, so g_i = r_i x_i: G = X^T r / N and
    tr(Sigma) = mean_i r_i^2 |x_i|^2 - |G|^2 in closed form."""
    g = torch.Generator().manual_seed(1)
    n, d = 48, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(
        n, generator=g, dtype=torch.float64
    )
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.2, 0.1, -0.3]]))
    r = (x @ model.weight.detach().T).squeeze(-1) - y
    big_g = x.T @ r / n
    g2_exact = float(big_g.square().sum())
    trace_exact = float((r.square() * x.square().sum(dim=1)).mean()) - g2_exact
    trace, g2 = exact_noise(model, _half_mse, x, y)  # the brute force agrees with the algebra
    assert sum(trace.values()) == pytest.approx(trace_exact, rel=1e-10)
    assert sum(g2.values()) == pytest.approx(g2_exact, rel=1e-10)
    _check_unbiased(model, _half_mse, x, y, small_batch=3)


def _ctx(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    step: int,
    gen: torch.Generator,
) -> ProbeContext:
    return ProbeContext(
        model=model, loss_fn=loss_fn, x_train=x, y_train=y, step=step, batch_size=4, generator=gen
    )


def test_probe_averages_numerator_and_denominator_before_dividing(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    x, y = toy_data
    x = x.double()
    model = make_mlp(dtype=torch.float64)
    trace, g2 = exact_noise(model, F.cross_entropy, x, y)
    probe = NoiseScale(schedule=Every(1), draws=4, beta=0.98)
    gen = probe_generator(0)
    records = []
    for step in range(1, 301):  # fixed weights: the EMA converges on the exact values
        records = probe.after_update(_ctx(model, F.cross_entropy, x, y, step, gen))
    value = {r.key: r.value for r in records}
    assert value["total"] == value["trace_sigma/total"] / value["g2/total"]
    exact = sum(trace.values()) / sum(g2.values())
    assert value["total"] == pytest.approx(exact, rel=0.15)
    names = [n for n, _ in model.named_parameters()]
    assert {k for k in value if k.startswith("layer:")} == {f"layer:{n}" for n in names}
    assert math.fsum(value[f"g2/layer:{n}"] for n in names) == pytest.approx(value["g2/total"])
    assert (
        value[f"layer:{names[0]}"]
        == value[f"trace_sigma/layer:{names[0]}"] / value[f"g2/layer:{names[0]}"]
    )


def test_beta_zero_is_the_current_measurement(toy_data: Data, make_mlp: ModelFactory) -> None:
    x, y = toy_data
    model = make_mlp()
    probe = NoiseScale(schedule=Every(1), draws=3, beta=0.0, small_batch=5)
    records = probe.after_update(_ctx(model, F.cross_entropy, x, y, 1, probe_generator(2)))
    est = estimate_noise(
        model, F.cross_entropy, x, y, small_batch=5, draws=3, generator=probe_generator(2)
    )
    value = {r.key: r.value for r in records}
    assert value["trace_sigma/total"] == pytest.approx(est.trace_total, rel=1e-12)
    assert value["g2/total"] == pytest.approx(est.g2_total, rel=1e-12)
    assert est.small_batch == 5 and est.big_batch == 15
    with pytest.raises(ValueError, match="draws"):
        NoiseScale(schedule=Every(1), draws=1)


def test_ema_of_numerator_and_denominator_replayed_from_the_same_draws(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    """The probe's values are the bias-corrected EMAs of the per-measurement tr(Sigma) and |G|^2
    estimates (replayed with the same generator), and B_simple is their ratio, per layer too;
    NOT the EMA of per-measurement ratios, which this check tells apart."""
    x, y = toy_data
    x = x.double()
    model = make_mlp(dtype=torch.float64)
    beta = 0.7
    probe = NoiseScale(schedule=Every(1), draws=3, beta=beta, small_batch=4)
    gen, replay = probe_generator(4), probe_generator(4)
    m_tr = m_g2 = m_ratio = 0.0
    m_layer_tr: list[float] = []
    m_layer_g2: list[float] = []
    for k in range(1, 7):
        value = {
            r.key: r.value for r in probe.after_update(_ctx(model, F.cross_entropy, x, y, k, gen))
        }
        est = estimate_noise(model, F.cross_entropy, x, y, small_batch=4, draws=3, generator=replay)
        if k == 1:
            m_layer_tr, m_layer_g2 = [0.0] * len(est.names), [0.0] * len(est.names)
        m_tr = beta * m_tr + (1 - beta) * est.trace_total
        m_g2 = beta * m_g2 + (1 - beta) * est.g2_total
        m_ratio = beta * m_ratio + (1 - beta) * est.trace_total / est.g2_total
        m_layer_tr = [beta * m + (1 - beta) * v for m, v in zip(m_layer_tr, est.trace, strict=True)]
        m_layer_g2 = [beta * m + (1 - beta) * v for m, v in zip(m_layer_g2, est.g2, strict=True)]
        c = 1 - beta**k
        assert value["trace_sigma/total"] == pytest.approx(m_tr / c, rel=1e-12)
        assert value["g2/total"] == pytest.approx(m_g2 / c, rel=1e-12)
        assert value["total"] == pytest.approx(m_tr / m_g2, rel=1e-12)
        for i, name in enumerate(est.names):
            assert value[f"trace_sigma/layer:{name}"] == pytest.approx(m_layer_tr[i] / c, rel=1e-12)
            assert value[f"g2/layer:{name}"] == pytest.approx(m_layer_g2[i] / c, rel=1e-12)
            if m_layer_g2[i] > 0:
                assert value[f"layer:{name}"] == pytest.approx(
                    m_layer_tr[i] / m_layer_g2[i], rel=1e-12
                )
            else:
                assert math.isnan(value[f"layer:{name}"])
    assert value["total"] != pytest.approx(m_ratio / (1 - beta**6), rel=1e-3)
