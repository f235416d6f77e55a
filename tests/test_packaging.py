"""The package as users get it: `python -m build` makes an sdist and a wheel (the wheel built from
the sdist, so the sdist is complete), and the wheel works installed in a fresh virtual
environment, run from outside the repository.

Offline and fast: the build runs without isolation (setuptools from this environment), and the
fresh venv has no pip and no copies of the dependencies. pip from this environment installs only
the wheel into it (`--no-deps --no-index`), and a .pth file puts this environment's
site-packages after the venv's own, so torch and the rest come from disk. A .pth file's paths are
not scanned for further .pth files, so the project's editable install is not visible there: the
venv's `batchlab` is the wheel's.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from batchlab._version import __version__

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: Sequence[str | Path], cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_version_lives_in_one_place_and_the_changelog_has_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "batchlab._version.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog
    assert re.search(
        rf"^## \[{re.escape(__version__)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], cwd=out)
    return out


@pytest.mark.slow
def test_sdist_and_wheel_carry_what_they_should(dist: Path) -> None:
    (sdist,) = dist.glob(f"batchlab-{__version__}.tar.gz")
    (wheel,) = dist.glob(f"batchlab-{__version__}-py3-none-any.whl")
    with tarfile.open(sdist) as tar:
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for path in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "mkdocs.yml",
        "src/batchlab/_version.py",
        "src/batchlab/presets/quick.toml",
        "tests/conftest.py",
        "docs/hooks/spec_reference.py",
        "examples/quickstart.ipynb",
    ):
        assert path in in_sdist, path
    assert not [n for n in in_sdist if n.endswith((".db", ".pyc"))]
    # every preset and py.typed go into the wheel; tests, docs and examples do not
    presets = {p.name for p in (ROOT / "src" / "batchlab" / "presets").glob("*.toml")}
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = set(zf.namelist())
        metadata = zf.read(f"batchlab-{__version__}.dist-info/METADATA").decode()
    assert {f"batchlab/presets/{p}" for p in presets} <= in_wheel
    assert "batchlab/py.typed" in in_wheel
    assert all(n.startswith(("batchlab/", "batchlab-")) for n in in_wheel)
    assert f"Version: {__version__}" in metadata.splitlines()


@pytest.mark.slow
def test_wheel_installs_and_runs_a_study_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp_path
        ).strip()
    )
    (site / "reuse-deps.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    _run([*pip, "--no-deps", "--no-index", wheel], cwd=tmp_path)
    work = tmp_path / "elsewhere"  # outside the repository: no src/ on the path
    work.mkdir()
    where = _run([python, "-c", "import batchlab; print(batchlab.__file__)"], work).strip()
    assert Path(where).is_relative_to(site)

    batchlab = venv / "bin" / "batchlab"
    assert "Usage: batchlab" in _run([batchlab, "--help"], work)
    assert _run([batchlab, "--version"], work).split()[-1] == __version__
    # a preset (package data in the wheel), made tiny: synthetic data, 2 batch sizes, 1 epoch
    overrides = [
        "dataset=synthetic",
        "dataset_args={n_train=300, n_test=100}",
        "train_subset=200",
        "batch_sizes=[16, 64]",
        "seeds=[0]",
        "budget.epochs=1",
        "model_args={widths=[16]}",
    ]
    sets = [arg for o in overrides for arg in ("--set", o)]
    _run([batchlab, "run", "--preset", "quick", "--store", "s.db", "--quiet", *sets], work)
    with sqlite3.connect(work / "s.db") as db:
        states = db.execute("SELECT batch_size, state FROM trials WHERE study = 'quick'").fetchall()
    assert sorted(states) == [(16, "COMPLETE"), (64, "COMPLETE")]


# The integrations the test suite covers: the test install has them, the main job's does not.
INTEGRATIONS = ("ray", "lightning", "wandb", "mlflow", "tensorboard", "mkdocs", "transformers")


def _make_dry_run(target: str, tmp_path: Path) -> list[str]:
    """The commands `make TARGET` would run into a fresh venv (`make -n`: none is run)."""
    venv = tmp_path / "fresh-venv"  # absent: every install step is due
    cmd: list[str | Path] = ["make", "-n", "--no-print-directory", "-C", ROOT, target]
    cmd.append(f"VENV={venv}")
    return _run(cmd, cwd=tmp_path, timeout=30).splitlines()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_run_installs_what_the_main_job_needs_and_make_test_the_dev_extras(
    tmp_path: Path,
) -> None:
    run, test = _make_dry_run("run", tmp_path), _make_dry_run("test", tmp_path)

    def pip_installs(lines: list[str]) -> list[str]:
        return [line.split("pip install -q ", 1)[1] for line in lines if "pip install" in line]

    # the torch step, the same in both: the pinned CPU wheel, only when torch is absent
    torch_step = [line for line in run if "torch==2.13.0" in line]
    assert len(torch_step) == 1 and 'python -c "import torch" 2>/dev/null ||' in torch_step[0]
    assert torch_step[0] in test
    assert pip_installs(run) == ["torch==2.13.0", "-e ."]  # the package, no extras
    assert pip_installs(test) == ["torch==2.13.0", "-e .", '-e ".[dev]"']
    assert not [line for line in run if "fortunes" in line or "chromium" in line]
    assert run[-1].endswith("batchlab run --preset quick --store batchlab.db --report")
    assert any("dataset-fashion-mnist" in line for line in run)
    for needed in ("dataset-fashion-mnist", "fortunes", "chromium", "pytest -q", "mypy"):
        assert any(needed in line for line in test), needed

    # what each install brings: the core dependencies have no integration; `dev` has every
    # integration extra (so the tests cover them), hf included
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = " ".join(project["dependencies"])
    assert not [name for name in INTEGRATIONS if name in core]
    extras = project["optional-dependencies"]
    for extra, reqs in extras.items():
        assert set(reqs) <= set(extras["dev"]), f"dev lacks the {extra} extra's {reqs}"
    assert all(any(name in r for r in extras["dev"]) for name in INTEGRATIONS)
