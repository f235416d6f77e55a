"""The tracker machinery: what a tracker receives, failures as warnings, missing extras."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from batchlab import TrialState, load_study, run_study
from batchlab.cli import main
from batchlab.errors import BatchlabError
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec
from batchlab.trackers import (
    TRACKERS,
    Tracker,
    TrackerWarning,
    TrackingReporter,
    flat_params,
    log_study,
    make_tracker,
    metric_steps,
)
from batchlab.trial import FrozenTrial
from tests.trackers.conftest import expected_metrics, tracked_spec


class Recorder(Tracker):
    """Keeps what it is sent."""

    name = "recorder"
    package = "batchlab"

    def __init__(self) -> None:
        self.studies: list[str] = []
        self.trials: list[tuple[FrozenTrial, list[ProbeRecord]]] = []
        self.closed = 0

    @classmethod
    def from_destination(cls, dest: str | None) -> Recorder:
        return cls()

    def start_study(self, spec: StudySpec) -> None:
        self.studies.append(spec.name)

    def log_trial(self, trial: FrozenTrial, probes: Sequence[ProbeRecord]) -> None:
        self.trials.append((trial, list(probes)))

    def close(self) -> None:
        self.closed += 1


class Broken(Recorder):
    name = "broken"

    def start_study(self, spec: StudySpec) -> None:
        raise ConnectionError("tracking server unreachable")

    def log_trial(self, trial: FrozenTrial, probes: Sequence[ProbeRecord]) -> None:
        raise ConnectionError("tracking server unreachable")


def by_name(trial: FrozenTrial, probes: Sequence[ProbeRecord]) -> dict[str, dict[int, float]]:
    """What a tracker is given to send, as name -> step -> value."""
    out: dict[str, dict[int, float]] = {}
    for step, values in metric_steps(trial.evals, probes):
        for name, value in values.items():
            out.setdefault(name, {})[step] = value
    return out


def test_each_trial_is_sent_as_stored_with_every_eval_and_probe(tmp_path: Path) -> None:
    rec = Recorder()
    study = run_study(tracked_spec(), store=tmp_path / "r.db", trackers=[rec])
    assert rec.studies == ["tracked"] and rec.closed == 1
    assert sorted(t.trial_id for t, _ in rec.trials) == sorted(t.trial_id for t in study.trials)
    for trial, probes in rec.trials:
        stored = study.find_trial(trial.trial_id)
        assert repr(trial) == repr(stored)  # the store's record, final state included (NaNs too)
        steps = [step for step, _ in metric_steps(trial.evals, probes)]
        assert steps == sorted(set(steps))  # ascending, one entry per step
        sent = by_name(trial, probes)
        assert sent == expected_metrics(study, trial.trial_id)
        assert {"test_acc", "val_loss", "grad_norms/total", "distance/total"} <= set(sent)
        assert len(sent["test_acc"]) == 3  # steps 0, one epoch, two epochs


def test_log_study_replays_the_same_as_a_live_run(tmp_path: Path) -> None:
    live = Recorder()
    study = run_study(tracked_spec(), store=tmp_path / "r.db", trackers=[live])
    replay = Recorder()
    assert log_study(load_study("tracked", tmp_path / "r.db"), [replay]) == len(study.trials)
    assert replay.studies == live.studies
    by_id = {t.trial_id: (repr(t), sorted(repr(r) for r in p)) for t, p in live.trials}
    assert {t.trial_id: (repr(t), sorted(repr(r) for r in p)) for t, p in replay.trials} == by_id


def test_a_failing_tracker_is_a_warning_and_loses_nothing(tmp_path: Path) -> None:
    ok = Recorder()
    with pytest.warns(TrackerWarning) as caught:
        study = run_study(tracked_spec(), store=tmp_path / "r.db", trackers=[Broken(), ok])
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert len(ok.trials) == len(study.trials) == 2  # the other tracker got everything
    messages = [str(w.message) for w in caught]
    # start_study and two trials: three failures in a row, then the tracker is dropped
    assert len(messages) == 3
    assert all("broken: could not log" in m and "unreachable" in m for m in messages)
    assert "no longer logging to broken" in messages[-1]


@pytest.mark.slow
def test_trials_run_in_worker_processes_are_sent_from_the_store(tmp_path: Path) -> None:
    rec = Recorder()
    study = run_study(tracked_spec(workers=2), store=tmp_path / "r.db", trackers=[rec])
    assert sorted(t.trial_id for t, _ in rec.trials) == sorted(t.trial_id for t in study.trials)
    for trial, probes in rec.trials:
        assert by_name(trial, probes) == expected_metrics(study, trial.trial_id)


def test_trials_run_by_another_process_are_left_to_it(tmp_path: Path) -> None:
    rec = Recorder()
    study = run_study(tracked_spec(), store=tmp_path / "r.db")
    reporter = TrackingReporter([rec], store=tmp_path / "r.db")
    reporter.study_started(study.spec, total=2, already_done=0)
    mine, theirs = study.spec.trials(n_train=192)
    reporter.trial_started(mine, total_steps=None)
    reporter.trial_finished(mine, TrialState.COMPLETE)
    reporter.trial_finished(theirs, TrialState.COMPLETE)  # never started here
    assert [t.trial_id for t, _ in rec.trials] == [mine.trial_id]


def test_flat_params_are_dotted_scalars() -> None:
    flat = flat_params({"budget": {"epochs": 2}, "widths": [16, 8], "x": None, "lr": 0.1})
    assert flat == {"budget.epochs": 2, "widths": "[16, 8]", "x": "null", "lr": 0.1}


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_a_missing_extra_is_one_line_exit_2_store_untouched(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, TRACKERS[name].package, None)  # as if not installed
    (tmp_path / "s.toml").write_text('name = "x"\ndataset = "synthetic"\n', encoding="utf-8")
    store = tmp_path / "r.db"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "s.toml"), "--store", str(store), "--log", name])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err.count("\n") == 0 and f"pip install 'batchlab[{name}]'" in err
    assert not store.exists()


@pytest.mark.parametrize("name", sorted(TRACKERS))
def test_a_missing_extra_from_python_is_the_same_one_line_error(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = TRACKERS[name].from_destination(str(tmp_path / "dest"))
    monkeypatch.setitem(sys.modules, TRACKERS[name].package, None)  # as if not installed
    store = tmp_path / "r.db"
    with pytest.raises(BatchlabError) as err:
        run_study(tracked_spec(), store=store, trackers=[tracker])
    message = str(err.value)
    assert message == (
        f"trackers: {type(tracker).__name__}: the {TRACKERS[name].package} package is not"
        f" installed; pip install 'batchlab[{name}]'"
    )
    assert not store.exists()  # refused before the study ran


def test_an_unknown_tracker_names_the_valid_ones() -> None:
    with pytest.raises(Exception, match="use one of mlflow, tensorboard, wandb"):
        make_tracker("neptune")
