"""Models: the seeds' simple MLP (no BatchNorm), a small CNN, and users' own factories.

A factory is called as `factory(input_shape=..., num_classes=..., **model_args)` (the first two
only when it takes them; a `model_args` key it does not take is an error naming it), and must
return an `nn.Module` mapping a batch to the task's outputs.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from batchlab.errors import SpecError
from batchlab.plugins import resolve_callable


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


class GhostBatchNorm(nn.Module):
    """BatchNorm whose training statistics come from fixed-size chunks of the batch (Hoffer et al.).

    In training mode a batch of B is split into chunks of `ghost_batch` examples, each normalized
    with its own mean and variance (and each updating the running statistics); in eval mode it is
    plain BatchNorm with the running statistics.
    """

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, ghost_batch: int) -> None:
        super().__init__()
        self.norm = norm
        self.ghost_batch = ghost_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.ghost_batch:
            out: torch.Tensor = self.norm(x)
            return out
        return torch.cat([self.norm(chunk) for chunk in torch.split(x, self.ghost_batch)])


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


def _call_user_factory(
    fn: Any, given: dict[str, Any], options: dict[str, Any], *, name: str
) -> Any:
    """Call a user's factory with `given` (input_shape, num_classes: passed only when it takes
    them) and `options` (model_args: every one must be a parameter it takes, so a typo is an
    error naming it, as for the built-in models)."""
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if takes_any else sorted(set(options) - set(params))
    if unknown:
        takes = sorted(k for k in params if k not in given) or ["nothing"]
        raise SpecError(
            f"model_args: {name} takes {', '.join(takes)}, not {', '.join(unknown)};"
            " fix or remove them"
        )
    kwargs = {k: v for k, v in given.items() if takes_any or k in params} | options
    try:
        return fn(**kwargs)
    except TypeError as err:
        raise SpecError(f"model_args: {err}") from None


def _mlp(input_shape: Sequence[int], num_classes: int, args: dict[str, Any]) -> nn.Module:
    unknown = set(args) - {"widths"}
    if unknown:
        raise SpecError(f"model_args: mlp takes only 'widths', not {sorted(unknown)}")
    widths = args.get("widths", [512, 512])
    if not isinstance(widths, list | tuple) or not all(
        isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths
    ):
        raise SpecError(f"model_args.widths: need a list of positive integers, got {widths!r}")
    return MLP(input_shape=input_shape, num_classes=num_classes, widths=widths)


def _cnn(input_shape: Sequence[int], num_classes: int, args: dict[str, Any]) -> nn.Module:
    allowed = {"channels", "hidden", "kernel_size", "batchnorm", "ghost_batch"}
    unknown = set(args) - allowed
    if unknown:
        raise SpecError(f"model_args: cnn takes {sorted(allowed)}, not {sorted(unknown)}")
    return CNN(input_shape=input_shape, num_classes=num_classes, **args)


ModelBuilder = Callable[[Sequence[int], int, dict[str, Any]], nn.Module]
"""`builder(input_shape, num_classes, model_args)`: checks its options, returns the module."""

MODELS: dict[str, ModelBuilder] = {"mlp": _mlp, "cnn": _cnn}
"""The built-in models by name; a new built-in is one module plus one line here."""


def build_model(
    name: str,
    model_args: dict[str, Any],
    *,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int,
) -> nn.Module:
    """Build a model with weights drawn from `seed`, without touching the global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in MODELS:
            return MODELS[name](input_shape, num_classes, model_args)
        if ":" in name:
            fn = resolve_callable(name, field="model")
            given = {"input_shape": tuple(input_shape), "num_classes": num_classes}
            model = _call_user_factory(fn, given, model_args, name=name)
            if not isinstance(model, nn.Module):
                raise SpecError(f"model: {name} returned {type(model).__name__}, not an nn.Module")
            return model
    valid = ", ".join([*MODELS, "package.module:function"])
    raise SpecError(f"model: unknown model {name!r}; use {valid}")
