"""Bad input per task, as a user meets it through `batchlab run`: a one-line error, exit status
2 and no store written when the data or the task's options are wrong; a model whose outputs do
not fit its task fails its trials with the task's one-line message while the study goes on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batchlab.cli import main
from tests.conftest import TASK_SPECS
from tests.test_multiprocess import write_study


def write_toml(path: Path, spec: dict[str, Any]) -> Path:
    """A study file from a spec dict; None values are left out (unset)."""
    return write_study(path, {k: v for k, v in spec.items() if v is not None})


def refused(spec: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run `spec` through the CLI; assert exit 2, one line on stderr, no traceback and no store;
    return that line."""
    store = tmp_path / "r.db"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(write_toml(tmp_path / "s.toml", spec)), "--store", str(store)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("batchlab: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert not store.exists()
    return lines[0]


def regression_npz(path: Path, *, bad: str, value: float) -> Path:
    """Real-valued targets with one bad entry (`value` in `bad`, y_train or y_test)."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "x_train": rng.normal(size=(64, 4)).astype(np.float32),
        "y_train": rng.normal(size=64),
        "x_test": rng.normal(size=(32, 4)).astype(np.float32),
        "y_test": rng.normal(size=32),
    }
    arrays[bad][5] = value
    np.savez(
        path,
        x_train=arrays["x_train"],
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
    )
    return path


@pytest.mark.parametrize("task", [None, "regression"])
@pytest.mark.parametrize(("bad", "value"), [("y_train", np.nan), ("y_test", np.inf)])
def test_regression_targets_with_nan_or_inf_are_refused(
    task: str | None,
    bad: str,
    value: float,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Named or inferred from the float targets, regression refuses a NaN or an infinity in
    either split before any trial runs."""
    data = regression_npz(tmp_path / "bad.npz", bad=bad, value=value)
    spec = {**TASK_SPECS["regression"], "dataset": f"npz:{data}", "task": task}
    spec.pop("dataset_args")
    line = refused(spec, tmp_path, capsys)
    assert line == f"batchlab: error: npz:{data}: regression targets contain NaN or infinity"


@pytest.mark.parametrize(
    ("task", "task_args", "message"),
    [
        ("regression", {"huber": 1.0}, "regression takes no options, not ['huber']; remove them"),
        (None, {"huber": 1.0}, "regression takes no options, not ['huber']; remove them"),
        ("regression", {"loss": "huber"}, "task_args.loss: 'huber' is unknown; use mse or mae"),
        (None, {"loss": "huber"}, "task_args.loss: 'huber' is unknown; use mse or mae"),
    ],
    ids=["named-option", "inferred-option", "named-loss", "inferred-loss"],
)
def test_unknown_regression_task_args_are_refused(
    task: str | None,
    task_args: dict[str, Any],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unknown option, or an unknown loss, for regression: refused when the spec loads if the
    task is named, when the data shows it is regression if it is inferred."""
    spec = {**TASK_SPECS["regression"], "task": task, "task_args": task_args}
    line = refused(spec, tmp_path, capsys)
    assert line.startswith("batchlab: error: ") and line.endswith(message)
    assert "task_args" in line


def test_a_language_model_without_a_time_axis_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that returns logits [B, V] instead of [B, T, V] is found by the preflight (two
    examples through the model and the task's loss before any trial): a one-line error naming
    both shapes, exit status 2, and no store. (Before the preflight every trial ran and was
    recorded FAILED, and `run` exited 0 with "2 failed".)"""
    spec = {
        **TASK_SPECS["language-model"],
        "name": "flat-lm",
        "model": "tests.workloads:last_token",
        "batch_sizes": [8, 16],
    }
    store = tmp_path / "r.db"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(write_toml(tmp_path / "s.toml", spec)), "--store", str(store)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert re.search(
        r"model: a language model must map tokens \[B, T\] to logits \[B, T, V\]; got"
        r" \(2, 11\) for targets \(2, 12\)",
        err[0],
    ), err[0]
    assert not store.exists()
