"""Do classification studies store the same numbers as at an earlier commit? Bit for bit.

Runs a set of small studies (plain SGD, momentum + Nesterov + weight decay, gradient
accumulation, Adam on a CNN, warmup and lr schedules, batch schedules, probes, a steps budget,
fused trials) with batchlab from this checkout and from a temporary git worktree of `--rev`,
and compares every stored metric and trial id.

    python benchmarks/same_numbers.py --rev 7d55266
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE: dict[str, object] = {
    "dataset": "synthetic",
    "dataset_args": {"n_train": 512, "n_test": 256, "dim": 8, "classes": 3},
    "model": "mlp",
    "model_args": {"widths": [32]},
    "lrs": [0.1],
    "batch_sizes": [8, 50, 128],
    "seeds": [0, 1],
    "budget": {"epochs": 3},
    "val_fraction": 0.2,
    "device": "cpu",
    "train_eval_every": 2,
}
STUDIES: dict[str, dict[str, object]] = {
    "sgd": {},
    "momentum": {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    "accumulate": {"accumulate": 2, "batch_sizes": [8, 64]},
    "adam-cnn": {
        "optimizer": "adam",
        "lrs": [1e-3],
        "model": "cnn",
        "model_args": {"channels": [4], "hidden": 8},
    },
    "schedules": {
        "warmup_epochs": 1,
        "lr_schedule": {"milestones": [1, 2], "factor": 2},
        "lr_scaling": "linear",
    },
    "batch-schedule": {"batch_schedule": {"milestones": [1, 2], "factor": 2}},
    "probes": {"probes": ["grad_norms", "distance"]},
    "steps": {"budget": {"steps": 40}},
    "fused": {"fuse": True, "momentum": 0.9, "warmup_epochs": 1, "lrs": [0.05, 0.1]},
}
COLUMNS = [
    "trial_id", "idx", "step", "samples", "current_lr", "train_loss", "train_acc", "val_loss",
    "val_acc", "test_loss", "test_acc", "full_train_loss", "full_train_acc", "state",
]  # fmt: skip
DUMP = """
import json, sys, tempfile
from pathlib import Path
import batchlab
studies, columns = json.loads(sys.argv[1]), json.loads(sys.argv[2])
store = Path(tempfile.mkdtemp()) / "s.db"
out = {}
for name, spec in studies.items():
    df = batchlab.run_study({**spec, "name": name}, store=store).to_dataframe()
    df = df.sort_values(["trial_id", "idx"])[columns]
    rows = df.itertuples(index=False)
    out[name] = [[repr(v) if isinstance(v, float) else v for v in r] for r in rows]
print(json.dumps(out))
"""


def dump(src: Path) -> dict[str, list[list[object]]]:
    studies = {k: {**BASE, **v} for k, v in STUDIES.items()}
    out = subprocess.run(
        [sys.executable, "-c", DUMP, json.dumps(studies), json.dumps(COLUMNS)],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, list[list[object]]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the earlier commit to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        git = ["git", "-C", str(ROOT), "worktree"]
        subprocess.run(
            [*git, "add", "--detach", str(old), args.rev], check=True, capture_output=True
        )
        try:
            before, after = dump(old / "src"), dump(ROOT / "src")
        finally:
            subprocess.run([*git, "remove", "--force", str(old)], check=False, capture_output=True)
    same = 0
    for name in STUDIES:
        a, b = before[name], after[name]
        rows = sum(x != y for x, y in zip(a, b, strict=False)) + abs(len(a) - len(b))
        print(f"{name:>15}: {len(a)} evaluations, " + ("identical" if a == b else f"{rows} differ"))
        same += a == b
    print(f"{same} of {len(STUDIES)} studies bit-identical to {args.rev}")
    sys.exit(0 if same == len(STUDIES) else 1)


if __name__ == "__main__":
    main()
