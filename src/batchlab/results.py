"""Stored studies: `load_study` and `Study`, a study's spec, trials and tidy DataFrames.

Reading results needs nothing of training: this module imports no engine, executor or tracker,
so those can depend on it without a cycle.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchlab.errors import StoreError
from batchlab.spec import StudySpec, spec_from_dict
from batchlab.store import Store, profile_subject
from batchlab.tasks.base import TaskInfo
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

if TYPE_CHECKING:  # imported where used: `ls` and `show` read the store without them
    import pandas as pd
    import torch

DEFAULT_STORE = Path("batchlab.db")
TRIAL_COLUMNS = [
    "study",
    "trial_id",
    "number",
    "batch_size",
    "lr_base",
    "lr",
    "seed",
    "variant",
    "control",
    "state",
    "diverged_step",
    "reason",
    "optimizer",
    "dataset",
    "model",
    "task",
    "batch_tokens",
]


class Study:
    """A study as stored: its spec, its trials, and a tidy DataFrame of every evaluation."""

    def __init__(
        self,
        *,
        name: str,
        spec: StudySpec,
        trials: list[FrozenTrial],
        store: Path,
        hooks_trusted: bool = False,
        check: dict[str, Any] | None = None,
    ):
        self.name = name
        self.spec = spec
        self.trials = trials
        self.store = store
        self.hooks_trusted = hooks_trusted
        """Whether the spec's `package.module:function` hooks may be imported to rebuild its
        data or models (`load_study(..., trust_hooks=True)`, or a study this process ran)."""
        self.check = check
        """`batchlab check`'s stored verdict (`CheckResult.summary()`), None when never checked:
        it runs with every study whose `accumulate` > 1."""

    @property
    def allowed_hooks(self) -> frozenset[str]:
        """The hooks that rebuilding this study's data and models may import."""
        return self.spec.hooks() if self.hooks_trusted else frozenset()

    def __repr__(self) -> str:
        return f"Study(name={self.name!r}, trials={len(self.trials)}, store={str(self.store)!r})"

    @property
    def task(self) -> TaskInfo:
        """What the loss and score columns mean (from the trials' provenance; classification
        for a study stored before tasks existed)."""
        for t in self.trials:
            if "task" in t.provenance:
                return TaskInfo.from_dict(t.provenance["task"])
        if self.spec.task is None:  # a study stored before tasks existed: classification
            return TaskInfo()
        from batchlab.tasks import TASKS, make_task  # (imports torch)

        if self.spec.task in TASKS:
            return make_task(self.spec.task, self.spec.task_args).describe()
        return TaskInfo()

    def trials_in(self, *states: TrialState) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state in states]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per trial per evaluation (a trial with no evaluation still gets one row)."""
        import pandas as pd

        rows: list[dict[str, Any]] = []
        blank = dict.fromkeys(EvalRecord.columns(), float("nan"))
        info = self.task
        for t in self.trials:
            head = {
                "study": t.study,
                "trial_id": t.trial_id,
                "number": t.number,
                "batch_size": t.batch_size,
                "lr_base": t.lr_base,
                "lr": t.lr,
                "seed": t.seed,
                "variant": t.params.get("variant", ""),
                "control": bool(t.params.get("control", False)),
                "state": t.state.value,
                "diverged_step": t.diverged_step,
                # why it ended early: the adaptive rule (PRUNED) or the error's last line (FAILED)
                "reason": next(reversed((t.error or "").strip().splitlines()), None),
                "optimizer": t.params.get("optimizer"),
                "dataset": t.params.get("dataset"),
                "model": t.params.get("model"),
                "task": info.task,
                # the batch in tokens (a language model) as well as in sequences
                "batch_tokens": t.batch_size * info.tokens_per_sample,
            }
            for e in t.evals or (None,):
                rows.append({**head, **(e.as_dict() if e is not None else blank)})
        return pd.DataFrame(rows, columns=[*TRIAL_COLUMNS, *EvalRecord.columns()])

    def probes_dataframe(self) -> pd.DataFrame:
        """Probe records in long form: one row per trial, step, probe and key."""
        import pandas as pd

        with Store.open_existing(self.store, read_only=True) as s:
            rows = s.probe_rows(self.name)
        by_id = {t.trial_id: t for t in self.trials}
        out = []
        for trial_id, step, probe, key, value in rows:
            t = by_id[trial_id]
            out.append(
                {
                    "study": self.name,
                    "trial_id": trial_id,
                    "batch_size": t.batch_size,
                    "lr": t.lr,
                    "seed": t.seed,
                    "variant": t.params.get("variant", ""),
                    "step": step,
                    "probe": probe,
                    "key": key,
                    "value": value,
                }
            )
        columns = ["study", "trial_id", "batch_size", "lr", "seed", "variant", "step", "probe"]
        return pd.DataFrame(out, columns=[*columns, "key", "value"])

    def hardware_profiles(self) -> list[tuple[float, str, dict[str, Any]]]:
        """Stored `batchlab profile` results of this study's model on its data, newest first:
        (created_at, device, profile as `HardwareProfile.to_dict()`)."""
        subject = profile_subject(
            model=self.spec.model,
            model_args=self.spec.model_args,
            dataset=self.spec.dataset,
            dataset_args=self.spec.dataset_args,
        )
        with Store.open_existing(self.store, read_only=True) as s:
            return s.profiles(subject)

    def weights(self, trial_id: str) -> dict[str, torch.Tensor]:
        """A finished trial's final weights (a state dict), for interpolation and sharpness."""
        import torch

        with Store.open_existing(self.store, read_only=True) as s:
            payload = s.weights(trial_id)
        if payload is None:
            raise StoreError(
                f"trial {trial_id}: no stored weights"
                " (unfinished, diverged, or save_weights = false)"
            )
        state: dict[str, torch.Tensor] = torch.load(
            io.BytesIO(payload), map_location="cpu", weights_only=True
        )
        return state

    def find_trial(self, ref: str) -> FrozenTrial:
        """A trial by id or unique id prefix."""
        hits = [t for t in self.trials if t.trial_id.startswith(ref)]
        if len(hits) != 1:
            what = "no trial" if not hits else f"{len(hits)} trials"
            raise StoreError(f"{what} in study {self.name!r} match {ref!r}; give a longer trial id")
        return hits[0]


def load_study(name: str, store: str | Path = DEFAULT_STORE, *, trust_hooks: bool = False) -> Study:
    """Load a stored study by name (like `optuna.load_study`), its spec validated as a fresh
    one is. A store is data: the `package.module:function` hooks its spec names are imported
    (to rebuild data or models) only with `trust_hooks=True`."""
    with Store.open_existing(store, read_only=True) as s:
        source = f"store {Path(store)}: stored study {name!r}"
        spec = spec_from_dict(s.study_spec(name), source=source, stored=True)
        return Study(
            name=name,
            spec=spec,
            trials=s.trials(name),
            store=Path(store),
            hooks_trusted=trust_hooks,
            check=s.study_check(name),
        )
