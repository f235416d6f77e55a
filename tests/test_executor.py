"""The executor: thread rule, claims in the store, the local worker pool against a sequential run,
and a worker killed mid-trial."""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from batchlab import cpuload
from batchlab import executors as executor
from batchlab.cpuload import CpuLoad
from batchlab.executors import order_for_pool, packs, threads_for
from batchlab.models import MLP
from batchlab.spec import StudySpec, TrialSpec
from batchlab.store import SCHEMA_VERSION, ClaimLost, Store, owner_alive, process_owner
from batchlab.study import Study, run_study
from batchlab.trial import EvalRecord, TrialState
from tests.conftest import SpecFactory

TIMING = {"train_time_s", "eval_time_s", "samples_per_s", "peak_mem_bytes"}


class CrashingMLP(MLP):
    """An MLP whose process dies (`os._exit`) at its `after`-th training forward pass: only while
    `marker` does not exist (then it creates it), or every time with `always`."""

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int],
        marker: str,
        after: int,
        always: bool = False,
    ) -> None:
        super().__init__(input_shape=input_shape, num_classes=num_classes, widths=widths)
        self.marker, self.after, self.always, self.calls = marker, after, always, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            if self.calls == self.after and (self.always or not os.path.exists(self.marker)):
                Path(self.marker).touch()
                os._exit(3)  # like a segfault or an OOM kill: no cleanup, no message
        out: torch.Tensor = super().forward(x)  # type: ignore[no-untyped-call]
        return out


def crashing_mlp(**kwargs: Any) -> nn.Module:
    return CrashingMLP(**kwargs)


