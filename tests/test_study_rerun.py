"""A study is one spec: a rerun with another spec under a stored name is refused (or, with
`--force`, replaces that study), a rerun with the same spec resumes, and `--retry-failed`
runs FAILED trials again, saying how many."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batchlab.cli import main
from batchlab.errors import SpecError
from batchlab.results import load_study
from batchlab.study import run_study
from tests.conftest import tiny_spec
from tests.test_multiprocess import write_study


def evals_per_trial(store: Path, study: str) -> dict[str, list[int]]:
    with contextlib.closing(sqlite3.connect(store)) as con:
        rows = con.execute(
            "SELECT t.trial_id, e.idx FROM trials t JOIN evals e USING (trial_id)"
            " WHERE t.study = ? ORDER BY t.trial_id, e.idx",
            (study,),
        ).fetchall()
    out: dict[str, list[int]] = {}
    for tid, idx in rows:
        out.setdefault(tid, []).append(idx)
    return out


def test_a_changed_budget_is_refused_in_one_line_and_the_store_is_untouched(
    tmp_path: Path,
) -> None:
    base = write_study(tmp_path / "base.toml", name="base")
    store = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "batchlab", "run", str(base), "--store", str(store), "--quiet"]
    first = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr
    before = store.read_bytes()
    again = subprocess.run(
        [*cmd, "--set", "budget.epochs=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2
    err = again.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert 'budget: {"epochs": 2} -> {"epochs": 1}' in err
    assert "--name" in err and "--force" in err and "--store" in err
    assert store.read_bytes() == before
    study = load_study("base", store)
    assert len(study.trials) == 2 and {t.last.epoch for t in study.trials if t.last} == {2.0}


def test_force_replaces_only_that_study_and_same_spec_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "r.db"
    run_study(tiny_spec(name="base"), store=store)
    run_study(tiny_spec(name="other"), store=store)
    other_before = evals_per_trial(store, "other")
    with pytest.raises(SpecError, match="budget"):
        run_study(tiny_spec(name="base", budget={"epochs": 1}), store=store)
    notes: list[str] = []
    study = run_study(
        tiny_spec(name="base", budget={"epochs": 1}), store=store, force=True, notify=notes.append
    )
    assert notes == ["force: deleted the 2 stored trials of study 'base'; running it afresh"]
    assert len(study.trials) == 2  # not 4: the 2-epoch trials are gone, not merged
    assert all(idx == [0, 1] for idx in evals_per_trial(store, "base").values())
    assert evals_per_trial(store, "other") == other_before
    # The same spec again, execution fields changed, one more seed: it continues the study.
    again = run_study(
        tiny_spec(name="base", budget={"epochs": 1}, seeds=[0, 1], workers=1, threads=1),
        store=store,
    )
    assert len(again.trials) == 4
    # The CLI: --force with --name, one line on stderr saying what it did.
    study_file = write_study(tmp_path / "b.toml", name="ignored", budget={"epochs": 1})
    main(["run", str(study_file), "--name", "other", "--force", "--store", str(store), "--quiet"])
    assert "deleted the 2 stored trials of study 'other'" in capsys.readouterr().err


def test_a_smaller_grid_is_another_spec(tmp_path: Path) -> None:
    store = tmp_path / "r.db"
    run_study(tiny_spec(name="g", seeds=[0, 1]), store=store)
    with pytest.raises(SpecError, match=r"seeds: \[0, 1\] -> \[0\]"):
        run_study(tiny_spec(name="g", seeds=[0]), store=store)


def test_retry_failed_reruns_failed_trials_and_says_how_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "r.db"
    spec = write_study(tmp_path / "s.toml", name="s")
    main(["run", str(spec), "--store", str(store), "--quiet"])
    # A trial a store error failed before the fix: FAILED, with its partial evaluations.
    with contextlib.closing(sqlite3.connect(store)) as con, con:
        (tid,) = con.execute("SELECT trial_id FROM trials ORDER BY number LIMIT 1").fetchone()
        con.execute(
            "UPDATE trials SET state = 'FAILED', error = ? WHERE trial_id = ?",
            ("sqlite3.OperationalError: database is locked", tid),
        )
        con.execute("DELETE FROM evals WHERE trial_id = ? AND idx > 0", (tid,))
    capsys.readouterr()
    main(["run", str(spec), "--store", str(store), "--quiet"])  # a plain rerun skips it
    assert "1 failed" in capsys.readouterr().out
    main(["run", str(spec), "--store", str(store), "--quiet", "--retry-failed"])
    out = capsys.readouterr()
    assert "retry-failed: running 1 failed trial of study 's' again" in out.err
    assert "2 complete" in out.out
    assert evals_per_trial(store, "s")[tid] == [0, 1, 2]  # every evaluation once
