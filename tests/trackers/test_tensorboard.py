"""TensorBoard: event files read back with tensorboard's own `EventAccumulator`."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from batchlab import run_study
from batchlab.trackers import TensorBoardTracker, trial_params
from tests.trackers.conftest import expected_metrics, tracked_spec


def test_a_run_folder_per_trial_with_scalars_and_hparams(tmp_path: Path) -> None:
    tracker = TensorBoardTracker(tmp_path / "tb")
    study = run_study(tracked_spec(), store=tmp_path / "r.db", trackers=[tracker])
    folders = sorted((tmp_path / "tb" / "tracked").iterdir())
    assert [f.name for f in folders] == ["000_B=16_lr=0.1_seed=0", "001_B=64_lr=0.1_seed=0"]
    for trial in study.trials:
        events = EventAccumulator(str(tracker.trial_dir(trial)), size_guidance={"scalars": 0})
        events.Reload()
        expected = expected_metrics(study, trial.trial_id)
        assert set(events.Tags()["scalars"]) == set(expected)
        for name, by_step in expected.items():
            logged = {e.step: e.value for e in events.Scalars(name)}
            assert logged == pytest.approx(by_step, rel=1e-6)  # event files hold float32
        # the HParams tab: every parameter of the trial, with its value
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        params = trial_params(trial)
        assert set(start.hparams) == {*params, "state"}
        assert start.hparams["batch_size"].number_value == trial.batch_size
        assert start.hparams["optimizer"].string_value == params["optimizer"]
        assert start.hparams["state"].string_value == "COMPLETE"
