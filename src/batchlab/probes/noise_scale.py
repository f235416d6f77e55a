"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018), total and per layer.

Sigma is the per-example gradient covariance over the training set and G the full-batch gradient.
The unbiased two-batch estimator uses gradient norms at two batch sizes at the same weights: with
`draws` small batches of size b, drawn i.i.d. with replacement, the big batch is their average
(size B = draws * b), and

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

where |G_b|^2 is the mean of the `draws` small-batch squared norms. Both estimates are unbiased
but noisy (|G|^2 can come out negative), so the probe averages numerator and denominator
separately over measurements (a bias-corrected EMA) and only then divides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from batchlab import batch
from batchlab.batch import Inputs
from batchlab.probes._util import (
    batch_grads,
    isolated,
    layer_records,
    sample_indices,
    sq_norms,
    trainable,
)
from batchlab.probes.base import LossFn, Need, Probe, ProbeContext, ProbeRecord, Tier
from batchlab.probes.schedule import Schedule, periodic


@dataclass(frozen=True, kw_only=True)
class NoiseEstimate:
    """One measurement's unbiased estimates of tr(Sigma) and |G|^2, per parameter tensor."""

    names: tuple[str, ...]
    trace: tuple[float, ...]
    g2: tuple[float, ...]
    small_batch: int
    big_batch: int

    @property
    def trace_total(self) -> float:
        return math.fsum(self.trace)

    @property
    def g2_total(self) -> float:
        return math.fsum(self.g2)


def estimate_noise(
    model: nn.Module,
    loss_fn: LossFn,
    x: Inputs,
    y: torch.Tensor,
    *,
    small_batch: int,
    draws: int,
    generator: torch.Generator,
) -> NoiseEstimate:
    """The two-batch estimates at the model's current weights from `draws` small batches.

    Costs `draws` forward+backward passes at batch `small_batch`. Runs in train mode (the
    gradients the optimizer sees) and leaves the model, its buffers, `p.grad` and the global RNG
    untouched.
    """
    if draws < 2:
        raise ValueError(f"noise_scale: draws must be >= 2, got {draws}")
    named = trainable(model)
    params = [p for _, p in named]
    n = batch.rows(x)
    small_sq = torch.zeros(len(params), dtype=torch.float64, device=y.device)
    total: list[torch.Tensor] = [torch.zeros_like(p) for p in params]
    with isolated(model, train=True):
        for _ in range(draws):
            idx = sample_indices(generator, n, small_batch, y.device)
            grads = batch_grads(model, loss_fn, batch.take(x, idx), y[idx], params)
            small_sq += sq_norms(grads).to(small_sq.device)
            for acc, g in zip(total, grads, strict=True):
                acc.add_(g)
    b, big = small_batch, small_batch * draws
    small = (small_sq / draws).tolist()
    big_sq = sq_norms([acc / draws for acc in total]).tolist()  # one host sync per measurement
    g2 = [(big * gb - b * gs) / (big - b) for gs, gb in zip(small, big_sq, strict=True)]
    tr = [(gs - gb) / (1 / b - 1 / big) for gs, gb in zip(small, big_sq, strict=True)]
    return NoiseEstimate(
        names=tuple(n for n, _ in named),
        trace=tuple(tr),
        g2=tuple(g2),
        small_batch=b,
        big_batch=big,
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class NoiseScale(Probe):
    """B_simple over training, total and per parameter tensor.

    Keys: `total` and `layer:<name>` hold B_simple; `trace_sigma/...` and `g2/...` hold the
    averaged numerator and denominator it was divided from. B_simple is NaN while the averaged
    |G|^2 estimate is not positive.

    `small_batch` defaults to the trial's batch size; `beta` is the EMA factor over measurements
    (0 keeps only the current measurement, whose `draws` batches are already an average).
    """

    name: ClassVar[str] = "noise_scale"
    tier: ClassVar[Tier] = "standard"
    needs: ClassVar[frozenset[Need]] = frozenset({"data"})

    def __init__(
        self,
        *,
        schedule: Schedule,
        draws: int = 4,
        small_batch: int | None = None,
        beta: float = 0.8,
    ) -> None:
        super().__init__(schedule=schedule)
        if draws < 2:
            raise ValueError(f"noise_scale: draws must be >= 2, got {draws}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"noise_scale: beta must be in [0, 1), got {beta}")
        self.draws, self.small_batch, self.beta = draws, small_batch, beta
        self._ema_tr: list[float] = []
        self._ema_g2: list[float] = []
        self._count = 0

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        # Each measurement costs `draws` extra passes: fewer points, never closer than 2 * draws.
        return periodic(total_steps, measurements=25, per_decade=3, min_every=8)

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        est = estimate_noise(
            ctx.model,
            ctx.loss_fn,
            ctx.x_train,
            ctx.y_train,
            small_batch=self.small_batch or ctx.batch_size,
            draws=self.draws,
            generator=ctx.generator,
        )
        if self._count == 0:
            self._ema_tr, self._ema_g2 = [0.0] * len(est.names), [0.0] * len(est.names)
        self._count += 1
        a = self.beta
        self._ema_tr = [a * m + (1 - a) * v for m, v in zip(self._ema_tr, est.trace, strict=True)]
        self._ema_g2 = [a * m + (1 - a) * v for m, v in zip(self._ema_g2, est.g2, strict=True)]
        correction = 1.0 - a**self._count  # Adam-style: an EMA started at zero is biased low
        tr = [m / correction for m in self._ema_tr]
        g2 = [m / correction for m in self._ema_g2]
        tr_total, g2_total = math.fsum(tr), math.fsum(g2)
        names, step = est.names, ctx.step
        return [
            *layer_records(
                step,
                self.name,
                names,
                [_ratio(t, g) for t, g in zip(tr, g2, strict=True)],
                _ratio(tr_total, g2_total),
            ),
            *layer_records(step, self.name, names, tr, tr_total, prefix="trace_sigma/"),
            *layer_records(step, self.name, names, g2, g2_total, prefix="g2/"),
        ]
