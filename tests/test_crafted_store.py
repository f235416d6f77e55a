"""A store is data: a crafted spec in it that names code (`dataset = "os:system"`) never runs,
whichever command reads the store; only `--trust-store` (or the user's own spec) imports hooks."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from batchlab.cli import main
from batchlab.plugins import only_hooks, resolve_callable
from batchlab.results import load_study
from batchlab.study import interpolate_trials, run_study
from tests.conftest import tiny_spec
from tests.test_multiprocess import write_study


@pytest.fixture(scope="module")
def honest_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store of the tiny study (two batch sizes, COMPLETE, weights kept)."""
    path = tmp_path_factory.mktemp("honest") / "r.db"
    run_study(tiny_spec(name="tiny", budget={"epochs": 1}), store=path)
    return path


def craft(store: Path, tmp_path: Path, field: str = "dataset") -> Path:
    """A copy of `store` whose stored spec names `os:system` with a command touching MARKER."""
    crafted = tmp_path / "crafted.db"
    shutil.copy(store, crafted)
    with contextlib.closing(sqlite3.connect(crafted)) as con, con:
        (blob,) = con.execute("SELECT spec_json FROM studies WHERE name = 'tiny'").fetchone()
        spec = json.loads(blob)
        marker = str(tmp_path / "MARKER")
        if field == "dataset":
            spec.update(dataset="os:system", dataset_args={"command": f"touch {marker}"})
        elif field == "model":
            spec.update(model="os:system", model_args={"command": f"touch {marker}"})
        else:
            spec.update(task="os:system", task_args={"command": f"touch {marker}"})
        con.execute("UPDATE studies SET spec_json = ? WHERE name = 'tiny'", (json.dumps(spec),))
    return crafted


READERS = [
    ["ls"],
    ["show", "tiny"],
    ["export", "tiny"],
    ["report", "tiny", "--no-png"],
    ["recommend", "tiny"],
    ["critical", "tiny", "--boot", "0"],
    ["compare", "tiny", "--no-png"],
    ["interpolate", "tiny", "--points", "2"],
    ["profile", "--study", "tiny", "--batch-sizes", "8", "--no-save"],
]


@pytest.mark.parametrize("field", ["dataset", "model", "task"])
@pytest.mark.parametrize("args", READERS, ids=lambda a: a[0])
def test_no_command_runs_code_a_store_names(
    args: list[str],
    field: str,
    honest_store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    crafted = craft(honest_store, tmp_path, field)
    monkeypatch.chdir(tmp_path)
    before = crafted.read_bytes()
    code = 0
    try:
        main([*args, "--store", str(crafted)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert not (tmp_path / "MARKER").exists(), f"{args[0]} ran the stored command"
    if args[0] in ("interpolate", "profile"):  # these rebuild the data: refused, in one line
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "'os:system' names code" in err and "--trust-store" in err
    else:  # the others read results only, and still work
        assert code == 0, err
    if args[0] not in ("report", "compare", "profile"):
        assert crafted.read_bytes() == before


def test_run_into_a_crafted_store_runs_nothing_it_names(
    honest_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crafted = craft(honest_store, tmp_path)
    monkeypatch.chdir(tmp_path)
    study_file = write_study(tmp_path / "tiny.toml", name="tiny")
    with pytest.raises(SystemExit) as exit_:  # another spec under the stored name: refused
        main(["run", str(study_file), "--store", str(crafted), "--quiet"])
    assert exit_.value.code == 2
    assert not (tmp_path / "MARKER").exists()


def test_the_payload_is_real_and_trust_store_imports_it(
    honest_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same crafted store, with --trust-store: the command runs (what the default
    prevents), so the tests above test the guard, not a harmless payload."""
    crafted = craft(honest_store, tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):  # os.system returns 0, not data: a DataError after it ran
        main(["interpolate", "tiny", "--store", str(crafted), "--trust-store", "--points", "2"])
    assert (tmp_path / "MARKER").exists()


def test_interpolate_in_a_real_process(honest_store: Path, tmp_path: Path) -> None:
    crafted = craft(honest_store, tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "batchlab", "interpolate", "tiny", "--store", str(crafted)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "MARKER").exists()


def test_python_api_trusts_only_what_it_is_told(honest_store: Path, tmp_path: Path) -> None:
    crafted = craft(honest_store, tmp_path)
    study = load_study("tiny", crafted)
    assert not study.hooks_trusted and study.allowed_hooks == frozenset()
    with pytest.raises(Exception, match="names code"):
        interpolate_trials(study, None, None, points=2)
    assert not (tmp_path / "MARKER").exists()
    assert load_study("tiny", crafted, trust_hooks=True).allowed_hooks == {"os:system"}


def test_only_hooks_narrows_and_never_widens() -> None:
    assert callable(resolve_callable("os.path:join", field="model"))
    with only_hooks({"os.path:join"}):
        assert callable(resolve_callable("os.path:join", field="model"))
        with pytest.raises(Exception, match="names code"):
            resolve_callable("os:getcwd", field="model")
        with only_hooks({"os:getcwd"}), pytest.raises(Exception, match="names code"):
            resolve_callable("os:getcwd", field="model")
    assert callable(resolve_callable("os:getcwd", field="model"))
