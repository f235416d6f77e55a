"""The engine: trains one trial, fast, and reports each evaluation through a callback.

Read `train_trial` top to bottom: it is the whole training loop. The dataset already sits on the
device as tensors; each epoch is a permutation drawn from a generator seeded by the trial, and a
batch is one index-select, so there is no DataLoader (and no per-sample Python) in the hot loop.
The last, partial batch of an epoch is kept, so every epoch sees every example exactly once.

The engine knows nothing of storage: the caller persists `EvalRecord`s and `Checkpoint`s.
"""

from __future__ import annotations

import io
import json
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from batchlab.data import Dataset
from batchlab.data.rows import Rows
from batchlab.fastpath import MLPStep
from batchlab.lr import warmup_lr
from batchlab.models import build_model
from batchlab.probes import ProbeContext, ProbeRecord, ProbeSuite, probe_generator
from batchlab.spec import StudySpec, TrialSpec
from batchlab.step import backward_batch
from batchlab.tasks import Task
from batchlab.tasks.classification import Classification
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
    probes: list[ProbeRecord] = field(default_factory=list)  # recorded after the last evaluation
    weights: dict[str, torch.Tensor] | None = None  # final model state of a COMPLETE trial

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


EvalSink = Callable[[EvalRecord, "Checkpoint | None", list[ProbeRecord]], None]
"""Receives each evaluation, the checkpoint taken with it (if any) and the probe records since
the previous evaluation; a store writes all three in one transaction."""


def make_optimizer(spec: StudySpec, params: Any, lr: float) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov,
            weight_decay=spec.weight_decay,
        )
    cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=spec.betas, weight_decay=spec.weight_decay)


@torch.no_grad()
def sgd_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> None:
    """`torch.optim.SGD.step()` (dampening 0), bit for bit, without its per-call overhead.

    At small batch sizes a training step is a few dozen tiny kernels and the optimizer's Python
    wrapper is a sizeable share of it; this does the same arithmetic with multi-tensor
    (`_foreach`) kernels and keeps its state in the optimizer, so checkpoints are unchanged.
    """
    group = optimizer.param_groups[0]
    lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
    live = [p for p in params if p.grad is not None]
    grads = [p.grad for p in live if p.grad is not None]
    if wd != 0:
        grads = list(torch._foreach_add(grads, live, alpha=wd))
    if momentum != 0:
        state = optimizer.state
        if all("momentum_buffer" in state[p] for p in live):
            bufs: list[torch.Tensor] = [state[p]["momentum_buffer"] for p in live]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
        else:  # a first step: a new buffer starts as the gradient, as in torch.optim.SGD
            bufs = []
            for p, g in zip(live, grads, strict=True):
                if "momentum_buffer" in state[p]:
                    bufs.append(state[p]["momentum_buffer"].mul_(momentum).add_(g))
                else:
                    bufs.append(torch.clone(g).detach())
                    state[p]["momentum_buffer"] = bufs[-1]
        nesterov = group["nesterov"]
        grads = list(torch._foreach_add(grads, bufs, alpha=momentum)) if nesterov else bufs
    torch._foreach_add_(live, grads, alpha=-lr)


@torch.inference_mode()
def evaluate(model: nn.Module, rows: Rows, batch: int, task: Task) -> tuple[float, float]:
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
        out = model(xc)
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


def epoch_plan(trial: TrialSpec, epoch: int, n_train: int) -> tuple[int, float]:
    """Batch size and lr for an epoch under the trial's batch and lr schedules.

    Smith et al.: where a step schedule would divide the lr by k, multiply the batch by k instead,
    until `max_batch`; past the cap the lr is divided. Milestones are stretched by Hoffer's regime
    factor when regime adaptation is on.
    """
    spec, regime = trial.study, trial.regime_factor
    batch, lr = trial.batch_size, trial.lr
    if spec.batch_schedule is not None:
        sched = spec.batch_schedule
        for _ in range(sched.passed(epoch, regime)):
            bigger = round(batch * sched.factor)
            if sched.max_batch is not None and bigger > sched.max_batch:
                lr /= sched.factor
            else:
                batch = bigger
    if spec.lr_schedule is not None:
        lr /= spec.lr_schedule.factor ** spec.lr_schedule.passed(epoch, regime)
    return min(batch, n_train), lr


