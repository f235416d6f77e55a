"""Several real `batchlab run` processes on one store: they share the trials without running any
twice, and a driver killed with SIGKILL halfway leaves a study that a rerun completes exactly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_spec

FINAL = ("COMPLETE", "DIVERGED", "FAILED")


def write_study(path: Path, **overrides: Any) -> Path:
    """A TOML study file from the tiny synthetic spec (JSON values are valid TOML values)."""
    spec = tiny_spec(**overrides)
    lines = [f"{k} = {json.dumps(v)}" for k, v in spec.items() if not isinstance(v, dict)]
    for k, v in spec.items():
        if isinstance(v, dict):
            inner = ", ".join(f"{ik} = {json.dumps(iv)}" for ik, iv in v.items())
            lines.append(f"{k} = {{ {inner} }}")
    path.write_text("\n".join(lines) + "\n")
    return path


def batchlab(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "batchlab", "run", *args, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )


def finish(proc: subprocess.Popen[str]) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err


def check_exactly_once(store: Path, n_trials: int, epochs: int) -> list[tuple[Any, ...]]:
    """One row per trial, each final; evaluations 0..epochs, none missing or repeated."""
    with sqlite3.connect(store) as con:
        rows = con.execute(
            "SELECT trial_id, state, attempts, provenance_json FROM trials"
        ).fetchall()
        evals = con.execute("SELECT trial_id, idx FROM evals ORDER BY trial_id, idx").fetchall()
    assert len(rows) == n_trials and all(state in FINAL for _, state, _, _ in rows)
    per_trial: dict[str, list[int]] = {}
    for tid, idx in evals:
        per_trial.setdefault(tid, []).append(idx)
    assert all(per_trial[tid] == list(range(epochs + 1)) for tid, *_ in rows)
    return rows


@pytest.mark.slow
def test_two_processes_share_a_study_and_run_each_trial_once(tmp_path: Path) -> None:
    study = write_study(
        tmp_path / "s.toml",
        name="shared",
        batch_sizes=[8, 16],
        seeds=list(range(6)),
        budget={"epochs": 3},
        model_args={"widths": [64]},
    )
    store = tmp_path / "shared.db"
    a, b = batchlab(str(study), "--store", str(store)), batchlab(str(study), "--store", str(store))
    finish(a)
    finish(b)
    rows = check_exactly_once(store, n_trials=12, epochs=3)
    assert all(attempts == 1 for _, _, attempts, _ in rows)  # nobody ran a trial twice
    ran_in = {json.loads(p)["pid"] for *_, p in rows}
    assert ran_in == {a.pid, b.pid}  # both did part of the work


@pytest.mark.slow
def test_a_pool_driver_killed_halfway_and_rerun_records_every_trial_once(tmp_path: Path) -> None:
    n = 30
    study = write_study(
        tmp_path / "s.toml",
        name="kill",
        # trials long enough (about 0.1 s each) that the kill lands with most of them unfinished,
        # even on an idle machine
        dataset_args={"n_train": 2048, "n_test": 128, "dim": 8, "classes": 3},
        batch_sizes=[8, 16, 32],
        seeds=list(range(n // 3)),
        budget={"epochs": 2},
    )
    store = tmp_path / "kill.db"
    driver = batchlab(str(study), "--store", str(store), "--workers", "2")
    done = 0
    deadline = time.monotonic() + 240
    while done < n // 6 and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
        with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(store) as con:
            (done,) = con.execute(
                "SELECT COUNT(*) FROM trials WHERE state IN (?, ?, ?)", FINAL
            ).fetchone()  # no such table until the driver has created it
    assert driver.poll() is None, "the study finished before it could be killed"
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    with sqlite3.connect(store) as con:
        (unfinished,) = con.execute(
            "SELECT COUNT(*) FROM trials WHERE state NOT IN (?, ?, ?)", FINAL
        ).fetchone()
    assert unfinished > 0
    finish(batchlab(str(study), "--store", str(store), "--workers", "2"))
    check_exactly_once(store, n_trials=n, epochs=2)
