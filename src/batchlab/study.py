"""Running and loading studies: the Python API (`run_study`, `load_study`, `Study`).

Running a study validates everything first (spec, dataset, model, batch sizes against the
training set) and only then opens the store, so bad input never leaves a trace. Trials are
registered as WAITING, then run one by one; COMPLETE/DIVERGED/FAILED trials are skipped on a rerun
and RUNNING ones (from a killed run) continue from their last checkpoint.
"""

from __future__ import annotations

import io
import os
import platform
import socket
import subprocess
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import torch

from batchlab._version import __version__
from batchlab.adaptive import run_adaptive
from batchlab.data import Dataset, load_dataset
from batchlab.engine import (
    Checkpoint,
    Outcome,
    Progress,
    resolve_device,
    train_trial,
)
from batchlab.errors import SpecError, StoreError
from batchlab.executor import check_executor, run_trials
from batchlab.models import build_model
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, TrialSpec, load_spec, spec_from_dict
from batchlab.store import Store, profile_subject
from batchlab.tasks import TASKS, TaskInfo, make_task
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

if TYPE_CHECKING:
    from batchlab.trackers import Tracker

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

    def __init__(self, *, name: str, spec: StudySpec, trials: list[FrozenTrial], store: Path):
        self.name = name
        self.spec = spec
        self.trials = trials
        self.store = store

    def __repr__(self) -> str:
        return f"Study(name={self.name!r}, trials={len(self.trials)}, store={str(self.store)!r})"

    @property
    def task(self) -> TaskInfo:
        """What the loss and score columns mean (from the trials' provenance; classification
        for a study stored before tasks existed)."""
        for t in self.trials:
            if "task" in t.provenance:
                return TaskInfo.from_dict(t.provenance["task"])
        if self.spec.task in TASKS:
            return make_task(self.spec.task, self.spec.task_args).describe()
        return TaskInfo()

    def trials_in(self, *states: TrialState) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state in states]

    def to_dataframe(self) -> pd.DataFrame:
        """One row per trial per evaluation (a trial with no evaluation still gets one row)."""
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
        with Store.open_existing(self.store) as s:
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
        with Store.open_existing(self.store) as s:
            return s.profiles(subject)

    def weights(self, trial_id: str) -> dict[str, torch.Tensor]:
        """A finished trial's final weights (a state dict), for interpolation and sharpness."""
        with Store.open_existing(self.store) as s:
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


def load_study(name: str, store: str | Path = DEFAULT_STORE) -> Study:
    """Load a stored study by name (like `optuna.load_study`)."""
    with Store.open_existing(store) as s:
        spec = spec_from_dict(s.study_spec(name), source=f"stored study {name!r}")
        return Study(name=name, spec=spec, trials=s.trials(name), store=Path(store))


class Reporter(Protocol):
    """What a progress display implements; `NullReporter` ignores everything."""

    def study_started(self, spec: StudySpec, total: int, already_done: int) -> None: ...
    def trial_started(self, trial: TrialSpec, total_steps: int | None) -> None: ...
    def trial_progress(self, progress: Progress) -> None: ...
    def trial_finished(self, trial: TrialSpec, state: TrialState) -> None: ...
    def study_finished(self) -> None: ...


class NullReporter:
    def study_started(self, spec: StudySpec, total: int, already_done: int) -> None:
        pass

    def trial_started(self, trial: TrialSpec, total_steps: int | None) -> None:
        pass

    def trial_progress(self, progress: Progress) -> None:
        pass

    def trial_finished(self, trial: TrialSpec, state: TrialState) -> None:
        pass

    def study_finished(self) -> None:
        pass


@dataclass(frozen=True, kw_only=True)
class PreparedStudy:
    """A validated spec with its data loaded: everything checked before the store is touched."""

    spec: StudySpec
    data: Dataset
    device: torch.device


def load_study_data(spec: StudySpec, *, data_dir: Path | None = None) -> Dataset:
    """The study's data, split and prepared for its task (named, or implied by the data)."""
    return load_dataset(
        spec.dataset,
        args=spec.dataset_args,
        data_dir=data_dir,
        val_fraction=spec.val_fraction,
        data_seed=spec.data_seed,
        train_subset=spec.train_subset,
        task=spec.task,
        task_args=spec.task_args,
        workers=spec.data_workers,
    )


