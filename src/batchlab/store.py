"""The results store: SQLite (stdlib, WAL), one file, every result durable as soon as it exists.

Tables: `studies` (name, spec), `trials` (resolved spec, state, lr used, provenance), `evals`
(one row per trial per evaluation), `checkpoints` (the latest per-epoch checkpoint of each
unfinished trial) and `snapshots` (a branched design's reference checkpoints at its branch
points, kept after the trial ends: the branches start from them). An evaluation row and the
checkpoint taken at the same moment are written in one transaction, so a killed process never
leaves one without the other.

Several processes may share a store: a process claims a trial (`claim_trial`) in one
transaction, which succeeds only for a WAITING trial or a RUNNING one whose owner is gone (a
dead process on this host, or a heartbeat older than the lease elsewhere), and then alone
writes that trial's rows, each write checked against its claim (`ClaimLost` otherwise).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from batchlab.errors import StoreError
from batchlab.probes import ProbeRecord
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's write to finish
SCHEMA_VERSION = 3  # 2: trials.owner, trials.heartbeat_at (claims); 3: snapshots. Older migrate
LEASE_S = 60.0
"""A claim whose owner runs on another host lapses when its heartbeat is older than this."""
_EVAL_COLUMNS = EvalRecord.columns()
TRIAL_TABLES = ("evals", "probes", "weights", "checkpoints", "snapshots")
"""The tables holding a trial's rows (besides `trials`)."""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY,
    study TEXT NOT NULL REFERENCES studies(name),
    number INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    lr_base REAL NOT NULL,
    lr REAL NOT NULL,
    seed INTEGER NOT NULL,
    params_json TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    diverged_step INTEGER,
    started_at REAL,
    ended_at REAL,
    provenance_json TEXT NOT NULL DEFAULT '{{}}',
    owner TEXT,
    heartbeat_at REAL
);
CREATE INDEX IF NOT EXISTS trials_by_study ON trials(study, number);
CREATE TABLE IF NOT EXISTS evals (
    trial_id TEXT NOT NULL REFERENCES trials(trial_id),
    {
    ", ".join(
        f"{c} {'INTEGER' if c in ('idx', 'step', 'samples', 'peak_mem_bytes') else 'REAL'}"
        for c in _EVAL_COLUMNS
    )
},
    PRIMARY KEY (trial_id, idx)
);
CREATE TABLE IF NOT EXISTS probes (
    trial_id TEXT NOT NULL REFERENCES trials(trial_id),
    step INTEGER NOT NULL,
    probe TEXT NOT NULL,
    key TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (trial_id, step, probe, key)
);
CREATE TABLE IF NOT EXISTS weights (
    trial_id TEXT PRIMARY KEY REFERENCES trials(trial_id),
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    trial_id TEXT PRIMARY KEY REFERENCES trials(trial_id),
    eval_idx INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    trial_id TEXT NOT NULL REFERENCES trials(trial_id),
    step INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (trial_id, step)
);
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    subject TEXT NOT NULL,
    device TEXT NOT NULL,
    profile_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS profiles_by_subject ON profiles(subject, created_at);
