"""Classification: cross-entropy over class logits `[B, C]`, accuracy as the score."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from batchlab.batch import Inputs
from batchlab.errors import DataError
from batchlab.tasks.base import Arrays, Task, check_rows, floats


def as_class_indices(y: torch.Tensor, *, where: str) -> torch.Tensor:
    """1-D integer class indices (floats that are whole numbers are accepted)."""
    arr = y.numpy()
    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.floating) and np.all(arr == arr.round()):
        arr = arr.astype(np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-D array of integer class indices")
    return torch.as_tensor(arr.astype(np.int64))


class Classification(Task):
    """Mean cross-entropy per example; the score is accuracy (argmax over classes)."""

    name = "classification"
    loss_label = "cross-entropy"
    score_label = "accuracy"
    index_label = "labels"

    def prepare(self, arrays: Arrays, *, where: str) -> Arrays:
        x_train, y_train, x_test, y_test = arrays
        out = (
            floats(x_train),
            as_class_indices(y_train, where=where),
            floats(x_test),
            as_class_indices(y_test, where=where),
        )
        check_rows(out, where=where)
        if int(min(out[1].min(), out[3].min())) < 0:
            raise DataError(f"{where}: labels must be class indices 0..C-1, found a negative label")
        return out

    def cast(self, x: Inputs, y: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        return floats(x), y.long()

    def output_size(self, arrays: Arrays) -> int:
        return int(max(arrays[1].max(), arrays[3].max())) + 1

    def check_output(self, out: torch.Tensor, y: torch.Tensor, *, size: int) -> None:
        if out.shape != (y.shape[0], size):
            raise DataError(
                f"model: outputs of shape {tuple(out.shape)} for {size} classes; the output"
                f" layer must have {size} units, logits [B, {size}] (build it with num_classes)"
            )

    def mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def sum_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, reduction="sum")

    def micro_loss(
        self, out: torch.Tensor, y: torch.Tensor, total: int | torch.Tensor
    ) -> torch.Tensor:
        # The mean weighted by the micro-batch's share: the arithmetic the engine always used
        # (x 1.0 for a whole batch), so results stay bit for bit those of earlier versions.
        return F.cross_entropy(out, y) * (y.shape[0] / total)

    def score_stats(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (out.argmax(dim=1) == y).sum()  # int64: exact for any number of examples

    def score(self, stats: torch.Tensor, units: float) -> float:
        return float(stats.item()) / units
