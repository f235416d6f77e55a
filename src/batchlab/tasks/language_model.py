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

from batchlab.batch import Inputs
from batchlab.errors import DataError
from batchlab.tasks.base import Arrays, Task, check_rows

IGNORE_INDEX = -100


class LanguageModel(Task):
    """Mean next-token cross-entropy per (non-padding) token; token accuracy as the score."""

    name = "language-model"
    loss_label = "cross-entropy per token"
    score_label = "token accuracy"
    unit = "token"
    index_label = "token ids"

    def __init__(self, *, ignore_index: int = IGNORE_INDEX, **options: Any) -> None:
        super().__init__(**options)
        self.ignore_index = int(ignore_index)

    def prepare(self, arrays: Arrays, *, where: str) -> Arrays:
        """Targets: integer ids [N, T] (-100 marks padding); inputs: ids of the same shape, or a
        dict batch (e.g. input_ids and attention_mask) whose entries keep their dtypes."""

        def ids(a: torch.Tensor) -> torch.Tensor:
            if a.ndim != 2 or a.is_floating_point() or a.dtype == torch.bool:
                raise DataError(
                    f"{where}: a language model needs integer token ids of shape [N, T] for "
                    f"inputs and targets, got {tuple(a.shape)} {a.dtype}"
                )
            return a.long()

        x_train, y_train, x_test, y_test = arrays
        y_train, y_test = ids(y_train), ids(y_test)
        if not isinstance(x_train, dict):
            x_train = ids(x_train)
        if not isinstance(x_test, dict):
            x_test = ids(x_test)
        for x, y in ((x_train, y_train), (x_test, y_test)):
            if isinstance(x, torch.Tensor) and x.shape != y.shape:
                raise DataError(f"{where}: inputs and next-token targets must have the same shape")
        out = (x_train, y_train, x_test, y_test)
        check_rows(out, where=where)
        if any(int(x.min()) < 0 for x in (x_train, x_test) if isinstance(x, torch.Tensor)):
            raise DataError(f"{where}: token ids must be >= 0")
        return out

    def cast(self, x: Inputs, y: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        return (x if isinstance(x, dict) else x.long()), y.long()

    def output_size(self, arrays: Arrays) -> int:
        """The vocabulary: one more than the largest token id in inputs or targets."""
        tensors: list[torch.Tensor] = []
        for a in arrays:
            parts = list(a.values()) if isinstance(a, dict) else [a]
            tensors += [t for t in parts if not t.is_floating_point() and t.numel()]
        return int(max(int(t.max()) for t in tensors)) + 1

    def _flat(self, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if out.ndim != 3 or out.shape[:2] != y.shape:
            raise DataError(
                f"model: a language model must map tokens [B, T] to logits [B, T, V]; got "
                f"{tuple(out.shape)} for targets {tuple(y.shape)}"
            )
        return out.reshape(-1, out.shape[-1]), y.reshape(-1)

    def check_output(self, out: torch.Tensor, y: torch.Tensor, *, size: int) -> None:
        self._flat(out, y)
        if out.shape[-1] != size:
            raise DataError(
                f"model: logits of shape {tuple(out.shape)} for a vocabulary of {size}; the"
                f" output layer must have {size} units (build it with num_classes)"
            )

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
