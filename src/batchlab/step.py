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
import os
import shutil
import sys
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


@cache
def fp16_unsupported(device_type: str) -> str | None:
    """Why `device_type` cannot run fp16 autocast at full speed, or None when it can. A CPU
    without AVX512-FP16 or AMX-FP16 runs it (torch has CPU fp16 kernels), converting each
    operand: 2.5x slower than fp32 for a 256 x 256 matmul on this repo's AVX2 machine."""
    if device_type == "cpu":
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            flags = ""
        if "avx512_fp16" in flags or "amx_fp16" in flags:
            return None
        return "this CPU has no fp16 instructions (AVX512-FP16 or AMX-FP16): fp16 would run slower"
    return None


_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_unsupported(precision: str, device_type: str) -> str | None:
    """Why `device_type` runs `precision` as fp32 instead, or None when it runs as asked."""
    if precision == "bf16":
        return bf16_unsupported(device_type)
    if precision == "fp16":
        return fp16_unsupported(device_type)
    return None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype a study's `precision` runs with on `device`: None for fp32, and for
    bf16 or fp16 where the device has none (`precision_unsupported`)."""
    if precision in _AUTOCAST and precision_unsupported(precision, device.type) is None:
        return _AUTOCAST[precision]
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """The `precision` an autocast dtype stands for (what the store records)."""
    return next((k for k, v in _AUTOCAST.items() if v == dtype), "fp32")


FP16_INIT_SCALE = 2.0**16
"""fp16's loss scale before the first update (`torch.amp.GradScaler`'s default): halved on each
step whose scaled gradients overflow (that step is skipped), doubled after 2000 clean ones."""


@cache
def compile_unsupported(device_type: str) -> str | None:
    """Why `torch.compile` cannot run on `device_type` here, or None when it may (it can still
    fail at the first step: `AutogradStep` then runs eager). Inductor writes C++ for the CPU
    and Triton for CUDA; other devices run compiled graphs without either."""
    if sys.platform == "win32":
        return "torch.compile is not supported on Windows here"
    if device_type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++")
    ):
        return "no C++ compiler (g++ or clang++) for torch.compile's CPU kernels"
    if device_type == "cuda":
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (torch.compile's CUDA kernels)"
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
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[torch.Tensor, int | torch.Tensor]:
    """Accumulate the batch's mean-loss gradient into `p.grad` (zero them first).

    Returns the task's score statistics of the batch and its units (examples or tokens); adds the
    batch's summed loss to `loss_sum` in place when given (no host sync either way). `dtype`:
    the forward pass and loss under autocast (bf16, fp16), gradients in the parameters' dtype;
    `scaler` (fp16) scales each micro-batch's loss, so `p.grad` holds the scaled gradient.
    """
    units = task.units(yb)  # examples, or tokens for a language model
    stats: torch.Tensor | None = None
    size = micro if micro is not None else max(1, int(yb.shape[0]))
    for xm, ym in zip(batch.split(xb, size), torch.split(yb, size), strict=True):
        with autocast(yb.device, dtype):
            out = task.forward(model, xm)
            loss = task.micro_loss(out, ym, units)
        scaled = scaler.scale(loss) if scaler is not None else loss  # fp16: the scaled loss
        scaled.backward()  # type: ignore[no-untyped-call]
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
    fp16 (`dtype` float16) brings a `torch.amp.GradScaler`; `compile` runs the forward and
    backward through `torch.compile(model)`, and eager from the first step where that raises.
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
        compile: bool = False,
    ) -> None:
        self.model, self.optimizer, self.task = model, optimizer, task
        self.accumulate, self.clip, self.dtype = accumulate, clip, dtype
        self.micro: int | None = None
        self.params = list(model.parameters())
        device = self.params[0].device if self.params else torch.device("cpu")
        # SGD takes the same arithmetic as optimizer.step() with less overhead (one group).
        self.fast_sgd = type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
        # fp16's narrow range: the loss is scaled up so small gradients do not flush to zero.
        self.scaler = (
            torch.amp.GradScaler(device.type, init_scale=FP16_INIT_SCALE)
            if dtype == torch.float16
            else None
        )
        # The compiled module shares the model's parameters (state dicts stay the model's own);
        # torch.compile is lazy: most failures come at the first step (`_compiled_backward`).
        self.compiled: nn.Module | None = None
        if compile:
            try:
                self.compiled = torch.compile(model)  # type: ignore[assignment]
            except Exception as e:
                self._compile_failed(e)
        # Clipping: the clipped updates and the pre-clip norms, summed on the device (no sync);
        # with fp16, the updates the scaler skipped (non-finite gradients) are left out.
        self.clipped = torch.zeros((), device=device) if self.params else None
        self.norm_sum = torch.zeros((), device=device) if self.params else None
        self.skipped = torch.zeros((), device=device)
        self.updates = 0

    def backward(
        self, xb: Inputs, yb: torch.Tensor, loss_sum: torch.Tensor
    ) -> tuple[torch.Tensor, Units]:
        self.optimizer.zero_grad(set_to_none=True)
        out = self._compiled_backward(xb, yb, loss_sum) if self.compiled is not None else None
        if out is None:
            out = backward_batch(
                self.model,
                self.task,
                xb,
                yb,
                micro=self.micro,
                loss_sum=loss_sum,
                dtype=self.dtype,
                scaler=self.scaler,
            )
        if self.scaler is not None:
            # The true gradient in p.grad from here on: probes and clipping see unscaled norms.
            self.scaler.unscale_(self.optimizer)
        return out

    def _compiled_backward(
        self, xb: Inputs, yb: torch.Tensor, loss_sum: torch.Tensor
    ) -> tuple[torch.Tensor, Units] | None:
        """The batch through the compiled module; None (and eager from now on, said in one line)
        where compiling or running it raises."""
        assert self.compiled is not None
        part = torch.zeros_like(loss_sum)  # added only once the whole batch went through
        try:
            out = backward_batch(
                self.compiled,
                self.task,
                xb,
                yb,
                micro=self.micro,
                loss_sum=part,
                dtype=self.dtype,
                scaler=self.scaler,
            )
        except Exception as e:  # a missing toolchain, an op inductor cannot lower, ...
            self._compile_failed(e)
            self.optimizer.zero_grad(set_to_none=True)
            return None
        loss_sum += part
        return out

    def _compile_failed(self, e: Exception) -> None:
        """Run eager from now on, and say why in one line (on stderr, as the study's notes)."""
        first = (str(e).strip().splitlines() or [""])[0][:200]
        self.compiled = None
        print(
            f"batchlab: compile: torch.compile failed ({type(e).__name__}: {first});"
            " running eager (stored per trial)",
            file=sys.stderr,
        )

    def set_batch_size(self, batch_size: int) -> None:
        self.micro = batch_size // self.accumulate

    def update(self) -> None:
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
            assert self.clipped is not None and self.norm_sum is not None
            if self.scaler is not None:  # a skipped step (inf/nan gradient) is no update
                finite = norm.isfinite()
                self.skipped += ~finite
                norm = torch.where(finite, norm, torch.zeros_like(norm))
            self.clipped += norm > self.clip
            self.norm_sum += norm.detach()
            self.updates += 1
        if self.scaler is not None:
            # Skips the update when a gradient is inf or nan (one host sync per step: the
            # scaler reads its found-inf flag) and adapts the scale; not a divergence.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.fast_sgd:
            sgd_step(self.optimizer, self.params)
        else:
            self.optimizer.step()

    def clip_records(self, step: int) -> list[ProbeRecord]:
        """The `clipping` records of the updates since the last call (fraction clipped, mean
        global gradient norm before clipping); none without clipping or updates."""
        if self.clip is None or not self.updates:
            return []
        assert self.clipped is not None and self.norm_sum is not None
        n = self.updates - int(self.skipped)
        if n == 0:  # every update since the last call was skipped by fp16's scaler
            self.updates = 0
            self.skipped.zero_()
            return []
        out = [
            ProbeRecord(step, "clipping", "fraction", float(self.clipped) / n),
            ProbeRecord(step, "clipping", "grad_norm", float(self.norm_sum) / n),
        ]
        self.clipped.zero_()
        self.norm_sum.zero_()
        self.skipped.zero_()
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
