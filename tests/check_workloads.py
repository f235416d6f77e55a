"""Tiny user workloads that break (or keep) batch equivalence, for `batchlab check`'s tests.

Named by specs as `tests.check_workloads:function`, the way a user names their own code: a
BatchNorm model, a dropout model, padded token data, and two user losses with the wrong
reduction (a sum; a token mean whose `units` count sequences, the per-micro-batch bug).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from batchlab.tasks import Task
from batchlab.tasks.language_model import LanguageModel
from batchlab.tasks.regression import Regression
from tests.workloads import tokens


def bn_mlp(*, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """Linear, BatchNorm1d, ReLU, Linear: batch statistics in module "2"."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Linear(width, num_classes),
    )


def dropout_mlp(*, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """An MLP with dropout in module "3": random, and equivalent once the masks are fixed."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), width),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(width, num_classes),
    )


def padded_tokens(
    *, n_train: int = 96, n_test: int = 32, context: int = 12, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`tests.workloads.tokens` with each sequence padded (target -100) after a random length
    from 1 to `context`, so micro-batches hold unequal token counts."""
    x_tr, y_tr, x_te, y_te = tokens(n_train=n_train, n_test=n_test, context=context, seed=seed)
    g = torch.Generator().manual_seed(seed + 7)

    def pad(y: torch.Tensor) -> torch.Tensor:
        lengths = torch.randint(1, context + 1, (y.shape[0], 1), generator=g)
        return torch.where(torch.arange(context)[None, :] < lengths, y, -100)

    return x_tr, pad(y_tr), x_te, pad(y_te)


class TokenMeanPerSequence(LanguageModel):
    """The reported bug: next-token cross-entropy averaged over a micro-batch's tokens, with the
    task's units left at their default (sequences), so accumulation weights each micro-batch's
    token mean by its sequences, not its tokens."""

    name = "token-mean-per-sequence"
    unit = "example"

    def sum_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mean_loss(out, y) * self.units(y)

    def units(self, y: torch.Tensor) -> int:  # type: ignore[override]
        return int(y.shape[0])


def token_mean_per_sequence() -> Task:
    return TokenMeanPerSequence()


class SummedMSE(Regression):
    """A user's regression loss with reduction="sum": a sum over the batch, not a mean."""

    name = "summed-mse"

    def mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self._shaped(out, y), y, reduction="sum")

    def sum_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mean_loss(out, y) * self.units(y)


def summed_mse() -> Task:
    return SummedMSE()
