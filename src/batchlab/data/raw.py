"""`RawData`: train and test arrays as a loader returns them, before the validation split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from batchlab.batch import Inputs
from batchlab.tasks import Arrays


@dataclass(frozen=True, kw_only=True)
class RawData:
    """Train and test arrays as a loader returns them, dtypes as given (the task converts them:
    float inputs and class indices for classification, token ids for a language model...)."""

    x_train: Inputs
    y_train: torch.Tensor
    x_test: Inputs
    y_test: torch.Tensor
    groups: torch.Tensor | None = None
    """Optional block number of each training row: the validation split then holds out whole
    blocks (contiguous text, so no validation window sits inside a training passage)."""
    num_classes: int | None = None
    """Optional size of the output layer (a tokenizer's vocabulary), when the data knows it;
    otherwise the task infers it from the arrays."""

    def arrays(self) -> Arrays:
        return (self.x_train, self.y_train, self.x_test, self.y_test)

    @classmethod
    def of(cls, arrays: Arrays) -> RawData:
        x_train, y_train, x_test, y_test = arrays
        return cls(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)

    def with_arrays(self, arrays: Arrays) -> RawData:
        """The same data (groups, num_classes) with new arrays, e.g. as the task prepared them."""
        x_train, y_train, x_test, y_test = arrays
        return RawData(
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            groups=self.groups,
            num_classes=self.num_classes,
        )
