"""Datasets: built-in ones that never download, files a user already has, and user functions.

Every loader returns raw train/test arrays; `load_dataset` then holds out a validation split with a
fixed seed (the test set is never touched), optionally subsamples the training set, and returns
tensors ready to be moved to the device once per study.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchlab import batch
from batchlab.batch import Inputs
from batchlab.data.fortunes import load_fortunes
from batchlab.data.idx import read_idx
from batchlab.data.raw import RawData
from batchlab.data.rows import MappedRows, Rows, TensorRows, collate
from batchlab.data.text import load_text
from batchlab.errors import DataError
from batchlab.plugins import call_hook, resolve_callable
from batchlab.tasks import Arrays, Task, resolve_task
from batchlab.tasks.classification import Classification

__all__ = [
    "Dataset",
    "RawData",
    "load_dataset",
    "load_raw",
    "resolve_callable",
    "split",
    "tensor_rows",
]

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """A dataset split into train / val / test rows, with the task that trains on it.

    Rows are tensors held in memory (`TensorRows`: every built-in and array loader) or a user's
    map-style `torch.utils.data.Dataset` read by index (`MappedRows`). `x_train` and friends are
    the tensors of in-memory data; code that needs every row as a tensor checks `in_memory`.
    """

    name: str
    train: Rows
    val: Rows
    test: Rows
    num_classes: int
    """What the model's output layer produces: classes, regression targets, or the vocabulary."""
    input_shape: tuple[int, ...]
    task: Task = field(default_factory=Classification, compare=False)
    # Results computed once per dataset and shared by the trials that train on it (the engine
    # keeps each initial model's evaluation here: trials that differ only in batch size or lr
    # start from the same weights). Not part of the data: never compared, never copied.
    memo: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_tensors(
        cls,
        *,
        name: str,
        x_train: Inputs,
        y_train: torch.Tensor,
        x_val: Inputs,
        y_val: torch.Tensor,
        x_test: Inputs,
        y_test: torch.Tensor,
        num_classes: int,
        task: Task | None = None,
    ) -> Dataset:
        return cls(
            name=name,
            train=TensorRows(x_train, y_train),
            val=TensorRows(x_val, y_val),
            test=TensorRows(x_test, y_test),
            num_classes=num_classes,
            input_shape=batch.shape_of(x_train),
            task=task if task is not None else Classification(),
        )

    @property
    def in_memory(self) -> bool:
        """Every split is a tensor (not a Dataset read by index)."""
        return all(isinstance(r, TensorRows) for r in (self.train, self.val, self.test))

    @property
    def on_device(self) -> bool:
        """Every split is a tensor moved to the device once (not served from host memory)."""
        rows = (self.train, self.val, self.test)
        return all(isinstance(r, TensorRows) and r.host_for is None for r in rows)

    def _tensors(self, rows: Rows) -> TensorRows:
        if not isinstance(rows, TensorRows):
            raise DataError(
                f"dataset {self.name}: this needs the data in memory as tensors, and it is a "
                "Dataset read by index; return (x_train, y_train, x_test, y_test) arrays instead"
            )
        return rows

    @staticmethod
    def _tensor(x: Inputs) -> torch.Tensor:
        if isinstance(x, dict):
            raise DataError(
                "this needs tensor inputs, and the data's batches are dicts of tensors; "
                "give the inputs as one tensor"
            )
        return x

    @property
    def x_train(self) -> torch.Tensor:
        return self._tensor(self._tensors(self.train).x)

    @property
    def y_train(self) -> torch.Tensor:
        return self._tensors(self.train).y

    @property
    def x_val(self) -> torch.Tensor:
        return self._tensor(self._tensors(self.val).x)

    @property
    def y_val(self) -> torch.Tensor:
        return self._tensors(self.val).y

    @property
    def x_test(self) -> torch.Tensor:
        return self._tensor(self._tensors(self.test).x)

    @property
    def y_test(self) -> torch.Tensor:
        return self._tensors(self.test).y

    @property
    def n_train(self) -> int:
        return len(self.train)

    def to(self, device: torch.device, *, budget_bytes: int | None = None) -> Dataset:
        """The same dataset on `device`: tensors moved once per study (not per batch), unless the
        dataset is larger than `budget_bytes`, when its tensors stay in host memory and each batch
        is moved as it is served; a Dataset read by index moves each batch as it is read."""
        total = sum(
            r.nbytes for r in (self.train, self.val, self.test) if isinstance(r, TensorRows)
        )
        budget = None if budget_bytes is None or total <= budget_bytes else 0
        return replace(
            self,
            train=self.train.to(device, budget_bytes=budget),
            val=self.val.to(device, budget_bytes=budget),
            test=self.test.to(device, budget_bytes=budget),
        )


