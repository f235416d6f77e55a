"""Bad user code and bad data, as a user meets them through `batchlab run`: one line on stderr
naming the field or hook and the fix, exit status 2, and no store written, before any trial
starts (issue 17, item 8). Each case was a traceback, a FAILED or COMPLETE trial with NULL
losses, or a silently wrong study before its fix; docs/reliability.md lists them."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_spec
from tests.tasks.test_bad_input import refused

HOOKS = """
import numpy as np
from torch import nn


def _arrays(n=64, n_test=32, dim=4, classes=3):
    rng = np.random.default_rng(0)
    x, xt = rng.normal(size=(n, dim)), rng.normal(size=(n_test, dim))
    y, yt = np.arange(n) % classes, np.arange(n_test) % classes
    return x.astype(np.float32), y, xt.astype(np.float32), yt


def good():
    return _arrays()


def raises():
    raise ValueError("no file data.csv")


def needs_path(path):
    return _arrays()


def huge_label():
    x, y, xt, yt = _arrays()
    y[3] = 10**12
    return x, y, xt, yt


def huge_token():
    x = np.arange(64 * 6).reshape(64, 6) % 7
    x[2, 2] = 10**12
    return x, x.copy(), x[:8], x[:8].copy()


def string_inputs():
    x, y, xt, yt = _arrays()
    return x.astype(str), y, xt.astype(str), yt


def string_labels():
    x, y, xt, yt = _arrays()
    names = np.array(["cat", "dog", "emu"])
    return x, names[y], xt, names[yt]


def object_inputs():
    x, y, xt, yt = _arrays()
    ragged = np.empty(len(x), dtype=object)
    ragged[:] = [list(range(i % 3 + 1)) for i in range(len(x))]
    return ragged, y, xt, yt


def nan_inputs():
    x, y, xt, yt = _arrays()
    x[5, 1] = np.nan
    return x, y, xt, yt


def inf_test_inputs():
    x, y, xt, yt = _arrays()
    xt[7, 0] = np.inf
    return x, y, xt, yt


def wide_test():
    x, y, _, yt = _arrays()
    return x, y, np.zeros((len(yt), 5), dtype=np.float32), yt


def model_raises(input_shape, num_classes):
    raise ValueError("widths must be given")


def model_type_error(input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes, bias="yes", nope=1)


def wide_model(input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes + 2)


def narrow_model(input_shape, num_classes):
    return nn.Linear(input_shape[0], num_classes - 1)


def flat_model(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], num_classes), nn.Flatten(0))


