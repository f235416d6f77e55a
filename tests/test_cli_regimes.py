"""`batchlab critical` prints Shallue et al.'s regime boundaries, and `--json` carries them.

The stored study follows McCandlish's hyperbola S(B) = 100 (1 + 50 / B) at its fastest lr (0.1,
inside the grid 0.03 .. 0.3) on batch sizes 8 .. 1024: perfect scaling ends between 16 and 32
(1.2 B_0 + 0.2 B_noise = 19.6 on the curve itself), and maximal data parallelism begins at 256,
the first doubling above 4 B_noise = 200.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from batchlab.cli import main
from batchlab.spec import load_spec
from batchlab.store import Store
from batchlab.trial import EvalRecord, TrialState
from tests.conftest import tiny_spec

BATCHES = (8, 16, 32, 64, 128, 256, 512, 1024)
LRS = {0.03: 1.4, 0.1: 1.0, 0.3: 1.2}  # lr: how much slower than the hyperbola


def steps(b: int) -> float:
    return 100.0 * (1 + 50.0 / b)


def evals(b: int, s_true: float) -> list[EvalRecord]:
    """val_acc = 0.9 step / s_true (capped at 1): `val_acc=0.9` is met at exactly s_true."""
    out = []
    for i in range(7):
        step = round(i * s_true / 3.7)
        acc = min(1.0, 0.9 * step / s_true)
        out.append(
            EvalRecord(
                idx=i,
                epoch=float(i),
                step=step,
                samples=step * b,
                current_lr=0.1,
                train_loss=math.nan,
                train_acc=math.nan,
                val_loss=1.0,
                val_acc=acc,
                test_loss=1.0,
                test_acc=acc,
                train_time_s=0.01 * step,
                eval_time_s=0.0,
                samples_per_s=math.nan,
                peak_mem_bytes=0,
            )
        )
    return out


def put_study(path: Path, name: str, sizes: tuple[int, ...], lrs: dict[float, float]) -> None:
    spec = tiny_spec(name=name, batch_sizes=list(sizes), lrs=list(lrs), seeds=[0])
    with Store(path) as s:
        s.put_study(name, load_spec(base=spec).to_toml_dict())
        ids = {(b, lr): f"{name}-{b}-{lr}" for b in sizes for lr in lrs}
        s.add_trials(
            name,
            [
                {"trial_id": tid, "batch_size": b, "lr_base": lr, "lr": lr, "seed": 0}
                | {"params": {}}
                for (b, lr), tid in ids.items()
            ],
        )
        for (b, lr), tid in ids.items():
            for e in evals(b, steps(b) * lrs[lr]):
                s.add_eval(tid, e, None)
            s.finish_trial(tid, TrialState.COMPLETE)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("regimes") / "results.db"
    put_study(path, "hyper", BATCHES, LRS)
    put_study(path, "small", BATCHES[:4], {0.1: 1.0})  # 8 .. 64, one lr: still scaling
    put_study(path, "few", BATCHES[:3], LRS)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli(capsys, *args, "--json"))
    return data


def test_critical_prints_where_perfect_scaling_ends_and_maximal_batch_begins(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("critical", "hyper", "--store", str(store), "--target", "val_acc=0.9", "--boot", "0")
    data = as_json(capsys, *args)
    r = data["regimes"]
    ratio = [(b + 50) / 58 for b in (16, 32)]  # S / perfect scaling on the hyperbola
    t = math.log(1.2 / ratio[0]) / math.log(ratio[1] / ratio[0])
    assert r["perfect_scaling_end"] == pytest.approx(16 * 2**t, rel=1e-9)
    assert r["maximal_batch_start"] == 256
    assert (r["tolerance"], r["min_doubling_gain"], r["b0"]) == (0.2, 0.1, 8)
    assert r["excess"]["1024"] == pytest.approx((1024 + 50) / 58 - 1)
    assert data["regimes_reason"] == "" and data["lr_at_grid_edge"] == []
    out = cli(capsys, *args)
    assert (
        f"Perfect scaling (from B_0 = 8) ends: B = {r['perfect_scaling_end']:.3g} (steps exceed"
        " S(B_0) B_0 / B by 20% there; interpolated between 16 and 32)" in out
    )
    assert (
        "Maximal data parallelism begins: B = 256 (from there a doubling saves < 10% of the"
        " steps)" in out
    )
    assert "S / perfect" in out and "18.52" in out  # 1074 / 58 at B = 1024
    assert "widen the lr grid" not in out


def test_boundaries_beyond_the_measured_range_are_not_reached_and_one_lr_is_flagged(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("critical", "small", "--store", str(store), "--target", "val_acc=0.9", "--boot", "0")
    r = as_json(capsys, *args)["regimes"]
    assert r["perfect_scaling_end"] is not None  # 8 .. 64 passes 19.6
    assert r["maximal_batch_start"] is None and r["maximal_batch_start_reached"] is False
    out = cli(capsys, *args)
    assert (
        "Maximal data parallelism begins: not reached in the measured range: from 32 to 64" in out
    )
    assert "the best lr is the smallest or largest tried at B = 8, 16, 32, 64" in out


def test_too_few_batch_sizes_give_a_reason_not_a_number(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("critical", "few", "--store", str(store), "--target", "val_acc=0.9")
    data = as_json(capsys, *args)
    assert data["regimes"] is None
    assert data["regimes_reason"].startswith("not enough batch sizes: 3 (8, 16, 32)")
    out = cli(capsys, *args)
    assert "Scaling regimes: not enough batch sizes: 3 (8, 16, 32) reach the target" in out
    assert "Perfect scaling (from" not in out
