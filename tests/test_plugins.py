"""Users' hooks (`package.module:function`) import from the current directory, as `python -m`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CLI = Path(sys.executable).parent / "batchlab"
"""The installed console script: unlike `python -m`, it does not put the current directory on
sys.path by itself."""


def test_a_module_in_the_current_directory_needs_no_pythonpath(tmp_path: Path) -> None:
    (tmp_path / "my_data_here.py").write_text(
        "import numpy as np\n"
        "def make():\n"
        "    g = np.random.default_rng(0)\n"
        "    x = g.normal(size=(64, 4)).astype('float32')\n"
        "    y = (x[:, 0] > 0).astype('int64')\n"
        "    return x, y, x[:16], y[:16]\n"
    )
    (tmp_path / "s.toml").write_text(
        'name = "here"\ndataset = "my_data_here:make"\nmodel_args = { widths = [8] }\n'
        'batch_sizes = [16]\nbudget = { epochs = 1 }\ndevice = "cpu"\n'
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH at all
    out = subprocess.run(
        [str(CLI), "run", "s.toml", "--store", "r.db", "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r.db").exists()
    show = subprocess.run(
        [str(CLI), "show", "here", "--store", "r.db"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "1 complete" in show.stdout, show.stdout + show.stderr


def test_file_datasets_are_not_code_and_match_the_data_loaders() -> None:
    from batchlab.data import PREFIXED
    from batchlab.plugins import FILE_DATASETS, is_hook

    assert set(PREFIXED) == FILE_DATASETS
    assert not is_hook("text:/tmp/corpus.txt", field="dataset")
    assert not is_hook("npz:/tmp/d.npz", field="dataset")
    assert is_hook("mymod:load", field="dataset")
