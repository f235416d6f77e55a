"""The tracker vocabulary: the `Tracker` base class and what every tracker sends.

A tracker is fed from the store, never from the engine: the study's spec when the study starts,
then each trial as it was stored (its resolved spec, every evaluation and every probe record,
each with its step). Names are the export's: the evaluation columns of `batchlab export`
(`test_acc`, `train_loss`, ...) and `<probe>/<key>` for the probe values of `export --probes`.
"""

from __future__ import annotations

import importlib.util
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from batchlab.errors import BatchlabError
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec
from batchlab.trial import EvalRecord, FrozenTrial

Scalar = str | int | float | bool

# Evaluation columns that are the x-axis or a row index, not a measurement.
_NOT_METRICS = frozenset({"idx", "step"})
EVAL_METRICS: tuple[str, ...] = tuple(c for c in EvalRecord.columns() if c not in _NOT_METRICS)
"""The per-evaluation metric names, in export order."""


class TrackerWarning(UserWarning):
    """A tracker could not log something; the results are in the store all the same."""


class Tracker(ABC):
    """Sends stored results to one experiment tracker; one run per trial, grouped by study.

    `package` is the import the tracker needs and `extra` the pip extra that installs it.
    Constructors only store their arguments and import nothing heavy.
    """

    name: ClassVar[str]
    package: ClassVar[str]

    @classmethod
    def install_hint(cls) -> str:
        return f"pip install 'batchlab[{cls.name}]'"

    @classmethod
    @abstractmethod
    def from_destination(cls, dest: str | None) -> Tracker:
        """The tracker for `--log NAME=DEST` (DEST None: the tracker's default destination)."""

    def start_study(self, spec: StudySpec) -> None:  # noqa: B027 (optional hook)
        """The study is about to run: record study-level information (default: nothing)."""

    @abstractmethod
    def log_trial(self, trial: FrozenTrial, probes: Sequence[ProbeRecord]) -> None:
        """Log one finished trial: its spec as parameters, then its metrics step by step."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """The study is over: flush and release what the tracker holds (default: nothing)."""


def check_installed(cls: type[Tracker], what: str | None = None) -> None:
    """Raise a one-line BatchlabError when the tracker's package (its extra) is missing.

    `what` starts the message (default `--log NAME`, as the CLI spells the tracker).
    """
    if importlib.util.find_spec(cls.package) is None:
        raise BatchlabError(
            f"{what or f'--log {cls.name}'}: the {cls.package} package is not installed;"
            f" {cls.install_hint()}"
        )


def trial_label(trial: FrozenTrial) -> str:
    """A short, readable run name: `B=32 lr=0.1 seed=0`, with the variant and control marks."""
    parts = [f"B={trial.batch_size}", f"lr={trial.lr:.4g}", f"seed={trial.seed}"]
    variant = str(trial.params.get("variant", ""))
    if variant:
        parts.insert(0, variant)
    if trial.params.get("control"):
        parts.append("control")
    return " ".join(parts)


def flat_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Scalar]:
    """Nested spec values flattened to dotted keys (`budget.epochs`); lists and None as JSON."""
    out: dict[str, Scalar] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, prefix=f"{name}."))
        elif isinstance(value, str | int | float | bool):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True)
    return out


def trial_params(trial: FrozenTrial) -> dict[str, Scalar]:
    """What a tracker records as a trial's parameters: its resolved spec plus its identity."""
    return {
        **flat_params(trial.params),
        "study": trial.study,
        "trial_id": trial.trial_id,
        "number": trial.number,
    }


def eval_metrics(record: EvalRecord) -> dict[str, float]:
    """One evaluation's metrics by export name; NaN (not measured at this step) is left out."""
    values = {name: float(getattr(record, name)) for name in EVAL_METRICS}
    return {k: v for k, v in values.items() if not math.isnan(v)}


def metric_steps(
    evals: Iterable[EvalRecord], probes: Iterable[ProbeRecord]
) -> list[tuple[int, dict[str, float]]]:
    """Every metric of a trial grouped by step, steps ascending (some trackers need that).

    Evaluations give the export's column names; probe records give `<probe>/<key>`. NaN values
    mean "not measured" and are left out; infinities (a diverging loss) are kept.
    """
    by_step: dict[int, dict[str, float]] = {}
    for e in evals:
        by_step.setdefault(e.step, {}).update(eval_metrics(e))
    for p in probes:
        if not math.isnan(p.value):
            by_step.setdefault(p.step, {})[f"{p.probe}/{p.key}"] = p.value
    return sorted(((s, m) for s, m in by_step.items() if m), key=lambda item: item[0])


def final_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The last evaluation's metrics (a run's summary)."""
    return eval_metrics(trial.last) if trial.last is not None else {}
