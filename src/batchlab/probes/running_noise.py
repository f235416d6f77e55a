"""Gradient noise scale from a training loop's own consecutive batches (no data pool needed).

The running two-batch estimator of large-model training code (McCandlish et al. 2018, App. A):
the small batch is one training batch (its gradient is the one the loop just computed), the big
batch is `batches` = k consecutive training batches together, of size B = sum b_j, whose
gradient is the size-weighted mean of theirs. With |G_b|^2 the mean of the k small-batch squared
norms and b the harmonic mean of their sizes (E|G_b|^2 = |G|^2 + tr(Sigma) mean_j(1/b_j), so the
harmonic mean keeps the estimator unbiased when the last batch of an epoch is short):

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

Numerator and denominator are averaged separately over blocks (a bias-corrected EMA, as in
`NoiseScale`) and only then divided. Two approximations, both small when they matter least:
the k gradients are taken at k consecutive weights, so drift of G over a block adds to tr(Sigma)
(negligible when k updates barely move G); and an epoch's batches are drawn without
replacement, a finite-population effect of order B / N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from batchlab.probes._util import layer_records, sq_norms
from batchlab.probes.base import ProbeRecord
from batchlab.probes.noise_scale import NoiseEstimate
from batchlab.probes.schedule import Schedule


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


class RunningNoiseScale:
    """B_simple from blocks of `batches` consecutive training gradients, reported on a schedule.

    Same record keys as the `noise_scale` probe (`total`, `layer:<name>`, `trace_sigma/...`,
    `g2/...`); NaN until the first block is complete or while the averaged |G|^2 is not positive.
    Gradients are read only in the `batches` updates before each due step (`wants`), so its cost
    follows the schedule; a block broken by an unwatched update is dropped, never mixed.
    """

    name = "noise_scale"

    def __init__(
        self, *, schedule: Schedule, names: Sequence[str], batches: int = 4, beta: float = 0.8
    ) -> None:
        if batches < 2:
            raise ValueError(f"noise_scale: batches (draws) must be >= 2, got {batches}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"noise_scale: beta must be in [0, 1), got {beta}")
        self.schedule, self.names = schedule, tuple(names)
        self.batches, self.beta = batches, beta
        self._ema_tr = [0.0] * len(self.names)
        self._ema_g2 = [0.0] * len(self.names)
        self._blocks = 0
        self._last = 0  # the last update observed
        self._reset()

    def _reset(self) -> None:
        self._sum: list[torch.Tensor] | None = None  # sum_j b_j g_j, per parameter tensor
        self._small_sq: torch.Tensor | None = None  # sum_j |g_j|^2 (float64, on the device)
        self._inv_b = 0.0  # sum_j 1 / b_j
        self._big = 0  # sum_j b_j
        self._count = 0

    def wants(self, step: int) -> bool:
        """Whether the gradient of update `step` belongs to a block that ends by a due step."""
        return any(self.schedule.due(s) for s in range(step, step + self.batches))

    def observe(
        self, step: int, grads: Sequence[torch.Tensor], batch_size: int
    ) -> NoiseEstimate | None:
        """Add update `step`'s training gradient (mean loss over `batch_size` examples).

        Returns the block's estimate when this gradient completes a block, else None. Call it
        only where `wants(step)`; a skipped update breaks the block, which then starts again.
        """
        if self._count and step != self._last + 1:
            self._reset()
        self._last = step
        if self._sum is None or self._small_sq is None:
            self._sum = [torch.zeros_like(g, dtype=torch.float64) for g in grads]
            self._small_sq = torch.zeros(len(grads), dtype=torch.float64, device=grads[0].device)
        torch._foreach_add_(self._sum, [g.double() for g in grads], alpha=float(batch_size))
        self._small_sq += sq_norms(grads).to(self._small_sq.device)
        self._inv_b += 1.0 / batch_size
        self._big += batch_size
        self._count += 1
        if self._count < self.batches:
            return None
        k, big = self._count, float(self._big)
        b = k / self._inv_b  # harmonic mean of the small batch sizes
        small = (self._small_sq / k).tolist()  # one host sync per block
        big_sq = sq_norms([s / big for s in self._sum]).tolist()
        self._reset()
        g2 = [(big * gb - b * gs) / (big - b) for gs, gb in zip(small, big_sq, strict=True)]
        tr = [(gs - gb) / (1 / b - 1 / big) for gs, gb in zip(small, big_sq, strict=True)]
        a = self.beta
        self._blocks += 1
        self._ema_tr = [a * m + (1 - a) * v for m, v in zip(self._ema_tr, tr, strict=True)]
        self._ema_g2 = [a * m + (1 - a) * v for m, v in zip(self._ema_g2, g2, strict=True)]
        return NoiseEstimate(
            names=self.names,
            trace=tuple(tr),
            g2=tuple(g2),
            small_batch=round(b),
            big_batch=round(big),
        )

    def records(self, step: int) -> list[ProbeRecord]:
        """The averaged estimates after update `step` (NaN before the first complete block)."""
        if self._blocks == 0:
            tr = g2 = [math.nan] * len(self.names)
        else:
            correction = 1.0 - self.beta**self._blocks  # an EMA started at zero is biased low
            tr = [m / correction for m in self._ema_tr]
            g2 = [m / correction for m in self._ema_g2]
        tr_total, g2_total = math.fsum(tr), math.fsum(g2)
        return [
            *layer_records(
                step,
                self.name,
                self.names,
                [_ratio(t, g) for t, g in zip(tr, g2, strict=True)],
                _ratio(tr_total, g2_total),
            ),
            *layer_records(step, self.name, self.names, tr, tr_total, prefix="trace_sigma/"),
            *layer_records(step, self.name, self.names, g2, g2_total, prefix="g2/"),
        ]