def planned_steps(trial: TrialSpec, n_train: int) -> int | None:
    """Updates a trial will make under its budget; None for a wall-clock budget."""
    budget = trial.budget
    if budget.steps is not None:
        return budget.steps
    if budget.seconds is not None:
        return None
    limit = budget.epochs * n_train if budget.epochs is not None else int(budget.value)
    steps = samples = epoch = 0
    while samples < limit:
        batch, _ = epoch_plan(trial, epoch, n_train)
        take = min(n_train, limit - samples)
        steps += math.ceil(take / batch)
        samples += take
        epoch += 1
    return steps


def train_trial(
    trial: TrialSpec,
    data: Dataset,
    *,
    device: torch.device,
    on_eval: EvalSink,
    resume: Checkpoint | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop_at_step: int | None = None,
) -> Outcome:
    """Train one trial from scratch (or from `resume`) until its budget is spent or it diverges.

    Evaluations happen before training (idx 0), every `eval_every` epochs, and at the end; each is
    handed to `on_eval` with a checkpoint when it falls on an epoch boundary.

    `stop_at_step` pauses the trial at the first checkpointed evaluation at or after that step
    (returning RUNNING); resuming from that checkpoint continues bit-identically, as if it had
    never stopped. Adaptive sweeps use it to hold trials at a rung.
    """
    if stop_at_step is not None and stop_at_step < 1:
        raise ValueError(f"stop_at_step must be >= 1, got {stop_at_step}")
    spec, budget, task = trial.study, trial.budget, data.task
    n = data.n_train
    total_steps = planned_steps(trial, n)
    # Reading the loss forces a device sync; on CPU that is free, on CUDA do it every 25 steps.
    check_every = 1 if device.type == "cpu" else 25

    model = build_model(
        spec.model,
        spec.model_args,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=trial.seed,
    ).to(device)
    optimizer = make_optimizer(spec, model.parameters(), trial.lr)
    params = list(model.parameters())
    fast_sgd = spec.optimizer == "sgd"  # same arithmetic as optimizer.step(), less overhead
    shuffle = torch.Generator().manual_seed(trial.seed)  # CPU generator: same order on any device
    reset_peak_memory(device)
    # Probes see the freshly initialised weights first (w_0 for the distance probe, also when
    # resuming: the seed rebuilds the same init), draw from their own generator, and leave the
    # training trajectory untouched.
    suite = (
        ProbeSuite.from_spec(spec.probes, total_steps=total_steps, options=spec.probe_args)
        if spec.probes
        else None
    )
    # Probes draw their own examples from the training set: all of it when it is in memory, its
    # first PROBE_POOL rows (already in the seeded split order) for a Dataset read by index.
    probe_x, probe_y = data.train.head(len(data.train) if data.in_memory else PROBE_POOL)
    probe_ctx = ProbeContext(
        model=model,
        loss_fn=task.mean_loss,
        x_train=probe_x,
        y_train=probe_y,
        step=0,
        batch_size=trial.batch_size,
        generator=probe_generator(trial.seed),
    )
    if suite is not None:
        suite.start(probe_ctx)
    # The built-in MLP with SGD takes a hand-written step (batchlab.fastpath): the same math in
    # half the kernels, without gradient tensors. Steps where a probe reads the gradients, and
    # gradient accumulation (which sums them), go through autograd; both paths keep the momentum
    # buffers in the optimizer's state, so they interleave freely.
    fast_step = (
        MLPStep(model, optimizer)  # type: ignore[arg-type]  # supports() checks it is an MLP
        if spec.accumulate == 1
        and isinstance(task, Classification)
        and MLPStep.supports(model, optimizer)
        else None
    )

    step = samples = eval_idx = 0
    train_time = 0.0
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optimizer.load_state_dict(resume.optimizer_state)
        shuffle.set_state(resume.generator_state)
        step, samples, train_time = resume.step, resume.samples, resume.train_time_s
        eval_idx = resume.eval_idx + 1
        if stop_at_step is not None and step >= stop_at_step:
            return Outcome(state=TrialState.RUNNING)  # already paused at or past the stop

    def current_lr() -> float:
        return float(optimizer.param_groups[0]["lr"])

    def set_lr(lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    def exhausted() -> bool:
        return (
            (budget.epochs is not None and samples >= budget.epochs * n)
            or (budget.steps is not None and step >= budget.steps)
            or (budget.samples is not None and samples >= budget.samples)
            or (budget.seconds is not None and train_time >= budget.seconds)
        )

    def record(
        *, run_loss: float, run_acc: float, window_samples: int, window_time: float, full: bool
    ) -> EvalRecord:
        t0 = time.perf_counter()
        # Trials that differ only in batch size, lr or budget start from the same weights: their
        # initial evaluation is made once per dataset and reused, bit for bit (same weights, same
        # chunks, same thread count).
        key = (
            (
                "initial",
                spec.model,
                json.dumps(spec.model_args, sort_keys=True),
                trial.seed,
                spec.eval_batch_size,
                str(device),
                torch.get_num_threads(),
            )
            if eval_idx == 0  # only a fresh trial starts at 0 (a resumed one past its checkpoint)
            else None
        )
        if key is not None and key in data.memo:
            val, test, tr = data.memo[key]
        else:
            val = evaluate(model, data.val, spec.eval_batch_size, task)
            test = evaluate(model, data.test, spec.eval_batch_size, task)
            tr = evaluate(model, data.train, spec.eval_batch_size, task) if full else NAN_PAIR
            if key is not None:
                data.memo[key] = (val, test, tr)
        eval_time = time.perf_counter() - t0
        return EvalRecord(
            idx=eval_idx,
            epoch=samples / n,
            step=step,
            samples=samples,
            current_lr=current_lr(),
            train_loss=run_loss,
            train_acc=run_acc,
            val_loss=val[0],
            val_acc=val[1],
            test_loss=test[0],
            test_acc=test[1],
            full_train_loss=tr[0],
            full_train_acc=tr[1],
            train_time_s=train_time,
            eval_time_s=eval_time,
            samples_per_s=window_samples / window_time if window_time > 0 else math.nan,
            peak_mem_bytes=peak_memory_bytes(device),
        )

    def model_state() -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def drained() -> list[ProbeRecord]:
        return suite.drain() if suite is not None else []

    def checkpoint() -> Checkpoint:
        return Checkpoint(
            eval_idx=eval_idx,
            step=step,
            samples=samples,
            train_time_s=train_time,
            model_state=model_state(),
            optimizer_state=_to_cpu(optimizer.state_dict()),
            generator_state=shuffle.get_state(),
        )

    if resume is None:
        rec = record(
            run_loss=math.nan, run_acc=math.nan, window_samples=0, window_time=0, full=True
        )
        on_eval(rec, checkpoint(), drained())
        eval_idx += 1
    elif suite is not None:
        drained()  # the start() records of a resumed trial are already stored

    model.train()
    warmup_steps = round(spec.warmup_epochs * math.ceil(n / epoch_plan(trial, 0, n)[0]))
    while not exhausted():
        # ---- one epoch (or the part of it the budget allows) -------------------------------------
        epoch = samples // n
        B, epoch_lr = epoch_plan(trial, epoch, n)
        set_lr(epoch_lr)
        micro = B // spec.accumulate  # gradient accumulation: k micro-batches, one update
        perm = torch.randperm(n, generator=shuffle)  # on the CPU: the order on every device
        loss_sum = torch.zeros((), device=device)
        stats: torch.Tensor | None = None  # the task's score statistics, summed on the device
        seen = 0
        seen_units: int | torch.Tensor = 0
        probe_time = 0.0
        _sync(device)
        t_start = time.perf_counter()
        for xb, yb in data.train.batches(perm, B):
            if step < warmup_steps:
                set_lr(
                    warmup_lr(step, lr_ref=trial.lr_base, lr=epoch_lr, warmup_steps=warmup_steps)
                )
            elif step == warmup_steps and warmup_steps:
                set_lr(epoch_lr)
            bs = int(yb.shape[0])
            due = suite is not None and suite.due(step + 1)
            fast = None if due else fast_step  # a probed step reads gradients: autograd
            units: int | torch.Tensor
            if fast is not None:
                loss, n_correct = fast(xb, yb)  # forward, backward and update in one
                loss_sum.add_(loss, alpha=bs)
                batch_stats, units = n_correct, int(bs)
            else:
                optimizer.zero_grad(set_to_none=True)
                batch_stats, units = backward_batch(
                    model, task, xb, yb, micro=micro, loss_sum=loss_sum
                )
            stats = batch_stats if stats is None else stats + batch_stats
            if due:
                assert suite is not None
                _sync(device)  # probe time is excluded from training time: clock after the device
                t_probe = time.perf_counter()
                suite.after_backward(probe_ctx.at(step + 1))
                _sync(device)
                probe_time += time.perf_counter() - t_probe
            if fast is None:  # (the hand-written step has updated the weights already)
                if fast_sgd:
                    sgd_step(optimizer, params)
                else:
                    optimizer.step()
            step += 1
            if due:
                assert suite is not None
                _sync(device)
                t_probe = time.perf_counter()
                suite.after_update(probe_ctx.at(step))
                _sync(device)
                probe_time += time.perf_counter() - t_probe  # excluded from training time
            seen += bs
            seen_units = seen_units + units
            samples += bs
            if step % check_every == 0:
                if not math.isfinite(loss_sum.item()):  # deliberate sync (free on CPU)
                    return Outcome(state=TrialState.DIVERGED, diverged_step=step, probes=drained())
                if (
                    budget.seconds is not None
                    and train_time + time.perf_counter() - t_start - probe_time >= budget.seconds
                ):
                    break
            if (budget.steps is not None and step >= budget.steps) or (
                budget.samples is not None and samples >= budget.samples
            ):
                break
            if on_progress is not None and step % 200 == 0:
                on_progress(
                    Progress(
                        step=step, total_steps=total_steps, train_loss=math.nan, train_acc=math.nan
                    )
                )
        _sync(device)
        window = time.perf_counter() - t_start - probe_time
        train_time += window
        n_units = float(seen_units)
        run_loss = loss_sum.item() / n_units
        run_acc = task.score(stats, n_units) if stats is not None else math.nan
        if not math.isfinite(run_loss):
            return Outcome(state=TrialState.DIVERGED, diverged_step=step, probes=drained())
        done = exhausted()
        epoch_end = samples % n == 0
        epochs_done = samples // n
        if done or (epoch_end and epochs_done % spec.eval_every == 0):
            full = done or (spec.train_eval_every > 0 and epochs_done % spec.train_eval_every == 0)
            if done and suite is not None:
                suite.finish(probe_ctx.at(step))  # end-of-training probes: Hessian, sharpness...
            rec = record(
                run_loss=run_loss,
                run_acc=run_acc,
                window_samples=seen,
                window_time=window,
                full=full,
            )
            on_eval(rec, checkpoint() if epoch_end else None, drained())
            eval_idx += 1
            if stop_at_step is not None and epoch_end and not done and step >= stop_at_step:
                return Outcome(state=TrialState.RUNNING)  # paused on the checkpoint just stored
        if on_progress is not None:
            on_progress(
                Progress(step=step, total_steps=total_steps, train_loss=run_loss, train_acc=run_acc)
            )
    return Outcome(state=TrialState.COMPLETE, weights=model_state())


def _to_cpu(obj: Any) -> Any:
    """Deep-copy an optimizer state dict with every tensor moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