def nan_model(input_shape, num_classes):
    class Log(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(input_shape[0], num_classes)

        def forward(self, x):
            return self.lin(x).mul(0.0).log().mul(0.0)

    return Log()


def frozen_model(input_shape, num_classes):
    model = nn.Linear(input_shape[0], num_classes)
    model.requires_grad_(False)
    return model


def task_raises():
    raise RuntimeError("task config missing")
"""


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user module of hooks in tmp_path, importable under a name of its own (so no test sees
    another's import), plus `<name>_broken` modules that fail as they are imported."""
    name = f"user_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(HOOKS))
    (tmp_path / f"{name}_import_raises.py").write_text("raise RuntimeError('config missing')\n")
    (tmp_path / f"{name}_syntax.py").write_text("def f(:\n")
    (tmp_path / f"{name}_missing_dep.py").write_text("import not_a_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def spec(**overrides: Any) -> dict[str, Any]:
    """The tiny study, batch sizes that fit 48 training examples."""
    return tiny_spec(name="bad", batch_sizes=[8, 16], **overrides)


def user_data(mod: str, fn: str, **overrides: Any) -> dict[str, Any]:
    """The tiny study on the user's dataset `mod:fn` (a user's model takes no model_args)."""
    args: dict[str, Any] = {"model_args": {}} if ":" in overrides.get("model", "") else {}
    return spec(dataset=f"{mod}:{fn}", dataset_args={}, **{**args, **overrides})


def test_the_good_hooks_run(hooks: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fixture's baseline: its good dataset and a model of the right width train."""
    from batchlab.cli import main
    from batchlab.results import load_study
    from tests.tasks.test_bad_input import write_toml

    study = write_toml(tmp_path / "s.toml", user_data(hooks, "good"))
    main(["run", str(study), "--store", str(tmp_path / "ok.db"), "--quiet"])
    trials = load_study("bad", tmp_path / "ok.db").trials
    assert [t.state.value for t in trials] == ["COMPLETE", "COMPLETE"]


LOADING = [
    (
        {"dataset": "{m}:raises"},
        "dataset: {m}:raises raised ValueError: no file data.csv; fix the function"
        " (call it in Python to see the traceback)",
    ),
    (
        {"dataset": "{m}:needs_path", "dataset_args": {"pth": "a.csv"}},
        "dataset_args: {m}:needs_path takes path, not pth; fix or remove them",
    ),
    (
        {"dataset": "{m}_import_raises:load"},
        "dataset: importing module '{m}_import_raises' raised RuntimeError: config missing;"
        " fix the module",
    ),
    (
        {"dataset": "{m}_syntax:load"},
        "dataset: importing module '{m}_syntax' raised SyntaxError: ",
    ),
    (
        {"dataset": "{m}_missing_dep:load"},
        "dataset: cannot import module '{m}_missing_dep' (No module named 'not_a_package_xyz')",
    ),
    (
        {"model": "{m}:model_raises"},
        "model: {m}:model_raises raised ValueError: widths must be given; fix the function"
        " (call it in Python to see the traceback)",
    ),
    (
        {"model": "{m}:model_type_error"},
        "model: {m}:model_type_error raised TypeError: ",
    ),
    (
        {"model": "{m}_import_raises:build"},
        "model: importing module '{m}_import_raises' raised RuntimeError: config missing;"
        " fix the module",
    ),
    (
        {"task": "{m}:task_raises"},
        "task: {m}:task_raises raised RuntimeError: task config missing; fix the function"
        " (call it in Python to see the traceback)",
    ),
]


@pytest.mark.parametrize(
    ("fields", "message"),
    LOADING,
    ids=[
        "dataset-raises",
        "dataset-bad-arg",
        "import-raises",
        "syntax-error",
        "missing-dependency",
        "model-raises",
        "model-type-error",
        "model-import-raises",
        "task-raises",
    ],
)
def test_user_code_that_raises_while_loading_is_one_line(
    fields: dict[str, Any],
    message: str,
    hooks: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A hook that raises (or whose module does) names the hook and the exception, before any
    trial starts and before the store is created."""
    given = {k: (v.format(m=hooks) if isinstance(v, str) else v) for k, v in fields.items()}
    base = user_data(hooks, "good") if "dataset" not in given else spec(dataset_args={})
    model_args: dict[str, Any] = {"model_args": {}} if "model" in given else {}
    line = refused({**base, **model_args, **given}, tmp_path, capsys)
    assert line.startswith("batchlab: error: " + message.format(m=hooks)), line


BAD_DATA: list[tuple[str, dict[str, Any], str]] = [
    ("huge_label", {}, "labels go up to 1,000,000,000,000: a model with 1,000,000,000,001"),
    ("huge_token", {}, "token ids go up to 1,000,000,000,000: a model with 1,000,000,000,001"),
    ("string_inputs", {}, "cannot read an array (x_train holds str"),
    ("string_labels", {}, "cannot read an array (y_train holds str"),
    ("object_inputs", {}, "cannot read an array (x_train holds object"),
    ("nan_inputs", {}, "x_train contains NaN or infinity (row 5)"),
    ("inf_test_inputs", {}, "x_test contains NaN or infinity (row 7)"),
    ("wide_test", {}, "x_test has rows of shape (5,) and x_train rows of shape (4,)"),
]


@pytest.mark.parametrize(("fn", "fields", "needle"), BAD_DATA, ids=[c[0] for c in BAD_DATA])
def test_bad_data_is_one_line(
    fn: str,
    fields: dict[str, Any],
    needle: str,
    hooks: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Labels or token ids too large for any output layer, strings or Python objects where
    numbers belong, NaN or infinity in the inputs, a test set of other features: refused when
    the data loads, naming the dataset and the array."""
    overrides: dict[str, Any] = {"model": "tests.workloads:bigram"} if "token" in fn else {}
    line = refused(user_data(hooks, fn, **overrides, **fields), tmp_path, capsys)
    assert line.startswith(f"batchlab: error: {hooks}:{fn}: "), line
    assert needle in line, line


@pytest.mark.parametrize(
    "seeds",
    [[99999999999999999999], [0, 2**63], [-(2**63) - 1]],
    ids=["huge", "2**63", "below-int64"],
)
@pytest.mark.parametrize("field", ["seeds", "data_seed"])
def test_a_seed_out_of_range_is_one_line(
    field: str, seeds: list[int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A seed torch's generators cannot take or SQLite cannot store (past 64 bits) is a spec
    error naming the field; before, a trial failed on it or the store raised OverflowError."""
    value: Any = seeds if field == "seeds" else max(seeds, key=abs)
    line = refused(spec(**{field: value}), tmp_path, capsys)
    assert f"field '{field}" in line, line
    assert "out of range; use an integer from 0 to 2**63 - 1" in line, line


PREFLIGHT = [
    ("wide_model", "model: outputs of shape (2, 5) for 3 classes; the output layer must have"),
    ("narrow_model", "model: outputs of shape (2, 2) for 3 classes; the output layer must have"),
    ("flat_model", "model: outputs of shape (6,) for 3 classes; the output layer must have"),
    ("nan_model", "model: the loss of a first batch is nan"),
    ("frozen_model", "model: backward through "),
]


@pytest.mark.parametrize(("model", "needle"), PREFLIGHT, ids=[c[0] for c in PREFLIGHT])
def test_a_model_that_does_not_fit_the_data_is_caught_by_the_preflight(
    model: str,
    needle: str,
    hooks: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model with another output width than the data's classes (wider ones trained silently
    before), one whose loss is NaN on a first batch (COMPLETE trials with NULL losses before), or
    one that cannot be trained: one line from the preflight, before any trial."""
    line = refused(user_data(hooks, "good", model=f"{hooks}:{model}"), tmp_path, capsys)
    assert line.startswith(f"batchlab: error: {needle}"), line
