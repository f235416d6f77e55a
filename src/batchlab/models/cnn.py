"""A small CNN (conv blocks with optional BatchNorm) for images and 1-D signals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from batchlab.errors import SpecError
from batchlab.models.norm import GhostBatchNorm


class CNN(nn.Module):
    """Conv blocks (conv, optional BatchNorm, ReLU, max-pool 2), then a hidden linear layer.

    Works on images (C, H, W) with 2-D convolutions and on signals (L,) or (C, L) with 1-D ones.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        kernel_size: int = 3,
        batchnorm: bool = False,
        ghost_batch: int | None = None,
    ):
        super().__init__()
        shape = tuple(input_shape)
        self.unsqueeze = len(shape) == 1
        if self.unsqueeze:
            shape = (1, *shape)
        if ghost_batch is not None and (not batchnorm or ghost_batch <= 0):
            raise SpecError("model_args.ghost_batch: needs batchnorm = true and a positive size")
        if len(shape) not in (2, 3):
            raise SpecError(
                f"model: cnn needs inputs of shape (L,), (C, L) or (C, H, W), got {shape}"
            )
        two_d = len(shape) == 3
        conv = nn.Conv2d if two_d else nn.Conv1d
        norm = nn.BatchNorm2d if two_d else nn.BatchNorm1d
        pool = nn.MaxPool2d if two_d else nn.MaxPool1d
        blocks: list[nn.Module] = []
        c_in = shape[0]
        spatial = min(shape[1:])
        for c in channels:
            blocks += [conv(c_in, c, kernel_size, padding=kernel_size // 2)]
            if batchnorm:
                blocks.append(
                    norm(c) if ghost_batch is None else GhostBatchNorm(norm(c), ghost_batch)
                )
            blocks.append(nn.ReLU())
            if spatial >= 2:
                blocks.append(pool(2))
                spatial //= 2
            c_in = c
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *shape)).numel()
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(n_flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unsqueeze:
            x = x.unsqueeze(1)
        out: torch.Tensor = self.head(self.features(x))
        return out


def build(input_shape: Sequence[int], num_classes: int, args: dict[str, Any]) -> nn.Module:
    allowed = {"channels", "hidden", "kernel_size", "batchnorm", "ghost_batch"}
    unknown = set(args) - allowed
    if unknown:
        raise SpecError(f"model_args: cnn takes {sorted(allowed)}, not {sorted(unknown)}")
    return CNN(input_shape=input_shape, num_classes=num_classes, **args)
