"""The schedule of a trial, in one place: batch size and lr per epoch, warmup, planned steps,
when to evaluate, and where a trial can pause.

The engine trains by it, the fused path trains by it, adaptive sweeps place their rungs on its
pause points and progress bars read its planned steps: nothing else restates it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

from batchlab.lr import decay_factor, scaled_lr, warmup_lr
from batchlab.spec import TrialSpec


def epoch_plan(trial: TrialSpec, epoch: int, n_train: int) -> tuple[int, float]:
    """Batch size and lr for an epoch under the trial's batch and lr schedules.

    Smith et al.: where a step schedule would divide the lr by k, multiply the batch by k instead,
    until `max_batch`; past the cap the lr is divided. Or the schedule names the batch size from
    each milestone on (a batch-size warmup, `batchlab schedule`), the lr following the study's
    lr_scaling rule. Milestones are stretched by Hoffer's regime factor when regime adaptation
    is on.
    """
    spec, regime = trial.study, trial.regime_factor
    batch, lr = trial.batch_size, trial.lr
    if spec.batch_schedule is not None and spec.batch_schedule.batch_sizes is not None:
        passed = spec.batch_schedule.passed(epoch, regime)  # explicit sizes, lr by the rule
        if passed:
            batch = spec.batch_schedule.batch_sizes[passed - 1]
            lr = trial.lr * scaled_lr(1.0, batch, trial.batch_size, spec.lr_scaling)
    elif spec.batch_schedule is not None:
        sched = spec.batch_schedule
        assert sched.factor is not None
        for _ in range(sched.passed(epoch, regime)):
            bigger = round(batch * sched.factor)
            if sched.max_batch is not None and bigger > sched.max_batch:
                lr /= sched.factor
            else:
                batch = bigger
    if spec.lr_schedule is not None:
        assert spec.lr_schedule.factor is not None  # the spec refuses an lr_schedule without
        lr /= spec.lr_schedule.factor ** spec.lr_schedule.passed(epoch, regime)
    return min(batch, n_train), lr


def planned_steps(trial: TrialSpec, n_train: int) -> int | None:
    """Updates a trial will make under its budget; None for a wall-clock budget."""
    return TrialPlan(trial, n_train).total_steps


@dataclass(frozen=True)
class Evaluation:
    """What happens at the end of an epoch (or of the budget within one)."""

    evaluate: bool
    full_train: bool  # a full pass over the training set too
    checkpoint: bool  # on an epoch boundary: the trial can resume from here


@dataclass(frozen=True)
class TrialPlan:
    """One trial's schedule on a training set of `n_train` examples."""

    trial: TrialSpec
    n_train: int

    def epoch(self, epoch: int) -> tuple[int, float]:
        """(batch size, lr) of an epoch."""
        return epoch_plan(self.trial, epoch, self.n_train)

    @cached_property
    def warmup_steps(self) -> int:
        """Goyal et al.'s warmup, `warmup_epochs` counted in the first epoch's steps."""
        first = self.epoch(0)[0]
        return round(self.trial.study.warmup_epochs * math.ceil(self.n_train / first))

    def lr(self, step: int, epoch_lr: float, *, lr_base: float | None = None) -> float:
        """The lr of the update after `step` updates: the warmup ramp from the base lr, then the
        epoch's lr; times the `lr_decay` schedule's factor when there is one (at `decay_step`)."""
        base = self.trial.lr_base if lr_base is None else lr_base
        lr = warmup_lr(step, lr_ref=base, lr=epoch_lr, warmup_steps=self.warmup_steps)
        decay = self.trial.study.lr_decay
        if decay is None:
            return lr
        total = self.total_steps
        assert total is not None  # the spec refuses lr_decay with a wall-clock budget
        return lr * decay_factor(
            decay.kind,
            self.decay_step(step),
            total,
            warmup=decay.warmup(total),
            final=decay.final,
            decay_steps=max(1, round(decay.decay_fraction * total)),
        )

    def decay_step(self, step: int) -> float:
        """Where the update after `step` updates lies on the `lr_decay` schedule, in updates:
        `step` itself at a constant batch size. Under a batch schedule the decay follows the
        samples (as a language model's schedule follows tokens): the samples of the first `step`
        updates, as a fraction of the budget's, times the planned updates. A batch-size warmup
        then decays at each sample as the constant batch does, which is where the branches
        that measured its critical batch size trained (`schedule_factor`); counted in its own
        updates, which the small early batches crowd, it would decay far sooner."""
        if self.trial.study.batch_schedule is None:
            return step
        total, boundaries = self.total_steps, self._epoch_starts
        assert total is not None  # a batch schedule needs an epochs budget
        epoch = min(bisect.bisect_right(boundaries, step), len(boundaries) - 1) - 1
        batch, _ = self.epoch(epoch)
        samples = epoch * self.n_train + min(self.n_train, (step - boundaries[epoch]) * batch)
        return total * samples / (len(boundaries) - 1) / self.n_train

    @cached_property
    def _epoch_starts(self) -> list[int]:
        """The step at which each epoch of an epochs budget starts, and the total at the end."""
        epochs = self.trial.budget.epochs
        assert epochs is not None
        out = [0]
        for epoch in range(epochs):
            out.append(out[-1] + math.ceil(self.n_train / self.epoch(epoch)[0]))
        return out

    def lr_per_step(self, step: int) -> bool:
        """Whether the update after `step` updates has an lr of its own (warmup, lr_decay), set
        before it, rather than the epoch's."""
        return self.trial.study.lr_decay is not None or (
            self.warmup_steps > 0 and step <= self.warmup_steps
        )

    @cached_property
    def total_steps(self) -> int | None:
        """Updates the trial will make under its budget; None for a wall-clock budget."""
        budget, n = self.trial.budget, self.n_train
        if budget.steps is not None:
            return budget.steps
        if budget.seconds is not None:
            return None
        limit = budget.epochs * n if budget.epochs is not None else int(budget.value)
        steps = samples = epoch = 0
        while samples < limit:
            batch, _ = self.epoch(epoch)
            take = min(n, limit - samples)
            steps += math.ceil(take / batch)
            samples += take
            epoch += 1
        return steps

    def exhausted(self, *, step: int, samples: int, train_time: float = 0.0) -> bool:
        """Whether the budget is spent."""
        budget = self.trial.budget
        return (
            (budget.epochs is not None and samples >= budget.epochs * self.n_train)
            or (budget.steps is not None and step >= budget.steps)
            or (budget.samples is not None and samples >= budget.samples)
            or (budget.seconds is not None and train_time >= budget.seconds)
        )

    def stops_within_epoch(self, *, step: int, samples: int) -> bool:
        """A steps or samples budget that ends in the middle of an epoch."""
        budget = self.trial.budget
        return (budget.steps is not None and step >= budget.steps) or (
            budget.samples is not None and samples >= budget.samples
        )

    def after_epoch(self, *, samples: int, done: bool) -> Evaluation:
        """Evaluations: every `eval_every` epochs and at the end (checkpointed on an epoch
        boundary); a full pass over the training set every `train_eval_every` and at the end."""
        spec = self.trial.study
        epoch_end = samples % self.n_train == 0
        epochs = samples // self.n_train
        evaluate = done or (epoch_end and epochs % spec.eval_every == 0)
        full = done or (spec.train_eval_every > 0 and epochs % spec.train_eval_every == 0)
        return Evaluation(evaluate=evaluate, full_train=evaluate and full, checkpoint=epoch_end)

    def pause_points(self) -> list[int]:
        """Steps of the checkpointed evaluations strictly inside training (neither step 0 nor the
        end): the only places where the engine can pause a trial."""
        total = self.total_steps
        if total is None:
            raise ValueError("adaptive: a wall-clock budget has no planned steps")
        budget, n = self.trial.budget, self.n_train
        limit = budget.epochs * n if budget.epochs is not None else budget.samples
        out: list[int] = []
        steps = samples = epoch = 0
        while True:
            batch, _ = self.epoch(epoch)
            steps += math.ceil(n / batch)
            samples += n
            epoch += 1
            if steps >= total or (limit is not None and samples >= limit):
                return out  # this epoch boundary is the end of training (or lies past it)
            if epoch % self.trial.study.eval_every == 0:
                out.append(steps)
