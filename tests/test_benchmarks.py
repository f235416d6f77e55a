"""The benchmark scripts keep running (tiny settings; their numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from batchlab.data import SYSTEM_FASHION_MNIST

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.skipif(
    not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist is not installed (make test installs it)",
)


@pytest.mark.parametrize(
    "args",
    [
        ["benchmarks/engine_speed.py", "--n", "512", "--repeats", "1", "--batch-sizes", "64"],
        ["benchmarks/probe_cost.py", "--repeats", "1", "--batch-sizes", "512"],
        ["benchmarks/check_speed.py", "--repeats", "1", "--batch-sizes", "64"],
        ["benchmarks/cli_start.py", "--repeats", "1"],
        [
            "benchmarks/engine_before_after.py",
            *("--rev", "HEAD", "--n", "256", "--repeats", "1", "--batch-sizes", "64"),
        ],
        [
            "benchmarks/fused.py",
            *("--n", "256", "--seeds", "2", "--batch-sizes", "32", "--repeats", "1"),
            *("--widths", "32"),
        ],
        [
            "benchmarks/study_overhead.py",
            *("--set", "train_subset=512", "--set", "batch_sizes=[64, 128]"),
            *("--set", "seeds=[0]", "--set", "budget.epochs=1", "--no-report"),
        ],
    ],
)
def test_benchmark_runs(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "x" in out.stdout.splitlines()[-1] or "%" in out.stdout.splitlines()[-1]


@pytest.mark.slow
def test_study_speed_reports_every_batch_size_and_side() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/study_speed.py",
            *("--epochs", "1", "--batch-sizes", "128", "512", "--train-subset", "512"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [128, 512]  # one row per batch size, in order
    assert all(len(r) == 4 and all(float(c) > 0 for c in r[1:]) for r in rows)
    sides = [line for line in lines if line.startswith(("(a)", "(b)", "(c)"))]
    assert len(sides) == 3
    assert sides[0].endswith("1.00x")  # plain / plain
    for line in sides:
        fraction = float(line.split()[-2].rstrip("%"))
        assert 0 < fraction < 100
