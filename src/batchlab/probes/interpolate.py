"""Loss and accuracy along the line between two weight sets (Keskar et al.'s 1-D pictures).

    w(alpha) = alpha * w_a + (1 - alpha) * w_b,   alpha in [-1, 2] typically

so alpha = 1 is w_a and alpha = 0 is w_b. Floating-point entries of the state dicts (parameters
and buffers such as BatchNorm statistics) are interpolated; integer buffers come from `state_a`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.probes.base import LossFn
from batchlab.tasks import Task

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.linspace(-1.0, 2.0, 31))


@torch.no_grad()
def interpolate(
    model: nn.Module,
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: LossFn = F.cross_entropy,
    alphas: Iterable[float] = DEFAULT_ALPHAS,
    task: Task | None = None,
) -> list[tuple[float, float, float]]:
    """[(alpha, loss, score)] of `model` at w(alpha) on (x, y), in eval mode.

    With a task, the loss and score are the task's (R^2 for regression...); without one, the
    loss is `loss_fn` and the score accuracy, argmax(logits) == y. The model's own state and
    train/eval mode are restored.
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = [m.training for m in model.modules()]
    model.eval()
    out: list[tuple[float, float, float]] = []
    try:
        for alpha in alphas:
            mixed = {
                k: (alpha * v + (1.0 - alpha) * state_b[k]) if v.is_floating_point() else v
                for k, v in state_a.items()
            }
            model.load_state_dict(mixed)
            logits = model(x)
            if task is not None:
                units = float(task.units(y))
                loss = float(task.sum_loss(logits, y)) / units
                acc = task.score(task.score_stats(logits, y), units)
            else:
                loss = float(loss_fn(logits, y))
                acc = float((logits.argmax(dim=1) == y).double().mean())
            out.append((float(alpha), loss, acc))
    finally:
        model.load_state_dict(saved)
        for m, mode in zip(model.modules(), was_training, strict=True):
            m.training = mode
    return out
