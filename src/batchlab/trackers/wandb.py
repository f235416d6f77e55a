"""Weights & Biases: a run per trial in `project`, grouped by study (`group` = study name).

The config is the trial's resolved spec (nested, as in the spec file); history rows are logged in
step order with `step=` the training step, so W&B's x-axis is the optimizer update. Offline mode
(`WANDB_MODE=offline`) works as usual and `wandb sync` uploads later.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from batchlab.probes import ProbeRecord
from batchlab.trackers.base import Tracker, metric_steps, trial_label
from batchlab.trial import FrozenTrial, TrialState

DEFAULT_PROJECT = "batchlab"


class WandbTracker(Tracker):
    """Logs each finished trial as a W&B run in `project` (default `$WANDB_PROJECT`, else
    "batchlab"), under `entity` (default: W&B's), with run files in `dir` (default: W&B's)."""

    name = "wandb"
    package = "wandb"

    def __init__(
        self,
        project: str | None = None,
        *,
        entity: str | None = None,
        dir: str | Path | None = None,
    ) -> None:
        self.project = project
        self.entity = entity
        self.dir = dir

    @classmethod
    def from_destination(cls, dest: str | None) -> WandbTracker:
        return cls(project=dest)

    def log_trial(self, trial: FrozenTrial, probes: Sequence[ProbeRecord]) -> None:
        import wandb

        config = {
            **trial.params,
            "study": trial.study,
            "trial_id": trial.trial_id,
            "number": trial.number,
        }
        run = wandb.init(
            project=self.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            entity=self.entity,
            dir=None if self.dir is None else str(self.dir),
            group=trial.study,
            job_type=str(trial.params.get("variant") or "trial"),
            name=trial_label(trial),
            config=config,
            tags=[trial.state.value.lower()],
            reinit="create_new",
            # No console capture (it would wrap the progress bars), no system metrics, quiet.
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )
        failed = True
        try:
            for step, values in metric_steps(trial.evals, probes):
                run.log(values, step=step)
            run.summary["state"] = trial.state.value
            if trial.diverged_step is not None:
                run.summary["diverged_step"] = trial.diverged_step
            failed = False
        finally:
            run.finish(exit_code=1 if failed or trial.state == TrialState.FAILED else 0)