def prepare(spec: StudySpec, *, data_dir: Path | None = None) -> PreparedStudy:
    """Load the data and check the spec against it (batch sizes, model); raise one-line errors."""
    data = load_study_data(spec, data_dir=data_dir)
    too_big = [b for _, v in spec.resolved_variants() for b in v.batch_sizes if b > data.n_train]
    if too_big:
        raise SpecError(
            f"batch_sizes: {too_big} exceed the {data.n_train} training examples;"
            f" use batch sizes <= {data.n_train}"
        )
    build_model(
        spec.model,
        spec.model_args,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=0,
    )
    try:
        device = resolve_device(spec.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise SpecError(f"device: {spec.device!r} is not usable here ({err}); use cpu") from None
    return PreparedStudy(
        spec=spec, data=data.to(device, budget_bytes=device_data_budget(device)), device=device
    )


DEVICE_DATA_SHARE = 0.5
"""The share of a GPU's free memory the dataset may take; larger data stays in host memory."""


def device_data_budget(device: torch.device) -> int | None:
    """How many bytes of tensors may be moved to `device` once per study (None: no limit)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(DEVICE_DATA_SHARE * free)


def task_provenance(data: Dataset) -> dict[str, Any]:
    """The task's labels and tokens per example, stored with each trial (`Study.task`)."""
    n = min(len(data.train), 4096) if not data.in_memory else len(data.train)
    _, y = data.train.head(n)  # a Dataset read by index: the mean over its first rows
    units = float(data.task.units(y)) / max(1, n)
    return replace(data.task.describe(), tokens_per_sample=units).as_dict()


def provenance(device: torch.device) -> dict[str, Any]:
    """Where and with what a trial ran: versions, device, threads, git commit when available."""
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "batchlab": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "git_commit": commit,
    }


def _run_one(
    store: Store,
    trial: TrialSpec,
    prepared: PreparedStudy,
    reporter: Reporter,
    prov: dict[str, Any],
    *,
    stop_at_step: int | None = None,
) -> TrialState:
    """Run (or resume) one trial and record how it ended; with `stop_at_step`, a trial that
    pauses there stays RUNNING with its checkpoint (adaptive sweeps continue it later)."""
    tid = trial.trial_id
    _, payload = store.start_trial(tid, prov)
    resume = Checkpoint.from_bytes(payload) if payload is not None else None

    def sink(record: EvalRecord, ckpt: Checkpoint | None, probes: list[ProbeRecord]) -> None:
        store.add_eval(tid, record, ckpt.to_bytes() if ckpt is not None else None, probes)

    try:
        outcome: Outcome = train_trial(
            trial,
            prepared.data,
            device=prepared.device,
            on_eval=sink,
            resume=resume,
            on_progress=reporter.trial_progress,
            stop_at_step=stop_at_step,
        )
    except Exception:  # any failure of one trial is recorded, and the study goes on
        store.finish_trial(tid, TrialState.FAILED, error=traceback.format_exc())
        return TrialState.FAILED
    if outcome.state == TrialState.RUNNING:  # paused at stop_at_step, checkpoint stored
        return outcome.state
    weights = outcome.weights_bytes(save=prepared.spec.save_weights)
    store.finish_trial(
        tid,
        outcome.state,
        diverged_step=outcome.diverged_step,
        probes=outcome.probes,
        weights=weights,
    )
    return outcome.state


