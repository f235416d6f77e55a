"""What running a study needs before it starts: the prepared study (spec validated, data loaded
and on its device) and the `Reporter` protocol that hears of progress.

`study`, `executors` and `adaptive` share these types; they live here, apart from all three, so
that none of them imports another to name a type.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from batchlab import batch
from batchlab._version import __version__
from batchlab.data import Dataset, load_dataset
from batchlab.engine import Progress, build_model_for, resolve_device
from batchlab.errors import BatchlabError, DataError, SpecError
from batchlab.plan import TrialPlan
from batchlab.spec import StudySpec, TrialSpec
from batchlab.trial import TrialState


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
    cores: int | None = None
    """CPU cores the trials may share (`cpuload.plan_threads`); None: every usable core."""


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
    for _, variant in spec.resolved_variants():
        decay = variant.lr_decay
        if decay is not None and decay.warmup_steps:
            fewest = min(
                TrialPlan(t, data.n_train).total_steps or 0
                for t in variant.trials(n_train=data.n_train)
            )
            if decay.warmup_steps >= fewest:
                raise SpecError(
                    f"lr_decay: warmup_steps {decay.warmup_steps} is not below the {fewest}"
                    " updates of the shortest trial; use fewer warmup steps or warmup_fraction"
                )
    try:
        device = resolve_device(spec.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise SpecError(f"device: {spec.device!r} is not usable here ({err}); use cpu") from None
    for _, variant in spec.resolved_variants():
        preflight(variant, data, device)
    return PreparedStudy(
        spec=spec, data=data.to(device, budget_bytes=device_data_budget(device)), device=device
    )


def preflight(spec: StudySpec, data: Dataset, device: torch.device) -> None:
    """Build the model, push two training examples through it, the task's loss and backward,
    and two test examples through it and the loss, on the study's device, before any trial
    starts: a model whose outputs do not fit the task (logits [B, V] for a language model,
    another number of classes...), whose first loss is NaN, that cannot be trained, or that
    fails on the data is a one-line error naming it, not a FAILED (or silently wrong) trial per
    grid cell. The RNG state is left as is."""
    try:
        model = build_model_for(spec, data, seed=0).to(device)
    except BatchlabError:
        raise
    except Exception as err:  # a built-in model given options it cannot build with
        raise SpecError(
            f"model: building {spec.model} raised {type(err).__name__}: {err}; check model_args"
        ) from None
    task = data.task
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for split, rows in (("train", data.train), ("test", data.test)):
            x, y = rows.head(min(2, len(rows)))
            x, y = batch.to(x, device), y.to(device)
            try:
                with torch.set_grad_enabled(split == "train"):
                    out = task.forward(model, x)
                    task.check_output(out, y, size=data.num_classes)
                    loss = task.mean_loss(out, y)
            except DataError as err:  # the task's own shape checks name the field already
                raise SpecError(str(err)) from None
            except Exception as err:
                of = f"{spec.dataset}" if split == "train" else f"{spec.dataset}'s test set"
                raise SpecError(
                    f"model: {spec.model} fails on a batch of {of} "
                    f"({type(err).__name__}: {err}); check its input and output shapes"
                ) from None
            value = float(loss.detach())
            if not math.isfinite(value):
                raise SpecError(
                    f"model: the loss of a first batch is {value} ({spec.model} on the"
                    f" {split} set of {spec.dataset}); check the model's forward, e.g. for a"
                    " log or a division of zero"
                )
            if split == "train":
                try:
                    loss.backward()  # type: ignore[no-untyped-call]
                except Exception as err:
                    raise SpecError(
                        f"model: backward through {spec.model} raised {type(err).__name__}:"
                        f" {err}; check that it has parameters that require grad"
                    ) from None


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
    info = data.task.describe()
    if info.unit == "example":  # one unit per example: nothing to count (nor to read)
        return info.as_dict()
    n = min(len(data.train), 4096) if not data.in_memory else len(data.train)
    _, y = data.train.head(n)  # a Dataset read by index: the mean over its first rows
    units = float(data.task.units(y)) / max(1, n)
    return replace(info, tokens_per_sample=units).as_dict()


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