Loader = Callable[[Mapping[str, Any], Path | None], RawData]


def _as_raw(x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, where: str) -> RawData:
    """Arrays (or tensors) as tensors, dtypes kept: the task checks and converts them."""

    def t(a: Any, name: str) -> torch.Tensor:
        if isinstance(a, torch.Tensor):
            return a.detach().cpu()
        try:
            arr = np.asarray(a)
            if arr.dtype.kind in "OSUVMm":  # objects, strings, records, dates: no tensor dtype
                kind = arr.dtype.type.__name__.rstrip("_")
                raise DataError(
                    f"{where}: cannot read an array ({name} holds {kind} values); give numbers:"
                    " encode text and labels as numbers (class indices 0..C-1) first"
                )
            return torch.as_tensor(arr)
        except (TypeError, ValueError) as err:
            raise DataError(f"{where}: cannot read an array ({name}: {err})") from None

    def inputs(a: Any, name: str) -> Inputs:  # a dict of arrays is a dict batch (model(**x))
        if isinstance(a, Mapping):
            return {str(k): t(v, f"{name}.{k}") for k, v in a.items()}
        return t(a, name)

    return RawData(
        x_train=inputs(x_train, "x_train"),
        y_train=t(y_train, "y_train"),
        x_test=inputs(x_test, "x_test"),
        y_test=t(y_test, "y_test"),
    )


def _standardize(raw: RawData) -> RawData:
    """Scale inputs by the training set's mean and std (computed, not hard-coded)."""
    x_train, x_test = Dataset._tensor(raw.x_train).float(), Dataset._tensor(raw.x_test).float()
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)
    # (x - mean) / std, the division in place on the difference: one new array each, not two
    return replace(raw, x_train=(x_train - mean).div_(std), x_test=(x_test - mean).div_(std))


def idx_search_dirs(data_dir: Path | None, *, system: Path | None) -> list[Path]:
    """Where IDX files are looked for, in order: --data-dir, $BATCHLAB_DATA, the system path."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    if os.environ.get("BATCHLAB_DATA"):
        dirs.append(Path(os.environ["BATCHLAB_DATA"]))
    if system is not None:
        dirs.append(system)
    return dirs


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, f"{stem}.gz"):
            if (d / name).is_file():
                return d / name
    return None


def load_idx_dataset(name: str, data_dir: Path | None, *, system: Path | None) -> RawData:
    """MNIST-format data (Fashion-MNIST, MNIST, KMNIST): four IDX files, pixels scaled to [0, 1]."""
    dirs = idx_search_dirs(data_dir, system=system)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(dirs, stem)
        if path is None:
            looked = ", ".join(str(d) for d in dirs) or "(no directory given)"
            hint = (
                "install it with `apt-get install dataset-fashion-mnist` or pass --data-dir"
                if name == "fashion-mnist"
                else "pass --data-dir DIR or set BATCHLAB_DATA to the folder holding the IDX files"
            )
            raise DataError(f"{name}: {stem}[.gz] not found in {looked}; {hint}")
        arrays[key] = read_idx(path)
    x_train, x_test = arrays["x_train"], arrays["x_test"]
    if x_train.ndim == 3:  # images N x H x W -> N x 1 x H x W
        x_train, x_test = x_train[:, None], x_test[:, None]
    raw = _as_raw(_unit(x_train), arrays["y_train"], _unit(x_test), arrays["y_test"], where=name)
    return _standardize(raw)


def _unit(pixels: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Pixels / 255 as float32, divided in place: one array of the decoded size, not two."""
    out = pixels.astype(np.float32)
    out /= 255.0  # float32 / 255 elementwise, bit for bit `pixels.astype(np.float32) / 255.0`
    return out


