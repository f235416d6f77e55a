"""Models: the built-in registry (`MODELS`), Hugging Face models (`hf:NAME`) and users' factories.

Each built-in is one module of this package with a `build(input_shape, num_classes, model_args)`
function: `mlp` (the seeds' simple MLP, no BatchNorm), `cnn`, `gpt` (a nanoGPT-style decoder),
`resnet` (a pre-activation ResNet). A factory is called as
`factory(input_shape=..., num_classes=..., **model_args)` (the first two only when it takes
them; a `model_args` key it does not take is an error naming it), and must return an `nn.Module`
mapping a batch to the task's outputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from batchlab.errors import SpecError
from batchlab.models import cnn, gpt, hf, mlp, resnet
from batchlab.models.cnn import CNN
from batchlab.models.gpt import GPT
from batchlab.models.mlp import MLP
from batchlab.models.norm import GhostBatchNorm
from batchlab.models.resnet import PreActResNet
from batchlab.plugins import resolve_callable

__all__ = [
    "CNN",
    "GPT",
    "MLP",
    "MODELS",
    "GhostBatchNorm",
    "ModelBuilder",
    "PreActResNet",
    "build_model",
]


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


ModelBuilder = Callable[[Sequence[int], int, dict[str, Any]], nn.Module]
"""`builder(input_shape, num_classes, model_args)`: checks its options, returns the module."""

MODELS: dict[str, ModelBuilder] = {
    "mlp": mlp.build,
    "cnn": cnn.build,
    "gpt": gpt.build,
    "resnet": resnet.build,
}
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
        if name.startswith(hf.PREFIX):
            return hf.build(name.removeprefix(hf.PREFIX), input_shape, num_classes, model_args)
        if ":" in name:
            fn = resolve_callable(name, field="model")
            given = {"input_shape": tuple(input_shape), "num_classes": num_classes}
            model = _call_user_factory(fn, given, model_args, name=name)
            if not isinstance(model, nn.Module):
                raise SpecError(f"model: {name} returned {type(model).__name__}, not an nn.Module")
            return model
    valid = ", ".join([*MODELS, "hf:NAME", "hf:/path/to/folder", "package.module:function"])
    raise SpecError(f"model: unknown model {name!r}; use {valid}")
