"""The engine: trains one trial, fast, and reports each evaluation through a callback.

Read `train_trial` top to bottom: it is the whole training loop. The dataset already sits on the
device as tensors; each epoch is a permutation drawn from a generator seeded by the trial, and a
batch is one index-select, so there is no DataLoader (and no per-sample Python) in the hot loop.
The last, partial batch of an epoch is kept, so every epoch sees every example exactly once.

The engine knows nothing of storage: the caller persists `EvalRecord`s and `Checkpoint`s.
"""

from __future__ import annotations

import copy
import io
import json
import math
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from batchlab.batch import Inputs
from batchlab.batch import to as inputs_to
from batchlab.branched import branch_points, interval, stream_indices, stream_seed
from batchlab.data import Dataset
from batchlab.data.rows import Rows
from batchlab.models import build_model, materialize_lazy
from batchlab.plan import Evaluation, TrialPlan
from batchlab.probes import ProbeContext, ProbeRecord, ProbeSuite, probe_generator
from batchlab.spec import Branch, StudySpec, TrialSpec
from batchlab.step import (
    AutogradStep,
    FastMLPStep,
    Step,
    autocast,
    autocast_dtype,
    compile_unsupported,
)
from batchlab.tasks import Task
from batchlab.trial import EvalRecord, TrialState


