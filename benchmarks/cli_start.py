"""How fast the light commands answer: `batchlab --help`, `ls` and `show` against `import torch`.

Each command runs in a fresh interpreter (`python -m batchlab ...`), `--repeats` times, median
wall-clock time; the last line gives each as a ratio to `python -c "import torch"` (below 1x:
faster than importing torch, which the light commands no longer do).

    python benchmarks/cli_start.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _seconds(args: list[str], *, cwd: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    from batchlab import run_study  # the store `ls` and `show` read: one tiny study

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        store = cwd / "results.db"
        run_study(
            {
                "name": "tiny",
                "dataset": "synthetic",
                "dataset_args": {"n_train": 256, "n_test": 128, "dim": 8, "classes": 3},
                "model": "mlp",
                "model_args": {"widths": [16]},
                "lrs": [0.1],
                "batch_sizes": [8, 64],
                "budget": {"epochs": 1},
                "device": "cpu",
            },
            store=store,
        )
        torch_s = _seconds(["-c", "import torch"], cwd=cwd, repeats=opts.repeats)
        rows = {
            "--help": ["-m", "batchlab", "--help"],
            "ls": ["-m", "batchlab", "ls", "--store", str(store)],
            "show": ["-m", "batchlab", "show", "tiny", "--store", str(store)],
        }
        got = {name: _seconds(a, cwd=cwd, repeats=opts.repeats) for name, a in rows.items()}
    print(f"{'command':<10} {'median (s)':>10} {'/ import torch':>15}")
    print(f"{'torch':<10} {torch_s:>10.3f} {1.0:>14.2f}x")
    for name, s in got.items():
        print(f"{name:<10} {s:>10.3f} {s / torch_s:>14.2f}x")
    print("vs import torch: " + ", ".join(f"{n} {s / torch_s:.2f}x" for n, s in got.items()))


if __name__ == "__main__":
    main()
