"""`batchlab run` in a log (stdout not a terminal): a line per finished trial; and Ctrl-C: one
or two lines naming the interrupted trial, exit 130, no traceback, the trial resumable by a
rerun. Real subprocesses, as a user's shell or CI runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchlab.store import Store
from batchlab.trial import TrialState
from tests.conftest import tiny_spec

LONG = 150  # epochs of the trial interrupted (after its second evaluation): a few seconds


def write_spec(tmp_path: Path, **overrides: object) -> Path:
    """A tiny study as TOML (via JSON: both read the same values for these fields)."""
    spec = tiny_spec(threads=1, **overrides)
    lines = [f"{k} = {json.dumps(v)}" for k, v in spec.items() if not isinstance(v, dict)]
    lines += [
        f"{k} = {{ {', '.join(f'{a} = {json.dumps(b)}' for a, b in v.items())} }}"
        for k, v in spec.items()
        if isinstance(v, dict)
    ]
    path = tmp_path / "study.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def batchlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchlab", *args]


def test_a_log_gets_a_line_per_finished_trial(tmp_path: Path) -> None:
    study = write_spec(tmp_path, batch_sizes=[8, 64], budget={"epochs": 1})
    store = tmp_path / "s.db"
    done = subprocess.run(
        batchlab("run", str(study), "--store", str(store)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == ["[1/2]", "[2/2]"]
    assert lines[0].startswith("[1/2] B=8 lr=0.1 seed=0: COMPLETE, test acc ")
    assert lines[1].startswith("[2/2] B=64 lr=0.1 seed=0: COMPLETE, test acc ")
    assert all(line.endswith(" s") for line in lines)


@pytest.mark.slow  # three interpreters start: ~15 s on 2 busy cores
def test_ctrl_c_names_the_interrupted_trial_and_a_rerun_completes_it(tmp_path: Path) -> None:
    # a short trial, then a long one (variants run in order): interrupted inside the second
    study = write_spec(
        tmp_path,
        batch_sizes=[8],
        budget={"epochs": 1},
        dataset_args={"n_train": 512, "n_test": 64, "dim": 8, "classes": 3},
    )
    study.write_text(
        study.read_text()
        + '[[variants]]\nlabel = "short"\n\n'
        + f'[[variants]]\nlabel = "long"\nbudget = {{ epochs = {LONG} }}\n'
    )
    store = tmp_path / "s.db"
    proc = subprocess.Popen(
        batchlab("run", str(study), "--store", str(store)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = ""
    while not first.startswith("[1/2]"):
        first = proc.stdout.readline()
        assert first or proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    assert "short: COMPLETE" in first
    long_id = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the long trial has stored an evaluation
        with Store.open_existing(store) as s:
            long = next(t for t in s.trials("tiny") if t.params["variant"] == "long")
        if long.state == TrialState.RUNNING and len(long.evals) >= 2:
            long_id = long.trial_id
            break
        time.sleep(0.05)
    assert long_id, "the long trial never started"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    notes = [line for line in err.splitlines() if "interrupt" in line or "resumes" in line]
    assert notes[0].startswith(f"interrupted: B=8 lr=0.1 seed=0 long ({long_id})")
    assert "resumes them from their last checkpoint" in notes[1]
    with Store.open_existing(store) as s:
        stopped = next(t for t in s.trials("tiny") if t.trial_id == long_id)
    assert stopped.state == TrialState.RUNNING and stopped.evals  # resumable, not lost
    rerun = subprocess.run(
        batchlab("run", str(study), "--store", str(store)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "1 already finished" in rerun.stdout
    with Store.open_existing(store) as s:
        final = next(t for t in s.trials("tiny") if t.trial_id == long_id)
    assert final.state == TrialState.COMPLETE and final.last is not None
    assert final.last.epoch == LONG
    # resumed, not restarted: the evaluations before the interrupt are still the first ones
    assert [e.step for e in final.evals[: len(stopped.evals)]] == [e.step for e in stopped.evals]