def resolve_device(name: str) -> torch.device:
    """`auto` means CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """Everything needed to continue a trial bit-for-bit from an epoch boundary."""

    eval_idx: int
    step: int
    samples: int
    train_time_s: float
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    generator_state: torch.Tensor
    initial_train_loss: float = math.nan  # for the divergence rule (older checkpoints: unknown)
    scaler_state: dict[str, float] | None = None  # fp16's loss scale (GradScaler.state_dict())

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(self.__dict__, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> Checkpoint:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        return cls(**state)


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How a trial ended: COMPLETE or DIVERGED (the engine never returns FAILED; it raises), or
    RUNNING when it paused at `stop_at_step` with a checkpoint, to be resumed later."""

    state: TrialState
    diverged_step: int | None = None
    reason: str | None = None  # why a trial is DIVERGED, stored as its error
    probes: list[ProbeRecord] = field(default_factory=list)  # recorded after the last evaluation
    weights: dict[str, torch.Tensor] | None = None  # final model state of a COMPLETE trial
    compiled: bool | None = None  # with `compile`: whether it ran compiled (None: not asked)

    def weights_bytes(self, *, save: bool) -> bytes | None:
        """The final weights serialized for the store, or None (none, or not to be saved)."""
        if self.weights is None or not save:
            return None
        buf = io.BytesIO()
        torch.save(self.weights, buf)
        return buf.getvalue()


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A live view of a running trial, for progress bars."""

    step: int
    total_steps: int | None
    train_loss: float
    train_acc: float


DIVERGENCE_FACTOR = 10.0
"""A trial whose training loss at the end exceeds this many times its initial loss diverged."""


def divergence(
    rec: EvalRecord, *, evaluated: dict[str, bool], initial_train_loss: float, done: bool
) -> str | None:
    """Why an evaluation shows a blown-up trial, or None: a loss over a split it evaluated that
    is not finite, or (at the end) a training loss above DIVERGENCE_FACTOR x the initial one."""
    for name, was in evaluated.items():
        value = getattr(rec, name)
        if was and not math.isfinite(value):
            return f"{name} is {value} at step {rec.step}"
    final = rec.full_train_loss
    rise = math.isfinite(initial_train_loss) and initial_train_loss > 0  # a ratio of losses > 0
    if done and rise and final > DIVERGENCE_FACTOR * initial_train_loss:
        return (
            f"training loss {final:.3g} at the end is more than {DIVERGENCE_FACTOR:g}x its"
            f" initial {initial_train_loss:.3g}"
        )
    return None


def evaluated_losses(data: Dataset, *, full: bool, test: bool = True) -> dict[str, bool]:
    """The losses an evaluation measures, for `divergence` (an empty split, no full pass over
    the training set, or a test set left out, gives NaN, which is not divergence)."""
    return {
        "val_loss": len(data.val) > 0,
        "test_loss": test and len(data.test) > 0,
        "full_train_loss": full,
    }


EvalSink = Callable[[EvalRecord, "Checkpoint | None", list[ProbeRecord]], None]
"""Receives each evaluation, the checkpoint taken with it (if any) and the probe records since
the previous evaluation; a store writes all three in one transaction."""
SnapshotSink = Callable[[int, "Checkpoint"], None]
"""Takes (step, checkpoint) of a reference trial at each of its branch points."""


def build_model_for(spec: StudySpec, data: Dataset, *, seed: int) -> nn.Module:
    """The study's model for its data (input shape, outputs), weights drawn from `seed`; lazy
    modules are materialised on two training examples (`models.materialize_lazy`)."""
    model = build_model(
        spec.model,
        spec.model_args,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=seed,
    )

    def example(m: nn.Module) -> None:  # the model is built on the CPU, the data may be elsewhere
        x, _ = data.train.head(min(2, data.n_train))
        data.task.forward(m, inputs_to(x, torch.device("cpu")))

    materialize_lazy(model, example, seed=seed)
    return model


def make_optimizer(spec: StudySpec, params: Any, lr: float) -> torch.optim.Optimizer:
    """The study's optimizer over `params`. With `no_decay = "biases-and-norms"`, parameters of
    fewer than two dimensions (biases, norm weights) form a second group without weight decay."""
    groups: Any = params
    if spec.no_decay == "biases-and-norms" and spec.weight_decay > 0:
        params = list(params)
        groups = [
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


@torch.inference_mode()
def evaluate(
    model: nn.Module, rows: Rows, batch: int, task: Task, *, dtype: torch.dtype | None = None
) -> tuple[float, float]:
    """The task's mean loss and score over a split's rows, in chunks; NaN for an empty split.

    Losses are summed in float64 and the score from additive statistics, so the result does not
    depend on the chunk size.
    """
    if len(rows) == 0:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    loss: torch.Tensor | None = None
    units: int | torch.Tensor = 0
    stats: torch.Tensor | None = None
    for xc, yc in rows.chunks(batch):
        with autocast(yc.device, dtype):
            out = task.forward(model, xc)
        out = out.float() if dtype is not None else out  # the loss of bf16 logits in fp32
        part = task.sum_loss(out, yc).double()
        loss = part if loss is None else loss + part
        units = units + task.units(yc)
        s = task.score_stats(out, yc)
        stats = s if stats is None else stats + s
    model.train(was_training)
    assert loss is not None and stats is not None
    n = float(units)  # one sync per split (and one in score)
    return loss.item() / n, task.score(stats, n)


NAN_PAIR = (math.nan, math.nan)
PROBE_POOL = 4096
"""Training rows probes draw from when the data is a Dataset read by index."""


def reset_peak_memory(device: torch.device) -> None:
    """Start a trial's peak-memory window: CUDA's counter, or Linux's peak RSS (VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the peak is the process's lifetime peak


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max allocated on the device. CPU: the process's peak resident set size since the
    trial started (Linux), else since the process started."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Window:
    """The running loss and score of the batches since the last evaluation, and their training
    time (probe time excluded, measured after the device has finished)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        self.stats: torch.Tensor | None = None  # the task's score statistics
        self.seen = 0
        self.units: int | torch.Tensor = 0
        self.probe_time = 0.0
        self.seconds = 0.0  # training time of the window, once closed
        _sync(device)
        self.t0 = time.perf_counter()

    def add(self, stats: torch.Tensor, units: int | torch.Tensor, examples: int) -> None:
        self.stats = stats if self.stats is None else self.stats + stats
        self.units = self.units + units
        self.seen += examples

    def probe(self, measure: Callable[[], None]) -> None:
        _sync(self.device)
        t = time.perf_counter()
        measure()
        _sync(self.device)
        self.probe_time += time.perf_counter() - t

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0 - self.probe_time

    def close(self, task: Task) -> tuple[float, float, float]:
        """(mean loss, score, training seconds) of the window; one sync."""
        _sync(self.device)
        elapsed = self.seconds = self.elapsed()
        units = float(self.units)
        score = task.score(self.stats, units) if self.stats is not None else math.nan
        return self.loss_sum.item() / units, score, elapsed


class _Trial:
    """One trial's model, optimizer, data order, steps, probes and counters: the parts that
    `train_trial` composes. Checkpoints hold everything needed to continue it bit for bit."""

    def __init__(
        self,
        trial: TrialSpec,
        data: Dataset,
        device: torch.device,
        on_eval: EvalSink,
        *,
        deadline: float | None = None,
        on_snapshot: SnapshotSink | None = None,
    ) -> None:
        spec = trial.study
        self.trial, self.data, self.device, self.task = trial, data, device, data.task
        self.on_eval, self.on_snapshot = on_eval, on_snapshot
        self.plan = self.make_plan()
        # A branched design's reference keeps its state at the branch points (batchlab.branched).
        self.snapshot_at: frozenset[int] = frozenset()
        if on_snapshot is not None and spec.branched is not None:
            self.snapshot_at = frozenset(branch_points(trial, data.n_train))
        self.seconds = trial.budget.seconds
        self.deadline = deadline
        self.diverged_step: int | None = None
        self.reason: str | None = None
        self.initial_train_loss = math.nan
        self.window = _Window(device)
        self.epoch_lr = trial.lr
        self.running = (math.nan, math.nan)
        self.model = build_model_for(spec, data, seed=trial.seed).to(device)
        self.optimizer = make_optimizer(spec, self.model.parameters(), trial.lr)
        self.shuffle = torch.Generator().manual_seed(trial.seed)  # CPU: one order on any device
        self.step = self.samples = self.eval_idx = 0
        self.train_time = 0.0
        # The built-in MLP with SGD takes a hand-written step (batchlab.fastpath): the same math
        # in half the kernels. Steps where a probe reads gradients or pre-update weights go
        # through autograd; both keep the momentum buffers in the optimizer's state, so they
        # interleave freely.
        clip, self.dtype = spec.clip_grad_norm, autocast_dtype(spec.precision, device)
        self.autograd = AutogradStep(
            self.model,
            self.optimizer,
            self.task,
            accumulate=spec.accumulate,
            clip=clip,
            dtype=self.dtype,
            compile=spec.compile and compile_unsupported(device.type) is None,
        )
        # `compile` trains through autograd (compiled, or eager where that cannot run), never
        # the hand-written step: the same path whether or not the compiler is there.
        self.fast: Step | None = (
            FastMLPStep(self.model, self.optimizer)
            if self.dtype is None
            and not spec.compile
            and FastMLPStep.supports(
                self.model, self.optimizer, self.task, accumulate=spec.accumulate, clip=clip
            )
            else None
        )
        # Probes see the freshly initialised weights first (w_0 for the distance probe, also when
        # resuming: the seed rebuilds the same init), draw from their own generator, and leave
        # the training trajectory untouched. They draw examples from the training set: all of it
        # in memory, the first PROBE_POOL rows (in the seeded split order) of a Dataset.
        self.suite = (
            ProbeSuite.from_spec(
                spec.probes, total_steps=self.plan.total_steps, options=spec.probe_args
            )
            if spec.probes
            else None
        )
        probe_x: Inputs = torch.empty(0)  # never read without probes: nothing is fetched
        probe_y = torch.empty(0)
        if self.suite is not None:
            probe_x, probe_y = data.train.head(len(data.train) if data.in_memory else PROBE_POOL)
        self.ctx = ProbeContext(
            model=self.model,
            loss_fn=self.task.mean_loss,
            x_train=probe_x,
            y_train=probe_y,
            step=0,
            batch_size=trial.batch_size,
            generator=probe_generator(trial.seed),
        )
        if self.suite is not None:
            self.suite.start(self.ctx)

    fresh_init = True  # the first evaluation is of freshly initialised weights

    def make_plan(self) -> TrialPlan:
        return TrialPlan(self.trial, self.data.n_train)

    def start(self, snapshot: Checkpoint | None) -> None:
        """Evaluate the initial weights (idx 0), with a checkpoint: the trial's first."""
        assert snapshot is None, "only a branch trial starts from a checkpoint"
        self.emit(self.record(window=None, full=True), with_checkpoint=True)

    def restore(self, ckpt: Checkpoint) -> None:
        self.model.load_state_dict(ckpt.model_state)
        self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.shuffle.set_state(ckpt.generator_state)
        self.step, self.samples, self.train_time = ckpt.step, ckpt.samples, ckpt.train_time_s
        self.eval_idx = ckpt.eval_idx + 1
        self.initial_train_loss = ckpt.initial_train_loss
        if self.autograd.scaler is not None and ckpt.scaler_state is not None:
            self.autograd.scaler.load_state_dict(ckpt.scaler_state)
        self.drained()  # the start() records of a resumed trial are already stored

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(
            eval_idx=self.eval_idx,
            step=self.step,
            samples=self.samples,
            train_time_s=self.train_time,
            model_state=self.weights(),
            optimizer_state=_to_cpu(self.optimizer.state_dict()),
            generator_state=self.shuffle.get_state(),
            initial_train_loss=self.initial_train_loss,
            scaler_state=(
                self.autograd.scaler.state_dict() if self.autograd.scaler is not None else None
            ),
        )

    def compiled_used(self) -> bool | None:
        """With `compile`: whether the trial trains compiled (False where it fell back to
        eager: `compile_unsupported`, or an exception at a step); None when not asked."""
        return self.autograd.compiled is not None if self.trial.study.compile else None

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def drained(self) -> list[ProbeRecord]:
        return self.suite.drain() if self.suite is not None else []

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def exhausted(self) -> bool:
        return (
            self.plan.exhausted(step=self.step, samples=self.samples, train_time=self.train_time)
            or self.past_deadline()
        )

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.perf_counter() >= self.deadline

    # ---- the Runner interface: what `run_epochs` drives -----------------------------------------

    def live(self) -> bool:
        return self.diverged_step is None

    def begin_epoch(self, epoch: int) -> Iterator[tuple[Inputs, torch.Tensor]]:
        B, self.epoch_lr = self.plan.epoch(epoch)
        self.set_lr(self.epoch_lr)
        self.autograd.set_batch_size(B)
        order = self.order(epoch)
        self.window = _Window(self.device)
        return self.data.train.batches(order, B)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's training examples, in the order they are used: a permutation."""
        return torch.randperm(self.plan.n_train, generator=self.shuffle)  # CPU: one order anywhere

    def step_lr(self) -> None:
        self.set_lr(self.plan.lr(self.step, self.epoch_lr))

    def train_step(self, batch: tuple[Inputs, torch.Tensor]) -> None:
        """One update on a batch, with the probes due at it (their time kept out of training)."""
        xb, yb = batch
        window, suite, nxt = self.window, self.suite, self.step + 1
        due = suite is not None and suite.due(nxt)
        split = suite is not None and due and suite.needs_split_step(nxt)
        step = self.autograd if split or self.fast is None else self.fast
        stats, units = step.backward(xb, yb, window.loss_sum)
        if split:
            assert suite is not None
            window.probe(lambda: suite.after_backward(self.ctx.at(nxt)))
        step.update()
        self.step = nxt
        if nxt in self.snapshot_at:
            assert self.on_snapshot is not None
            self.on_snapshot(nxt, self.checkpoint())
        if due:
            assert suite is not None
            window.probe(lambda: suite.after_update(self.ctx.at(nxt)))
        bs = int(yb.shape[0])
        window.add(stats, units, bs)
        self.samples += bs

    def check(self) -> bool:
        if not math.isfinite(self.window.loss_sum.item()):  # deliberate sync (free on CPU)
            self.diverged_step = self.step
            return True
        if self.seconds is not None and self.train_time + self.window.elapsed() >= self.seconds:
            return True
        return self.past_deadline()

    def end_epoch(self) -> bool:
        if self.diverged_step is not None:
            return False
        loss, score, elapsed = self.window.close(self.task)
        self.train_time += elapsed
        self.running = (loss, score)
        if not math.isfinite(loss):
            self.diverged_step = self.step
            return False
        return True

    def evaluate(self, at: Evaluation, *, done: bool) -> None:
        if done and self.suite is not None:
            self.suite.finish(self.ctx.at(self.step))  # end-of-training probes: Hessian...
        with_test = self.tests_at(done=done)
        rec = self.record(window=self.window, full=at.full_train, with_test=with_test)
        self.emit(rec, with_checkpoint=at.checkpoint)
        self.reason = divergence(
            rec,
            evaluated=evaluated_losses(self.data, full=at.full_train, test=with_test),
            initial_train_loss=self.initial_train_loss,
            done=done,
        )
        if self.reason is not None:
            self.diverged_step = self.step  # stored as evaluated; training stops here

    def emit(self, rec: EvalRecord, *, with_checkpoint: bool) -> None:
        if rec.idx == 0 and self.fresh_init:
            self.initial_train_loss = rec.full_train_loss
        probes = self.drained() + self.autograd.clip_records(self.step)
        self.on_eval(rec, self.checkpoint() if with_checkpoint else None, probes)
        self.eval_idx += 1

    def tests_at(self, *, done: bool) -> bool:
        """Whether an evaluation includes the test set: every one of a trial's."""
        return True

    def record(self, *, window: _Window | None, full: bool, with_test: bool = True) -> EvalRecord:
        """Evaluate on validation and test (test only `with_test`; the whole training set too
        when `full`)."""
        spec, data, device, task = self.trial.study, self.data, self.device, self.task
        t0 = time.perf_counter()
        # Trials that differ only in batch size, lr or budget start from the same weights: their
        # initial evaluation is made once per dataset and reused, bit for bit (same weights, same
        # chunks, same thread count). Only a fresh trial is at idx 0.
        key = (
            "initial",
            spec.model,
            json.dumps(spec.model_args, sort_keys=True),
            self.trial.seed,
            spec.eval_batch_size,
            str(device),
            torch.get_num_threads(),
            str(self.dtype),
        )
        initial = self.eval_idx == 0 and self.fresh_init
        if initial and key in data.memo:
            val, test, tr = data.memo[key]
        else:
            size, dt = spec.eval_batch_size, self.dtype
            val = evaluate(self.model, data.val, size, task, dtype=dt)
            test = evaluate(self.model, data.test, size, task, dtype=dt) if with_test else NAN_PAIR
            tr = evaluate(self.model, data.train, size, task, dtype=dt) if full else NAN_PAIR
            if initial:
                data.memo[key] = (val, test, tr)
        seen, secs = (window.seen, window.seconds) if window is not None else (0, 0.0)
        return EvalRecord(
            idx=self.eval_idx,
            epoch=self.samples / data.n_train,
            step=self.step,
            samples=self.samples,
            current_lr=float(self.optimizer.param_groups[0]["lr"]),
            train_loss=self.running[0] if window is not None else math.nan,
            train_acc=self.running[1] if window is not None else math.nan,
            val_loss=val[0],
            val_acc=val[1],
            test_loss=test[0],
            test_acc=test[1],
            full_train_loss=tr[0],
            full_train_acc=tr[1],
            train_time_s=self.train_time,
            eval_time_s=time.perf_counter() - t0,
            samples_per_s=seen / secs if secs > 0 else math.nan,
            peak_mem_bytes=peak_memory_bytes(device),
        )


