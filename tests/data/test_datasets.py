from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from batchlab.data import SYSTEM_FASHION_MNIST, load_dataset, make_synthetic
from batchlab.errors import DataError


def test_val_split_is_fixed_disjoint_and_leaves_test_alone() -> None:
    a = load_dataset("synthetic", args={"n_train": 100, "n_test": 30}, val_fraction=0.2)
    b = load_dataset("synthetic", args={"n_train": 100, "n_test": 30}, val_fraction=0.2)
    c = load_dataset(
        "synthetic", args={"n_train": 100, "n_test": 30}, val_fraction=0.2, data_seed=1
    )
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    assert (a.n_train, len(a.x_val), len(a.x_test)) == (80, 20, 30)
    train_rows = {tuple(r.tolist()) for r in a.x_train}
    assert not train_rows & {tuple(r.tolist()) for r in a.x_val}
    assert torch.equal(a.x_test, c.x_test)


def test_train_subset_and_its_bound() -> None:
    ds = load_dataset("synthetic", args={"n_train": 100}, val_fraction=0.1, train_subset=25)
    assert ds.n_train == 25 and len(ds.x_val) == 10
    with pytest.raises(DataError, match="train_subset"):
        load_dataset("synthetic", args={"n_train": 100}, val_fraction=0.1, train_subset=95)


@pytest.mark.parametrize("kind", ["mixture", "teacher"])
def test_synthetic_is_seeded_and_learnable(kind: str) -> None:
    a = make_synthetic(kind=kind, n_train=500, dim=5, classes=3, seed=3)
    b = make_synthetic(kind=kind, n_train=500, dim=5, classes=3, seed=3)
    assert isinstance(a.x_train, torch.Tensor) and isinstance(b.x_train, torch.Tensor)
    assert isinstance(a.x_test, torch.Tensor)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    counts = torch.bincount(a.y_train, minlength=3)
    assert counts.min() > 0  # every class present
    # A nearest-class-mean classifier on the mixture beats chance by a wide margin.
    if kind == "mixture":
        means = torch.stack([a.x_train[a.y_train == c].mean(0) for c in range(3)])
        pred = torch.cdist(a.x_test, means).argmin(1)
        assert (pred == a.y_test).float().mean() > 0.6


def test_npz_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(40, 3)),
        y_train=rng.integers(0, 2, 40),
        x_test=rng.normal(size=(10, 3)),
        y_test=rng.integers(0, 2, 10),
    )
    ds = load_dataset(f"npz:{path}", val_fraction=0.25)
    assert ds.n_train == 30 and ds.num_classes == 2 and ds.x_train.dtype == torch.float32
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 2)))
    with pytest.raises(DataError, match="missing array"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="cannot read npz"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_user_dataset_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def load(n=20):\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(n, 4, generator=g)\n"
        "    return x, (x[:, 0] > 0).long(), x[:5], (x[:5, 0] > 0).long()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_dataset("mydata:load", args={"n": 40}, val_fraction=0.0)
    assert ds.n_train == 40 and len(ds.x_test) == 5
    with pytest.raises(DataError, match="has no function 'nope'"):
        load_dataset("mydata:nope")
    with pytest.raises(DataError, match="cannot import module"):
        load_dataset("no_such_module_xyz:load")
    sys.modules.pop("mydata", None)


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*fashion-mnist"):
        load_dataset("cifar")


def test_digits_and_mnist1d_are_offline_and_fixed() -> None:
    d = load_dataset("digits", val_fraction=0.0)
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10
    assert d.n_train + len(d.x_test) == 1797
    m = load_dataset("mnist1d", args={"num_samples": 1000}, val_fraction=0.0)
    m2 = load_dataset("mnist1d", args={"num_samples": 1000}, val_fraction=0.0)
    assert m.input_shape == (40,) and m.num_classes == 10
    assert torch.equal(m.x_train, m2.x_train)
    with pytest.raises(DataError, match="dataset_args.bogus"):
        load_dataset("mnist1d", args={"bogus": 1})


@pytest.mark.skipif(
    not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist is not installed (make test installs it)",
)
def test_real_fashion_mnist() -> None:
    ds = load_dataset("fashion-mnist", val_fraction=0.1)
    assert (ds.n_train, len(ds.x_val), len(ds.x_test)) == (54000, 6000, 10000)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert torch.bincount(ds.y_test).tolist() == [1000] * 10


def test_input_check_reads_a_finite_sum_as_all_finite_and_looks_closer_otherwise() -> None:
    """The check sums each float input first: NaN and infinity propagate through a sum, so a
    finite sum means every element is finite. Finite values whose sum overflows are still
    accepted (the rows are looked at one by one), and +inf beside -inf (a NaN sum) is caught."""
    from batchlab.data import check_inputs

    y = torch.zeros(3, dtype=torch.long)
    big = torch.full((3, 2), 3e38)  # finite, but its float32 sum is inf
    assert not bool(torch.isfinite(big.sum()))
    check_inputs((big, y, big, y), where="d")
    bad = big.clone()
    bad[1] = torch.tensor([float("inf"), -float("inf")])
    with pytest.raises(DataError, match=r"x_test contains NaN or infinity \(row 1\)"):
        check_inputs((big, y, bad, y), where="d")
    nan = torch.zeros(4, 2)
    nan[2, 0] = float("nan")
    with pytest.raises(DataError, match=r"x_train contains NaN or infinity \(row 2\)"):
        check_inputs((nan, torch.zeros(4, dtype=torch.long), nan[:1], y[:1]), where="d")
