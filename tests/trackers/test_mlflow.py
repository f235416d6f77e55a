"""MLflow: a study logged into a local file store and read back with `MlflowClient`."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from batchlab import run_study
from batchlab.cli import main
from batchlab.trackers import MlflowTracker, trial_label, trial_params
from batchlab.trackers.mlflow import metric_name
from tests.trackers.conftest import expected_metrics, tracked_spec


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # MLflow 3 keeps the file store only behind this switch; it needs no server or database.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def test_a_run_per_trial_with_params_and_metric_histories(
    tmp_path: Path, tracking_uri: str
) -> None:
    study = run_study(
        tracked_spec(), store=tmp_path / "r.db", trackers=[MlflowTracker(tracking_uri)]
    )
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("tracked")
    assert experiment is not None
    assert '"batch_sizes": [16, 64]' in experiment.tags["batchlab.spec"]
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == len(study.trials) == 2
    for run in runs:
        trial = study.find_trial(run.data.tags["batchlab.trial_id"])
        assert run.info.run_name == trial_label(trial)
        assert run.info.status == "FINISHED" and run.data.tags["batchlab.state"] == "COMPLETE"
        assert run.data.params == {k: str(v) for k, v in trial_params(trial).items()}
        assert run.data.params["batch_size"] == str(trial.batch_size)
        expected = expected_metrics(study, trial.trial_id)
        assert set(run.data.metrics) == {metric_name(n) for n in expected}
        for name, by_step in expected.items():
            history = client.get_metric_history(run.info.run_id, metric_name(name))
            assert {m.step: m.value for m in history} == pytest.approx(by_step, rel=1e-12)


def test_the_cli_logs_to_a_tracking_uri(tmp_path: Path, tracking_uri: str) -> None:
    (tmp_path / "s.toml").write_text(
        'name = "cli"\ndataset = "synthetic"\nbatch_sizes = [64]\nbudget = {epochs = 1}\n'
        'dataset_args = {n_train = 128, n_test = 64, dim = 8, classes = 3}\ndevice = "cpu"\n',
        encoding="utf-8",
    )
    main(["run", str(tmp_path / "s.toml"), "--store", str(tmp_path / "r.db"), "--quiet",
          "--log", f"mlflow={tracking_uri}"])  # fmt: skip
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("cli")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.params["batch_size"] == "64" and "test_acc" in run.data.metrics
