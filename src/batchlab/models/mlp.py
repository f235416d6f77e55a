"""The seeds' simple architecture: an MLP without BatchNorm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from batchlab.errors import SpecError


class MLP(nn.Sequential):
    """Flatten, then Linear + ReLU per hidden width, then a linear classifier. No BatchNorm."""

    def __init__(self, *, input_shape: Sequence[int], num_classes: int, widths: Sequence[int]):
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(input_shape)
        for w in widths:
            layers += [nn.Linear(fan_in, w), nn.ReLU()]
            fan_in = w
        layers.append(nn.Linear(fan_in, num_classes))
        super().__init__(*layers)


def build(input_shape: Sequence[int], num_classes: int, args: dict[str, Any]) -> nn.Module:
    unknown = set(args) - {"widths"}
    if unknown:
        raise SpecError(f"model_args: mlp takes only 'widths', not {sorted(unknown)}")
    widths = args.get("widths", [512, 512])
    if not isinstance(widths, list | tuple) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        raise SpecError(f"model_args.widths: need a list of positive integers, got {widths!r}")
    return MLP(input_shape=input_shape, num_classes=num_classes, widths=widths)