def values(rec: EvalRecord) -> dict[str, float]:
    """An evaluation without its timing columns (which differ between any two runs)."""
    return {k: v for k, v in rec.as_dict().items() if k not in TIMING}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """Equal bit for bit, NaN equal to NaN."""
    return all(a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def close(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(
        math.isclose(a[k], b[k], rel_tol=1e-3, abs_tol=1e-5)
        or (math.isnan(a[k]) and math.isnan(b[k]))
        for k in a
    )


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """run_study sets torch's thread count from the spec; put it back afterwards."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---- the thread rule --------------------------------------------------------------------------


def trial(batch: int, **spec: Any) -> TrialSpec:
    s = StudySpec(name="t", batch_sizes=(batch,), budget={"epochs": 1}, **spec)  # type: ignore[arg-type]
    return s.trials()[0]


def test_threads_rule() -> None:
    small, big = executor.PACK_MAX_BATCH, executor.PACK_MAX_BATCH * 2
    assert packs(trial(small)) and not packs(trial(big))
    assert packs(trial(big, accumulate=2))  # the micro-batch is what a step computes
    assert threads_for(trial(small), cores=8, workers="auto") == 1
    assert threads_for(trial(big), cores=8, workers="auto") == 8
    assert threads_for(trial(big), cores=8, workers=4) == 2
    assert threads_for(trial(big), cores=2, workers=4) == 1
    assert threads_for(trial(small, threads=3), cores=8, workers="auto") == 3


def test_pool_order_runs_wide_trials_first_then_longest_packed() -> None:
    spec = StudySpec(name="t", batch_sizes=(8, 16, 512, 32, 1024), budget={"epochs": 1})  # type: ignore[arg-type]
    order = [t.batch_size for t in order_for_pool(spec.trials(), n_train=4096)]
    assert order == [512, 1024, 8, 16, 32]


# ---- claims in the store ------------------------------------------------------------------


def rec(idx: int) -> EvalRecord:
    nan = math.nan
    return EvalRecord(
        idx=idx, epoch=idx, step=idx, samples=idx, current_lr=0.1, train_loss=nan,
        train_acc=nan, val_loss=1.0, val_acc=0.5, test_loss=1.0, test_acc=0.5,
        train_time_s=0.0, eval_time_s=0.0, samples_per_s=nan, peak_mem_bytes=0,
    )  # fmt: skip


def two_trial_store(path: Path) -> Store:
    s = Store(path)
    s.put_study("s", {"name": "s"})
    s.add_trials(
        "s",
        [
            dict(trial_id=f"t{i}", batch_size=8, lr_base=0.1, lr=0.1, seed=i, params={})
            for i in range(2)
        ],
    )
    return s


def dead_owner() -> str:
    """The owner string of a process of this host that has exited."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return f"{socket.gethostname()}/{int(proc.stdout)}/0"


def test_claim_is_exclusive_while_the_owner_lives(store_path: Path) -> None:
    me, other = process_owner(), "elsewhere/1/1"
    with two_trial_store(store_path) as s:
        assert s.claim_trial("t0", {}, owner=me) == (-1, None)
        assert s.claim_trial("t0", {}, owner=other) is None  # I am alive
        assert s.claim_trial("t0", {}, owner=me) == (-1, None)  # my own claim: a restart
        s.add_eval("t0", rec(0), b"c0", owner=me)
        with pytest.raises(ClaimLost):
            s.add_eval("t0", rec(1), None, owner=other)
        s.finish_trial("t0", TrialState.COMPLETE, owner=me)
        assert s.claim_trial("t0", {}, owner=other) is None  # finished
        assert s.claim_states(["t0", "t1"], owner=other) == {
            "t0": (TrialState.COMPLETE, False),
            "t1": (TrialState.WAITING, True),
        }


def test_a_dead_owners_trial_is_reclaimed_from_its_checkpoint(store_path: Path) -> None:
    gone = dead_owner()
    assert not owner_alive(gone, None, lease_s=60)
    with two_trial_store(store_path) as s:
        assert s.claim_trial("t0", {}, owner=gone) is not None
        s.add_eval("t0", rec(0), b"c0", owner=gone)
        s.add_eval("t0", rec(1), None, owner=gone)  # after the checkpoint: to be dropped
        assert s.claim_trial("t0", {}, owner=process_owner()) == (0, b"c0")
        assert [e.idx for e in s.trials("s")[0].evals] == [0]
        with pytest.raises(ClaimLost):  # the old owner, were it still writing, is fenced off
            s.add_eval("t0", rec(1), None, owner=gone)


def test_claims_from_another_host_lapse_with_their_heartbeat(store_path: Path) -> None:
    remote = "another-host/123/456"
    with two_trial_store(store_path) as s:
        assert s.claim_trial("t0", {}, owner=remote) is not None
        assert s.claim_trial("t0", {}, owner=process_owner(), lease_s=60) is None
        assert s.heartbeat(remote) == 1
        s._db.execute("UPDATE trials SET heartbeat_at = heartbeat_at - 120")
        assert s.claim_trial("t0", {}, owner=process_owner(), lease_s=60) is not None


def test_a_version_1_store_is_migrated_and_keeps_its_rows(store_path: Path) -> None:
    with two_trial_store(store_path) as s:
        s.start_trial("t0", {"torch": "x"})
        s.add_eval("t0", rec(0), b"c0")
    con = sqlite3.connect(store_path)  # back to the version 1 layout: no claim columns
    con.execute("ALTER TABLE trials DROP COLUMN owner")
    con.execute("ALTER TABLE trials DROP COLUMN heartbeat_at")
    con.execute("DROP TABLE snapshots")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with Store(store_path) as s:
        t0 = s.trials("s")[0]
        assert t0.state == TrialState.RUNNING and [e.idx for e in t0.evals] == [0]
        # a RUNNING trial from before claims existed has no owner: resumable at once
        assert s.claim_trial("t0", {}, owner=process_owner()) == (0, b"c0")
    con = sqlite3.connect(store_path)
    version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert con.execute("SELECT COUNT(*) FROM snapshots").fetchone() == (0,)


# ---- the local pool ----------------------------------------------------------------------


def by_batch(study: Study) -> dict[int, list[dict[str, float]]]:
    return {t.batch_size: [values(e) for e in t.evals] for t in study.trials}


@pytest.mark.slow
def test_pool_matches_a_sequential_run_trial_by_trial(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: None
) -> None:
    cores = executor.usable_cores()
    idle = CpuLoad(load=0.0, cpus=cores, usable=cores)  # threads = "auto" must not lower them
    monkeypatch.setattr(cpuload, "read_load", lambda since=None: idle)
    spec = make_spec(batch_sizes=[8, 16, 192], budget={"epochs": 2})
    pooled = run_study({**spec, "workers": "auto"}, store=tmp_path / "pool.db")
    one = by_batch(run_study({**spec, "threads": 1}, store=tmp_path / "one.db"))
    every = by_batch(run_study({**spec, "threads": cores}, store=tmp_path / "all.db"))
    assert all(t.state == TrialState.COMPLETE and len(t.evals) == 3 for t in pooled.trials)
    for t in pooled.trials:
        threads = t.provenance["threads"]
        assert threads == (1 if t.batch_size <= executor.PACK_MAX_BATCH else cores)
        ours = [values(e) for e in t.evals]
        same_threads = one if threads == 1 else every
        assert all(same(a, b) for a, b in zip(ours, same_threads[t.batch_size], strict=True))
        # against the other thread count: float tolerance (summation order may differ)
        other = every if threads == 1 else one
        assert all(close(a, b) for a, b in zip(ours, other[t.batch_size], strict=True))
    assert len({t.provenance["pid"] for t in pooled.trials} - {os.getpid()}) >= 1


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_replaced_and_the_trial_resumed(
    make_spec: SpecFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: None
) -> None:
    monkeypatch.setattr(executor.driver, "MAX_ATTEMPTS", 2)  # where the driver reads it
    once, always = tmp_path / "once", tmp_path / "always"
    model = {"widths": [16], "after": 30}  # epoch 2 of 3 (24 steps per epoch at batch 8)
    spec = make_spec(
        model="tests.test_executor:crashing_mlp",
        model_args={**model, "marker": str(once)},
        batch_sizes=[8],
        budget={"epochs": 3},
        threads=1,
        workers=2,
        variants=[
            {"label": "once", "model_args": {**model, "marker": str(once)}},
            {"label": "always", "model_args": {**model, "marker": str(always), "always": True}},
        ],
    )
    study = run_study(spec, store=tmp_path / "r.db")
    by_variant = {t.params["variant"]: t for t in study.trials}
    resumed, failed = by_variant["once"], by_variant["always"]
    assert resumed.state == TrialState.COMPLETE
    assert failed.state == TrialState.FAILED and "worker lost 2 times" in (failed.error or "")
    with sqlite3.connect(tmp_path / "r.db") as con:
        attempts = dict(con.execute("SELECT trial_id, attempts FROM trials").fetchall())
    assert attempts == {resumed.trial_id: 2, failed.trial_id: 2}
    # The resumed trial equals an uninterrupted run of it, evaluation by evaluation.
    clean = make_spec(
        model="tests.test_executor:crashing_mlp",
        model_args={**model, "marker": str(once)},  # exists now: no crash, in this process
        batch_sizes=[8],
        budget={"epochs": 3},
        threads=1,
    )
    reference = run_study(clean, store=tmp_path / "clean.db").trials[0]
    assert [e.idx for e in resumed.evals] == [0, 1, 2, 3]
    assert all(
        same(values(a), values(b)) for a, b in zip(resumed.evals, reference.evals, strict=True)
    )
