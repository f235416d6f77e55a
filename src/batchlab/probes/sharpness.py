"""Keskar et al. (2016) epsilon-sharpness, in the full weight space and in a random subspace.

    C_eps = { z : |z_i| <= eps * (|(A^+ x)_i| + 1) }
    phi(x, eps) = 100 * (max_{z in C_eps} f(x + A z) - f(x)) / (1 + f(x))

f is the mean training loss over a fixed subset, in eval mode. The max is found by scipy's
L-BFGS-B on -f, started at z = 0, for `maxiter` iterations (about 10 in the paper). A = I in the
full space; in the subspace A is a random n x p matrix with orthonormal columns, so A^+ = A^T.
Objective and gradient come from ONE function call (`value_and_grad` below): the same subset,
the same averaging, the same float32 -> float64 conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from batchlab.batch import Inputs
from batchlab.probes._util import fixed_subset, flat_loss, isolated
from batchlab.probes.base import LossFn, Need, Probe, ProbeContext, ProbeRecord, Tier
from batchlab.probes.schedule import AtEnd, Schedule

Array = npt.NDArray[np.float64]


@dataclass(frozen=True, kw_only=True)
class SharpnessResult:
    """phi in percent; the loss at the weights and the largest loss found in the box."""

    phi: float
    loss: float
    max_loss: float


def random_subspace(
    n: int, p: int, *, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """An n x p matrix with orthonormal columns (QR of a Gaussian matrix), on the CPU."""
    gauss = torch.randn((n, min(p, n)), generator=generator, dtype=dtype)
    q: torch.Tensor = torch.linalg.qr(gauss, mode="reduced")[0]
    return q


def sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    x: Inputs,
    y: torch.Tensor,
    *,
    eps: float = 1e-3,
    maxiter: int = 10,
    subspace: torch.Tensor | None = None,
) -> SharpnessResult:
    """phi(w, eps) of the mean loss on (x, y) at the model's weights; `subspace` is A (n x p).

    The model is not modified (the perturbed weights go through `functional_call`).
    """
    from scipy.optimize import Bounds, minimize  # here: spec validation imports every probe

    with isolated(model, train=False):
        w0, f = flat_loss(model, loss_fn, x, y)
        a = None if subspace is None else subspace.to(device=w0.device, dtype=w0.dtype)
        coords = w0 if a is None else a.T @ w0
        bound = eps * (np.abs(coords.detach().double().cpu().numpy()) + 1.0)
        losses: list[float] = []

        def value_and_grad(z: Array) -> tuple[float, Array]:
            """-f(x + A z) and its gradient in z: what L-BFGS-B minimizes."""
            zt = torch.from_numpy(z).to(device=w0.device, dtype=w0.dtype).requires_grad_(True)
            delta = zt if a is None else a @ zt
            loss = f(w0 + delta)
            (grad,) = torch.autograd.grad(loss, zt)
            value = float(loss.detach())
            losses.append(value)
            return -value, -grad.detach().double().cpu().numpy()

        z0 = np.zeros(bound.shape[0], dtype=np.float64)
        loss0 = -value_and_grad(z0)[0]
        minimize(
            value_and_grad,
            z0,
            jac=True,
            method="L-BFGS-B",
            bounds=Bounds(-bound, bound),
            options={"maxiter": maxiter},
        )
    # Every point L-BFGS-B evaluates lies in the box, so the best one seen is a valid maximum.
    best = max(losses)
    return SharpnessResult(phi=100.0 * (best - loss0) / (1.0 + loss0), loss=loss0, max_loss=best)


class Sharpness(Probe):
    """phi in the full space (key `full`) and a random `subspace_dim`-dim subspace (`subspace`).

    Also records `loss` (f at the weights) and `max_loss/full`, `max_loss/subspace`. The subset
    (`subset` examples) and the subspace are drawn once with the probe generator and kept, so
    repeated measurements differ only through the weights.
    """

    name: ClassVar[str] = "sharpness"
    tier: ClassVar[Tier] = "full"
    needs: ClassVar[frozenset[Need]] = frozenset({"data"})

    def __init__(
        self,
        *,
        schedule: Schedule,
        eps: float = 1e-3,
        maxiter: int = 10,
        subspace_dim: int | None = 100,
        subset: int = 1024,
    ) -> None:
        super().__init__(schedule=schedule)
        self.eps, self.maxiter, self.subspace_dim, self.subset = eps, maxiter, subspace_dim, subset
        self._data: tuple[Inputs, torch.Tensor] | None = None
        self._a: torch.Tensor | None = None

    @classmethod
    def default_schedule(cls, total_steps: int | None) -> Schedule:
        return AtEnd()

    def _measure(self, ctx: ProbeContext) -> list[ProbeRecord]:
        if self._data is None:
            self._data = fixed_subset(ctx.generator, ctx.x_train, ctx.y_train, self.subset)
        x, y = self._data
        full = sharpness(ctx.model, ctx.loss_fn, x, y, eps=self.eps, maxiter=self.maxiter)
        out = [
            ProbeRecord(ctx.step, self.name, "full", full.phi),
            ProbeRecord(ctx.step, self.name, "loss", full.loss),
            ProbeRecord(ctx.step, self.name, "max_loss/full", full.max_loss),
        ]
        if self.subspace_dim:
            if self._a is None:
                n = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
                dtype = next(ctx.model.parameters()).dtype
                self._a = random_subspace(
                    n, self.subspace_dim, generator=ctx.generator, dtype=dtype
                )
            sub = sharpness(
                ctx.model, ctx.loss_fn, x, y, eps=self.eps, maxiter=self.maxiter, subspace=self._a
            )
            out += [
                ProbeRecord(ctx.step, self.name, "subspace", sub.phi),
                ProbeRecord(ctx.step, self.name, "max_loss/subspace", sub.max_loss),
            ]
        return out

    def after_update(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return self._measure(ctx)

    def finish(self, ctx: ProbeContext) -> list[ProbeRecord]:
        return self._measure(ctx) if self.schedule.at_end else []
