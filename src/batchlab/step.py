"""Training steps: one interface, two strategies, and SGD's arithmetic in one place.

A `Step` takes a batch's gradient (`backward`) and applies the update (`update`); between the
two, a probe may read `p.grad` and the pre-update weights when the step is `split`.

- `AutogradStep`: `backward_batch`, the micro-step loop (after nanoGPT's `train.py`) for every
  task: a batch is split into micro-batches of `micro` examples, each contributes its share of
  the batch's mean loss over the task's units, and the gradients add up in `p.grad` to the whole
  batch's mean gradient, exact for any split (a partial last batch, unequal token counts); then
  `sgd_step` or the optimizer's own step.
- `FastMLPStep`: the hand-written MLP + SGD step (`batchlab.fastpath`), forward, backward and
  update in one call, not split.

`make_step` picks the faster of the two for a model; `profile` times the step it picks. The
stacked step of fused trials (`batchlab.fused`) applies `sgd_step`'s arithmetic with one lr per
member. The engine's loop (`engine.run_epochs`) drives a trial's steps and a fused group's alike;
`suggest`'s short run is a trial of the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from batchlab import batch
from batchlab.batch import Inputs
from batchlab.fastpath import MLPStep
from batchlab.probes.base import ProbeRecord
from batchlab.tasks import Task
from batchlab.tasks.classification import Classification

Units = int | torch.Tensor
"""Examples in a batch, or tokens (a 0-d tensor, counted on the device) for a language model."""


@cache
def bf16_unsupported(device_type: str) -> str | None:
    """Why `device_type` cannot run bf16 autocast at full speed, or None when it can."""
    if device_type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    if device_type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        if "avx512_bf16" in flags or "amx_bf16" in flags:
            return None
        return "this CPU has no bf16 instructions (AVX512-BF16 or AMX): bf16 would run slower"
    return None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a study's `precision` runs with on `device`: None for fp32, and for
    bf16 where the device has none (`bf16_unsupported`)."""
    if precision == "bf16" and bf16_unsupported(device.type) is None:
        return torch.bfloat16
    return None


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """`torch.autocast` to `dtype` on `device`; nothing when `dtype` is None."""
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def backward_batch(
    model: nn.Module,
    task: Task,
    xb: Inputs,
    yb: torch.Tensor,
    *,
    micro: int | None = None,
    loss_sum: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, int | torch.Tensor]:
    """Accumulate the batch's mean-loss gradient into `p.grad` (zero them first).

    Returns the task's score statistics of the batch and its units (examples or tokens); adds the
    batch's summed loss to `loss_sum` in place when given (no host sync either way). `dtype`:
    the forward pass and loss under autocast (bf16), gradients in the parameters' dtype.
    """
    units = task.units(yb)  # examples, or tokens for a language model
    stats: torch.Tensor | None = None
    size = micro if micro is not None else max(1, int(yb.shape[0]))
    for xm, ym in zip(batch.split(xb, size), torch.split(yb, size), strict=True):
        with autocast(yb.device, dtype):
            out = task.forward(model, xm)
            loss = task.micro_loss(out, ym, units)
        loss.backward()  # type: ignore[no-untyped-call]
        if loss_sum is not None:
            loss_sum += loss.detach() * units
        s = task.score_stats(out.detach(), ym)
        stats = s if stats is None else stats + s
    assert stats is not None  # a batch holds at least one example
    return stats, units


@torch.no_grad()
def sgd_direction(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    bufs: list[torch.Tensor] | None,
    *,
    momentum: float,
    weight_decay: float,
    nesterov: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """SGD's update direction (dampening 0), as `torch.optim.SGD` computes it: weight decay
    added to the gradient, the momentum buffers updated in place (`bufs` None on a first step:
    new buffers start as the gradient), Nesterov's look-ahead. Returns (direction, buffers);
    the caller applies `p -= lr * direction`, with one lr or one per fused member."""
    out = list(grads)
    if weight_decay != 0:
        out = list(torch._foreach_add(out, list(params), alpha=weight_decay))
    if momentum == 0:
        return out, bufs
    if bufs is None:
        bufs = [torch.clone(g).detach() for g in out]
    else:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, out)
    return (list(torch._foreach_add(out, bufs, alpha=momentum)) if nesterov else bufs), bufs


@torch.no_grad()
def sgd_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
    """`torch.optim.SGD.step()` (dampening 0), bit for bit, without its per-call overhead.

    At small batch sizes a training step is a few dozen tiny kernels and the optimizer's Python
    wrapper is a sizeable share of it; this does the same arithmetic with multi-tensor
    (`_foreach`) kernels and keeps its state in the optimizer, so checkpoints are unchanged.
    """
    group = optimizer.param_groups[0]
    momentum, state = group["momentum"], optimizer.state
    live = [p for p in params if p.grad is not None]
    grads = [p.grad for p in live if p.grad is not None]
    have = [p for p in live if "momentum_buffer" in state[p]]
    if momentum != 0 and 0 < len(have) < len(live):  # some buffers exist: one tensor at a time
        for p, g in zip(live, grads, strict=True):
            d, b = sgd_direction(
                [g],
                [p],
                [state[p]["momentum_buffer"]] if "momentum_buffer" in state[p] else None,
                momentum=momentum,
                weight_decay=group["weight_decay"],
                nesterov=group["nesterov"],
            )
            assert b is not None
            state[p]["momentum_buffer"] = b[0]
            torch._foreach_add_([p], d, alpha=-group["lr"])
        return
    direction, bufs = sgd_direction(
        grads,
        live,
        [state[p]["momentum_buffer"] for p in live] if have else None,
        momentum=momentum,
        weight_decay=group["weight_decay"],
        nesterov=group["nesterov"],
    )
    if bufs is not None and not have:
        for p, buf in zip(live, bufs, strict=True):
            state[p]["momentum_buffer"] = buf
    torch._foreach_add_(live, direction, alpha=-group["lr"])


