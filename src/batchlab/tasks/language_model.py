"""Next-token language modelling: inputs and targets are token ids `[B, T]`, logits `[B, T, V]`.

The loss is cross-entropy averaged over *tokens*, not over sequences: target positions equal to
`ignore_index` (-100, as in PyTorch and Hugging Face) are padding and count for nothing, so a
batch's loss and gradient do not change when its sequences are re-split into micro-batches of
unequal token counts. The score is token accuracy; perplexity is `exp(loss)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from batchlab.errors import DataError
from batchlab.tasks.base import Arrays, Task, check_rows

IGNORE_INDEX = -100


class LanguageModel(Task):
    """Mean next-token cross-entropy per (non-padding) token; token accuracy as the score."""

    name = "language-model"
    loss_label = "cross-entropy per token"
    score_label = "token accuracy"
    unit = "token"

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, **options: Any) -> None:
        super().__init__(**options)
        self.ignore_index = int(ignore_index)

    def prepare(self, arrays: Arrays, *, where: str) -> Arrays:
        for a in arrays:
            if a.ndim != 2 or a.is_floating_point() or a.dtype == torch.bool:
                raise DataError(
                    f"{where}: a language model needs integer token ids of shape [N, T] for "
                    f"inputs and targets, got {tuple(a.shape)} {a.dtype}"
                )
        out = tuple(a.long() for a in arrays)
        x_train, y_train, x_test, y_test = out
        if x_train.shape != y_train.shape or x_test.shape != y_test.shape:
            raise DataError(f"{where}: inputs and next-token targets must have the same shape")
        check_rows(out, where=where)  # type: ignore[arg-type]
        if int(min(x_train.min(), x_test.min())) < 0:
            raise DataError(f"{where}: token ids must be >= 0")
        return out  # type: ignore[return-value]

    def cast(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.long(), y.long()

    def output_size(self, arrays: Arrays) -> int:
        """The vocabulary: one more than the largest token id in inputs or targets."""
        return int(max(int(a.max()) for a in arrays)) + 1

    def _flat(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if out.ndim != 3 or out.shape[:2] != y.shape:
            raise DataError(
                f"model: a language model must map tokens [B, T] to logits [B, T, V]; got "
                f"{tuple(out.shape)} for targets {tuple(y.shape)}"
            )
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)

    def mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, targets = self._flat(out, y)
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_index)

    def sum_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, targets = self._flat(out, y)
        return F.cross_entropy(logits, targets, ignore_index=self.ignore_index, reduction="sum")

    def units(self, y: torch.Tensor) -> torch.Tensor:
        return (y != self.ignore_index).sum()

    def score_stats(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, targets = self._flat(out, y)
        keep = targets != self.ignore_index
        return ((logits.argmax(dim=1) == targets) & keep).sum()

    def score(self, stats: torch.Tensor, units: float) -> float:
        return float(stats.item()) / units