def _fashion_mnist(args: Mapping[str, Any], data_dir: Path | None) -> RawData:
    return load_idx_dataset("fashion-mnist", data_dir, system=SYSTEM_FASHION_MNIST)


def _mnist(args: Mapping[str, Any], data_dir: Path | None) -> RawData:
    return load_idx_dataset("mnist", data_dir, system=None)


def _kmnist(args: Mapping[str, Any], data_dir: Path | None) -> RawData:
    return load_idx_dataset("kmnist", data_dir, system=None)


def _mnist1d(args: Mapping[str, Any], data_dir: Path | None) -> RawData:
    """MNIST-1D generated locally by `mnist1d.data.make_dataset` (never `get_dataset`)."""
    from mnist1d.data import get_dataset_args, make_dataset

    ds_args = get_dataset_args()
    for k, v in args.items():
        if not hasattr(ds_args, k):
            raise DataError(
                f"dataset_args.{k}: not an mnist1d option; see mnist1d's get_dataset_args"
            )
        setattr(ds_args, k, v)
    d = make_dataset(ds_args)
    return _as_raw(d["x"], d["y"], d["x_test"], d["y_test"], where="mnist1d")


def _digits(args: Mapping[str, Any], data_dir: Path | None) -> RawData:
    """scikit-learn's bundled 8x8 digits, split 75/25 with a fixed seed, stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32)[:, None] / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(
        x,
        bunch.target,
        test_size=float(args.get("test_size", 0.25)),
        random_state=int(args.get("seed", 0)),
        stratify=bunch.target,
    )
    return _standardize(_as_raw(x_tr, y_tr, x_te, y_te, where="digits"))


def make_synthetic(
    *,
    kind: str = "mixture",
    n_train: int = 2000,
    n_test: int = 1000,
    dim: int = 20,
    classes: int = 4,
    separation: float = 1.5,
    label_noise: float = 0.0,
    outputs: int = 1,
    noise: float = 0.1,
    seed: int = 0,
) -> RawData:
    """A seeded task: classification of a Gaussian mixture or of a random teacher MLP's argmax,
    or (`kind = "regression"`) regression on the teacher's `outputs` real outputs plus Gaussian
    noise of std `noise` (targets `[N]` when `outputs` is 1, else `[N, outputs]`)."""
    if kind not in ("mixture", "teacher", "regression"):
        raise DataError(
            f"dataset_args.kind: {kind!r} is unknown; use mixture, teacher or regression"
        )
    if min(n_train, n_test, dim) <= 0 or classes < 2 or outputs < 1 or noise < 0:
        raise DataError(
            "dataset_args: need n_train, n_test, dim, outputs > 0, classes >= 2 and noise >= 0"
        )
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    if kind == "regression":
        hidden = 4 * dim
        w1 = torch.randn(dim, hidden, generator=g) / dim**0.5
        w2 = torch.randn(hidden, outputs, generator=g) / hidden**0.5
        x = torch.randn(n, dim, generator=g)
        t = torch.relu(x @ w1) @ w2
        t = (t - t.mean(0)) / t.std(0).clamp_min(1e-8)  # unit-variance targets: R^2 reads plainly
        t = t + noise * torch.randn(n, outputs, generator=g)
        t = t[:, 0] if outputs == 1 else t
        return RawData(
            x_train=x[:n_train], y_train=t[:n_train], x_test=x[n_train:], y_test=t[n_train:]
        )
    if kind == "mixture":
        means = torch.randn(classes, dim, generator=g) * separation
        y = torch.randint(0, classes, (n,), generator=g)
        x = means[y] + torch.randn(n, dim, generator=g)
    else:
        hidden = 4 * dim
        w1 = torch.randn(dim, hidden, generator=g) / dim**0.5
        w2 = torch.randn(hidden, classes, generator=g) / hidden**0.5
        x = torch.randn(n, dim, generator=g)
        y = (torch.relu(x @ w1) @ w2).argmax(dim=1)
    if label_noise > 0:
        flip = torch.rand(n, generator=g) < label_noise
        y = torch.where(flip, torch.randint(0, classes, (n,), generator=g), y)
    return RawData(x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])


def _synthetic(args: Mapping[str, Any], data_dir: Path | None) -> RawData:
    try:
        return make_synthetic(**args)
    except TypeError as err:
        raise DataError(
            f"dataset_args: {err}; synthetic takes kind, n_train, n_test, dim, classes, "
            "separation, label_noise, outputs, noise, seed"
        ) from None


def load_npz(path: Path) -> RawData:
    """A .npz file with arrays x_train, y_train, x_test, y_test."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in IDX_FILES if k not in f.files]
            if missing:
                raise DataError(
                    f"{path}: missing array(s) {', '.join(missing)}; "
                    "an npz dataset needs x_train, y_train, x_test, y_test"
                )
            arrays = {k: f[k] for k in IDX_FILES}
    except DataError:
        raise
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read npz dataset {path}: {err}") from None
    return _as_raw(**arrays, where=str(path))


