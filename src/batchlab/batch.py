"""Inputs of a batch: a tensor, or a dict of tensors (e.g. token ids and an attention mask) whose
first dimension is the example. These helpers treat both alike, so the engine, the data rows and
the tasks need no special case for dict batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

Inputs = torch.Tensor | dict[str, torch.Tensor]


def rows(x: Inputs) -> int:
    """Examples in `x` (the first dimension; every entry of a dict must agree)."""
    if isinstance(x, Mapping):
        sizes = {int(v.shape[0]) for v in x.values()}
        if len(sizes) != 1:
            raise ValueError(f"the entries of a dict batch have different lengths {sorted(sizes)}")
        return sizes.pop()
    return int(x.shape[0])


def take(x: Inputs, idx: torch.Tensor | slice) -> Inputs:
    """The rows `idx` (an index tensor or a slice) of `x`."""
    if isinstance(x, Mapping):
        return {k: v[idx] for k, v in x.items()}
    return x[idx]


def split(x: Inputs, size: int) -> list[Inputs]:
    """`x` in consecutive pieces of `size` rows (the last may be smaller), like `torch.split`."""
    if isinstance(x, Mapping):
        parts = {k: torch.split(v, size) for k, v in x.items()}
        return [{k: p[i] for k, p in parts.items()} for i in range(len(next(iter(parts.values()))))]
    return list(torch.split(x, size))


def to(x: Inputs, device: torch.device, **kwargs: Any) -> Inputs:
    if isinstance(x, Mapping):
        return {k: v.to(device, **kwargs) for k, v in x.items()}
    return x.to(device, **kwargs)


def nbytes(x: Inputs) -> int:
    if isinstance(x, Mapping):
        return sum(v.nbytes for v in x.values())
    return x.nbytes


def device_of(x: Inputs) -> torch.device:
    return next(iter(x.values())).device if isinstance(x, Mapping) else x.device


def shape_of(x: Inputs) -> tuple[int, ...]:
    """The shape of one example: of the tensor, or of a dict's first entry."""
    first = next(iter(x.values())) if isinstance(x, Mapping) else x
    return tuple(first.shape[1:])


def call(model: torch.nn.Module, x: Inputs) -> torch.Tensor:
    """`model(x)`, or `model(**x)` for a dict; a Hugging Face style output gives its `logits`."""
    out = model(**x) if isinstance(x, Mapping) else model(x)
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else out  # type: ignore[no-any-return]
