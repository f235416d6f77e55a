"""Models: the built-in registry (`MODELS`), Hugging Face models (`hf:NAME`) and users' factories.

Each built-in is one module of this package with a `build(input_shape, num_classes, model_args)`
function: `mlp` (the seeds' simple MLP, no BatchNorm), `cnn`, `gpt` (a nanoGPT-style decoder),
`resnet` (a pre-activation ResNet). A factory is called as
`factory(input_shape=..., num_classes=..., **model_args)` (the first two only when it takes
them; a `model_args` key it does not take is an error naming it), and must return an `nn.Module`
mapping a batch to the task's outputs.
"""

from __future__ import annotations

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
from batchlab.plugins import call_hook, resolve_callable

__all__ = [
    "CNN",
    "GPT",
    "MLP",
    "MODELS",
    "GhostBatchNorm",
    "ModelBuilder",
    "PreActResNet",
    "build_model",
    "materialize_lazy",
]


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
            model = call_hook(fn, ref=name, field="model", options=model_args, given=given)
            if not isinstance(model, nn.Module):
                raise SpecError(f"model: {name} returned {type(model).__name__}, not an nn.Module")
            return model
    valid = ", ".join([*MODELS, "hf:NAME", "hf:/path/to/folder", "package.module:function"])
    raise SpecError(f"model: unknown model {name!r}; use {valid}")


def materialize_lazy(model: nn.Module, forward: Callable[[nn.Module], Any], *, seed: int) -> None:
    """Give a model's lazy modules (`nn.LazyLinear`...) their shapes and weights with one
    `forward(model)` under `no_grad`, right after it is built: evaluation runs under
    `inference_mode`, where a lazy parameter cannot be created, and the optimizer must see the
    real parameters. The weights are drawn from `seed` (the global RNG is left as is), in eval
    mode, so BatchNorm statistics are not updated by the example batch."""
    lazy = (nn.parameter.UninitializedParameter, nn.parameter.UninitializedBuffer)
    if not any(isinstance(t, lazy) for t in (*model.parameters(), *model.buffers())):
        return
    was_training = model.training
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model.eval()
        try:
            forward(model)
        finally:
            model.train(was_training)
