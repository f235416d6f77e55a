"""Ghost BatchNorm: BatchNorm whose training statistics come from fixed-size chunks of a batch."""

from __future__ import annotations

import torch
from torch import nn


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