def run_study(
    spec: StudySpec | str | Path | dict[str, Any],
    *,
    store: str | Path = DEFAULT_STORE,
    data_dir: Path | None = None,
    overrides: Sequence[str] = (),
    scale: str | None = None,
    reporter: Reporter | None = None,
    trackers: Sequence[Tracker] = (),
) -> Study:
    """Run (or resume) a study and return it as stored.

    `spec` is a StudySpec, a path to a TOML file, or a dict of spec fields; `scale` picks a
    file's `[small]` or `[full]` table. `trackers` (batchlab.trackers) get each trial that this
    process runs, read back from the store when it finishes.
    """
    if isinstance(spec, str | Path):
        spec = load_spec(Path(spec), overrides=list(overrides), scale=scale)
    elif isinstance(spec, dict):
        spec = load_spec(base=spec, overrides=list(overrides), scale=scale)
    elif overrides:
        spec = load_spec(base=spec.to_toml_dict(), overrides=list(overrides))
    reporter = reporter or NullReporter()
    if trackers:
        from batchlab.trackers import TrackingReporter

        reporter = TrackingReporter(trackers, store=store, inner=reporter)
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    check_executor(spec)
    prepared = prepare(spec, data_dir=data_dir)
    trials = spec.trials(n_train=prepared.data.n_train)
    with Store(store) as s:
        s.put_study(spec.name, spec.to_toml_dict())
        s.add_trials(
            spec.name,
            [
                {
                    "trial_id": t.trial_id,
                    "batch_size": t.batch_size,
                    "lr_base": t.lr_base,
                    "lr": t.lr,
                    "seed": t.seed,
                    "params": t.params(),
                }
                for t in trials
            ],
        )
        todo = [t for t in trials if not s.trial_state(t.trial_id).is_finished]
        reporter.study_started(spec, len(trials), len(trials) - len(todo))
        prov = provenance(prepared.device)
        prov["task"] = task_provenance(prepared.data)
        if spec.adaptive is not None:  # successive halving over the grid: batchlab.adaptive
            run_adaptive(s, trials, prepared, reporter, prov, run_one=_run_one)
            todo = []
        run_trials(s, todo, prepared, reporter, prov)  # claimed one by one; see batchlab.executor
        reporter.study_finished()
    return load_study(spec.name, store)


def interpolate_trials(
    study: Study,
    ref_a: str | None,
    ref_b: str | None,
    *,
    points: int = 31,
    data_dir: Path | None = None,
    max_examples: int = 10_000,
) -> pd.DataFrame:
    """Train and test loss/accuracy along the line from trial B (alpha 0) to trial A (alpha 1).

    Defaults: A = the largest batch size, B = the smallest, of the first (seed, lr, variant) with
    two finished batch sizes, so that they share their initialization (Keskar et al.'s picture).
    Uses up to `max_examples` of each split.
    """
    from batchlab.probes import interpolate

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(done) < 2:
        raise StoreError(f"study {study.name!r}: need two COMPLETE trials to interpolate")
    groups: dict[tuple[int, float, str], list[FrozenTrial]] = {}
    for t in sorted(done, key=lambda t: (t.seed, t.lr_base, t.number)):
        groups.setdefault((t.seed, t.lr_base, str(t.params.get("variant", ""))), []).append(t)
    pair = next((g for g in groups.values() if len({t.batch_size for t in g}) > 1), done)
    a = study.find_trial(ref_a) if ref_a else max(pair, key=lambda t: t.batch_size)
    b = study.find_trial(ref_b) if ref_b else min(pair, key=lambda t: t.batch_size)
    if points < 2:
        raise SpecError("--points: need at least 2 points")
    spec = dict(study.spec.resolved_variants()).get(str(a.params.get("variant", "")), study.spec)
    data = load_study_data(spec, data_dir=data_dir)
    model = build_model(
        spec.model,
        spec.model_args,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=0,
    )
    alphas = [-1.0 + 3.0 * i / (points - 1) for i in range(points)]
    wa, wb = study.weights(a.trial_id), study.weights(b.trial_id)
    train = interpolate(
        model,
        wa,
        wb,
        *data.train.head(max_examples),
        alphas=alphas,
        task=data.task,
    )
    test = interpolate(
        model,
        wa,
        wb,
        *data.test.head(max_examples),
        alphas=alphas,
        task=data.task,
    )
    df = pd.DataFrame(
        {
            "alpha": alphas,
            "train_loss": [r[1] for r in train],
            "train_acc": [r[2] for r in train],
            "test_loss": [r[1] for r in test],
            "test_acc": [r[2] for r in test],
        }
    )
    df.attrs["a"] = f"{a.trial_id} (B={a.batch_size})"
    df.attrs["b"] = f"{b.trial_id} (B={b.batch_size})"
    return df
