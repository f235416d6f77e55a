"""Regression: MSE (or MAE) over real-valued targets `[B]` or `[B, D]`, R^2 as the score."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from batchlab.batch import Inputs
from batchlab.errors import DataError
from batchlab.tasks.base import Arrays, Task, check_rows, floats


class Regression(Task):
    """Mean squared (or absolute) error per example, averaged over target dimensions.

    The score is R^2 = 1 - SSE / SST per target column, averaged over columns (scikit-learn's
    `r2_score` with `multioutput="uniform_average"`), computed from additive sums so it is exact
    however a split is chunked. SST uses the mean of the split being scored.
    """

    name = "regression"
    score_label = "R²"
    score_is_fraction = False

    def __init__(self, *, loss: str = "mse", **options: Any) -> None:
        super().__init__(**options)
        if loss not in ("mse", "mae"):
            raise DataError(f"task_args.loss: {loss!r} is unknown; use mse or mae")
        self.loss = loss
        self.loss_label = loss.upper()  # type: ignore[misc]  # per instance: MSE or MAE

    def prepare(self, arrays: Arrays, *, where: str) -> Arrays:
        x_train, y_train, x_test, y_test = arrays
        for y in (y_train, y_test):
            if y.ndim not in (1, 2) or y.dtype == torch.bool or y.is_complex():
                raise DataError(f"{where}: regression targets must be a [N] or [N, D] array")
        out = (floats(x_train), y_train.float(), floats(x_test), y_test.float())
        if out[1].shape[1:] != out[3].shape[1:]:
            raise DataError(f"{where}: y_train and y_test have different target dimensions")
        if not (torch.isfinite(out[1]).all() and torch.isfinite(out[3]).all()):
            raise DataError(f"{where}: regression targets contain NaN or infinity")
        check_rows(out, where=where)
        return out

    def cast(self, x: Inputs, y: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        return floats(x), y.float()

    def output_size(self, arrays: Arrays) -> int:
        y = arrays[1]
        return 1 if y.ndim == 1 else int(y.shape[1])

    @staticmethod
    def _shaped(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == 1 and out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.shape != y.shape:
            raise DataError(
                f"model: outputs of shape {tuple(out.shape)} do not match regression targets "
                f"of shape {tuple(y.shape)}"
            )
        return out

    def mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self._shaped(out, y)
        return F.mse_loss(out, y) if self.loss == "mse" else F.l1_loss(out, y)

    def sum_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self._shaped(out, y)
        per = (out - y).square() if self.loss == "mse" else (out - y).abs()
        per = per.double()
        return per.sum() / (1 if y.ndim == 1 else y.shape[1])

    def score_stats(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per target column: sum of squared errors, sum of y, sum of y^2 (float64)."""
        out = self._shaped(out, y).double()
        yd = y.double()
        if yd.ndim == 1:
            out, yd = out[:, None], yd[:, None]
        return torch.stack([(out - yd).square().sum(0), yd.sum(0), yd.square().sum(0)])

    def score(self, stats: torch.Tensor, units: float) -> float:
        sse, sy, sy2 = stats.double().cpu().numpy()
        sst = sy2 - sy**2 / units
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
        return float(np.mean(r2))
