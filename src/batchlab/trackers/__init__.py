"""Experiment trackers: a study's trials sent to MLflow, TensorBoard or Weights & Biases.

    batchlab run study.toml --log mlflow --log tensorboard=runs --log wandb=my-project
    run_study("study.toml", trackers=[MlflowTracker(), TensorBoardTracker("runs")])

Each tracker is an optional extra (`pip install 'batchlab[mlflow]'`, `[tensorboard]`, `[wandb]`).
One run per trial, grouped by study; parameters are the trial's resolved spec, metrics the
export's names at their training step. See docs/integrations.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from batchlab.errors import BatchlabError
from batchlab.trackers.base import (
    EVAL_METRICS,
    Tracker,
    TrackerWarning,
    check_installed,
    flat_params,
    metric_steps,
    trial_label,
    trial_params,
)
from batchlab.trackers.mlflow import MlflowTracker
from batchlab.trackers.reporter import TrackingReporter, log_study
from batchlab.trackers.tensorboard import TensorBoardTracker
from batchlab.trackers.wandb import WandbTracker

TRACKERS: dict[str, type[Tracker]] = {
    cls.name: cls for cls in (MlflowTracker, TensorBoardTracker, WandbTracker)
}
"""Every tracker by its `--log` name."""


def make_tracker(value: str) -> Tracker:
    """A tracker from a `--log` value `NAME[=DEST]`, its package checked before anything runs.

    DEST is MLflow's tracking URI, TensorBoard's log folder, or the W&B project.
    """
    name, _, dest = value.partition("=")
    cls = TRACKERS.get(name.strip().lower())
    if cls is None:
        raise BatchlabError(
            f"--log {value}: unknown tracker {name!r}; use one of {', '.join(TRACKERS)}"
            " (optionally NAME=DEST)"
        )
    check_installed(cls)
    return cls.from_destination(dest.strip() or None)


def make_trackers(values: Sequence[str]) -> list[Tracker]:
    """Trackers for repeated `--log` values (all checked before the first is used)."""
    return [make_tracker(v) for v in values]


__all__ = [
    "EVAL_METRICS",
    "TRACKERS",
    "MlflowTracker",
    "TensorBoardTracker",
    "Tracker",
    "TrackerWarning",
    "TrackingReporter",
    "WandbTracker",
    "check_installed",
    "flat_params",
    "log_study",
    "make_tracker",
    "make_trackers",
    "metric_steps",
    "trial_label",
    "trial_params",
]
