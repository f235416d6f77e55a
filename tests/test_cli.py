"""The command line, run as a user runs it: a real subprocess, real exit codes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import batchlab
from batchlab.cli import main

TINY = """
name = "cli"
dataset = "synthetic"
dataset_args = { n_train = 256, n_test = 128, dim = 8, classes = 3 }
model_args = { widths = [16] }
lrs = [0.1]
batch_sizes = [8, 64]
seeds = [0]
budget = { epochs = 2 }
val_fraction = 0.25
device = "cpu"
"""


def blab(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_reads_well(tmp_path: Path) -> None:
    out = blab("--help", cwd=tmp_path)
    assert out.returncode == 0
    for cmd in ("run", "presets", "ls", "show", "export"):
        assert cmd in out.stdout
    run_help = blab("run", "--help", cwd=tmp_path).stdout
    assert "--preset" in run_help and "--set KEY=VALUE" in run_help and "--store" in run_help
    assert blab("--version", cwd=tmp_path).stdout.strip().endswith(batchlab.__version__)


def test_presets_lists_quick_and_seed_sweep(tmp_path: Path) -> None:
    out = blab("presets", cwd=tmp_path)
    assert out.returncode == 0 and "quick" in out.stdout and "seed-sweep" in out.stdout


def test_run_show_ls_export(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TINY)
    out = blab("run", "s.toml", "--store", "r.db", "--quiet", "--set", "seeds=[0,1]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "4 complete" in out.stdout
    show = blab("show", "cli", "--store", "r.db", cwd=tmp_path)
    assert show.returncode == 0 and "test acc" in show.stdout
    assert "cli" in blab("ls", "--store", "r.db", cwd=tmp_path).stdout
    assert blab("export", "cli", "--store", "r.db", "--out", "e.csv", cwd=tmp_path).returncode == 0
    df = pd.read_csv(tmp_path / "e.csv")
    assert len(df) == 4 * 3 and set(df["seed"]) == {0, 1}
    js = blab("export", "cli", "--store", "r.db", "--format", "json", cwd=tmp_path)
    rows = json.loads(js.stdout)
    assert len(rows) == 12 and rows[0]["study"] == "cli" and rows[0]["step"] == 0
    expected = batchlab.load_study("cli", tmp_path / "r.db").to_dataframe()
    assert df["test_acc"].round(12).tolist() == expected["test_acc"].round(12).tolist()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "s.toml", "--set", "lrss=[1]"], "unknown key 'lrss'; did you mean 'lrs'?"),
        (["run", "s.toml", "--set", "budget={epochs=1, steps=2}"], "exactly one of"),
        (["run", "s.toml", "--set", "batch_sizes=[0]"], "batch sizes must be positive"),
        (["run", "s.toml", "--set", "batch_sizes=[100000]"], "exceed the 192 training examples"),
        (["run", "s.toml", "--set", "lrs=[0]"], "learning rates must be finite and > 0"),
        (["run", "s.toml", "--set", "seeds=[]"], "at least one seed"),
        (["run", "s.toml", "--set", "dataset=imagenet"], "unknown dataset 'imagenet'"),
        (["run", "s.toml", "--set", "model=vgg"], "unknown model 'vgg'"),
        (["run", "s.toml", "--set", "optimizer=lion"], "field 'optimizer'"),
        (["run", "bad.toml"], "malformed TOML"),
        (["run", "missing.toml"], "cannot read study file"),
        (["run", "s.toml", "--set", "dataset=npz:nothing.npz"], "cannot read npz"),
        (["run", "--preset", "nope"], "unknown preset 'nope'"),
        (["run"], "give a study file"),
        (["show", "nope", "--store", "none.db"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_stored(
    tmp_path: Path,
    args: list[str],
    needle: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In-process for speed; test_bad_input_as_a_real_process checks the same through a process.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(TINY)
    (tmp_path / "bad.toml").write_text("name = 'x'\nlrs = [")
    argv = [*args, "--store", "r.db"] if args[0] == "run" else args
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r.db").exists() and not (tmp_path / "none.db").exists()


def test_bad_input_as_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TINY)
    out = blab("run", "s.toml", "--store", "r.db", "--set", "budget.epochz=1", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "batchlab: error: s.toml: unknown key 'budget.epochz'; did you mean 'epochs'?"
    )
    assert not (tmp_path / "r.db").exists()


def _rows(db: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(
            "SELECT t.batch_size, e.idx, e.step, e.samples, e.val_loss, e.test_acc, e.train_loss"
            " FROM evals e JOIN trials t USING (trial_id) ORDER BY t.batch_size, e.idx"
        ).fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_kill_9_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    spec = (
        TINY.replace("n_train = 256", "n_train = 4000")
        .replace("batch_sizes = [8, 64]", "batch_sizes = [8, 16, 32]")
        .replace("epochs = 2", "epochs = 6")
    )
    (tmp_path / "s.toml").write_text(spec)
    db = tmp_path / "killed.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchlab", "run", "s.toml", "--store", str(db), "--quiet"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    killed_mid_trial = False
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if not db.exists():
            continue
        try:
            con = sqlite3.connect(db, timeout=1)
            (n,) = con.execute(
                "SELECT COUNT(*) FROM evals WHERE trial_id IN"
                " (SELECT trial_id FROM trials WHERE batch_size = 16)"
            ).fetchone()
            con.close()
        except sqlite3.OperationalError:
            continue
        if n >= 3:  # the second trial is half-way through
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_trial = True
            break
    proc.wait()
    assert killed_mid_trial, "the study finished before it could be killed"
    con = sqlite3.connect(db)
    states = dict(con.execute("SELECT batch_size, state FROM trials").fetchall())
    con.close()
    assert states[16] == "RUNNING" and states[32] == "WAITING"

    rerun = blab("run", "s.toml", "--store", str(db), "--quiet", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    clean = blab("run", "s.toml", "--store", str(tmp_path / "clean.db"), "--quiet", cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr

    con = sqlite3.connect(db)
    states = dict(con.execute("SELECT batch_size, state FROM trials").fetchall())
    attempts = dict(con.execute("SELECT batch_size, attempts FROM trials").fetchall())
    con.close()
    assert set(states.values()) == {"COMPLETE"} and len(states) == 3
    assert attempts == {8: 1, 16: 2, 32: 1}
    # Every evaluation exactly once, and the same numbers as a run that was never killed.
    assert _rows(db) == _rows(tmp_path / "clean.db")
    assert len(_rows(db)) == 3 * 7


def test_report_compare_interpolate_and_probe_export(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TINY + 'probes = "cheap"\n')
    out = blab("run", "s.toml", "--store", "r.db", "--quiet", "--report", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    page = tmp_path / "reports" / "cli" / "index.html"
    assert f"report: {page}" in out.stdout and page.stat().st_size > 100_000
    assert (tmp_path / "reports" / "cli" / "summary.json").exists()
    other = blab(
        "run",
        "s.toml",
        "--store",
        "r.db",
        "--quiet",
        "--set",
        "name=cli2",
        "--set",
        "lr_scaling=linear",
        cwd=tmp_path,
    )
    assert other.returncode == 0, other.stderr
    cmp = blab("compare", "cli", "cli2", "--store", "r.db", "--no-png", cwd=tmp_path)
    assert cmp.returncode == 0 and (tmp_path / "reports" / "compare" / "index.html").exists()
    line = blab(
        "interpolate", "cli", "--store", "r.db", "--points", "4", "--out", "line.csv", cwd=tmp_path
    )
    assert line.returncode == 0, line.stderr
    df = pd.read_csv(tmp_path / "line.csv")
    assert df["alpha"].tolist() == [-1.0, 0.0, 1.0, 2.0]
    probes = blab("export", "cli", "--store", "r.db", "--probes", "--out", "p.csv", cwd=tmp_path)
    assert probes.returncode == 0
    p = pd.read_csv(tmp_path / "p.csv")
    assert {"grad_norms", "update_size", "distance"} <= set(p["probe"])
    assert (p[(p.probe == "distance") & (p.step == 0)]["value"] == 0).all()
    bad = blab("interpolate", "cli", "--store", "r.db", "--a", "zzz", cwd=tmp_path)
    assert bad.returncode == 2 and "match 'zzz'" in bad.stderr