class Step(Protocol):
    """One training step on a batch, in two halves (see the module docstring)."""

    split: bool
    """Whether `p.grad` holds the batch's gradient, and the weights are the pre-update ones,
    between `backward` and `update` (what a probe reading gradients needs)."""

    def backward(
        self, xb: Inputs, yb: torch.Tensor, loss_sum: torch.Tensor
    ) -> tuple[torch.Tensor, Units]:
        """The batch's gradient; adds its summed loss to `loss_sum`; returns the task's score
        statistics and the batch's units."""
        ...

    def update(self) -> None: ...


class AutogradStep:
    """Autograd with gradient accumulation over `accumulate` micro-batches, then the update.

    Micro-batches hold `batch_size // accumulate` examples of the epoch's batch size (set it when
    the batch size changes); a partial last batch is split into micro-batches of the same size.
    """

    split = True

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        task: Task,
        *,
        accumulate: int,
        clip: float | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.optimizer, self.task = model, optimizer, task
        self.accumulate, self.clip, self.dtype = accumulate, clip, dtype
        self.micro: int | None = None
        self.params = list(model.parameters())
        # SGD takes the same arithmetic as optimizer.step() with less overhead (one group).
        self.fast_sgd = type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
        # Clipping: the clipped updates and the pre-clip norms, summed on the device (no sync).
        self.clipped = torch.zeros((), device=self.params[0].device) if self.params else None
        self.norm_sum = torch.zeros((), device=self.params[0].device) if self.params else None
        self.updates = 0

    def backward(
        self, xb: Inputs, yb: torch.Tensor, loss_sum: torch.Tensor
    ) -> tuple[torch.Tensor, Units]:
        self.optimizer.zero_grad(set_to_none=True)
        return backward_batch(
            self.model, self.task, xb, yb, micro=self.micro, loss_sum=loss_sum, dtype=self.dtype
        )

    def set_batch_size(self, batch_size: int) -> None:
        self.micro = batch_size // self.accumulate

    def update(self) -> None:
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
            assert self.clipped is not None and self.norm_sum is not None
            self.clipped += norm > self.clip
            self.norm_sum += norm.detach()
            self.updates += 1
        if self.fast_sgd:
            sgd_step(self.optimizer, self.params)
        else:
            self.optimizer.step()

    def clip_records(self, step: int) -> list[ProbeRecord]:
        """The `clipping` records of the updates since the last call (fraction clipped, mean
        global gradient norm before clipping); none without clipping or updates."""
        if self.clip is None or not self.updates:
            return []
        assert self.clipped is not None and self.norm_sum is not None
        n = self.updates
        out = [
            ProbeRecord(step, "clipping", "fraction", float(self.clipped) / n),
            ProbeRecord(step, "clipping", "grad_norm", float(self.norm_sum) / n),
        ]
        self.clipped.zero_()
        self.norm_sum.zero_()
        self.updates = 0
        return out


class FastMLPStep:
    """The built-in MLP with SGD and cross-entropy: forward, backward and update in one call."""

    split = False

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.step = MLPStep(model, optimizer)  # type: ignore[arg-type]  # checked by `supports`

    @staticmethod
    def supports(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        task: Task,
        *,
        accumulate: int,
        clip: float | None = None,
    ) -> bool:
        """The built-in MLP, plain SGD, classification, no accumulation (which sums gradients),
        no clipping (which needs the whole gradient before the update)."""
        return (
            type(task) is Classification
            and accumulate == 1
            and clip is None
            and MLPStep.supports(model, optimizer)
        )

    def backward(
        self, xb: Inputs, yb: torch.Tensor, loss_sum: torch.Tensor
    ) -> tuple[torch.Tensor, Units]:
        assert isinstance(xb, torch.Tensor)  # `supports`: the built-in MLP takes a tensor
        loss, correct = self.step(xb, yb)  # the update is applied here already
        bs = int(xb.shape[0])
        loss_sum.add_(loss, alpha=bs)
        return correct, bs

    def update(self) -> None:
        pass


def make_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, task: Task, *, accumulate: int = 1
) -> Step:
    """The fastest step that trains `model` exactly: the hand-written MLP step where it applies,
    else autograd (what the engine takes on steps where no probe reads gradients)."""
    if FastMLPStep.supports(model, optimizer, task, accumulate=accumulate):
        return FastMLPStep(model, optimizer)
    return AutogradStep(model, optimizer, task, accumulate=accumulate)
