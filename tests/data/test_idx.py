from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchlab.data import IDX_FILES, load_dataset
from batchlab.data.idx import read_idx, write_idx
from batchlab.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    arr: np.ndarray[Any, Any] = (np.arange(2 * 3 * 4) % 7).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, arr)
    out = read_idx(path)
    assert out.shape == (2, 3, 4)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_idx_header_is_the_documented_layout(tmp_path: Path) -> None:
    # Hand-written bytes: magic 0x00000801 (ubyte, 1 dim), length 3, then the data.
    path = tmp_path / "labels"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 9]))
    np.testing.assert_array_equal(read_idx(path), [7, 1, 9])


def test_bad_idx_files_are_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"PK\x03\x04hello")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(junk)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(DataError, match="header promises 5"):
        read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"\x00\x00\x08\x01")[:-6])
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(broken)


def write_fake_mnist(folder: Path, n_train: int = 50, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, stem in IDX_FILES.items():
        write_idx(folder / f"{stem}.gz", arrays[key])


def test_mnist_style_files_from_data_dir_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_mnist(tmp_path / "kmnist")
    ds = load_dataset("kmnist", data_dir=tmp_path / "kmnist", val_fraction=0.2)
    assert ds.input_shape == (1, 28, 28)
    assert (ds.n_train, len(ds.x_val), len(ds.x_test)) == (40, 10, 20)
    # standardised with the training set's own statistics
    assert abs(float(ds.x_train.mean())) < 0.2
    monkeypatch.setenv("BATCHLAB_DATA", str(tmp_path / "kmnist"))
    assert load_dataset("mnist", val_fraction=0.2).n_train == 40


def test_missing_files_say_where_they_looked_and_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setattr("batchlab.data.SYSTEM_FASHION_MNIST", tmp_path / "system")
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path / "cli")
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg
    for where in ("cli", "env", "system"):
        assert str(tmp_path / where) in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_idx_images_scale_and_standardize_bit_for_bit(tmp_path: Path) -> None:
    # The loader divides and standardizes in place: the same bits as the reference formula
    # (x / 255 in float32, then (x - mean) / std with the training set's statistics).
    import torch

    from batchlab.data import load_idx_dataset

    write_fake_mnist(tmp_path, n_train=300, n_test=40)
    raw = load_idx_dataset("kmnist", tmp_path, system=None)
    pixels = {k: read_idx(tmp_path / f"{s}.gz") for k, s in IDX_FILES.items()}
    x_train = torch.as_tensor(pixels["x_train"][:, None].astype(np.float32) / 255.0)
    x_test = torch.as_tensor(pixels["x_test"][:, None].astype(np.float32) / 255.0)
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-8)
    for got, want in ((raw.x_train, (x_train - mean) / std), (raw.x_test, (x_test - mean) / std)):
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))
