"""Store faults: a lock held too long or a full disk is retried and never fails a healthy trial;
a damaged, foreign, empty, malformed or read-only store is a one-line error (exit 2) naming the
file, and reading a store never changes a byte of it."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import batchlab.store as store_mod
from batchlab.cli import main
from batchlab.errors import StoreError
from batchlab.results import load_study
from batchlab.store import Store, StoreUnavailable, WriteRetry
from batchlab.study import run_study
from batchlab.trial import TrialState
from tests.conftest import tiny_spec

READERS = [
    ["ls"],
    ["show", "tiny"],
    ["export", "tiny"],
    ["report", "tiny", "--no-png", "--out", "rep"],
    ["recommend", "tiny"],
    ["critical", "tiny", "--boot", "0"],
]


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("good") / "r.db"
    run_study(tiny_spec(name="tiny", budget={"epochs": 1}), store=path)
    return path


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


# ---- transient write failures: retried, and never a FAILED trial ---------------------------


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> WriteRetry:
    retry = WriteRetry(attempts=3, first_s=0.01, max_s=0.02)
    monkeypatch.setattr(store_mod, "WRITE_RETRY", retry)
    return retry


def failing_writes(
    monkeypatch: pytest.MonkeyPatch, message: str, *, after: int, times: int
) -> list[int]:
    """Make writes number `after`.. `after + times - 1` raise OperationalError(message)."""
    real = Store._write_once
    count = [0]

    def flaky(self: Store, body: Callable[[sqlite3.Connection], Any]) -> Any:
        count[0] += 1
        if after <= count[0] < after + times:
            raise sqlite3.OperationalError(message)
        return real(self, body)

    monkeypatch.setattr(Store, "_write_once", flaky)
    return count


@pytest.mark.parametrize("message", ["database is locked", "database or disk is full"])
def test_a_passing_fault_is_retried_and_the_trial_completes(
    message: str, fast_retry: WriteRetry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    failing_writes(monkeypatch, message, after=6, times=fast_retry.attempts - 1)
    study = run_study(tiny_spec(budget={"epochs": 2}), store=tmp_path / "r.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all([e.idx for e in t.evals] == [0, 1, 2] for t in study.trials)


def test_a_lasting_fault_stops_the_driver_and_the_trial_resumes(
    fast_retry: WriteRetry,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store = tmp_path / "r.db"
    reference = run_study(tiny_spec(budget={"epochs": 2}), store=tmp_path / "ref.db")
    # From the first trial's second evaluation on, every write fails (its checkpoint of eval 0
    # is stored): the fault starts with the second call of `add_eval`.
    real_write, real_add = Store._write_once, Store.add_eval
    evals = [0]

    def add_eval(self: Store, *args: Any, **kwargs: Any) -> Any:
        evals[0] += 1
        return real_add(self, *args, **kwargs)

    def flaky(self: Store, body: Callable[[sqlite3.Connection], Any]) -> Any:
        if evals[0] >= 2:
            raise sqlite3.OperationalError("database is locked")
        return real_write(self, body)

    monkeypatch.setattr(Store, "add_eval", add_eval)
    monkeypatch.setattr(Store, "_write_once", flaky)
    spec = tmp_path / "s.toml"
    from tests.test_multiprocess import write_study

    write_study(spec, budget={"epochs": 2})
    code, _, err = cli(["run", str(spec), "--store", str(store), "--quiet"], capsys)
    one_line_error(code, err, str(store), "database is locked", "rerun the same command")
    monkeypatch.undo()
    with contextlib.closing(sqlite3.connect(store)) as con:
        states = [r[0] for r in con.execute("SELECT state FROM trials ORDER BY number")]
        (ckpts,) = con.execute("SELECT COUNT(*) FROM checkpoints").fetchone()
    assert states == ["RUNNING", "WAITING"] and ckpts == 1  # resumable, never FAILED
    study = run_study(tiny_spec(budget={"epochs": 2}), store=store)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for got, want in zip(study.trials, reference.trials, strict=True):  # resumed bit for bit
        assert [e.idx for e in got.evals] == [0, 1, 2]
        assert [e.test_loss for e in got.evals] == [e.test_loss for e in want.evals]


def test_a_held_lock_is_waited_for(fast_retry: WriteRetry, tmp_path: Path) -> None:
    """A real second connection holds the write lock past the busy timeout once."""
    path = tmp_path / "r.db"
    with Store(path) as s:
        s.put_study("s", {"name": "s"})
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    import threading

    threading.Timer(0.1, lambda: holder.execute("COMMIT")).start()
    with Store(
        path, busy_timeout_s=0.01, retry=WriteRetry(attempts=20, first_s=0.05, max_s=0.05)
    ) as s:
        s.put_study("t", {"name": "t"})
        assert s.study_names() == ["s", "t"]
    holder.close()
    with (
        Store(path, busy_timeout_s=0.01) as s,
        contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other,
    ):
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match=r"failed 3 times .*database is locked"):
            s.put_study("u", {"name": "u"})


# ---- damaged, foreign, empty, malformed, read-only ------------------------------------------


def damage(path: Path) -> None:
    """Overwrite every page but the first (the schema) with garbage."""
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))


@pytest.mark.parametrize("args", [*READERS, ["run", "s.toml"]], ids=lambda a: a[0])
def test_a_damaged_store_is_one_line_in_every_command(
    args: list[str],
    good_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.test_multiprocess import write_study

    monkeypatch.chdir(tmp_path)
    write_study(tmp_path / "s.toml", name="tiny", budget={"epochs": 1})
    bad = tmp_path / "bad.db"
    shutil.copy(good_store, bad)
    damage(bad)
    code, _, err = cli(
        [*args, "--store", str(bad), *(["--quiet"] if args[0] == "run" else [])], capsys
    )
    one_line_error(code, err, str(bad), "damaged", "backup")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE trials SET params_json = '{not json'",
        "UPDATE trials SET state = 'EXPLODED'",
        "UPDATE studies SET spec_json = '[1, 2'",
    ],
    ids=["params", "state", "spec"],
)
@pytest.mark.parametrize("args", READERS[1:], ids=lambda a: a[0])
def test_malformed_stored_values_are_one_line(
    args: list[str],
    sql: str,
    good_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.db"
    shutil.copy(good_store, bad)
    with contextlib.closing(sqlite3.connect(bad)) as con, con:
        con.execute(sql)
    code, _, err = cli([*args, "--store", str(bad)], capsys)
    one_line_error(code, err, str(bad), "malformed stored data")


def foreign(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as con, con:
        con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, blob BLOB)")
        con.execute("INSERT INTO photos(blob) VALUES (x'00ff')")


@pytest.mark.parametrize("kind", ["empty", "foreign"])
@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_reading_a_file_that_is_no_store_leaves_it_byte_identical(
    args: list[str],
    kind: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "x.db"
    if kind == "empty":
        path.touch()
    else:
        foreign(path)
    before = digest(path)
    code, _, err = cli([*args, "--store", str(path)], capsys)
    one_line_error(code, err, str(path), "not a batchlab store", "left unchanged")
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]  # no -wal, -shm, report


def test_run_refuses_a_foreign_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_multiprocess import write_study

    monkeypatch.chdir(tmp_path)
    write_study(tmp_path / "s.toml")
    path = tmp_path / "x.db"
    foreign(path)
    before = digest(path)
    code, _, err = cli(["run", "s.toml", "--store", str(path), "--quiet"], capsys)
    one_line_error(code, err, "not a batchlab store")
    assert digest(path) == before


def test_reading_a_store_changes_no_byte(
    good_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "r.db"
    shutil.copy(good_store, path)
    before = digest(path)
    for args in READERS:
        code, _, err = cli([*args, "--store", str(path)], capsys)
        assert code == 0, (args, err)
    assert digest(path) == before


@pytest.fixture
def read_only_store(good_store: Path, tmp_path: Path) -> Iterator[Path]:
    """The store in a folder where neither it nor anything new can be written."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = folder / "r.db"
    shutil.copy(good_store, path)
    path.chmod(0o444)
    folder.chmod(0o555)
    yield path
    folder.chmod(0o755)
    path.chmod(0o644)


