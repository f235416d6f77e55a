"""`batchlab --help`, `--version`, `ls` and `show` import neither torch nor matplotlib nor the
report (they answer in a fraction of a second); the lazy exports keep the public API whole."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import batchlab
import batchlab.probes
import batchlab.tasks
from tests.test_cli_selection import put_study

HEAVY = ("torch", "matplotlib", "pandas", "scipy", "batchlab.report", "batchlab.engine")

PROBE = """
import json, sys
from batchlab.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code or 0
else:
    code = 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "matplotlib", "pandas",
    "scipy") or m.startswith(("batchlab.report", "batchlab.engine")))
print("@@" + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def _imports(*args: str, cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    line = next(ln for ln in done.stderr.splitlines() if ln.startswith("@@"))
    out: dict[str, object] = json.loads(line[2:])
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("start") / "results.db"
    put_study(path, "val", val_fraction=0.25)
    return path


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["ls"], ["show", "val"]], ids=lambda a: a[0]
)
def test_light_commands_import_no_torch_matplotlib_or_report(args: list[str], store: Path) -> None:
    got = (
        _imports(*args, "--store", str(store), cwd=store.parent)
        if args[0]
        in (
            "ls",
            "show",
        )
        else _imports(*args, cwd=store.parent)
    )
    assert got == {"code": 0, "heavy": []}


def test_a_heavy_command_still_gets_what_it_needs(store: Path) -> None:
    got = _imports("export", "val", "--store", str(store), cwd=store.parent)
    heavy = got["heavy"]
    assert got["code"] == 0 and isinstance(heavy, list) and "pandas" in heavy  # it sees imports


def test_every_public_name_is_still_exported() -> None:
    from batchlab.probes.sharpness import sharpness as the_function

    for module in (batchlab, batchlab.probes, batchlab.tasks):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)
    from batchlab import StudySpec, TaskInfo, run_study
    from batchlab.probes import Monitor, ProbeRecord, interpolate, sharpness
    from batchlab.tasks import TASKS, Task

    assert batchlab.spec.StudySpec is StudySpec and callable(run_study)
    assert isinstance(TaskInfo, type)
    assert sharpness is the_function and not isinstance(interpolate, types.ModuleType)
    assert batchlab.probes.sharpness is the_function  # not the submodule of the same name
    from batchlab.check import check as check_function

    assert batchlab.check is check_function  # `batchlab.check` the function, as before
    assert issubclass(TASKS["classification"], Task)
    assert isinstance(Monitor, type) and isinstance(ProbeRecord, type)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = batchlab.nope  # type: ignore[attr-defined]
