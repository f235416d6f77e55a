"""MLflow: an experiment per study, a run per trial (parameters, tags, metric histories).

Talks to MLflow through `MlflowClient` (no global active run), at `tracking_uri` or, when that is
None, wherever MLflow is configured to log (`MLFLOW_TRACKING_URI`, else MLflow's default).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec
from batchlab.trackers.base import Tracker, metric_steps, trial_label, trial_params
from batchlab.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow's own limits (mlflow.utils.validation): keys, values and batch sizes.
_MAX_KEY = 250
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_EXPERIMENT_TAG_VALUE = 20000
_METRICS_PER_BATCH = 1000
_PARAMS_PER_BATCH = 100
# Metric names may hold letters, digits and `_ - . / : space`; anything else becomes `_`
# (so the histogram key `B=32/bin=17` is logged as `B_32/bin_17`).
_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")

_RUN_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.DIVERGED: "FINISHED",  # divergence is a result; the state tag says so
    TrialState.FAILED: "FAILED",
    TrialState.PRUNED: "KILLED",
}


def metric_name(name: str) -> str:
    """A batchlab metric name as MLflow accepts it."""
    return _BAD_NAME_CHARS.sub("_", name)[:_MAX_KEY]


def _ms(seconds: float | None) -> int:
    return int(1000 * (seconds if seconds is not None else time.time()))


class MlflowTracker(Tracker):
    """Logs each finished trial as an MLflow run in the experiment named after its study."""

    name = "mlflow"
    package = "mlflow"

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._client: MlflowClient | None = None
        self._experiments: dict[str, str] = {}

    @classmethod
    def from_destination(cls, dest: str | None) -> MlflowTracker:
        return cls(tracking_uri=dest)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def experiment_id(self, study: str) -> str:
        """The id of the experiment named `study`, created when it does not exist."""
        if study not in self._experiments:
            found = self.client.get_experiment_by_name(study)
            if found is None:
                eid = self.client.create_experiment(study, tags={"batchlab.study": study})
            elif found.lifecycle_stage != "active":
                raise RuntimeError(
                    f"MLflow experiment {study!r} is deleted; restore it"
                    f" (mlflow experiments restore --experiment-id {found.experiment_id})"
                )
            else:
                eid = found.experiment_id
            self._experiments[study] = eid
        return self._experiments[study]

    def start_study(self, spec: StudySpec) -> None:
        eid = self.experiment_id(spec.name)
        blob = json.dumps(spec.to_toml_dict(), sort_keys=True)
        if len(blob) > _MAX_EXPERIMENT_TAG_VALUE:  # cut JSON is no spec: say where it is instead
            blob = "too long for an MLflow tag; batchlab.load_study(NAME).spec holds it"
        self.client.set_experiment_tag(eid, "batchlab.spec", blob)
        if spec.description:
            self.client.set_experiment_tag(eid, "mlflow.note.content", spec.description)

    def log_trial(self, trial: FrozenTrial, probes: Sequence[ProbeRecord]) -> None:
        from mlflow.entities import Metric, Param

        tags = {
            "batchlab.study": trial.study,
            "batchlab.trial_id": trial.trial_id,
            "batchlab.state": trial.state.value,
        }
        if trial.error:
            tags["batchlab.error"] = trial.error[-_MAX_TAG_VALUE:]
        run = self.client.create_run(
            self.experiment_id(trial.study),
            start_time=_ms(trial.started_at),
            tags=tags,
            run_name=trial_label(trial),
        )
        run_id = run.info.run_id
        try:
            params = [
                Param(k[:_MAX_KEY], str(v)[:_MAX_PARAM_VALUE])
                for k, v in trial_params(trial).items()
            ]
            now = _ms(None)
            metrics = [
                Metric(metric_name(name), value, now, step)
                for step, values in metric_steps(trial.evals, probes)
                for name, value in values.items()
            ]
            for i in range(0, len(params), _PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=params[i : i + _PARAMS_PER_BATCH])
            for i in range(0, len(metrics), _METRICS_PER_BATCH):
                self.client.log_batch(run_id, metrics=metrics[i : i + _METRICS_PER_BATCH])
        except Exception:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        status = _RUN_STATUS.get(trial.state, "FINISHED")
        self.client.set_terminated(run_id, status=status, end_time=_ms(trial.ended_at))
