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

from tests.conftest import TASK_SPECS, tiny_spec

FINAL = ("COMPLETE", "DIVERGED", "FAILED")


def write_study(path: Path, base: dict[str, Any] | None = None, **overrides: Any) -> Path:
    """A TOML study file from `base` (the tiny synthetic spec by default) and `overrides`
    (JSON values are valid TOML values)."""
    spec = {**(base if base is not None else tiny_spec()), **overrides}
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
        # long enough (about a second a trial) that the first process cannot finish all 12
        # before the second has started: both must take part
        budget={"epochs": 25},
        model_args={"widths": [64]},
    )
    store = tmp_path / "shared.db"
    a, b = batchlab(str(study), "--store", str(store)), batchlab(str(study), "--store", str(store))
    finish(a)
    finish(b)
    rows = check_exactly_once(store, n_trials=12, epochs=25)
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


KILL_DATA: dict[str, dict[str, Any]] = {
    "regression": {"kind": "regression", "n_train": 6000, "n_test": 128, "dim": 8},
    "language-model": {"n_train": 6000, "n_test": 32},
}
"""Per task, enough data that the kill lands part-way through a trial, polled every 50 ms: an
epoch at batch 16 takes about 0.08 s here, so the window (a trial's evals 3 to 6) lasts about a
third of a second. At 600 sequences it lasted 35 ms, and a study once finished unkilled.
Classification's kill -9 test is in tests/test_cli.py."""

METRICS = (
    "e.trial_id, e.idx, e.epoch, e.step, e.samples, e.current_lr, e.train_loss, e.train_acc,"
    " e.val_loss, e.val_acc, e.test_loss, e.test_acc, e.full_train_loss, e.full_train_acc"
)
"""Every stored evaluation column but the timings (which differ from run to run)."""


def eval_rows(store: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(store) as con:
        return con.execute(
            f"SELECT {METRICS} FROM evals e JOIN trials t USING (trial_id) ORDER BY t.number, e.idx"
        ).fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(KILL_DATA))
def test_a_study_killed_mid_trial_resumes_bit_identically_for_every_task(
    task: str, tmp_path: Path
) -> None:
    """kill -9 of `batchlab run` while a trial is part-way (a checkpoint stored, more epochs to
    go) and another is finished, then a rerun: every trial once, the killed one resumed (two
    attempts), and every evaluation bit for bit that of a run never killed, for each task (the
    language model's data and model are `tests.workloads` functions, imported by the
    subprocesses through PYTHONPATH)."""
    epochs = 6
    study = write_study(
        tmp_path / "s.toml",
        TASK_SPECS[task],
        name=f"kill-{task}",
        dataset_args=KILL_DATA[task],
        batch_sizes=[8, 16, 32],
        budget={"epochs": epochs},
        threads=1,  # three torch processes share the machine: no intra-op oversubscription
    )
    store, clean_store = tmp_path / "killed.db", tmp_path / "clean.db"
    clean = batchlab(str(study), "--store", str(clean_store))  # alongside: the reference
    driver = batchlab(str(study), "--store", str(store))
    killed: str | None = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.05)
        with contextlib.suppress(sqlite3.OperationalError), sqlite3.connect(store) as con:
            states = con.execute(
                "SELECT t.trial_id, t.state, COUNT(e.idx) FROM trials t"
                " LEFT JOIN evals e USING (trial_id) GROUP BY t.trial_id"
            ).fetchall()  # no such table until the driver has created it
            running = [tid for tid, state, n in states if state == "RUNNING" and n >= 3]
            if running and any(state in FINAL for _, state, _ in states):
                os.kill(driver.pid, signal.SIGKILL)
                killed = running[0]
    driver.wait()
    assert killed is not None, "the study finished before it could be killed"
    with sqlite3.connect(store) as con:
        state, n_evals = con.execute(
            "SELECT state, (SELECT COUNT(*) FROM evals WHERE trial_id = ?) FROM trials"
            " WHERE trial_id = ?",
            (killed, killed),
        ).fetchone()
        (ckpt,) = con.execute(
            "SELECT MAX(eval_idx) FROM checkpoints WHERE trial_id = ?", (killed,)
        ).fetchone()
    assert state == "RUNNING" and 3 <= n_evals <= epochs  # killed part-way
    assert ckpt is not None and ckpt >= 1  # so the rerun resumes from a checkpoint

    finish(batchlab(str(study), "--store", str(store)))
    finish(clean)
    rows = check_exactly_once(store, n_trials=3, epochs=epochs)
    assert {tid: attempts for tid, _, attempts, _ in rows if attempts != 1} == {killed: 2}
    assert all(state == "COMPLETE" for _, state, _, _ in rows)
    killed_rows, clean_rows = eval_rows(store), eval_rows(clean_store)
    assert len(killed_rows) == 3 * (epochs + 1)
    assert killed_rows == clean_rows
