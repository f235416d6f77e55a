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
    ],
)
def test_benchmark_runs(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "x" in out.stdout.splitlines()[-1] or "%" in out.stdout.splitlines()[-1]
