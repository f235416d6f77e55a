"""Reliability under load: a study of many tiny trials must end with exactly one final row per
trial and every evaluation stored once, whatever happens to the driver.

For each executor (`--executors`, default: the local pool and Ray when installed) this runs a
study of `--trials` tiny synthetic trials with `batchlab run` in a subprocess, kills that driver
with SIGKILL `--kills` times (each time once a further share of the trials has finished), reruns
it to completion, and checks the store: trials with a final state, evaluation rows per trial
(0..epochs, none missing or repeated), rows lost. One line per executor.

    python benchmarks/reliability.py [--trials 300] [--kills 2] [--executors pool ray]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FINAL = ("COMPLETE", "DIVERGED", "FAILED")
EPOCHS = 2


def study_file(path: Path, trials: int) -> Path:
    """`trials` tiny trials: 3 batch sizes x trials/3 seeds on a small synthetic task."""
    seeds = list(range(max(1, trials // 3)))
    path.write_text(
        "\n".join(
            [
                'name = "reliability"',
                'dataset = "synthetic"',
                "dataset_args = { n_train = 256, n_test = 128, dim = 8, classes = 3 }",
                'model = "mlp"',
                "model_args = { widths = [16] }",
                "lrs = [0.1]",
                "batch_sizes = [8, 16, 32]",
                f"seeds = {json.dumps(seeds)}",
                f"budget = {{ epochs = {EPOCHS} }}",
                "val_fraction = 0.25",
                'device = "cpu"',
            ]
        )
        + "\n"
    )
    return path


def finished(store: Path) -> int:
    with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(store) as con:
        (n,) = con.execute("SELECT COUNT(*) FROM trials WHERE state IN (?,?,?)", FINAL).fetchone()
        return int(n)
    return 0


def run(study: Path, store: Path, executor: str) -> subprocess.Popen[bytes]:
    extra = ["--workers", "auto"] if executor == "pool" else ["--executor", "ray"]
    command = [sys.executable, "-m", "batchlab", "run", str(study), "--store", str(store)]
    return subprocess.Popen(
        [*command, "--quiet", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def one(executor: str, trials: int, kills: int, folder: Path) -> str:
    study = study_file(folder / f"{executor}.toml", trials)
    n = len(json.loads(study.read_text().split("seeds = ")[1].splitlines()[0])) * 3
    store = folder / f"{executor}.db"
    t0 = time.perf_counter()
    survived = 0
    for k in range(1, kills + 1):
        driver = run(study, store, executor)
        target = n * k // (kills + 1)
        while finished(store) < target and driver.poll() is None:
            time.sleep(0.2)
        if driver.poll() is not None:
            break
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        survived += 1
    last = run(study, store, executor)
    _, err = last.communicate()
    if last.returncode != 0:
        raise SystemExit(f"{executor}: final run failed: {err.decode()[-2000:]}")
    wall = time.perf_counter() - t0
    with sqlite3.connect(store) as con:
        rows = con.execute("SELECT trial_id, state, attempts FROM trials").fetchall()
        evals = con.execute("SELECT trial_id, COUNT(*), MIN(idx), MAX(idx) FROM evals GROUP BY 1")
        per_trial = {tid: (c, lo, hi) for tid, c, lo, hi in evals}
    final = sum(state in FINAL for _, state, _ in rows)
    complete_evals = sum(per_trial.get(tid) == (EPOCHS + 1, 0, EPOCHS) for tid, _, _ in rows)
    restarted = sum(attempts > 1 for _, _, attempts in rows)
    lost = n - final + (n - complete_evals)
    return (
        f"{executor:>5}: trials {n}, rows {len(rows)}, final {final}, evals complete and"
        f" unique {complete_evals}, kills survived {survived}, trials restarted {restarted},"
        f" rows lost {lost}, wall {wall:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--kills", type=int, default=2)
    have_ray = importlib.util.find_spec("ray") is not None
    parser.add_argument("--executors", nargs="+", default=["pool", "ray"] if have_ray else ["pool"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for executor in args.executors:
            print(one(executor, args.trials, args.kills, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