"""


def profile_subject(
    *, model: str, model_args: dict[str, Any], dataset: str, dataset_args: dict[str, Any]
) -> str:
    """What a hardware profile measured, as a key: the model and the data's shape-defining
    source (a study trains the same network on the same inputs when these match)."""
    return json.dumps(
        {"model": model, "model_args": model_args, "dataset": dataset, "args": dataset_args},
        sort_keys=True,
    )


class ClaimLost(Exception):
    """A write for a trial this process no longer owns (another process reclaimed it)."""


class StoreUnavailable(StoreError):
    """A write that kept failing for a passing reason (locked, disk full) after every retry:
    the driver stops here, and the trial it was writing stays resumable (never FAILED)."""


@dataclass(frozen=True, kw_only=True)
class WriteRetry:
    """How a write transaction that fails for a passing reason (another process holds the lock
    past the busy timeout, a full disk) is retried: `attempts` tries in all, waiting `first_s`,
    then twice as long each time, at most `max_s`, in between."""

    attempts: int = 8
    first_s: float = 0.5
    max_s: float = 30.0

    def delays(self) -> list[float]:
        """The waits between tries (defaults: 0.5, 1, 2, 4, 8, 16, 30 s: 61.5 s in all)."""
        return [min(self.max_s, self.first_s * 2**i) for i in range(max(0, self.attempts - 1))]


WRITE_RETRY = WriteRetry()
"""The default retry of every write; with the 30 s busy timeout per try, a lock held by another
process is waited for at most 8 x 30 s + 61.5 s, about 5 minutes, before the driver stops."""

_TRANSIENT = ("database is locked", "database table is locked", "disk is full", "disk i/o error")

P = ParamSpec("P")
R = TypeVar("R")


def _explain(path: Path, err: sqlite3.Error) -> StoreError:
    """A SQLite failure as a one-line error naming the file and what to do."""
    text = str(err)
    low = text.lower()
    if "malformed" in low or "not a database" in low or "corrupt" in low:
        return StoreError(
            f"store {path} is damaged ({text}); restore it from a backup, salvage it with"
            f" `sqlite3 {path} .recover`, or pass --store NEW.db"
        )
    if "readonly" in low or "read-only" in low:
        return StoreError(
            f"store {path} is read-only ({text}); only run writes: make it (and its folder)"
            " writable, or pass --store NEW.db"
        )
    if "disk is full" in low:
        return StoreError(f"store {path}: the disk is full ({text}); free space and rerun")
    if "unable to open" in low:
        return StoreError(
            f"store {path}: cannot open ({text}); check that its folder exists and is readable"
        )
    return StoreError(f"store {path}: SQLite failed ({text}); check the file or pass --store")


def _reads(method: Callable[P, R]) -> Callable[P, R]:
    """A read of the store: SQLite failures and malformed stored values (JSON, states) become
    one-line `StoreError`s naming the file, never tracebacks."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
            raise
        except sqlite3.DatabaseError as err:
            raise _explain(args[0].path, err) from None  # type: ignore[attr-defined]
        except (ValueError, TypeError, KeyError) as err:
            path = args[0].path  # type: ignore[attr-defined]
            raise StoreError(
                f"store {path}: malformed stored data ({type(err).__name__}: {err});"
                " the file was edited or damaged: restore it from a backup or pass --store NEW.db"
            ) from None

    return wrapper


