"""`batchlab run --dry-run`: the resolved trial grid, its budget in steps and samples and an
estimated time, after the preflight (data, model, `batchlab check` when `accumulate` > 1),
without training and without touching the store.

The time is calibrated on this machine: a few training steps per batch size (the engine's own
step, after one warm-up step) and one evaluation, scaled by the planned steps and evaluations.
It is for trials run one after another in this process; workers and fused trials run faster.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from batchlab.branched import study_trials
from batchlab.check import CheckResult
from batchlab.engine import build_model_for, evaluate, make_optimizer
from batchlab.plan import TrialPlan
from batchlab.prepared import PreparedStudy
from batchlab.spec import StudySpec, TrialSpec
from batchlab.step import AutogradStep, FastMLPStep, Step, autocast_dtype

CALIBRATION_STEPS = 3


@dataclass(frozen=True, kw_only=True)
class PlannedTrial:
    """One trial of the grid as it would run: its id, budget and estimated time."""

    trial_id: str
    variant: str
    batch_size: int
    lr: float
    seed: int
    control: bool
    steps: int | None  # None: a wall-clock budget
    samples: int | None
    evaluations: int
    seconds: float  # estimated


@dataclass(frozen=True, kw_only=True)
class DryRun:
    """What `run` would do, and the preflight's results."""

    study: str
    budget: str
    n_train: int
    device: str
    trials: tuple[PlannedTrial, ...]
    step_seconds: dict[str, float]  # "variant/B" -> seconds per step
    eval_seconds: float
    check: CheckResult | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)

    @property
    def ok(self) -> bool:
        return self.check is None or self.check.ok

    def lines(self) -> list[str]:
        steps = [t.steps for t in self.trials if t.steps is not None]
        samples = [t.samples for t in self.trials if t.samples is not None]
        variants = any(t.variant for t in self.trials)
        out = [
            f"dry run of study {self.study}: {len(self.trials)} trials, budget {self.budget}"
            f" each, {self.n_train} training examples, on {self.device}; preflight passed,"
            " nothing written to the store",
            f"  {'trial id':<16}"
            + (f"  {'variant':<14}" if variants else "")
            + f"{'batch':>6} {'lr':>9} {'seed':>5} {'steps':>8} {'samples':>11} {'est. time':>10}",
        ]
        for t in self.trials:
            label = f"  {t.variant or '-':<14}" if variants else ""
            out.append(
                f"  {t.trial_id:<16}{label}{t.batch_size:>6}{' (control)' if t.control else ''}"
                f" {t.lr:>9.4g} {t.seed:>5} {_num(t.steps):>8} {_num(t.samples):>11}"
                f" {_duration(t.seconds):>10}"
            )
        out.append(
            f"total: {sum(steps):,} steps, {sum(samples):,} samples, estimated"
            f" {_duration(self.seconds)} one trial after another in this process (calibrated on"
            f" {CALIBRATION_STEPS} steps per batch size and one evaluation,"
            f" {_duration(self.eval_seconds)})"
        )
        out += [f"  note: {n}" for n in self.notes]
        if self.check is not None:
            out += self.check.lines()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "budget": self.budget,
            "n_train": self.n_train,
            "device": self.device,
            "trials": [asdict(t) for t in self.trials],
            "total_steps": sum(t.steps or 0 for t in self.trials),
            "total_samples": sum(t.samples or 0 for t in self.trials),
            "estimated_seconds": self.seconds,
            "step_seconds": self.step_seconds,
            "eval_seconds": self.eval_seconds,
            "check": None if self.check is None else self.check.to_dict(),
            "notes": list(self.notes),
        }