@dataclass(frozen=True, kw_only=True)
class MappedRaw:
    """A user's (train, test) map-style Datasets, as their function returned them."""

    train: Any
    test: Any


def _is_map_dataset(obj: Any) -> bool:
    return (
        hasattr(obj, "__getitem__")
        and hasattr(obj, "__len__")
        and not isinstance(obj, torch.Tensor | np.ndarray | list | tuple | Mapping)
    )


def _user_dataset(ref: str, args: Mapping[str, Any]) -> RawData | MappedRaw:
    fn = resolve_callable(ref, field="dataset")
    out = call_hook(fn, ref=ref, field="dataset", options=args)
    if isinstance(out, tuple | list) and len(out) == 2 and all(map(_is_map_dataset, out)):
        return MappedRaw(train=out[0], test=out[1])
    if isinstance(out, Mapping):
        try:
            out = tuple(out[k] for k in IDX_FILES)
        except KeyError as err:
            raise DataError(f"dataset {ref}: returned dict lacks {err}") from None
    if not isinstance(out, tuple | list) or len(out) != 4:
        raise DataError(
            f"dataset {ref}: must return (x_train, y_train, x_test, y_test) as tensors or "
            "arrays, or (train, test) map-style torch Datasets"
        )
    return _as_raw(*out, where=ref)


BUILTIN: dict[str, Loader] = {
    "fashion-mnist": _fashion_mnist,
    "mnist": _mnist,
    "kmnist": _kmnist,
    "mnist1d": _mnist1d,
    "digits": _digits,
    "synthetic": _synthetic,
    "fortunes": load_fortunes,
}

PathLoader = Callable[[Path, Mapping[str, Any]], RawData]

PREFIXED: dict[str, PathLoader] = {
    "npz": lambda path, args: load_npz(path),
    "text": load_text,
}
"""Datasets read from a user's file, `prefix:PATH`; a new one is one module plus one line here."""


def load_raw(
    name: str, args: Mapping[str, Any], data_dir: Path | None = None
) -> RawData | MappedRaw:
    """Dispatch a dataset name: a built-in, `npz:PATH` or `text:PATH`, or
    `package.module:function`."""
    if name in BUILTIN:
        return BUILTIN[name](args, data_dir)
    prefix, _, path = name.partition(":")
    if prefix in PREFIXED:
        return PREFIXED[prefix](Path(path).expanduser(), args)
    if ":" in name:
        return _user_dataset(name, args)
    valid = ", ".join([*BUILTIN, *(f"{p}:PATH" for p in PREFIXED), "package.module:function"])
    raise DataError(f"dataset: unknown dataset {name!r}; use one of {valid}")


