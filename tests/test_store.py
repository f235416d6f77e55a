from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from batchlab.errors import StoreError
from batchlab.store import Store
from batchlab.trial import EvalRecord, TrialState


def rec(idx: int, **kw: float) -> EvalRecord:
    base = dict(
        idx=idx,
        epoch=float(idx),
        step=10 * idx,
        samples=100 * idx,
        current_lr=0.1,
        train_loss=math.nan,
        train_acc=math.nan,
        val_loss=1.0,
        val_acc=0.5,
        test_loss=1.1,
        test_acc=0.4,
        train_time_s=float(idx),
        eval_time_s=0.1,
        samples_per_s=math.nan,
        peak_mem_bytes=123,
    )
    base.update(kw)
    return EvalRecord(**base)  # type: ignore[arg-type]


def make_store(path: Path) -> Store:
    s = Store(path)
    s.put_study("s", {"name": "s"})
    s.add_trials(
        "s",
        [
            dict(
                trial_id=f"t{i}",
                batch_size=8 * (i + 1),
                lr_base=0.1,
                lr=0.1,
                seed=0,
                params={"optimizer": "sgd"},
            )
            for i in range(2)
        ],
    )
    return s


def test_round_trip_keeps_nan_and_order(store_path: Path) -> None:
    with make_store(store_path) as s:
        s.start_trial("t0", {"torch": "x"})
        s.add_eval("t0", rec(0), b"ckpt0")
        s.add_eval("t0", rec(1, train_loss=0.5), None)
        s.finish_trial("t0", TrialState.COMPLETE)
        trials = s.trials("s")
    assert [t.trial_id for t in trials] == ["t0", "t1"]
    t0 = trials[0]
    assert t0.state == TrialState.COMPLETE and t0.provenance == {"torch": "x"}
    assert [e.idx for e in t0.evals] == [0, 1]
    assert math.isnan(t0.evals[0].train_loss) and t0.evals[1].train_loss == 0.5
    assert t0.evals[1].test_acc == 0.4 and t0.evals[1].peak_mem_bytes == 123
    assert trials[1].state == TrialState.WAITING and trials[1].evals == ()


def test_registering_trials_twice_changes_nothing(store_path: Path) -> None:
    with make_store(store_path) as s:
        s.add_trials(
            "s",
            [
                dict(trial_id="t0", batch_size=8, lr_base=0.1, lr=0.1, seed=0, params={}),
                dict(trial_id="t9", batch_size=99, lr_base=0.1, lr=0.1, seed=0, params={}),
            ],
        )
        trials = s.trials("s")
    assert [(t.trial_id, t.number) for t in trials] == [("t0", 0), ("t1", 1), ("t9", 2)]


def test_restart_drops_evals_after_the_last_checkpoint(store_path: Path) -> None:
    with make_store(store_path) as s:
        s.start_trial("t0", {})
        s.add_eval("t0", rec(0), b"c0")
        s.add_eval("t0", rec(1), b"c1")
        s.add_eval("t0", rec(2), None)  # written, then the process died before the next checkpoint
        keep, payload = s.start_trial("t0", {})
        assert (keep, payload) == (1, b"c1")
        assert [e.idx for e in s.trials("s")[0].evals] == [0, 1]
        s.finish_trial("t0", TrialState.DIVERGED, diverged_step=7)
        keep, payload = s.start_trial("t1", {})
        assert (keep, payload) == (-1, None)
        t0 = s.trials("s")[0]
    assert t0.diverged_step == 7
    con = sqlite3.connect(store_path)
    assert con.execute("SELECT COUNT(*) FROM checkpoints WHERE trial_id='t0'").fetchone() == (0,)


def test_duplicate_eval_is_refused(store_path: Path) -> None:
    with make_store(store_path) as s:
        s.add_eval("t0", rec(0), None)
        with pytest.raises(sqlite3.IntegrityError):
            s.add_eval("t0", rec(0), None)


def test_unknown_study_and_missing_store(store_path: Path, tmp_path: Path) -> None:
    with make_store(store_path) as s, pytest.raises(StoreError, match="no study named 'x'"):
        s.trials("x")
    with pytest.raises(StoreError, match="does not exist"):
        Store.open_existing(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(junk)
