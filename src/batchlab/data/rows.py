"""Rows of one split, served in batches: tensors held in memory, or a map-style Dataset read by
index.

The engine asks a split for batches in the order of the trial's seeded permutation, so the sample
order is a function of the seed whichever way the rows are stored, and a resumed trial continues
bit for bit. Tensors held in memory (on the device, moved there once per study) are sliced by one
index-select per batch: no DataLoader and no per-sample Python in the hot loop. A user's map-style
`torch.utils.data.Dataset` is read item by item (optionally by DataLoader workers, with pinned
memory) and each batch moved to the device.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from batchlab import batch as inputs
from batchlab.batch import Inputs
from batchlab.errors import DataError
from batchlab.tasks import Task

Batch = tuple[Inputs, torch.Tensor]
CPU = torch.device("cpu")
TARGET_KEYS = ("y", "label", "labels", "target", "targets")
"""The key of a dict item's target; the item's one other key is its input."""


class Rows(Protocol):
    """One split's rows: `len(rows)` examples, served as (inputs, targets) batches."""

    def __len__(self) -> int: ...

    def batches(self, order: torch.Tensor, size: int) -> Iterator[Batch]:
        """Batches of `size` rows (the last one partial) in the order of `order` (row numbers)."""
        ...

    def chunks(self, size: int) -> Iterator[Batch]:
        """The rows in their stored order, `size` at a time (for evaluation)."""
        ...

    def to(self, device: torch.device, *, budget_bytes: int | None = None) -> Rows: ...

    def head(self, n: int) -> Batch:
        """The first `n` rows as tensors (for probes and profiles that need them in memory)."""
        ...


@dataclass(frozen=True)
class TensorRows:
    """Rows held as tensors: a batch is one index-select.

    With `host_for` set, the tensors stay in (pinned) host memory and each batch is moved to that
    device as it is served: for data larger than the device's memory budget.
    """

    x: Inputs
    y: torch.Tensor
    host_for: torch.device | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _out(self, xb: Inputs, yb: torch.Tensor) -> Batch:
        if self.host_for is None:
            return xb, yb
        return inputs.to(xb, self.host_for, non_blocking=True), yb.to(
            self.host_for, non_blocking=True
        )

    def batches(self, order: torch.Tensor, size: int) -> Iterator[Batch]:
        order = order.to(self.y.device)
        for i in range(0, order.shape[0], size):
            idx = order[i : i + size]
            yield self._out(inputs.take(self.x, idx), self.y[idx])

    def chunks(self, size: int) -> Iterator[Batch]:
        for i in range(0, len(self), size):
            yield self._out(inputs.take(self.x, slice(i, i + size)), self.y[i : i + size])

    @property
    def nbytes(self) -> int:
        return inputs.nbytes(self.x) + self.y.nbytes

    def to(self, device: torch.device, *, budget_bytes: int | None = None) -> TensorRows:
        """On `device`; kept on the host and moved per batch when larger than `budget_bytes`."""
        if budget_bytes is not None and self.nbytes > budget_bytes:
            x, y = inputs.to(self.x, CPU), self.y.cpu()
            if device.type == "cuda":
                x = (
                    {k: v.pin_memory() for k, v in x.items()}
                    if isinstance(x, dict)
                    else x.pin_memory()
                )
                y = y.pin_memory()
            return replace(self, x=x, y=y, host_for=device)
        return replace(self, x=inputs.to(self.x, device), y=self.y.to(device), host_for=None)

    def head(self, n: int) -> Batch:
        return inputs.take(self.x, slice(0, n)), self.y[:n]


def collate(items: Sequence[Any], task: Task, *, where: str) -> Batch:
    """Stack a list of `(x, y)` tuples or `{input_key: x, target_key: y}` dicts into one batch,
    cast to the task's dtypes."""
    xs: list[Any] = []
    ys: list[torch.Tensor] = []
    for item in items:
        if isinstance(item, Mapping):
            target = [k for k in TARGET_KEYS if k in item]
            keys = [k for k in item if k not in TARGET_KEYS]
            if len(target) != 1 or not keys:
                raise DataError(
                    f"{where}: a dict item needs one target key ({', '.join(TARGET_KEYS)}) and "
                    f"at least one input key, got {sorted(item)}"
                )
            # one input key: a tensor batch; several: a dict batch (the model takes **inputs)
            x = item[keys[0]] if len(keys) == 1 else {k: item[k] for k in keys}
            y = item[target[0]]
        elif isinstance(item, tuple | list) and len(item) == 2:
            x, y = item
        else:
            raise DataError(f"{where}: items must be (x, y) tuples or dicts of tensors")
        xs.append(
            {k: torch.as_tensor(v) for k, v in x.items()}
            if isinstance(x, Mapping)
            else torch.as_tensor(x)
        )
        ys.append(torch.as_tensor(y))
    try:
        if isinstance(xs[0], Mapping):
            stacked: Inputs = {k: torch.stack([x[k] for x in xs]) for k in xs[0]}
        else:
            stacked = torch.stack(xs)
        return task.cast(stacked, torch.stack(ys))
    except (RuntimeError, KeyError, TypeError) as err:
        raise DataError(f"{where}: items cannot be stacked into a batch ({err})") from None


class _Collate:
    """A picklable collate function (DataLoader workers receive it)."""

    def __init__(self, task: Task, where: str) -> None:
        self.task, self.where = task, where

    def __call__(self, items: Sequence[Any]) -> Batch:
        return collate(items, self.task, where=self.where)


@dataclass(frozen=True)
class MappedRows:
    """Rows of a map-style Dataset: `index[i]` is the dataset item of row i."""

    dataset: Any
    index: torch.Tensor
    task: Task
    where: str
    workers: int = 0
    device: torch.device = CPU

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def _fetch(self, lists: list[list[int]]) -> Iterator[Batch]:
        fn = _Collate(self.task, self.where)
        if self.workers == 0:
            batches: Iterator[Batch] = (fn([self.dataset[j] for j in lst]) for lst in lists)
        else:
            from torch.utils.data import DataLoader

            batches = iter(
                DataLoader(
                    self.dataset,
                    batch_sampler=lists,
                    num_workers=self.workers,
                    collate_fn=fn,
                    pin_memory=self.device.type == "cuda",
                )
            )
        for xb, yb in batches:
            yield (
                inputs.to(xb, self.device, non_blocking=True),
                yb.to(self.device, non_blocking=True),
            )

    def batches(self, order: torch.Tensor, size: int) -> Iterator[Batch]:
        rows = self.index[order.cpu()]
        return self._fetch([rows[i : i + size].tolist() for i in range(0, len(rows), size)])

    def chunks(self, size: int) -> Iterator[Batch]:
        return self.batches(torch.arange(len(self)), size)

    def to(self, device: torch.device, *, budget_bytes: int | None = None) -> MappedRows:
        return replace(self, device=device)

    def head(self, n: int) -> Batch:
        n = min(n, len(self))
        if n == 0:
            raise DataError(f"{self.where}: the split is empty")
        return next(iter(self.batches(torch.arange(n), n)))