def tensor_rows(rows: Rows, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` rows as (inputs, targets) tensors, for code that needs tensor inputs
    (probes, profiles, interpolation); a one-line error for dict batches."""
    x, y = rows.head(n)
    return Dataset._tensor(x), y


def _contiguous(x: Inputs) -> Inputs:
    return {k: v.contiguous() for k, v in x.items()} if isinstance(x, dict) else x.contiguous()


def split_index(
    n: int,
    *,
    val_fraction: float,
    data_seed: int,
    train_subset: int | None,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, val rows) of a training set of `n`: `val_fraction` held out with a fixed seed,
    then the first `train_subset` of the rest kept. With `groups` (a block number per row), the
    validation split is `val_fraction` of the blocks, whole, and the rows keep their order."""
    gen = torch.Generator().manual_seed(data_seed)
    if groups is None:
        perm = torch.randperm(n, generator=gen)
        n_val = round(val_fraction * n)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
    else:
        blocks = torch.unique(groups)
        n_val = min(len(blocks) - 1, round(val_fraction * len(blocks)))  # keep a training block
        held = blocks[torch.randperm(len(blocks), generator=gen)[:n_val]]
        is_val = torch.isin(groups, held)
        rows = torch.arange(n)
        val_idx, train_idx = rows[is_val], rows[~is_val]
        if train_subset is not None and train_subset <= len(train_idx):  # a seeded subset
            keep = torch.randperm(len(train_idx), generator=gen)[:train_subset]
            train_idx = train_idx[keep.sort().values]
    if train_subset is not None:
        if train_subset > len(train_idx):
            raise DataError(
                f"train_subset: {train_subset} is more than the {len(train_idx)} training examples"
            )
        train_idx = train_idx[:train_subset]
    return train_idx, val_idx


def split(
    raw: RawData,
    *,
    name: str,
    val_fraction: float,
    data_seed: int,
    train_subset: int | None = None,
    task: Task | None = None,
) -> Dataset:
    """Hold out `val_fraction` of train with a fixed seed; then keep `train_subset` examples.
    `raw` must already be prepared for `task` (classification when None)."""
    task = task if task is not None else Classification()
    train_idx, val_idx = split_index(
        int(raw.y_train.shape[0]),
        val_fraction=val_fraction,
        data_seed=data_seed,
        train_subset=train_subset,
        groups=raw.groups,
    )
    num_classes = check_outputs(raw.num_classes or task.output_size(raw.arrays()), task, where=name)
    return Dataset.from_tensors(
        name=name,
        x_train=_contiguous(batch.take(raw.x_train, train_idx)),
        y_train=raw.y_train[train_idx].contiguous(),
        x_val=_contiguous(batch.take(raw.x_train, val_idx)),
        y_val=raw.y_train[val_idx].contiguous(),
        x_test=_contiguous(raw.x_test),
        y_test=raw.y_test.contiguous(),
        num_classes=num_classes,
        task=task,
    )


MAX_OUTPUTS = 2**24
"""The widest output layer data may imply (16.8M classes or tokens): wider is mislabelled data
(a label of 10**12), whose model could not even be allocated."""


def check_outputs(n: int, task: Task, *, where: str) -> int:
    """`n`, the model's output size, when a model that wide can be built; else a one-line error
    naming the largest label (or token id) the task counted from."""
    if n <= MAX_OUTPUTS:
        return n
    what = task.index_label or f"{task.name} outputs"
    raise DataError(
        f"{where}: {what} go up to {n - 1:,}: a model with {n:,} outputs would be needed (at"
        f" most {MAX_OUTPUTS:,}); number them 0..C-1"
    )


def check_inputs(arrays: Arrays, *, where: str) -> None:
    """Test rows have the training rows' shape (the model is built for those), and float inputs
    hold no NaN or infinity (a trial on them ends COMPLETE with NaN losses)."""
    x_train, _, x_test, _ = arrays
    parts = {"x_train": x_train, "x_test": x_test}
    tensors = {
        f"{name}.{k}" if isinstance(x, dict) else name: v
        for name, x in parts.items()
        for k, v in (x.items() if isinstance(x, dict) else [("", x)])
    }
    train_keys = sorted(x_train) if isinstance(x_train, dict) else None
    test_keys = sorted(x_test) if isinstance(x_test, dict) else None
    if train_keys != test_keys:
        raise DataError(
            f"{where}: x_test has entries {test_keys} and x_train {train_keys}; give the test"
            " set the training set's inputs"
        )
    for name, v in tensors.items():
        if not name.startswith("x_test"):
            continue
        train = tensors["x_train" + name.removeprefix("x_test")]
        if v.shape[1:] != train.shape[1:]:
            raise DataError(
                f"{where}: {name} has rows of shape {tuple(v.shape[1:])} and"
                f" {name.replace('x_test', 'x_train')} rows of shape {tuple(train.shape[1:])};"
                " give the test set the training set's features"
            )
    for name, v in tensors.items():
        if v.is_floating_point() or v.is_complex():
            if bool(torch.isfinite(v.sum())):  # NaN and inf propagate: a finite sum, all finite
                continue
            bad = ~torch.isfinite(v.reshape(len(v), -1)).all(dim=1)  # or a sum that overflowed
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                raise DataError(
                    f"{where}: {name} contains NaN or infinity (row {row}); clean or drop those"
                    " rows"
                )


SAMPLE_ITEMS = 64
"""Items of a map-style Dataset read to infer and check its task (the first of each split)."""


def _sample(dataset: Any, *, where: str) -> Arrays:
    """The first items of a Dataset, stacked as they are (no cast), twice: as train and test."""
    n = min(SAMPLE_ITEMS, len(dataset))
    if n == 0:
        raise DataError(f"{where}: the Dataset is empty")
    x, y = collate([dataset[i] for i in range(n)], _AsIs(), where=where)
    return x, y, x, y


class _AsIs(Classification):
    def cast(self, x: Inputs, y: torch.Tensor) -> tuple[Inputs, torch.Tensor]:
        return x, y


def _output_size(raw: MappedRaw, task: Task, sample: Arrays, *, where: str) -> int:
    """Classes (or vocabulary): the Dataset's `num_classes` or `classes` attribute when it has
    one, else one pass over every item of both splits; regression: from a sample."""
    for attr in ("num_classes", "vocab_size"):
        value = getattr(raw.train, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    classes = getattr(raw.train, "classes", None)
    if isinstance(classes, Sequence) and len(classes) > 0:
        return len(classes)
    if task.name not in ("classification", "language-model"):
        return task.output_size(sample)
    top = 0
    for ds in (raw.train, raw.test):
        for i in range(len(ds)):
            x, y = collate([ds[i]], _AsIs(), where=where)
            top = max(top, task.output_size((x, y, x, y)) - 1)
    return top + 1


def load_mapped(
    raw: MappedRaw,
    *,
    name: str,
    task: str | None,
    task_args: Mapping[str, Any] | None,
    val_fraction: float,
    data_seed: int,
    train_subset: int | None,
    workers: int = 0,
) -> Dataset:
    """A user's map-style Datasets as rows read by index (nothing is loaded up front): the
    validation split is held out of train's rows with `data_seed`, like array data."""
    sample = _sample(raw.train, where=name)
    resolved = resolve_task(task, task_args, sample)
    checked = resolved.prepare(sample, where=name)  # dtypes and shapes, on the first items
    check_inputs(checked, where=name)
    train_idx, val_idx = split_index(
        len(raw.train), val_fraction=val_fraction, data_seed=data_seed, train_subset=train_subset
    )

    def rows(dataset: Any, index: torch.Tensor) -> MappedRows:
        return MappedRows(dataset, index, resolved, where=name, workers=workers)

    return Dataset(
        name=name,
        train=rows(raw.train, train_idx),
        val=rows(raw.train, val_idx),
        test=rows(raw.test, torch.arange(len(raw.test))),
        num_classes=check_outputs(
            _output_size(raw, resolved, sample, where=name), resolved, where=name
        ),
        input_shape=batch.shape_of(checked[0]),
        task=resolved,
    )


def load_dataset(
    name: str,
    *,
    args: Mapping[str, Any] | None = None,
    data_dir: Path | None = None,
    val_fraction: float = 0.1,
    data_seed: int = 0,
    train_subset: int | None = None,
    task: str | None = None,
    task_args: Mapping[str, Any] | None = None,
    workers: int = 0,
) -> Dataset:
    """Load and split a dataset for its task (the one named, or the one the data implies);
    every failure is a one-line DataError. `workers` are DataLoader workers for a Dataset read
    by index (0: read in this process)."""
    raw = load_raw(name, args or {}, data_dir)
    if isinstance(raw, MappedRaw):
        return load_mapped(
            raw,
            name=name,
            task=task,
            task_args=task_args,
            val_fraction=val_fraction,
            data_seed=data_seed,
            train_subset=train_subset,
            workers=workers,
        )
    resolved = resolve_task(task, task_args, raw.arrays())
    raw = raw.with_arrays(resolved.prepare(raw.arrays(), where=name))
    check_inputs(raw.arrays(), where=name)
    return split(
        raw,
        name=name,
        val_fraction=val_fraction,
        data_seed=data_seed,
        train_subset=train_subset,
        task=resolved,
    )
