"""Gradient histograms against numpy.histogram on the same draws; variance against 1/B."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes import (
    Every,
    GradHistograms,
    ProbeContext,
    gradient_histograms,
    probe_generator,
)

Data = tuple[torch.Tensor, torch.Tensor]
ModelFactory = Callable[..., nn.Module]


def flat_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
    out = np.concatenate(
        [p.grad.detach().double().numpy().ravel() for p in model.parameters() if p.grad is not None]
    )
    model.zero_grad(set_to_none=True)
    return out


def test_counts_match_numpy_histogram_on_the_same_draws(
    toy_data: Data, make_mlp: ModelFactory
) -> None:
    x, y = toy_data
    model = make_mlp()
    edges = np.linspace(-0.3, 0.3, 14)
    sizes, draws = (2, 8), 25
    got = gradient_histograms(
        model,
        F.cross_entropy,
        x,
        y,
        batch_sizes=sizes,
        draws=draws,
        generator=probe_generator(5),
        edges=edges,
    )
    # Replay the documented sampling: per B, `draws` torch.randint batches (with replacement).
    gen = probe_generator(5)
    for b in sizes:
        stack = np.stack(
            [
                flat_grad(model, x[i], y[i])
                for i in (torch.randint(64, (b,), generator=gen) for _ in range(draws))
            ]
        )
        ref, _ = np.histogram(stack, bins=edges)
        np.testing.assert_array_equal(got.counts[b], ref)
        assert got.under[b] == int((stack < edges[0]).sum())
        assert got.over[b] == int((stack > edges[-1]).sum())
        assert got.under[b] + got.over[b] > 0  # the range was chosen so that both paths are used
        np.testing.assert_allclose(
            got.variance[b], stack.var(axis=0, ddof=1), rtol=1e-6, atol=1e-15
        )
    np.testing.assert_array_equal(got.edges, edges)


def test_default_edges_are_shared_and_lose_nothing(toy_data: Data, make_mlp: ModelFactory) -> None:
    x, y = toy_data
    model = make_mlp()
    n_params = sum(p.numel() for p in model.parameters())
    got = gradient_histograms(
        model,
        F.cross_entropy,
        x,
        y,
        batch_sizes=(1, 16),
        draws=20,
        generator=probe_generator(0),
        bins=11,
    )
    assert got.edges.shape == (12,)
    assert got.edges[0] == -got.edges[-1] and np.all(np.diff(got.edges) > 0)
    for b in (1, 16):
        assert int(got.counts[b].sum()) + got.under[b] + got.over[b] == 20 * n_params
    # Larger batches concentrate: the central bin holds more of the mass.
    assert got.counts[16][5] > got.counts[1][5]


def test_variance_shrinks_as_one_over_b(toy_data: Data, make_mlp: ModelFactory) -> None:
    """For i.i.d. batches Var(g_B,j) = Sigma_jj / B; Sigma_jj from all 64 per-example gradients."""
    x, y = toy_data
    model = make_mlp()
    per_example = np.stack([flat_grad(model, x[i : i + 1], y[i : i + 1]) for i in range(64)])
    sigma_diag = per_example.var(axis=0, ddof=0)  # population covariance diagonal
    got = gradient_histograms(
        model,
        F.cross_entropy,
        x,
        y,
        batch_sizes=(1, 4, 16),
        draws=400,
        generator=probe_generator(1),
    )
    means = {b: float(got.variance[b].mean()) for b in (1, 4, 16)}
    assert means[1] > means[4] > means[16]
    for b, v in means.items():
        # Relative standard error of a variance from 400 draws is about sqrt(2/399) = 7% per
        # component; averaged over 51 components the 10% band is several standard errors wide.
        assert b * v == pytest.approx(float(sigma_diag.mean()), rel=0.10)
    layer = got.layer_variance(4)
    assert set(layer) == {n for n, _ in model.named_parameters()}
    assert np.average(
        list(layer.values()), weights=[p.numel() for p in model.parameters()]
    ) == pytest.approx(means[4])


def test_probe_records(toy_data: Data, make_mlp: ModelFactory) -> None:
    x, y = toy_data
    model = make_mlp()
    probe = GradHistograms(schedule=Every(1), batch_sizes=(2, 4), draws=3, bins=5)
    ctx = ProbeContext(
        model=model,
        loss_fn=F.cross_entropy,
        x_train=x,
        y_train=y,
        step=4,
        batch_size=8,
        generator=probe_generator(0),
    )
    records = probe.after_update(ctx)
    value = {r.key: r.value for r in records}
    assert probe.last is not None
    assert [value[f"edge={i}"] for i in range(6)] == probe.last.edges.tolist()
    assert [value[f"B=4/bin={i}"] for i in range(5)] == probe.last.counts[4].tolist()
    assert value["B=2/variance"] == pytest.approx(float(probe.last.variance[2].mean()))
    assert value["B=2/under"] == probe.last.under[2]
    assert "B=2/variance/layer:0.weight" in value
    assert all(r.step == 4 and r.probe == "grad_histograms" for r in records)


def test_defaults_are_many_draws_over_shared_bins() -> None:
    probe = GradHistograms(schedule=Every(1))
    assert probe.draws == 1000 and probe.bins == 101
    assert probe.batch_sizes == (8, 32, 128, 512)
