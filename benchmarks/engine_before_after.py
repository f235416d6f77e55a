"""The engine now vs the engine at an earlier commit: same MLP, same data, one epoch, in one run.

Each measurement is a fresh process importing batchlab from either this checkout or a temporary
git worktree of `--rev`; the two alternate, so both see the same machine load, and the median of
`--repeats` is kept. Training time only (the engine's own clock excludes evaluations).

    python benchmarks/engine_before_after.py --rev 7d55266 [--n 10000] [--repeats 5]
                                             [--batch-sizes 8 32 128 512 2048] [--widths 512 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ONE_EPOCH = """
import sys, torch
from batchlab.data import load_dataset
from batchlab.engine import train_trial
from batchlab.spec import StudySpec
n, b, seed, widths = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
data = load_dataset("fashion-mnist", val_fraction=0.0, train_subset=n)
spec = StudySpec(name="bench", model_args={"widths": [int(w) for w in widths]}, lrs=(0.01,),
                 batch_sizes=(b,), seeds=(seed,), budget={"epochs": 1}, eval_batch_size=8192)
records = []
train_trial(spec.trials()[0], data, device=torch.device("cpu"),
            on_eval=lambda rec, _c, _p: records.append(rec))
print(records[-1].train_time_s)
"""


def one_epoch(src: Path, n: int, batch: int, seed: int, widths: list[int]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", ONE_EPOCH, str(n), str(batch), str(seed), *map(str, widths)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the earlier commit to compare with")
    parser.add_argument("--n", type=int, default=10000, help="training examples per epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 512, 2048])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 512])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.rev],
            check=True,
            capture_output=True,
        )
        try:
            print(f"engine at {args.rev} vs this checkout; {args.n} examples, one epoch")
            head = ("batch", "before samples/s", "after samples/s", "after/before")
            print(f"{head[0]:>6} {head[1]:>17} {head[2]:>16} {head[3]:>13}")
            for b in args.batch_sizes:
                before, after = [], []
                for r in range(args.repeats):  # alternate: the same machine load for both
                    before.append(one_epoch(old / "src", args.n, b, r, args.widths))
                    after.append(one_epoch(ROOT / "src", args.n, b, r, args.widths))
                tb, ta = statistics.median(before), statistics.median(after)
                print(f"{b:>6} {args.n / tb:>17.0f} {args.n / ta:>16.0f} {tb / ta:>12.3f}x")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                check=False,
                capture_output=True,
            )


if __name__ == "__main__":
    main()
