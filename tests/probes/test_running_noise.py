"""The running two-batch estimator against the closed-form noise of Gaussian linear regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from batchlab.probes import Every, RunningNoiseScale
from batchlab.probes.noise_scale import NoiseEstimate


def _stream(
    sizes: list[int], blocks: int, *, d: int, sigma2: float
) -> tuple[list[NoiseEstimate], float, float]:
    """Feed the estimator the exact mean-loss gradients X^T r / b of Gaussian batches.

    f = 0.5 (w.x - y)^2 with x ~ N(0, I_d), y = w*.x + sigma eps and delta = w - w*: the
    per-example gradient is (delta.x - sigma eps) x, so G = delta and (Isserlis)
    tr(Sigma) = (d + 1)|delta|^2 + d sigma^2. Returns the block estimates and both truths.
    """
    g = torch.Generator().manual_seed(3)
    delta = torch.randn(d, generator=g, dtype=torch.float64)
    est = RunningNoiseScale(schedule=Every(1), names=["w"], batches=len(sizes), beta=0.5)
    out: list[NoiseEstimate] = []
    step = 0
    for _ in range(blocks):
        for b in sizes:
            x = torch.randn(b, d, generator=g, dtype=torch.float64)
            r = x @ delta - math.sqrt(sigma2) * torch.randn(b, generator=g, dtype=torch.float64)
            step += 1
            e = est.observe(step, [x.T @ r / b], b)
            if e is not None:
                out.append(e)
    g2 = float(delta.square().sum())
    return out, (d + 1) * g2 + d * sigma2, g2


@pytest.mark.parametrize("sizes", [[8, 8, 8, 8], [8, 8, 8, 3]])  # a short last batch too
def test_block_estimates_are_unbiased(sizes: list[int]) -> None:
    ests, trace, g2 = _stream(sizes, 3000, d=4, sigma2=4.0)
    assert len(ests) == 3000 and ests[0].big_batch == sum(sizes)
    for exact, got in ((trace, [e.trace_total for e in ests]), (g2, [e.g2_total for e in ests])):
        a = np.asarray(got)
        mean, se = float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size))
        assert abs(mean - exact) <= 4 * se  # unbiased ...
        assert se <= 0.05 * exact  # ... and the band is narrow enough to mean it


def test_records_are_the_bias_corrected_emas_and_their_ratio() -> None:
    est = RunningNoiseScale(schedule=Every(2), names=["a", "b"], batches=2, beta=0.5)
    assert all(math.isnan(r.value) for r in est.records(1))
    grads = [
        [torch.tensor([1.0, 0.0]), torch.tensor([2.0])],
        [torch.tensor([-1.0, 0.0]), torch.tensor([2.0])],
    ]
    assert est.observe(1, grads[0], 4) is None
    e = est.observe(2, grads[1], 4)
    assert e is not None
    # b = 4, B = 8. a: |G_b|^2 = 1, |G_B|^2 = 0: g2 = (8 * 0 - 4 * 1) / 4 = -1, tr = 1 / (1/8)
    # b: both 4: g2 = 4, tr = 0
    assert e.g2 == pytest.approx((-1.0, 4.0)) and e.trace == pytest.approx((8.0, 0.0))
    value = {r.key: r.value for r in est.records(2)}
    assert value["trace_sigma/total"] == pytest.approx(8.0)  # one block: the EMA is its value
    assert value["g2/total"] == pytest.approx(3.0)
    assert value["total"] == pytest.approx(8.0 / 3.0)
    assert math.isnan(value["layer:a"]) and value["layer:b"] == 0.0  # |G|^2 <= 0: no estimate
    # a gap in the updates breaks the block: steps 3 and 5 are never one big batch
    assert est.observe(3, grads[0], 4) is None and est.observe(5, grads[1], 4) is None


def test_wants_only_the_updates_of_a_block_ending_at_a_due_step() -> None:
    est = RunningNoiseScale(schedule=Every(10), names=["w"], batches=4)
    assert [s for s in range(1, 25) if est.wants(s)] == [7, 8, 9, 10, 17, 18, 19, 20]
    with pytest.raises(ValueError, match="batches"):
        RunningNoiseScale(schedule=Every(1), names=["w"], batches=1)