def _start_ticks(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux), to tell a reused pid apart;
    empty where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def process_owner() -> str:
    """This process as a claim owner: host/pid/start time."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_start_ticks(pid)}"


def owner_alive(owner: str | None, heartbeat_at: float | None, *, lease_s: float) -> bool:
    """Whether a claim still holds: on this host, its process exists (same pid and start time);
    elsewhere, its heartbeat is younger than `lease_s`. A claim without owner (a store written
    before claims existed) never holds."""
    if not owner:
        return False
    host, _, rest = owner.partition("/")
    pid_text, _, ticks = rest.partition("/")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by another user
        return not ticks or _start_ticks(pid) in ("", ticks)
    return heartbeat_at is not None and time.time() - heartbeat_at < lease_s


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v


def _none_to_nan(v: Any) -> Any:
    return float("nan") if v is None else v


class Store:
    """A study store backed by one SQLite file. Open it, use it, close it (or use `with`).

    `read_only` opens the file for reading only (`ls`, `show`, `report`...): nothing is
    created, migrated or switched to WAL, and a file that is not a batchlab store is refused
    unchanged. Writes retry a failure that passes (a lock, a full disk) as `retry` says."""

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        busy_timeout_s: float | None = None,
        retry: WriteRetry | None = None,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.retry = retry or WRITE_RETRY  # module defaults, read now: tests may set them
        self._busy_timeout_s = BUSY_TIMEOUT_S if busy_timeout_s is None else busy_timeout_s
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as err:
            raise _explain(self.path, err) from None
        try:
            self._open()
        except StoreError:
            self._db.close()
            raise
        except sqlite3.DatabaseError as err:
            self._db.close()
            if "not a database" in str(err) and not read_only:
                raise StoreError(
                    f"store {self.path}: cannot open as a batchlab SQLite store ({err});"
                    " pass --store NEW.db"
                ) from None
            raise _explain(self.path, err) from None

    def _connect(self) -> sqlite3.Connection:
        timeout = self._busy_timeout_s
        if not self.read_only:
            return sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        uri = self.path.resolve().as_uri()
        try:
            db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None)
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return db
        except sqlite3.OperationalError as err:
            # A WAL store on read-only media: SQLite cannot create its shared-memory file
            # there; nothing can write it either, so it is read as an immutable file.
            if "unable to open" not in str(err):
                raise
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:  # immutable reads would skip it
                raise StoreError(
                    f"store {self.path}: its last writes are still in {wal.name}, which a"
                    " read-only folder cannot merge; copy the store and its -wal file to a"
                    " writable folder and read it there"
                ) from None
            return sqlite3.connect(
                f"{uri}?immutable=1", uri=True, timeout=timeout, isolation_level=None
            )

    def _schema_version(self) -> int | None:
        """The store's schema version; None for an empty file; a StoreError for a SQLite file
        that is not a batchlab store (left as it is)."""
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if not tables:
            return None
        row = None
        if "meta" in tables:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not {"studies", "trials"} <= tables:
            raise StoreError(
                f"store {self.path} is an SQLite file but not a batchlab store (left unchanged);"
                " pass the right --store, or a new file"
            )
        try:
            return int(row[0])
        except ValueError:
            raise StoreError(
                f"store {self.path}: malformed schema version {row[0]!r}; restore it from a backup"
            ) from None

    def _open(self) -> None:
        version = self._schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} was written by a newer batchlab (schema {version}, this one"
                f" reads {SCHEMA_VERSION}); upgrade batchlab"
            )
        if self.read_only:
            if version is None:
                raise StoreError(
                    f"store {self.path} is empty, not a batchlab store (left unchanged);"
                    " run a study into it first, or pass the right --store"
                )
            return
        # Switching a new file to WAL needs the file to itself, and SQLite answers "locked"
        # at once, without waiting, while another process opens it too: retry for a while.
        deadline = time.monotonic() + self._busy_timeout_s
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        if version != SCHEMA_VERSION:  # a store at this schema is not written to on opening
            # In one write transaction, which waits for other writers (busy timeout).
            self._db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older store up to this schema (new columns only: old readers still work)."""

        def body(db: sqlite3.Connection) -> None:
            columns = {r[1] for r in db.execute("PRAGMA table_info(trials)")}
            for name, kind in (("owner", "TEXT"), ("heartbeat_at", "REAL")):
                if name not in columns:
                    db.execute(f"ALTER TABLE trials ADD COLUMN {name} {kind}")
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

        self._write(body)

    @classmethod
    def open_existing(cls, path: str | Path, *, read_only: bool = True) -> Store:
        """Open a store that must already exist (read paths never create an empty file), for
        reading only unless `read_only=False`."""
        if not Path(path).is_file():
            raise StoreError(f"store {path} does not exist; run a study first or pass --store PATH")
        return cls(path, read_only=read_only)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_once(self, body: Callable[[sqlite3.Connection], R]) -> R:
        """Run `body` in one write transaction (BEGIN IMMEDIATE waits for other writers)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = body(self._db)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        return out

    def _write(self, body: Callable[[sqlite3.Connection], R]) -> R:
        """`_write_once`, retried with backoff (`self.retry`) while it fails for a passing
        reason; `StoreUnavailable` when every try failed, a `StoreError` for any other SQLite
        failure (damaged, read-only), each naming the file."""
        if self.read_only:
            raise StoreError(f"store {self.path} was opened for reading only; writes need run")
        delays = self.retry.delays()
        started = time.monotonic()
        for attempt in range(len(delays) + 1):
            try:
                return self._write_once(body)
            except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
                raise
            except sqlite3.OperationalError as err:
                if not any(t in str(err).lower() for t in _TRANSIENT):
                    raise _explain(self.path, err) from None
                if attempt == len(delays):
                    what = "free disk space" if "full" in str(err) else "wait for it to finish"
                    raise StoreUnavailable(
                        f"store {self.path}: a write failed {attempt + 1} times over"
                        f" {time.monotonic() - started:.0f} s ({err}); {what}, then rerun the"
                        " same command: the trials interrupted resume from their last"
                        " checkpoint, nothing recorded is lost"
                    ) from None
                time.sleep(delays[attempt])
            except sqlite3.DatabaseError as err:
                raise _explain(self.path, err) from None
        raise AssertionError("unreachable")

    # ---- studies ---------------------------------------------------------------------------------
    def put_study(self, name: str, spec: dict[str, Any]) -> bool:
        """Create or update a study's spec; True when the stored spec changed."""
        blob = json.dumps(spec, sort_keys=True)
        now = time.time()

        def body(db: sqlite3.Connection) -> bool:
            row = db.execute("SELECT spec_json FROM studies WHERE name = ?", (name,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies(name, spec_json, created_at, updated_at) VALUES (?,?,?,?)",
                    (name, blob, now, now),
                )
                return False
            if row[0] == blob:
                return False
            db.execute(
                "UPDATE studies SET spec_json = ?, updated_at = ? WHERE name = ?", (blob, now, name)
            )
            return True

        return self._write(body)

    @_reads
    def study_names(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM studies ORDER BY created_at")]

    @_reads
    def study_spec(self, name: str) -> dict[str, Any]:
        row = self._db.execute("SELECT spec_json FROM studies WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = ", ".join(self.study_names()) or "none"
            raise StoreError(f"no study named {name!r} in {self.path} (studies: {known})")
        return dict(json.loads(row[0]))

    @_reads
    def stored_spec(self, name: str) -> dict[str, Any] | None:
        """A study's stored spec, or None when the store holds no study of that name."""
        row = self._db.execute("SELECT spec_json FROM studies WHERE name = ?", (name,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put_check(self, name: str, verdict: dict[str, Any] | None) -> None:
        """Keep `batchlab check`'s verdict on study `name` (small JSON in `meta`, key check:NAME;
        a newer check replaces it; None removes a stale one)."""
        blob = json.dumps(verdict, sort_keys=True)

        def body(db: sqlite3.Connection) -> None:
            if verdict is None:
                db.execute("DELETE FROM meta WHERE key = ?", (f"check:{name}",))
                return
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"check:{name}", blob)
            )

        self._write(body)

    @_reads
    def study_check(self, name: str) -> dict[str, Any] | None:
        """The stored `batchlab check` verdict of study `name`, or None (never checked)."""
        row = self._db.execute(
            "SELECT value FROM meta WHERE key = ?", (f"check:{name}",)
        ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put_code(self, name: str, fingerprints: dict[str, str]) -> None:
        """Keep the fingerprints of the user's code behind study `name` (hook -> sha256, small
        JSON in `meta`, key code:NAME); {} removes them (a study of built-ins only)."""
        blob = json.dumps(fingerprints, sort_keys=True)

        def body(db: sqlite3.Connection) -> None:
            if not fingerprints:
                db.execute("DELETE FROM meta WHERE key = ?", (f"code:{name}",))
                return
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"code:{name}", blob)
            )

        self._write(body)

    @_reads
    def study_code(self, name: str) -> dict[str, str] | None:
        """The stored fingerprints of study `name`'s code (hook -> sha256), or None (none
        stored: built-ins only, or a study run before fingerprints were kept)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"code:{name}",)).fetchone()
        return None if row is None else {str(k): str(v) for k, v in json.loads(row[0]).items()}

    def delete_study_trials(self, name: str) -> int:
        """Delete every trial of study `name` with its evaluations, probe records, weights and
        checkpoints (`run --force`); other studies are untouched. The number deleted."""

        def body(db: sqlite3.Connection) -> int:
            ids = "SELECT trial_id FROM trials WHERE study = ?"
            for table in TRIAL_TABLES:
                db.execute(f"DELETE FROM {table} WHERE trial_id IN ({ids})", (name,))
            return int(db.execute("DELETE FROM trials WHERE study = ?", (name,)).rowcount)

        return self._write(body)

    def reset_failed(self, trial_ids: Sequence[str]) -> int:
        """Make the FAILED trials among `trial_ids` WAITING again, their partial evaluations
        and probe records dropped, so they rerun from scratch (`run --retry-failed`); how many."""

        def body(db: sqlite3.Connection) -> int:
            n = 0
            for tid in trial_ids:
                cur = db.execute(
                    "UPDATE trials SET state = ?, error = NULL, diverged_step = NULL,"
                    " started_at = NULL, ended_at = NULL, owner = NULL, heartbeat_at = NULL"
                    " WHERE trial_id = ? AND state = ?",
                    (TrialState.WAITING.value, tid, TrialState.FAILED.value),
                )
                if cur.rowcount:
                    n += 1
                    for table in TRIAL_TABLES:
                        db.execute(f"DELETE FROM {table} WHERE trial_id = ?", (tid,))
            return n

        return self._write(body)

    @_reads
    def live_owners(self, study: str, *, lease_s: float = LEASE_S) -> list[str]:
        """The live processes (other than this one) holding RUNNING trials of `study`."""
        me = process_owner()
        rows = self._db.execute(
            "SELECT DISTINCT owner, heartbeat_at FROM trials WHERE study = ? AND state = ?",
            (study, TrialState.RUNNING.value),
        ).fetchall()
        return [o for o, beat in rows if o != me and owner_alive(o, beat, lease_s=lease_s)]

    @_reads
    def study_summary(self) -> list[dict[str, Any]]:
        """One dict per study: name, trial counts per state, creation time."""
        out = []
        for name, created in self._db.execute(
            "SELECT name, created_at FROM studies ORDER BY created_at"
        ).fetchall():
            counts = dict(
                self._db.execute(
                    "SELECT state, COUNT(*) FROM trials WHERE study = ? GROUP BY state", (name,)
                ).fetchall()
            )
            out.append({"name": name, "created_at": created, "states": counts})
        return out

    # ---- trials ----------------------------------------------------------------------------------
    def add_trials(self, study: str, trials: Sequence[dict[str, Any]]) -> None:
        """Register trials (WAITING) that are not in the store yet; existing ones are left as is."""

        def body(db: sqlite3.Connection) -> None:
            (start,) = db.execute(
                "SELECT COALESCE(MAX(number) + 1, 0) FROM trials WHERE study = ?", (study,)
            ).fetchone()
            number = int(start)
            for t in trials:
                cur = db.execute(
                    "INSERT OR IGNORE INTO trials(trial_id, study, number, batch_size, lr_base, lr,"
                    " seed, params_json, state) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        t["trial_id"],
                        study,
                        number,
                        t["batch_size"],
                        t["lr_base"],
                        t["lr"],
                        t["seed"],
                        json.dumps(t["params"], sort_keys=True),
                        TrialState.WAITING.value,
                    ),
                )
                number += cur.rowcount

        return self._write(body)

    @_reads
    def trial_state(self, trial_id: str) -> TrialState:
        row = self._db.execute(
            "SELECT state FROM trials WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no trial {trial_id!r} in {self.path}")
        return TrialState(row[0])

    def start_trial(self, trial_id: str, provenance: dict[str, Any]) -> tuple[int, bytes | None]:
        """Mark a trial RUNNING (owned by this process, whoever held it) and return (last eval
        idx kept, checkpoint payload or None).

        Evaluation rows recorded after the checkpoint (by a run that was killed before its next
        checkpoint) are deleted here, so the resumed run writes them again exactly once.
        """

        def body(db: sqlite3.Connection) -> tuple[int, bytes | None]:
            return self._start(db, trial_id, provenance, process_owner())

        return self._write(body)

    def claim_trial(
        self,
        trial_id: str,
        provenance: dict[str, Any],
        *,
        owner: str,
        lease_s: float = LEASE_S,
    ) -> tuple[int, bytes | None] | None:
        """`start_trial` for one of several processes: None unless the trial is WAITING, or
        RUNNING under a claim that no longer holds (`owner_alive`). Atomic: the check and the
        update happen in one write transaction, so two processes never both get a trial."""

        def body(db: sqlite3.Connection) -> tuple[int, bytes | None] | None:
            row = db.execute(
                "SELECT state, owner, heartbeat_at FROM trials WHERE trial_id = ?", (trial_id,)
            ).fetchone()
            if row is None:
                raise StoreError(f"no trial {trial_id!r} in {self.path}")
            if not self._claimable(row, owner, lease_s):
                return None
            return self._start(db, trial_id, provenance, owner)

        return self._write(body)

    @staticmethod
    def _claimable(row: Sequence[Any], owner: str, lease_s: float) -> bool:
        """(state, owner, heartbeat_at) of a trial: may `owner` claim it? Its own claim it may
        renew (a restart after its worker died)."""
        state, holder, beat = TrialState(row[0]), row[1], row[2]
        if state.is_finished:
            return False
        if state == TrialState.RUNNING and holder != owner:
            return not owner_alive(holder, beat, lease_s=lease_s)
        return True

    @_reads
    def claim_states(
        self, trial_ids: Sequence[str], *, owner: str, lease_s: float = LEASE_S
    ) -> dict[str, tuple[TrialState, bool]]:
        """(state, claimable by `owner`) per trial, read without taking any claim."""
        out = {}
        for tid in trial_ids:
            row = self._db.execute(
                "SELECT state, owner, heartbeat_at FROM trials WHERE trial_id = ?", (tid,)
            ).fetchone()
            if row is None:
                raise StoreError(f"no trial {tid!r} in {self.path}")
            out[tid] = (TrialState(row[0]), self._claimable(row, owner, lease_s))
        return out

    def _start(
        self, db: sqlite3.Connection, trial_id: str, provenance: dict[str, Any], owner: str
    ) -> tuple[int, bytes | None]:
        row = db.execute(
            "SELECT eval_idx, payload FROM checkpoints WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        keep = int(row[0]) if row else -1
        kept_step = db.execute(
            "SELECT COALESCE(MAX(step), -1) FROM evals WHERE trial_id = ? AND idx <= ?",
            (trial_id, keep),
        ).fetchone()[0]
        db.execute("DELETE FROM evals WHERE trial_id = ? AND idx > ?", (trial_id, keep))
        db.execute("DELETE FROM probes WHERE trial_id = ? AND step > ?", (trial_id, int(kept_step)))
        db.execute(
            "DELETE FROM snapshots WHERE trial_id = ? AND step > ?", (trial_id, int(kept_step))
        )
        now = time.time()
        db.execute(
            "UPDATE trials SET state = ?, attempts = attempts + 1, started_at ="
            " COALESCE(started_at, ?), provenance_json = ?, error = NULL, owner = ?,"
            " heartbeat_at = ? WHERE trial_id = ?",
            (TrialState.RUNNING.value, now, json.dumps(provenance), owner, now, trial_id),
        )
        return keep, (bytes(row[1]) if row else None)

    def heartbeat(self, owner: str) -> int:
        """Renew every claim `owner` holds; the number of RUNNING trials it holds."""

        def body(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "UPDATE trials SET heartbeat_at = ? WHERE owner = ? AND state = ?",
                (time.time(), owner, TrialState.RUNNING.value),
            )
            return int(cur.rowcount)

        return self._write(body)

    def update_provenance(self, trial_id: str, updates: dict[str, Any]) -> None:
        """Merge `updates` (where a worker ran: host, pid, device) into a trial's provenance."""

        def body(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT provenance_json FROM trials WHERE trial_id = ?", (trial_id,)
            ).fetchone()
            if row is not None:
                merged = {**json.loads(row[0]), **updates}
                db.execute(
                    "UPDATE trials SET provenance_json = ? WHERE trial_id = ?",
                    (json.dumps(merged), trial_id),
                )

        return self._write(body)

    @staticmethod
    def _check_claim(db: sqlite3.Connection, trial_id: str, owner: str | None) -> None:
        if owner is None:
            return
        row = db.execute(
            "SELECT owner, state FROM trials WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        if row is None or row[0] != owner or row[1] != TrialState.RUNNING.value:
            raise ClaimLost(f"trial {trial_id}: claimed by {row[0] if row else None}, not {owner}")

    def add_eval(
        self,
        trial_id: str,
        record: EvalRecord,
        checkpoint: bytes | None,
        probes: Sequence[ProbeRecord] = (),
        *,
        owner: str | None = None,
    ) -> None:
        """Store one evaluation and, in the same transaction, its checkpoint and probe records.
        With `owner`, only while that owner holds the trial's claim (else `ClaimLost`)."""
        values = [_nan_to_none(v) for v in record.as_dict().values()]

        def body(db: sqlite3.Connection) -> None:
            self._check_claim(db, trial_id, owner)
            self._insert_probes(db, trial_id, probes)
            db.execute(
                f"INSERT INTO evals(trial_id, {', '.join(_EVAL_COLUMNS)})"
                f" VALUES (?, {', '.join('?' for _ in _EVAL_COLUMNS)})",
                (trial_id, *values),
            )
            if checkpoint is not None:
                db.execute(
                    "INSERT OR REPLACE INTO checkpoints(trial_id, eval_idx, payload)"
                    " VALUES (?,?,?)",
                    (trial_id, record.idx, checkpoint),
                )

        return self._write(body)

    def add_snapshot(
        self, trial_id: str, step: int, payload: bytes, *, owner: str | None = None
    ) -> None:
        """Keep a reference trial's checkpoint at a branch point (batchlab.branched). With
        `owner`, only while that owner holds the trial's claim (else `ClaimLost`)."""

        def body(db: sqlite3.Connection) -> None:
            self._check_claim(db, trial_id, owner)
            db.execute(
                "INSERT OR REPLACE INTO snapshots(trial_id, step, payload) VALUES (?,?,?)",
                (trial_id, step, payload),
            )

        return self._write(body)

    @_reads
    def snapshot(self, trial_id: str, step: int) -> bytes | None:
        """The checkpoint a reference trial kept at `step`, or None."""
        row = self._db.execute(
            "SELECT payload FROM snapshots WHERE trial_id = ? AND step = ?", (trial_id, step)
        ).fetchone()
        return None if row is None else bytes(row[0])

    @staticmethod
    def _insert_probes(
        db: sqlite3.Connection, trial_id: str, probes: Sequence[ProbeRecord]
    ) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO probes(trial_id, step, probe, key, value) VALUES (?,?,?,?,?)",
            [(trial_id, *(_nan_to_none(v) for v in p.as_row())) for p in probes],
        )

    def finish_trial(
        self,
        trial_id: str,
        state: TrialState,
        *,
        error: str | None = None,
        diverged_step: int | None = None,
        probes: Sequence[ProbeRecord] = (),
        weights: bytes | None = None,
        owner: str | None = None,
    ) -> None:
        """Record a final state (with late probe records and final weights) and drop the
        checkpoint, which is no longer needed. With `owner`, only while that owner holds the
        trial's claim (else `ClaimLost`)."""
        assert state.is_finished, state

        def body(db: sqlite3.Connection) -> None:
            self._check_claim(db, trial_id, owner)
            self._insert_probes(db, trial_id, probes)
            if weights is not None:
                db.execute(
                    "INSERT OR REPLACE INTO weights(trial_id, payload) VALUES (?, ?)",
                    (trial_id, weights),
                )
            db.execute(
                "UPDATE trials SET state = ?, error = ?, diverged_step = ?, ended_at = ?"
                " WHERE trial_id = ?",
                (state.value, error, diverged_step, time.time(), trial_id),
            )
            db.execute("DELETE FROM checkpoints WHERE trial_id = ?", (trial_id,))

        return self._write(body)

    @_reads
    def probe_rows(self, study: str) -> list[tuple[str, int, str, str, float]]:
        """(trial_id, step, probe, key, value) for every probe record of a study."""
        self.study_spec(study)
        return [
            (r[0], r[1], r[2], r[3], _none_to_nan(r[4]))
            for r in self._db.execute(
                "SELECT trial_id, step, probe, key, value FROM probes WHERE trial_id IN"
                " (SELECT trial_id FROM trials WHERE study = ?)"
                " ORDER BY trial_id, step, probe, key",
                (study,),
            )
        ]

    # ---- hardware profiles ---------------------------------------------------------------------
    def put_profile(self, subject: str, device: str, profile: dict[str, Any]) -> int:
        """Store a hardware profile (`batchlab profile`) of `subject` (`profile_subject`)."""

        def body(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO profiles(created_at, subject, device, profile_json)"
                " VALUES (?, ?, ?, ?)",
                (time.time(), subject, device, json.dumps(profile, sort_keys=True)),
            )
            return int(cur.lastrowid or 0)

        return self._write(body)

    @_reads
    def profiles(self, subject: str) -> list[tuple[float, str, dict[str, Any]]]:
        """(created_at, device, profile) of every profile of `subject`, newest first."""
        return [
            (r[0], r[1], json.loads(r[2]))
            for r in self._db.execute(
                "SELECT created_at, device, profile_json FROM profiles WHERE subject = ?"
                " ORDER BY created_at DESC, id DESC",
                (subject,),
            )
        ]

    @_reads
    def weights(self, trial_id: str) -> bytes | None:
        """The final weights of a finished trial (None when not stored)."""
        row = self._db.execute(
            "SELECT payload FROM weights WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        return bytes(row[0]) if row else None

    @_reads
    def trial_provenance(self, trial_id: str) -> dict[str, Any]:
        """Where and with what a trial ran ({} for an unknown trial)."""
        row = self._db.execute(
            "SELECT provenance_json FROM trials WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        return dict(json.loads(row[0])) if row and row[0] else {}

    @_reads
    def last_eval(self, trial_id: str) -> EvalRecord | None:
        """A trial's latest evaluation (None before its first): one row, for a progress line."""
        row = self._db.execute(
            f"SELECT {', '.join(_EVAL_COLUMNS)} FROM evals WHERE trial_id = ?"
            " ORDER BY idx DESC LIMIT 1",
            (trial_id,),
        ).fetchone()
        if row is None:
            return None
        return EvalRecord(**dict(zip(_EVAL_COLUMNS, (_none_to_nan(v) for v in row), strict=True)))

    @_reads
    def trials(self, study: str) -> list[FrozenTrial]:
        """Every trial of a study, in registration order, with its evaluations."""
        self.study_spec(study)  # raises a clear error for an unknown study
        evals: dict[str, list[EvalRecord]] = {}
        for row in self._db.execute(
            f"SELECT trial_id, {', '.join(_EVAL_COLUMNS)} FROM evals WHERE trial_id IN"
            " (SELECT trial_id FROM trials WHERE study = ?) ORDER BY trial_id, idx",
            (study,),
        ):
            values = dict(zip(_EVAL_COLUMNS, (_none_to_nan(v) for v in row[1:]), strict=True))
            evals.setdefault(row[0], []).append(EvalRecord(**values))
        out = []
        for row in self._db.execute(
            "SELECT trial_id, number, batch_size, lr_base, lr, seed, params_json, state, error,"
            " diverged_step, started_at, ended_at, provenance_json FROM trials WHERE study = ?"
            " ORDER BY number",
            (study,),
        ):
            out.append(
                FrozenTrial(
                    trial_id=row[0],
                    study=study,
                    number=row[1],
                    batch_size=row[2],
                    lr_base=row[3],
                    lr=row[4],
                    seed=row[5],
                    params=json.loads(row[6]),
                    state=TrialState(row[7]),
                    evals=tuple(evals.get(row[0], ())),
                    error=row[8],
                    diverged_step=row[9],
                    started_at=row[10],
                    ended_at=row[11],
                    provenance=json.loads(row[12]),
                )
            )
        return out
