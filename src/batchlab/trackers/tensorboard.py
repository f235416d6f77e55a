"""TensorBoard: one run folder per trial, `LOGDIR/<study>/<number>_B<b>_lr<lr>_seed<s>`.

Scalars under the export's names at their training step, the trial's parameters in the HParams
tab (with its final metrics) and as a text table. Written with `torch.utils.tensorboard`, which
needs the `tensorboard` package, the same one that shows them (`tensorboard --logdir LOGDIR`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from batchlab.probes import ProbeRecord
from batchlab.trackers.base import (
    Tracker,
    final_metrics,
    metric_steps,
    trial_label,
    trial_params,
)
from batchlab.trial import FrozenTrial

DEFAULT_LOGDIR = Path("runs")
_UNSAFE = re.compile(r"[^\w.\-=]+")


def safe_name(text: str) -> str:
    """A folder name made of letters, digits and `_ . - =` only."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


def run_dir(trial: FrozenTrial) -> str:
    """The trial's run folder under the study's: its number first, so folders sort in order."""
    return safe_name(f"{trial.number:03d}_{trial_label(trial).replace(' ', '_')}")


class TensorBoardTracker(Tracker):
    """Writes TensorBoard event files under `logdir/<study>/<trial>`."""

    name = "tensorboard"
    package = "tensorboard"

    def __init__(self, logdir: str | Path = DEFAULT_LOGDIR) -> None:
        self.logdir = Path(logdir)

    @classmethod
    def from_destination(cls, dest: str | None) -> TensorBoardTracker:
        return cls(dest if dest is not None else DEFAULT_LOGDIR)

    def trial_dir(self, trial: FrozenTrial) -> Path:
        return self.logdir / safe_name(trial.study) / run_dir(trial)

    def log_trial(self, trial: FrozenTrial, probes: Sequence[ProbeRecord]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        params = trial_params(trial)
        with SummaryWriter(log_dir=str(self.trial_dir(trial))) as writer:
            for step, values in metric_steps(trial.evals, probes):
                for name, value in values.items():
                    writer.add_scalar(name, value, global_step=step)
            table = "\n".join(f"| {k} | {json.dumps(v)} |" for k, v in params.items())
            writer.add_text("params", f"| parameter | value |\n|---|---|\n{table}")
            writer.add_text("state", trial.state.value)
            # The HParams tab: the parameters, and the final metrics (scalars already written
            # above under the same tags) to compare trials by.
            hp = {**params, "state": trial.state.value}
            metric_tags = dict.fromkeys(final_metrics(trial), 0.0)
            for summary in hparams(hp, metric_tags):  # type: ignore[no-untyped-call]
                writer.file_writer.add_summary(summary)
