"""A small pre-activation ResNet (He et al. 2016, "Identity Mappings in Deep Residual Networks").

A 3x3 stem convolution, three stages of `depth` residual blocks each (`width`, 2x and 4x
channels; the first block of stages 2 and 3 halves the resolution), then norm, ReLU, global
average pooling and a linear classifier. A block is norm, ReLU, conv 3x3, norm, ReLU, conv 3x3,
added to its input (through a 1x1 convolution of the pre-activated input when the shape
changes). Works on images of any size (C, H, W), or (H, W) as one channel.

`norm` is the question a batch-size study asks of it: "batch" (BatchNorm over the whole batch),
"ghost" (statistics over chunks of `ghost_batch` examples: `GhostBatchNorm`) or "none" (no
normalization; the convolutions then get biases).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from batchlab.errors import SpecError
from batchlab.models.norm import GhostBatchNorm

Norm = Literal["batch", "ghost", "none"]
NORMS = ("batch", "ghost", "none")


def _norm(kind: Norm, channels: int, ghost_batch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "ghost":
        return GhostBatchNorm(nn.BatchNorm2d(channels), ghost_batch)
    return nn.Identity()


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm, ghost_batch: int) -> None:
        super().__init__()
        bias = norm == "none"
        self.norm1 = _norm(norm, c_in, ghost_batch)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm2 = _norm(norm, c_out, ghost_batch)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        out = self.conv1(a)
        out = self.conv2(torch.relu(self.norm2(out)))
        summed: torch.Tensor = out + skip
        return summed


class PreActResNet(nn.Module):
    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 2,
        width: int = 16,
        norm: Norm = "batch",
        ghost_batch: int = 32,
    ) -> None:
        super().__init__()
        shape = tuple(input_shape)
        self.unsqueeze = len(shape) == 2
        c_in = 1 if self.unsqueeze else shape[0]
        bias = norm == "none"
        self.stem = nn.Conv2d(c_in, width, 3, padding=1, bias=bias)
        blocks: list[nn.Module] = []
        c = width
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(PreActBlock(c, c_out, stride, norm, ghost_batch))
                c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.norm = _norm(norm, c, ghost_batch)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unsqueeze:
            x = x.unsqueeze(1)
        x = self.blocks(self.stem(x))
        x = torch.relu(self.norm(x)).mean(dim=(2, 3))  # global average pooling
        out: torch.Tensor = self.fc(x)
        return out


def build(input_shape: Sequence[int], num_classes: int, args: dict[str, Any]) -> nn.Module:
    allowed = ("depth", "width", "norm", "ghost_batch")
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise SpecError(f"model_args: resnet takes {', '.join(allowed)}, not {', '.join(unknown)}")
    if len(input_shape) not in (2, 3):
        raise SpecError(
            f"model: resnet needs images of shape (C, H, W) or (H, W), got {tuple(input_shape)}"
        )
    for key in ("depth", "width", "ghost_batch"):
        value = args.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"model_args.{key}: need a positive integer, got {value!r}")
    norm = args.get("norm", "batch")
    if norm not in NORMS:
        raise SpecError(f"model_args.norm: {norm!r} is unknown; use batch, ghost or none")
    if "ghost_batch" in args and norm != "ghost":
        raise SpecError('model_args.ghost_batch: only with norm = "ghost"; set it or remove this')
    return PreActResNet(input_shape=input_shape, num_classes=num_classes, **args)
