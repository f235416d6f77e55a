"""Choosing a task in the spec: names checked when the spec loads, ids of old specs unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchlab.cli import main
from batchlab.errors import SpecError
from batchlab.spec import spec_from_dict
from tests.conftest import SpecFactory


def test_an_unset_task_leaves_trial_ids_as_they_were(make_spec: SpecFactory) -> None:
    base = spec_from_dict(make_spec())
    same = spec_from_dict(make_spec(task=None, task_args={}))
    assert [t.trial_id for t in base.trials()] == [t.trial_id for t in same.trials()]
    named = spec_from_dict(make_spec(task="regression"))
    assert {t.trial_id for t in named.trials()}.isdisjoint(t.trial_id for t in base.trials())


def test_a_bad_task_is_refused_when_the_spec_loads(make_spec: SpecFactory) -> None:
    with pytest.raises(SpecError, match="field 'task': unknown task 'regresion'"):
        spec_from_dict(make_spec(task="regresion"))
    with pytest.raises(SpecError, match="task_args.loss"):
        spec_from_dict(make_spec(task="regression", task_args={"loss": "huber"}))


def test_the_cli_exits_2_and_writes_no_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "x"\ndataset = "synthetic"\ntask = "regresion"\n')
    store = tmp_path / "r.db"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--store", str(store)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task" in err[0] and "regression" in err[0]
    assert not store.exists()


def test_a_language_model_on_class_labels_is_a_one_line_error(
    make_spec: SpecFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "x"\ndataset = "synthetic"\ntask = "language-model"\n'
        "dataset_args = { n_train = 64, n_test = 32 }\nbatch_sizes = [8]\n"
    )
    store = tmp_path / "r.db"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path), "--store", str(store)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "token ids of shape [N, T]" in err[0]
    assert not store.exists()