@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_a_read_only_store_can_be_read(
    args: list[str],
    read_only_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    before = digest(read_only_store)
    code, _, err = cli([*args, "--store", str(read_only_store)], capsys)
    assert code == 0, err
    assert digest(read_only_store) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files")
def test_run_into_a_read_only_store_is_one_line(
    read_only_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_multiprocess import write_study

    spec = write_study(tmp_path / "s.toml", name="tiny", budget={"epochs": 1}, seeds=[0, 1])
    code, _, err = cli(["run", str(spec), "--store", str(read_only_store), "--quiet"], capsys)
    one_line_error(code, err, str(read_only_store), "read-only")


def test_open_read_only_never_creates_a_schema(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    path.touch()
    with pytest.raises(StoreError, match="is empty, not a batchlab store"):
        Store(path, read_only=True)
    assert path.stat().st_size == 0
    with pytest.raises(StoreError, match="does not exist"):
        load_study("s", tmp_path / "missing.db")


# ---- export --out -----------------------------------------------------------------------------


def test_export_into_a_missing_folder_or_a_full_disk(
    good_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = cli(
        ["export", "tiny", "--store", str(good_store), "--out", str(tmp_path / "no" / "e.csv")],
        capsys,
    )
    one_line_error(code, err, "does not exist", "create it")
    out = tmp_path / "e.csv"
    out.write_text("an older export\n")

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    code, _, err = cli(["export", "tiny", "--store", str(good_store), "--out", str(out)], capsys)
    monkeypatch.undo()
    one_line_error(code, err, str(out), "No space left on device")
    assert out.read_text() == "an older export\n"  # nothing half-written over it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv"]
