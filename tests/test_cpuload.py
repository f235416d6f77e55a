"""`threads = "auto"` on a busy machine: the load average against the cores chooses the torch
threads (fewer when the load already takes the cores), warns in one line, and is recorded per
trial. The load is injected, so these tests do not depend on the machine's own."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from batchlab import cpuload
from batchlab.cpuload import CpuLoad, plan_threads
from batchlab.spec import spec_from_dict
from batchlab.study import run_study
from tests.conftest import SpecFactory

BUSY = CpuLoad(load=3.3, cpus=2, usable=2)  # the shared 2-core box of the issue
IDLE = CpuLoad(load=0.1, cpus=2, usable=2)


def test_free_cores_follow_the_load_and_the_affinity_mask() -> None:
    assert IDLE.free == 2 and not IDLE.oversubscribed
    assert BUSY.free == 1 and BUSY.oversubscribed
    assert CpuLoad(load=0.8, cpus=2, usable=2).free == 1  # 1.2 idle cores: one is free
    assert CpuLoad(load=4.0, cpus=16, usable=16).free == 12
    assert CpuLoad(load=16.0, cpus=64, usable=4).free == 3  # the load spread over 64 cores
    assert CpuLoad(load=float("nan"), cpus=8, usable=8).free == 8  # no load average: no change


def test_auto_lowers_threads_on_a_busy_machine_and_says_so_in_one_line() -> None:
    busy = plan_threads(None, default=2, load=BUSY)
    assert (busy.threads, busy.cores) == (1, 1)
    assert busy.warning is not None and "\n" not in busy.warning
    assert "load 3.3 on 2 cores" in busy.warning and "1 thread," in busy.warning
    idle = plan_threads(None, default=2, load=IDLE)
    assert (idle.threads, idle.cores, idle.warning) == (2, 2, None)
    # a fixed count is kept, with the warning and what auto would pick
    fixed = plan_threads(2, default=2, load=BUSY)
    assert fixed.threads == 2 and fixed.warning is not None and "would use 1" in fixed.warning
    assert plan_threads(1, default=2, load=BUSY).warning is None


def test_auto_is_the_default_and_keeps_trial_ids(make_spec: SpecFactory) -> None:
    unset = spec_from_dict(make_spec())
    auto = spec_from_dict(make_spec(threads="auto"))
    assert unset.threads is None and auto.threads is None
    assert [t.trial_id for t in auto.trials()] == [t.trial_id for t in unset.trials()]
    assert [t.trial_id for t in spec_from_dict(make_spec(threads=1)).trials()] == [
        t.trial_id for t in unset.trials()
    ]


@pytest.fixture
def two_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(("load", "threads"), [(BUSY, 1), (IDLE, 2)])
def test_a_study_on_a_busy_machine_runs_and_records_fewer_threads(
    make_spec: SpecFactory,
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    two_threads: None,
    load: CpuLoad,
    threads: int,
) -> None:
    monkeypatch.setattr(cpuload, "read_load", lambda since=None: load)
    notes: list[str] = []
    spec = make_spec(budget={"epochs": 1}, threads="auto")
    study = run_study(spec, store=tmp_path / "s.db", notify=notes.append)  # type: ignore[operator]
    assert [t.provenance["threads"] for t in study.trials] == [threads] * len(study.trials)
    busy = [n for n in notes if "machine is busy" in n]
    assert len(busy) == (1 if load is BUSY else 0)


def test_a_pool_on_a_busy_machine_is_not_started(
    make_spec: SpecFactory,
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    two_threads: None,
) -> None:
    """workers = "auto" on one free core trains in this process, on one thread."""
    monkeypatch.setattr(cpuload, "read_load", lambda since=None: BUSY)
    spec = make_spec(budget={"epochs": 1}, workers="auto", batch_sizes=[8, 192])
    study = run_study(spec, store=tmp_path / "s.db", notify=lambda _: None)  # type: ignore[operator]
    assert {t.provenance["pid"] for t in study.trials} == {os.getpid()}
    assert {t.provenance["threads"] for t in study.trials} == {1}


def test_the_load_now_leaves_out_this_process_own_cpu_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchlab import cpuload

    busy = iter([100.0, 100.9])  # the machine: 0.9 CPU seconds busy over the window...
    own = iter([5.0, 5.4])  # ...0.4 of them this process's own
    clock = iter([0.0, 0.1, 0.5])  # begun at 0, the rest of the window slept at 0.1, read at 0.5
    monkeypatch.setattr(cpuload, "_busy_cpu_seconds", lambda: next(busy))
    monkeypatch.setattr("time.process_time", lambda: next(own))
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    assert cpuload.others_busy_now() == pytest.approx((0.9 - 0.4) / 0.5)
    assert slept == [pytest.approx(0.15)]
    monkeypatch.setattr(cpuload, "others_busy_now", lambda since=None: 0.3)
    monkeypatch.setattr("os.getloadavg", lambda: (6.0, 5.0, 4.0))
    assert cpuload.read_load().load == 0.3  # a load average that remembers a past burst


def test_a_reading_begun_before_other_work_spans_it_and_waits_only_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`run_study` begins the reading before loading the data: the window spans the loading
    (this process's CPU time taken out) and sleeps only if the loading was shorter."""
    from batchlab import cpuload

    busy = iter([10.0, 12.0])  # 2 CPU seconds busy over a 1 s window, 1.5 of them our own
    own = iter([1.0, 2.5])
    clock = iter([0.0, 1.0, 1.0])
    monkeypatch.setattr(cpuload, "_busy_cpu_seconds", lambda: next(busy))
    monkeypatch.setattr("time.process_time", lambda: next(own))
    monkeypatch.setattr("time.monotonic", lambda: next(clock))
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    begun = cpuload.begin_reading()
    assert cpuload.others_busy_now(since=begun) == pytest.approx(0.5)
    assert slept == [0.0]  # the loading took longer than the window
