"""Gradient histograms over many batches at fixed weights (Chang & Pathak 2020; Hoffer et al.).

At the current weights, draw `draws` batches (with replacement) for each batch size, and bin every
scalar gradient component of every draw into ONE set of bins shared by all batch sizes and draws,
so the histograms are directly comparable. Alongside, the per-component variance across draws,
which for i.i.d. batches is Sigma_jj / B: the spread shrinks as 1/B.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from batchlab import batch
from batchlab.batch import Inputs
from batchlab.probes._util import batch_grads, isolated, sample_indices, trainable
from batchlab.probes.base import LossFn, Need, Probe, ProbeContext, ProbeRecord, Tier
from batchlab.probes.schedule import AtEnd, Schedule

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class GradientHistograms:
    """Histograms of gradient components per batch size, over shared `edges` (numpy semantics).

    `counts[B][i]` counts components in [edges[i], edges[i+1]) (the last bin is closed, as in
    `numpy.histogram`); `under[B]`/`over[B]` count those outside the range, so no component
    is lost. `variance[B]` is each component's unbiased variance across the draws.
    """

    edges: FloatArray
    counts: dict[int, IntArray]
    under: dict[int, int]
    over: dict[int, int]
    variance: dict[int, FloatArray]
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    draws: int

    def layer_variance(self, batch_size: int) -> dict[str, float]:
        """Mean per-component variance within each parameter tensor."""
        parts = np.split(self.variance[batch_size], np.cumsum(self.sizes)[:-1])
        return {n: float(v.mean()) for n, v in zip(self.names, parts, strict=True)}

    def to_records(self, step: int, probe: str) -> list[ProbeRecord]:
        """Flat records: `edge=<i>`, `B=<b>/bin=<i>`, `B=<b>/under|over`, `B=<b>/variance[...]`."""
        out = [ProbeRecord(step, probe, f"edge={i}", float(e)) for i, e in enumerate(self.edges)]
        for b, counts in self.counts.items():
            out += [
                ProbeRecord(step, probe, f"B={b}/bin={i}", float(c)) for i, c in enumerate(counts)
            ]
            out.append(ProbeRecord(step, probe, f"B={b}/under", float(self.under[b])))
            out.append(ProbeRecord(step, probe, f"B={b}/over", float(self.over[b])))
            out.append(ProbeRecord(step, probe, f"B={b}/variance", float(self.variance[b].mean())))
            out += [
                ProbeRecord(step, probe, f"B={b}/variance/layer:{n}", v)
                for n, v in self.layer_variance(b).items()
            ]
        return out


def _flat_grad(
    model: nn.Module, loss_fn: LossFn, x: Inputs, y: torch.Tensor, params: list[nn.Parameter]
) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in batch_grads(model, loss_fn, x, y, params)]).double()


def gradient_histograms(
    model: nn.Module,
    loss_fn: LossFn,
    x: Inputs,
    y: torch.Tensor,
    *,
    batch_sizes: Sequence[int],
    draws: int,
    generator: torch.Generator,
    bins: int = 101,
    edges: Sequence[float] | FloatArray | None = None,
    pilot_draws: int = 10,
    span: float = 1.5,
) -> GradientHistograms:
    """Histogram every gradient component over `draws` batches per batch size, shared bins.

    Without `edges`, the range is fixed first from `pilot_draws` extra batches at the smallest
    batch size (the widest spread): bins+1 even edges over +-span * max|component|. Then, for
    each B in order, `draws` batches of B indices from `sample_indices(generator, n, B)`. Runs
    in train mode and leaves the model untouched. Costs (pilot + draws * len(batch_sizes))
    forward+backward passes.
    """
    if draws < 2:
        raise ValueError(f"grad_histograms: draws must be >= 2, got {draws}")
    named = trainable(model)
    params = [p for _, p in named]
    n, dev = batch.rows(x), y.device
    with isolated(model, train=True):
        if edges is None:
            b0, lim = min(batch_sizes), 0.0
            for _ in range(pilot_draws):
                idx = sample_indices(generator, n, b0, dev)
                lim = max(
                    lim,
                    float(
                        _flat_grad(model, loss_fn, batch.take(x, idx), y[idx], params).abs().max()
                    ),
                )
            lim = span * lim if lim > 0 else 1.0
            edges = np.linspace(-lim, lim, bins + 1)
        edges_np = np.asarray(edges, dtype=np.float64)
        nbins = edges_np.shape[0] - 1
        edges_t = torch.from_numpy(edges_np).to(dev)
        counts: dict[int, IntArray] = {}
        under: dict[int, int] = {}
        over: dict[int, int] = {}
        variance: dict[int, FloatArray] = {}
        for b in batch_sizes:
            hist = torch.zeros(nbins, dtype=torch.int64, device=dev)
            lo = hi = torch.zeros((), dtype=torch.int64, device=dev)
            s1: torch.Tensor | None = None
            s2: torch.Tensor | None = None
            for _ in range(draws):
                idx = sample_indices(generator, n, b, dev)
                g = _flat_grad(model, loss_fn, batch.take(x, idx), y[idx], params)
                # numpy.histogram: bin i is [e_i, e_{i+1}), the last bin also takes e_last.
                pos = torch.bucketize(g, edges_t, right=True) - 1
                pos = torch.where(g == edges_t[-1], nbins - 1, pos)
                below, above = g < edges_t[0], g > edges_t[-1]
                inside = ~(below | above)
                hist += torch.bincount(pos[inside], minlength=nbins)
                lo = lo + below.sum()
                hi = hi + above.sum()
                s1 = g.clone() if s1 is None else s1.add_(g)
                s2 = g.square() if s2 is None else s2.add_(g.square())
            assert s1 is not None and s2 is not None
            # Unbiased variance across draws; sums are float64 so cancellation is harmless here.
            var = (s2 - s1.square() / draws) / (draws - 1)
            counts[b] = hist.cpu().numpy().astype(np.int64)
            under[b], over[b] = int(lo), int(hi)
            variance[b] = var.clamp_min(0).cpu().numpy()
    return GradientHistograms(
        edges=edges_np,
        counts=counts,
        under=under,
        over=over,
        variance=variance,
        names=tuple(nm for nm, _ in named),
        sizes=tuple(p.numel() for p in params),
        draws=draws,
    )


class GradHistograms(Probe):
    """Gradient histograms and per-component variance for several batch sizes (at the end).

    Defaults: batch sizes 8, 32, 128, 512, 1000 draws each, 101 shared bins. Records are flat
    (see `GradientHistograms.to_records`); `last` keeps the full result for direct use.
    """

    name: ClassVar[str] = "grad_histograms"
    tier: ClassVar[Tier] = "full"
    needs: ClassVar[frozenset[Need]] = frozenset({"data"})

    def __init__(
        self,
        *,
        schedule: Schedule,
        batch_sizes: Sequence[int] = (8, 32, 128, 512),
        draws: int = 1000,
        bins: int = 101,
        edges: Sequence[float] | None = None,
    ) -> None:
        super().__init__(schedule=schedule)
        self.batch_sizes, self.draws, self.bins, self.edges = tuple(batch_sizes), draws, bins, edges
        self.last: GradientHistograms | None = None

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return AtEnd()

    def _measure(self, ctx: ProbeContext) -> list[ProbeRecord]:
        self.last = gradient_histograms(
            ctx.model,
            ctx.loss_fn,
            ctx.x_train,
            ctx.y_train,
            batch_sizes=self.batch_sizes,
            draws=self.draws,
            generator=ctx.generator,
            bins=self.bins,
            edges=self.edges,
        )
        return self.last.to_records(ctx.step, self.name)

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return self._measure(ctx)

    def finish(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return self._measure(ctx) if self.schedule.at_end else []
