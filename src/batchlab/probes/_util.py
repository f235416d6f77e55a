"""Torch helpers shared by the probes: isolation, sampling, gradients and per-layer records."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from batchlab import batch
from batchlab.batch import Inputs
from batchlab.probes.base import LossFn, ProbeRecord


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) for every parameter that requires a gradient, in module order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@contextmanager
def isolated(model: nn.Module, *, train: bool) -> Iterator[None]:
    """Run a probe's extra forward/backward passes without leaving a trace on training.

    Sets train/eval mode for the duration, then restores every module's own mode, every buffer
    (BatchNorm running statistics move on a train-mode forward) and the global RNG state (dropout
    draws from it), so training after the probe is bit-for-bit what it would have been.
    """
    modes = [m.training for m in model.modules()]
    saved = [b.detach().clone() for b in model.buffers()]
    cuda = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    with torch.random.fork_rng(devices=cuda), torch.enable_grad():
        model.train(train)
        try:
            yield
        finally:
            for m, mode in zip(model.modules(), modes, strict=True):
                m.training = mode
            with torch.no_grad():
                for b, s in zip(model.buffers(), saved, strict=True):
                    b.copy_(s)


def sample_indices(
    generator: torch.Generator, n: int, size: int, device: torch.device
) -> torch.Tensor:
    """`size` indices in [0, n) drawn uniformly WITH replacement.

    With replacement the draws are i.i.d., so E|G_B|^2 = |G|^2 + tr(Sigma)/B holds exactly (no
    finite-population correction) and the noise-scale estimator is unbiased.
    """
    return torch.randint(n, (size,), generator=generator).to(device)


def batch_grads(
    model: nn.Module,
    loss_fn: LossFn,
    x: Inputs,
    y: torch.Tensor,
    params: Sequence[nn.Parameter],
) -> list[torch.Tensor]:
    """Gradients of the mean loss on (x, y), returned, never accumulated into `p.grad`."""
    with torch.enable_grad():
        loss = loss_fn(batch.call(model, x), y)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def norms(tensors: Sequence[torch.Tensor]) -> list[float]:
    """L2 norm of each tensor, read to the host in one sync.

    `_foreach_norm` is one fused call (about 30x faster than a norm per tensor on CPU), in each
    tensor's own dtype; float32 norms are accurate to ~1e-7 relative, plenty for a diagnostic.
    """
    if not tensors:
        return []
    out: list[float] = torch.stack(torch._foreach_norm([t.detach() for t in tensors])).tolist()
    return out


def sq_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared L2 norm of each tensor as a float64 vector on the tensors' device (no sync)."""
    if not tensors:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(torch._foreach_norm([t.detach() for t in tensors])).double().square()


def layer_records(
    step: int,
    probe: str,
    names: Sequence[str],
    per_layer: Sequence[float],
    total: float,
    *,
    prefix: str = "",
) -> list[ProbeRecord]:
    """`[prefix]total` plus one `[prefix]layer:<name>` record per parameter tensor."""
    out = [ProbeRecord(step, probe, f"{prefix}total", total)]
    out += [
        ProbeRecord(step, probe, f"{prefix}layer:{n}", v)
        for n, v in zip(names, per_layer, strict=True)
    ]
    return out


def fixed_subset(
    generator: torch.Generator, x: Inputs, y: torch.Tensor, size: int
) -> tuple[Inputs, torch.Tensor]:
    """A subset of `size` distinct examples (all of them when size >= n), drawn once and kept."""
    n = batch.rows(x)
    if size >= n:
        return x, y
    idx = torch.randperm(n, generator=generator)[:size].to(y.device)
    return batch.take(x, idx), y[idx]


def flat_loss(
    model: nn.Module, loss_fn: LossFn, x: Inputs, y: torch.Tensor
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The loss as a function of one flat parameter vector: (w0_flat, f) with f(w0_flat) = loss.

    Uses `functional_call`, so the module's own parameters are never written; buffers are the
    module's. Only trainable parameters are in the vector.
    """
    named = trainable(model)
    names = [n for n, _ in named]
    shapes = [p.shape for _, p in named]
    sizes = [p.numel() for _, p in named]
    w0 = torch.cat([p.detach().reshape(-1) for _, p in named])

    def f(w: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(w, sizes)
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        out = functional_call(model, params, (), dict(x)) if isinstance(x, dict) else None
        out = functional_call(model, params, (x,)) if out is None else out
        logits = getattr(out, "logits", None)  # a Hugging Face style output
        loss: torch.Tensor = loss_fn(logits if isinstance(logits, torch.Tensor) else out, y)
        return loss

    return w0, f