class BranchRun(_Trial):
    """A branch trial: starts from the reference's checkpoint, trains at its own batch size on
    its own stream, evaluates every `interval` samples. The loop is the engine's."""

    fresh_init = False  # the first evaluation is of the reference's weights

    @property
    def branch(self) -> Branch:
        assert self.trial.branch is not None
        return self.trial.branch

    def make_plan(self) -> TrialPlan:
        cfg = self.trial.study.branched
        assert cfg is not None
        return TrialPlan(self.trial, interval(self.trial.batch_size, self.branch.window, cfg.evals))

    def start(self, snapshot: Checkpoint | None) -> None:
        """Take the reference's weights and optimizer state, and evaluate them (idx 0)."""
        if snapshot is None:
            raise ValueError(
                f"branch of trial {self.branch.reference}: the reference kept no checkpoint at"
                f" step {self.branch.step} (it did not get that far)"
            )
        self.model.load_state_dict(snapshot.model_state)
        # torch keeps the given state's tensors (momentum buffers) and updates them in place: a
        # copy leaves the snapshot as stored for every other branch taken from it
        self.optimizer.load_state_dict(copy.deepcopy(snapshot.optimizer_state))
        if self.autograd.scaler is not None and snapshot.scaler_state is not None:
            self.autograd.scaler.load_state_dict(snapshot.scaler_state)
        self.initial_train_loss = snapshot.initial_train_loss  # the divergence rule's reference
        self.set_lr(self.trial.lr)
        self.emit(self.record(window=None, full=False, with_test=False), with_checkpoint=True)

    def tests_at(self, *, done: bool) -> bool:
        """A branch selects on validation only (its target is a validation loss): the test set
        is evaluated once, at its end, to report."""
        return done

    def order(self, epoch: int) -> torch.Tensor:
        """The interval's examples: the next `plan.n_train` of the branch's stream."""
        every = self.plan.n_train
        seed = stream_seed(self.trial.seed, self.branch.point)
        return stream_indices(seed, self.data.n_train, epoch * every, every)


