"""A user's own code behind a study: a rerun after the code changed is refused (its stored
results are of the old code), a FAILED trial's exception is shown by `run` and `show`, lazy
modules work, and the Python API takes a factory as a function, not only as its name."""

from __future__ import annotations

import hashlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import batchlab
from batchlab.cli import main
from batchlab.errors import DataError
from batchlab.store import Store
from batchlab.trial import TrialState
from tests.conftest import tiny_spec

MODEL = """\
from torch import nn


def build(input_shape, num_classes):
    return nn.Sequential(nn.Linear(input_shape[0], {width}), nn.ReLU(),
                         nn.Linear({width}, num_classes))
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A fresh importable module name in tmp_path (unique per test: sys.modules keeps it)."""
    name = f"user_hook_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit is never hidden by a .pyc
    yield name, tmp_path / f"{name}.py"
    sys.modules.pop(name, None)


def run_cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    return int(exit_info.value.code or 0)


def write_spec(path: Path, model: str) -> Path:
    path.write_text(
        'name = "mine"\ndataset = "synthetic"\ndevice = "cpu"\nval_fraction = 0.25\n'
        "batch_sizes = [8, 64]\nlrs = [0.1]\nbudget = { epochs = 1 }\n"
        "dataset_args = { n_train = 256, n_test = 128, dim = 8, classes = 3 }\n"
        f'model = "{model}"\n'
    )
    return path


def test_a_rerun_after_the_models_code_changed_is_refused_and_force_reruns(
    user_module: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, source = user_module
    source.write_text(MODEL.format(width=16))
    spec = write_spec(tmp_path / "s.toml", f"{name}:build")
    store = tmp_path / "r.db"
    argv = ["run", str(spec), "--store", str(store), "--quiet"]
    assert run_cli(argv) == 0
    with Store.open_existing(store) as s:
        stored = s.study_code("mine")
    assert stored == {f"{name}:build": hashlib.sha256(source.read_bytes()).hexdigest()}
    first = batchlab.load_study("mine", store, trust_hooks=True)
    capsys.readouterr()

    source.write_text(MODEL.format(width=24))  # the user edits their model
    before = store.read_bytes()
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"model: the code of {name}:build changed since study 'mine'" in err
    assert "--force" in err and "--name" in err and "--store" in err
    assert store.read_bytes() == before  # refused before anything is written

    sys.modules.pop(name, None)  # this process imports the edited module, as a new one would
    assert run_cli([*argv, "--force"]) == 0
    assert "force: deleted the 2 stored trials" in capsys.readouterr().err
    again = batchlab.load_study("mine", store, trust_hooks=True)
    old = {t.trial_id: t.last.test_loss for t in first.trials if t.last}
    new = {t.trial_id: t.last.test_loss for t in again.trials if t.last}
    assert old.keys() == new.keys()  # the same trial ids: the code is not in them
    assert all(old[k] != new[k] for k in old)  # trained anew, with the wider model
    with Store.open_existing(store) as s:
        assert s.study_code("mine") == {
            f"{name}:build": hashlib.sha256(source.read_bytes()).hexdigest()
        }
    assert run_cli(argv) == 0  # the same code again: resumes (nothing to run)


def test_built_in_models_have_no_fingerprint(tmp_path: Path) -> None:
    store = tmp_path / "r.db"
    batchlab.run_study(tiny_spec(budget={"epochs": 1}), store=store)
    with Store.open_existing(store) as s:
        assert s.study_code("tiny") is None


FAILING = """\
from torch import nn


class FailsLater(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.lin = nn.Linear(dim, classes)
        self.calls = 0

    def forward(self, x):
        if self.training and x.shape[0] > 2:  # the preflight's two examples pass
            self.calls += 1
            if self.calls > 1:  # training's first step passes, its second fails
                raise RuntimeError("exploded in step 2")
        return self.lin(x)


def build(input_shape, num_classes):
    return FailsLater(input_shape[0], num_classes)
"""


def test_run_and_show_print_each_failed_trials_exception(
    user_module: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, source = user_module
    source.write_text(FAILING)
    spec = write_spec(tmp_path / "s.toml", f"{name}:build")
    store = tmp_path / "r.db"
    assert run_cli(["run", str(spec), "--store", str(store), "--quiet"]) == 0
    study = batchlab.load_study("mine", store, trust_hooks=True)
    assert {t.state for t in study.trials} == {TrialState.FAILED}
    expected = sorted(
        f"failed: B={t.batch_size} lr=0.1 seed=0 ({t.trial_id}): RuntimeError: exploded in step 2"
        for t in study.trials
    )
    ran = [line for line in capsys.readouterr().out.splitlines() if line.startswith("failed:")]
    assert sorted(ran) == expected
    assert run_cli(["show", "mine", "--store", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    shown = [line for line in out if line.startswith("failed:")]
    assert sorted(shown) == expected
    assert out.index(shown[0]) > max(i for i, line in enumerate(out) if "batch size" in line)


LAZY = """\
from torch import nn


def build(num_classes):
    return nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.LazyLinear(num_classes))
"""


def test_a_model_of_lazy_modules_trains_and_is_bit_identical_on_rerun(
    user_module: tuple[str, Path], tmp_path: Path
) -> None:
    name, source = user_module
    source.write_text(LAZY)
    spec = tiny_spec(model=f"{name}:build", model_args={}, budget={"epochs": 1})
    a = batchlab.run_study(spec, store=tmp_path / "a.db")
    b = batchlab.run_study(spec, store=tmp_path / "b.db")
    assert {t.state for t in a.trials} == {TrialState.COMPLETE}
    for ta, tb in zip(a.trials, b.trials, strict=True):
        assert ta.trial_id == tb.trial_id
        losses = [(e.val_loss, e.test_loss, e.test_acc) for e in ta.evals]
        assert losses == [(e.val_loss, e.test_loss, e.test_acc) for e in tb.evals]
        wa, wb = a.weights(ta.trial_id), b.weights(tb.trial_id)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)  # bit for bit
        assert wa["0.weight"].shape == (16, 8)  # materialised from the data: 8 features


def factory(input_shape: tuple[int, ...], num_classes: int) -> object:
    """A top-level factory in an importable module: the API may take it as a function."""
    from torch import nn

    return nn.Linear(input_shape[0], num_classes)


def test_the_api_takes_a_top_level_factory_as_a_function(tmp_path: Path) -> None:
    spec = tiny_spec(model=factory, model_args={}, budget={"epochs": 1})
    study = batchlab.run_study(spec, store=tmp_path / "r.db")
    assert study.spec.model == "tests.test_user_hooks:factory"
    by_name = batchlab.run_study(
        tiny_spec(model="tests.test_user_hooks:factory", model_args={}, budget={"epochs": 1}),
        store=tmp_path / "r.db",
    )  # the same spec by name: the same study, resumed
    assert [t.trial_id for t in by_name.trials] == [t.trial_id for t in study.trials]
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}


def test_the_api_refuses_a_lambda_or_closure_in_one_line(tmp_path: Path) -> None:
    def local(input_shape: tuple[int, ...], num_classes: int) -> object:
        return factory(input_shape, num_classes)

    store = tmp_path / "r.db"
    for fn in (lambda input_shape, num_classes: factory(input_shape, num_classes), local):
        with pytest.raises(DataError) as err:
            batchlab.run_study(tiny_spec(model=fn, model_args={}), store=store)
        assert len(str(err.value).splitlines()) == 1
        assert str(err.value).startswith("model: ")
        assert "define it at the top level of an importable module" in str(err.value)
    assert not store.exists()
