"""One autograd training step's gradient, for every task and every caller.

`backward_batch` is the engine's micro-step loop (after nanoGPT's `train.py`): a batch is split
into micro-batches of `micro` examples, each contributes its share of the batch's mean loss over
the task's units, and the gradients add up in `p.grad` to the whole batch's mean gradient, exact
for any split (a partial last batch, unequal token counts). The engine, `profile` and `suggest`'s
short runs all take their gradients here; the optimizer update is the caller's.
"""

from __future__ import annotations

import torch
from torch import nn

from batchlab.tasks import Task


def backward_batch(
    model: nn.Module,
    task: Task,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    micro: int | None = None,
    loss_sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int | torch.Tensor]:
    """Accumulate the batch's mean-loss gradient into `p.grad` (zero them first).

    Returns the task's score statistics of the batch and its units (examples or tokens); adds the
    batch's summed loss to `loss_sum` in place when given (no host sync either way).
    """
    units = task.units(yb)  # examples, or tokens for a language model
    stats: torch.Tensor | None = None
    size = micro if micro is not None else max(1, int(xb.shape[0]))
    for xm, ym in zip(torch.split(xb, size), torch.split(yb, size), strict=True):
        out = model(xm)
        loss = task.micro_loss(out, ym, units)
        loss.backward()  # type: ignore[no-untyped-call]
        if loss_sum is not None:
            loss_sum += loss.detach() * units
        s = task.score_stats(out.detach(), ym)
        stats = s if stats is None else stats + s
    assert stats is not None  # a batch holds at least one example
    return stats, units
