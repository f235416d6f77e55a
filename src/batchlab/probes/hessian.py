"""Top Hessian eigenvalue of the training loss, by power iteration on Hessian-vector products.

The loss is the mean over a fixed subset of the training set, in eval mode (a deterministic
function of the weights). Each iteration is one Hessian-vector product by double backward,
reusing one graph for the gradient; the Hessian itself is never formed. When the eigenvalue of
largest magnitude is negative, a shifted second run finds the top (largest) one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from batchlab.batch import Inputs
from batchlab.probes._util import fixed_subset, flat_loss, isolated
from batchlab.probes.base import LossFn, Need, Probe, ProbeContext, ProbeRecord, Tier
from batchlab.probes.schedule import AtEnd, Schedule


def _power_iteration(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    v: torch.Tensor,
    *,
    shift: float,
    max_iters: int,
    tol: float,
) -> tuple[float, int]:
    """(eigenvalue, iterations) of largest magnitude of H - shift * I, from the unit vector v."""
    lam = 0.0
    for it in range(1, max_iters + 1):
        hv = hvp(v)
        if shift:
            hv = hv - shift * v
        new = float(torch.dot(v.double().flatten(), hv.double().flatten()))  # v has norm 1
        norm = hv.norm()
        if float(norm) == 0.0:
            return 0.0, it
        v = hv.detach() / norm
        if it > 1 and abs(new - lam) <= tol * abs(new):
            return new, it
        lam = new
    return lam, max_iters


def hessian_top_eigenvalue(
    model: nn.Module,
    loss_fn: LossFn,
    x: Inputs,
    y: torch.Tensor,
    *,
    generator: torch.Generator,
    max_iters: int = 100,
    tol: float = 1e-4,
) -> tuple[float, int]:
    """(eigenvalue, iterations): the largest (algebraic) Hessian eigenvalue of mean loss on (x, y).

    Power iteration converges to the eigenvalue of largest |lambda|. Near a minimum that is the
    top (positive) one; when it comes out negative (lambda_min dominates, e.g. at a saddle), a
    second power iteration on H - lambda_min I, whose eigenvalues lambda_i - lambda_min are all
    >= 0, converges to lambda_max - lambda_min. Each run stops when the Rayleigh quotient changes
    by less than tol * |lambda|; `iterations` counts the Hessian-vector products of both runs.
    """
    with isolated(model, train=False):
        w0, f = flat_loss(model, loss_fn, x, y)
        w = w0.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(f(w), w, create_graph=True)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            (hv,) = torch.autograd.grad(grad, w, grad_outputs=v, retain_graph=True)
            return hv

        v0 = torch.randn(w.shape, generator=generator, dtype=torch.float64)
        v0 = (v0 / v0.norm()).to(device=w.device, dtype=w.dtype)
        lam, iters = _power_iteration(hvp, v0, shift=0.0, max_iters=max_iters, tol=tol)
        if lam >= 0:
            return lam, iters
        gap, more = _power_iteration(hvp, v0, shift=lam, max_iters=max_iters, tol=tol)
    return lam + gap, iters + more


class HessianTop(Probe):
    """The top Hessian eigenvalue (a sharpness measure), key `total`; `iterations` alongside.

    Measured at the end by default; `subset` examples, drawn once with the probe generator.
    """

    name: ClassVar[str] = "hessian"
    tier: ClassVar[Tier] = "full"
    needs: ClassVar[frozenset[Need]] = frozenset({"data"})

    def __init__(
        self, *, schedule: Schedule, subset: int = 1024, max_iters: int = 100, tol: float = 1e-4
    ) -> None:
        super().__init__(schedule=schedule)
        self.subset, self.max_iters, self.tol = subset, max_iters, tol
        self._data: tuple[Inputs, torch.Tensor] | None = None

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return AtEnd()

    def _measure(self, ctx: ProbeContext) -> list[ProbeRecord]:
        if self._data is None:
            self._data = fixed_subset(ctx.generator, ctx.x_train, ctx.y_train, self.subset)
        lam, iters = hessian_top_eigenvalue(
            ctx.model,
            ctx.loss_fn,
            *self._data,
            generator=ctx.generator,
            max_iters=self.max_iters,
            tol=self.tol,
        )
        return [
            ProbeRecord(ctx.step, self.name, "total", lam),
            ProbeRecord(ctx.step, self.name, "iterations", float(iters)),
        ]

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return self._measure(ctx)

    def finish(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return self._measure(ctx) if self.schedule.at_end else []