class Runner(Protocol):
    """What the training loop (`run_epochs`) drives: one trial (`_Trial`), or a fused group of
    trials trained as one stacked step (`batchlab.fused`). Each brings its own step; the loop,
    the schedule, the divergence and budget checks and the evaluation points are the same."""

    plan: TrialPlan
    step: int
    samples: int
    running: tuple[float, float]  # the last window's mean loss and score (for progress bars)

    def live(self) -> bool:
        """Whether anything is left to train (a diverged trial, or group, is not)."""
        ...

    def exhausted(self) -> bool: ...

    def begin_epoch(self, epoch: int) -> Iterator[Any]:
        """Set the epoch's batch size and lr, draw its permutation(s), open a window; the epoch's
        batches, each drawn when the loop asks for it."""
        ...

    def step_lr(self) -> None:
        """Set the lr of the next update (`TrialPlan.lr`: warmup, lr_decay)."""
        ...

    def train_step(self, batch: Any) -> None: ...

    def check(self) -> bool:
        """A deliberate sync every `check_every` steps: record divergence, watch a wall-clock
        budget; True stops the epoch here."""
        ...

    def end_epoch(self) -> bool:
        """Close the window (its loss, score and training time); False when nothing is left."""
        ...

    def evaluate(self, at: Evaluation, *, done: bool) -> None:
        """Evaluate and hand the records (and checkpoints) to the sinks."""
        ...