def _num(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    if s < 120:
        return f"{s:.3g} s"
    return f"{s / 60:.3g} min" if s < 7200 else f"{s / 3600:.3g} h"


def dry_run(prepared: PreparedStudy, *, check: CheckResult | None = None) -> DryRun:
    """The plan of a prepared (preflighted) study, with its calibrated time."""
    spec, data, device = prepared.spec, prepared.data, prepared.device
    n = data.n_train
    trials = study_trials(spec, n)
    step_s: dict[str, float] = {}
    eval_s = math.nan
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for t in trials:
            key = f"{t.variant}/{TrialPlan(t, n).epoch(0)[0]}"
            if key not in step_s:
                step_s[key], evaluated = _calibrate(t, prepared, evaluate_too=math.isnan(eval_s))
                eval_s = evaluated if math.isnan(eval_s) else eval_s
    planned = []
    for t in trials:
        plan = TrialPlan(t, n)
        steps, samples = plan.total_steps, planned_samples(plan)
        epochs = (samples / n) if samples is not None else math.nan
        evals = 1 + (math.ceil(epochs / t.study.eval_every) if math.isfinite(epochs) else 1)
        per_step = step_s[f"{t.variant}/{plan.epoch(0)[0]}"]
        train = t.budget.seconds if t.budget.seconds is not None else per_step * (steps or 0)
        planned.append(
            PlannedTrial(
                trial_id=t.trial_id,
                variant=t.variant,
                batch_size=t.batch_size,
                lr=t.lr,
                seed=t.seed,
                control=t.control,
                steps=steps,
                samples=samples,
                evaluations=evals,
                seconds=train + evals * eval_s,
            )
        )
    notes = []
    if spec.workers != 1 or spec.executor != "local":
        notes.append(f"workers = {spec.workers}, executor = {spec.executor}: faster than this")
    return DryRun(
        study=spec.name,
        budget=f"{spec.budget.kind} = {spec.budget.value:g}",
        n_train=n,
        device=str(device),
        trials=tuple(planned),
        step_seconds=step_s,
        eval_seconds=eval_s,
        check=check,
        notes=tuple(notes),
    )


def planned_samples(plan: TrialPlan) -> int | None:
    """Training examples a trial will see (None for a wall-clock budget): every epoch sees all
    `n_train`, and a steps or samples budget stops at the end of a batch."""
    budget, n = plan.trial.budget, plan.n_train
    if budget.seconds is not None:
        return None
    if budget.epochs is not None:
        return budget.epochs * n
    samples, epoch = 0, 0
    steps_left = budget.steps
    while True:
        b, _ = plan.epoch(epoch)
        per_epoch = math.ceil(n / b)
        if steps_left is not None:
            if steps_left < per_epoch:
                return samples + steps_left * b
            steps_left -= per_epoch
        else:
            assert budget.samples is not None
            if samples + n >= budget.samples:
                return samples + min(n, math.ceil((budget.samples - samples) / b) * b)
        samples += n
        epoch += 1
        if steps_left == 0:
            return samples


def _calibrate(
    trial: TrialSpec, prepared: PreparedStudy, *, evaluate_too: bool
) -> tuple[float, float]:
    """Seconds per training step at the trial's first batch size (the engine's step, after one
    warm-up step), and of one evaluation of the validation and test splits (when asked)."""
    spec: StudySpec = trial.study
    data, device = prepared.data, prepared.device
    model = build_model_for(spec, data, seed=trial.seed).to(device)
    opt = make_optimizer(spec, model.parameters(), trial.lr)
    clip, dtype = spec.clip_grad_norm, autocast_dtype(spec.precision, device)
    autograd = AutogradStep(
        model, opt, data.task, accumulate=spec.accumulate, clip=clip, dtype=dtype
    )
    fast = dtype is None and FastMLPStep.supports(
        model, opt, data.task, accumulate=spec.accumulate, clip=clip
    )  # the step the engine takes (`engine._Trial`)
    step: Step = FastMLPStep(model, opt) if fast else autograd
    b = TrialPlan(trial, data.n_train).epoch(0)[0]
    autograd.set_batch_size(b)
    order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(trial.seed))
    batches = data.train.batches(order[: b * (CALIBRATION_STEPS + 1)], b)
    loss = torch.zeros((), device=device)
    model.train()
    times = []
    for xb, yb in batches:
        _sync(device)
        t0 = time.perf_counter()
        step.backward(xb, yb, loss)
        step.update()
        _sync(device)
        times.append(time.perf_counter() - t0)
    timed = times[1:] or times  # the first step warms up
    per_step = sorted(timed)[len(timed) // 2]
    eval_s = math.nan
    if evaluate_too:
        t0 = time.perf_counter()
        evaluate(model, data.val, spec.eval_batch_size, data.task)
        evaluate(model, data.test, spec.eval_batch_size, data.task)
        eval_s = time.perf_counter() - t0
    return per_step, eval_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