def run_epochs(
    r: Runner,
    *,
    device: torch.device,
    stop_at_step: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> bool:
    """The training loop, for every runner: epochs of batches until the budget is spent or
    nothing is left to train. Returns True when it paused at `stop_at_step`."""
    plan, n = r.plan, r.plan.n_train
    # Reading the loss forces a device sync; on CPU that is free, on CUDA do it every 25 steps.
    check_every = 1 if device.type == "cpu" else 25

    def progress(loss: float, acc: float) -> None:
        if on_progress is not None:
            on_progress(
                Progress(step=r.step, total_steps=plan.total_steps, train_loss=loss, train_acc=acc)
            )

    while r.live() and not r.exhausted():
        # ---- one epoch (or the part of it the budget allows) -----------------------------------
        for batch in r.begin_epoch(r.samples // n):
            if plan.lr_per_step(r.step):
                r.step_lr()  # warmup or lr_decay: each update's own lr
            r.train_step(batch)
            if r.step % check_every == 0 and r.check():
                break
            if plan.stops_within_epoch(step=r.step, samples=r.samples):
                break
            if r.step % 200 == 0:
                progress(math.nan, math.nan)
        if not r.end_epoch():
            return False
        done = r.exhausted()
        at = plan.after_epoch(samples=r.samples, done=done)
        if at.evaluate:
            r.evaluate(at, done=done)
            if not r.live():
                return False  # the evaluation showed a blown-up trial
            if stop_at_step is not None and at.checkpoint and not done and r.step >= stop_at_step:
                return True  # paused on the checkpoint just stored
        progress(*r.running)
    return False


def train_trial(
    trial: TrialSpec,
    data: Dataset,
    *,
    device: torch.device,
    on_eval: EvalSink,
    resume: Checkpoint | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop_at_step: int | None = None,
    deadline: float | None = None,
    start: Checkpoint | None = None,
    on_snapshot: SnapshotSink | None = None,
) -> Outcome:
    """Train one trial from scratch (or from `resume`) until its budget is spent or it diverges.

    Evaluations happen before training (idx 0), every `eval_every` epochs, and at the end; each is
    handed to `on_eval` with a checkpoint when it falls on an epoch boundary.

    `stop_at_step` pauses the trial at the first checkpointed evaluation at or after that step
    (returning RUNNING); resuming from that checkpoint continues bit-identically, as if it had
    never stopped. Adaptive sweeps use it to hold trials at a rung.

    `deadline` (a `time.perf_counter()` value) ends training early, as if the budget were spent,
    at the first step past it: a wall-clock guard for callers such as `suggest`'s short run.

    A branch trial (`trial.branch`, batchlab.branched) starts from `start`, its reference's
    checkpoint at the branch point; a reference trial of a branched design hands its
    checkpoints at the branch points to `on_snapshot`.
    """
    if stop_at_step is not None and stop_at_step < 1:
        raise ValueError(f"stop_at_step must be >= 1, got {stop_at_step}")
    reset_peak_memory(device)
    runner = BranchRun if trial.branch is not None else _Trial
    t = runner(trial, data, device, on_eval, deadline=deadline, on_snapshot=on_snapshot)
    if resume is not None:
        t.restore(resume)
        if stop_at_step is not None and t.step >= stop_at_step:
            return Outcome(state=TrialState.RUNNING)  # already paused at or past the stop
    else:
        t.start(start)
    t.model.train()
    if run_epochs(t, device=device, stop_at_step=stop_at_step, on_progress=on_progress):
        return Outcome(state=TrialState.RUNNING, compiled=t.compiled_used())
    if t.diverged_step is not None:
        return Outcome(
            state=TrialState.DIVERGED,
            diverged_step=t.diverged_step,
            reason=t.reason or f"training loss not finite at step {t.diverged_step}",
            probes=t.drained(),
            compiled=t.compiled_used(),
        )
    return Outcome(state=TrialState.COMPLETE, weights=t.weights(), compiled=t.compiled_used())


def _to_cpu(obj: Any) -> Any:
    """Deep-copy an optimizer state dict with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
