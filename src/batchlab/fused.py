"""Fused trials: several trials of one MLP shape and batch size trained as one batched step.

Trials that differ only in seed and/or learning rate run the same computation on different
numbers, so a group of G of them can share every kernel launch: the weights of the members are
stacked into (G, out, in) tensors, each member draws its own batch (its own permutation, seeded
by its own seed, exactly as `engine.train_trial` draws it), the forward pass is one `baddbmm` per
layer, one backward pass gives every member its own gradient (the members' losses are summed and
share no parameter), and SGD updates all members at once with a per-member learning rate.

What fuses (`can_fuse`): the built-in `mlp` model (no BatchNorm), `optimizer = "sgd"` with any
momentum, nesterov and weight decay (one parameter group), any warmup, lr schedule, lr_decay and
batch schedule, an epochs, steps or samples budget (not seconds: a wall-clock budget belongs to
one trial), no probes, no gradient accumulation, no clipping, fresh trials only (a resumed trial
goes through the engine). Everything else runs through `engine.train_trial`.

Results per member match the member's own `train_trial` run to float tolerance, not bit for
bit: a batched matmul, the per-member mean of the loss and the per-member sums in evaluation
associate float32 additions in a different order than the unbatched kernels, so a member's
weights differ from the engine's by a few ulps per step (about 1e-7 relative), which training
then carries along (tests/test_fused.py bounds it).

Divergence is per member: a member whose running loss turns non-finite is recorded DIVERGED at
the step the engine would report and removed from the stack; the others continue unaffected
(members never mix: a NaN in one member's rows cannot reach another's).

Timing: every member records the group's wall time as its `train_time_s` (the time it took to
train, shared with its group), so `samples_per_s` of a member is the group's step rate x B.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from batchlab.data import Dataset
from batchlab.engine import (
    Checkpoint,
    EvalSink,
    Outcome,
    _to_cpu,
    build_model_for,
    divergence,
    evaluated_losses,
    make_optimizer,
    peak_memory_bytes,
    reset_peak_memory,
    run_epochs,
)
from batchlab.models import MLP
from batchlab.plan import Evaluation, TrialPlan
from batchlab.spec import TrialSpec
from batchlab.step import sgd_direction
from batchlab.trial import EvalRecord, TrialState


def _why_not(trials: Sequence[TrialSpec], *, min_size: int = 2) -> str | None:
    """Why `trials` cannot be fused, or None when they can."""
    if len(trials) < min_size:
        return f"a group needs at least {min_size} trials"
    first = trials[0]
    spec = first.study
    if spec.model != "mlp":
        return f"model {spec.model!r}: only the built-in mlp fuses"
    if spec.optimizer != "sgd":
        return f"optimizer {spec.optimizer!r}: only sgd fuses"
    if spec.probes:
        return "probes: a probed trial runs alone"
    if spec.accumulate != 1:
        return "accumulate: gradient accumulation does not fuse"
    if spec.precision != "fp32":
        return "precision: autocast does not fuse"
    if spec.compile:
        return "compile: a fused group's stacked step is not compiled"
    if spec.clip_grad_norm is not None:
        return "clip_grad_norm: clipping is per member's global norm; it does not fuse yet"
    if spec.no_decay != "none" and spec.weight_decay > 0:
        return "no_decay: parameter groups do not fuse"
    if first.budget.seconds is not None:
        return "budget.seconds: a wall-clock budget belongs to one trial"
    if len({t.trial_id for t in trials}) != len(trials):
        return "the same trial appears twice"
    for t in trials[1:]:
        if t.study != spec:
            return "members come from different specs (or variants)"
        same = (t.batch_size, t.budget, t.variant, t.control, t.regime_factor)
        if same != (
            first.batch_size,
            first.budget,
            first.variant,
            first.control,
            first.regime_factor,
        ):
            return "members differ in more than seed and lr"
    return None


def can_fuse(trials: Sequence[TrialSpec]) -> bool:
    """True when `train_group` can train `trials` together: two or more fresh trials of one spec
    that differ only in seed and lr, with the mlp model, SGD, no probes, no accumulation and an
    epochs / steps / samples budget."""
    return _why_not(trials) is None


def group_trials(trials: Sequence[TrialSpec], *, max_size: int = 8) -> list[list[TrialSpec]]:
    """Partition `trials` into fusable groups of at most `max_size` (in the given order); trials
    that fuse with nothing come back as groups of one, for the engine."""
    buckets: dict[tuple[object, ...], list[TrialSpec]] = {}
    for t in trials:
        key = (
            t.study.model_dump_json(),
            t.batch_size,
            t.budget,
            t.variant,
            t.control,
            t.regime_factor,
        )
        buckets.setdefault(key, []).append(t)
    out: list[list[TrialSpec]] = []
    for members in buckets.values():
        for i in range(0, len(members), max_size):
            chunk = members[i : i + max_size]
            if can_fuse(chunk):
                out.append(chunk)
            else:
                out.extend([t] for t in chunk)
    return out


@dataclass(kw_only=True)
class _Member:
    """One trial of a group: its spec, sink, generator, template model and optimizer."""

    trial: TrialSpec
    sink: EvalSink
    shuffle: torch.Generator
    model: MLP  # holds nothing during training; used to emit engine-format state dicts
    optimizer: torch.optim.Optimizer
    lr: float = math.nan


def _to_stacked(t: torch.Tensor) -> torch.Tensor:
    """Stacked (G, out, in) weights to the (G, in, out) layout of the fused step (biases as is)."""
    return t.transpose(1, 2) if t.dim() == 3 else t


def _from_stacked(t: torch.Tensor) -> torch.Tensor:
    """One member's (in, out) weight back to `nn.Linear`'s (out, in) (a view; biases as is)."""
    return t.transpose(0, 1) if t.dim() == 2 else t


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # deliberate: the clock is read only after the device


def _forward(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (G, B, C) of the stacked MLP [W1, b1, W2, b2, ...] on inputs (G, B, D) or (B, D).

    Weights are stored transposed, (G, in, out): autograd then produces their gradients in that
    same layout (h^T @ grad_out), where the (G, out, in) layout of `nn.Linear` would cost a
    strided copy of every weight gradient per step."""
    h = x
    n_layers = len(params) // 2
    for i in range(n_layers):
        w, b = params[2 * i], params[2 * i + 1]
        if h.dim() == 2:  # shared inputs (evaluation): broadcast over the members
            h = torch.matmul(h, w) + b.unsqueeze(1)
        else:
            h = torch.baddbmm(b.unsqueeze(1), h, w)
        if i < n_layers - 1:
            h = F.relu(h)
    return h


@torch.inference_mode()
def _evaluate(
    params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor, batch: int
) -> tuple[list[float], list[float]]:
    """Per-member mean cross-entropy and accuracy over (x, y), as `engine.evaluate` computes
    them (float32 sums per chunk, accumulated in float64); NaN for an empty split."""
    g = params[0].shape[0]
    if x.shape[0] == 0:
        return [math.nan] * g, [math.nan] * g
    loss = torch.zeros(g, device=x.device, dtype=torch.float64)
    correct = torch.zeros(g, device=x.device, dtype=torch.int64)
    flat = x.reshape(x.shape[0], -1)
    for i in range(0, x.shape[0], batch):
        out = _forward(params, flat[i : i + batch])
        yc = y[i : i + batch]
        c = out.shape[-1]
        per = F.cross_entropy(out.reshape(-1, c), yc.repeat(g), reduction="none")
        loss += per.view(g, -1).sum(dim=1).double()
        correct += (out.argmax(dim=2) == yc).sum(dim=1)
    n = x.shape[0]
    return (loss / n).tolist(), (correct.double() / n).tolist()  # one sync per split


class _Group:
    """The members of a group as one `engine.Runner`: stacked weights, the stacked step, and one
    record per member at each evaluation. `engine.run_epochs` trains it like any trial."""

    def __init__(
        self,
        trials: Sequence[TrialSpec],
        data: Dataset,
        device: torch.device,
        sinks: Sequence[EvalSink],
    ) -> None:
        first = trials[0]
        self.spec, self.data, self.device = first.study, data, device
        self.x, self.y = data.x_train, data.y_train
        self.n = n = self.x.shape[0]
        self.x_flat = self.x.reshape(n, -1)
        self.members: list[_Member] = []
        for t, sink in zip(trials, sinks, strict=True):
            model = build_model_for(self.spec, data, seed=t.seed)
            assert isinstance(model, MLP)
            model = model.to(device)
            self.members.append(
                _Member(
                    trial=t,
                    sink=sink,
                    shuffle=torch.Generator().manual_seed(t.seed),  # CPU: one order anywhere
                    model=model,
                    optimizer=make_optimizer(self.spec, model.parameters(), t.lr),
                    lr=t.lr,
                )
            )
        self.names = [k for k, _ in self.members[0].model.named_parameters()]
        self.params = [
            _to_stacked(
                torch.stack([dict(m.model.named_parameters())[k].detach() for m in self.members])
            )
            .contiguous()
            .requires_grad_(True)
            for k in self.names
        ]
        self.bufs: list[torch.Tensor] | None = None  # momentum buffers, stacked like params
        group = self.members[0].optimizer.param_groups[0]
        self.momentum, self.wd = group["momentum"], group["weight_decay"]
        self.nesterov = group["nesterov"]
        self.alive = list(range(len(self.members)))  # positions in `members` of the stack's rows
        self.outcomes: list[Outcome | None] = [None] * len(self.members)
        self.plan = TrialPlan(first, n)  # the schedule the members share (seed and lr aside)
        self.plans = [TrialPlan(m.trial, n) for m in self.members]  # for each member's own lr
        self.step = self.samples = self.eval_idx = 0
        self.train_time = 0.0
        self.running = (math.nan, math.nan)
        self.initial = [math.nan] * len(self.members)  # each member's initial training loss
        self.run_loss: list[float] = [math.nan] * len(self.members)
        self.run_acc: list[float] = [math.nan] * len(self.members)
        self.epoch_lrs: dict[int, float] = {}
        self.lrs: list[torch.Tensor] = []
        self.perms = torch.empty(0, dtype=torch.int64)
        self.loss_sum = self.correct = torch.zeros(0)
        self.seen = 0
        self.t_start = self.window = 0.0

    # ---- lrs and the stack -----------------------------------------------------------------------

    def lr_views(self) -> list[torch.Tensor]:
        """-lr of each live member, shaped to broadcast against each stacked parameter."""
        neg = torch.tensor(
            [-self.members[i].lr for i in self.alive],
            device=self.device,
            dtype=self.params[0].dtype,
        )
        return [neg.view(-1, *([1] * (p.dim() - 1))) for p in self.params]

    def set_lrs(self, lrs: dict[int, float]) -> None:
        """Set each live member's lr (keyed by its position in `trials`)."""
        for i in self.alive:
            self.members[i].lr = lrs[i]
        self.lrs = self.lr_views()

    def drop(self, rows: list[int], reasons: dict[int, str] | None = None) -> None:
        """Record the members at `rows` DIVERGED at this step and remove them from the stack (and
        from the epoch's running sums)."""
        for row in rows:
            reason = (reasons or {}).get(row, f"training loss not finite at step {self.step}")
            self.outcomes[self.alive[row]] = Outcome(
                state=TrialState.DIVERGED, diverged_step=self.step, reason=reason
            )
        keep = [r for r in range(len(self.alive)) if r not in rows]
        self.alive = [self.alive[r] for r in keep]
        if not keep:
            return
        sel = torch.tensor(keep, device=self.device)
        with torch.no_grad():
            self.params = [
                p.detach().index_select(0, sel).requires_grad_(True) for p in self.params
            ]
            if self.bufs is not None:
                self.bufs = [b.index_select(0, sel) for b in self.bufs]
        self.loss_sum, self.correct, self.perms = (
            self.loss_sum[sel],
            self.correct[sel],
            self.perms[sel],
        )
        self.run_loss = [self.run_loss[r] for r in keep]
        self.run_acc = [self.run_acc[r] for r in keep]
        self.lrs = self.lr_views()

    # ---- the Runner interface --------------------------------------------------------------------

    def live(self) -> bool:
        return bool(self.alive)

    def exhausted(self) -> bool:
        return self.plan.exhausted(step=self.step, samples=self.samples)

    def begin_epoch(self, epoch: int) -> Iterator[int]:
        self.B = self.plan.epoch(epoch)[0]  # the same for every member
        self.epoch_lrs = {i: self.plans[i].epoch(epoch)[1] for i in self.alive}
        self.set_lrs(self.epoch_lrs)
        # (G, n): row r is the epoch's permutation of member alive[r], from its own generator
        self.perms = torch.stack(
            [torch.randperm(self.n, generator=self.members[i].shuffle) for i in self.alive]
        ).to(self.device)
        self.loss_sum = torch.zeros(len(self.alive), device=self.device)
        self.correct = torch.zeros(len(self.alive), device=self.device, dtype=torch.int64)
        self.seen = 0
        _sync(self.device)
        self.t_start = time.perf_counter()
        return iter(range(0, self.n, self.B))  # batch starts: rows are read at the step

    def step_lr(self) -> None:
        self.set_lrs({j: self.plans[j].lr(self.step, self.epoch_lrs[j]) for j in self.alive})

    def train_step(self, start: int) -> None:
        params = self.params
        idx = self.perms[:, start : start + self.B]  # (G, bs): each member's own batch
        xb, yb = self.x_flat[idx], self.y[idx]
        g, bs = idx.shape
        for p in params:
            p.grad = None
        out = _forward(params, xb)
        c = out.shape[-1]
        losses = (
            F.cross_entropy(out.reshape(-1, c), yb.reshape(-1), reduction="none")
            .view(g, bs)
            .mean(dim=1)
        )
        losses.sum().backward()  # type: ignore[no-untyped-call]  # members share nothing
        self.loss_sum += losses.detach() * bs
        self.correct += (out.detach().argmax(dim=2) == yb).sum(dim=1)
        with torch.no_grad():  # `step.sgd_step`'s arithmetic, one lr per member
            grads, self.bufs = sgd_direction(
                [p.grad for p in params if p.grad is not None],
                params,
                self.bufs,
                momentum=self.momentum,
                weight_decay=self.wd,
                nesterov=self.nesterov,
            )
            for p, g_, neg_lr in zip(params, grads, self.lrs, strict=True):
                p.addcmul_(g_, neg_lr)  # p + (-lr) g, rounded as the engine's alpha=-lr
        self.step += 1
        self.seen += bs
        self.samples += bs

    def check(self) -> bool:
        finite = torch.isfinite(self.loss_sum).tolist()  # deliberate sync (free on CPU)
        bad = [r for r, ok in enumerate(finite) if not ok]
        if bad:
            self.drop(bad)
        return not self.alive

    def end_epoch(self) -> bool:
        _sync(self.device)
        self.window = time.perf_counter() - self.t_start
        self.train_time += self.window
        if not self.alive:
            return False
        self.run_loss = (self.loss_sum.double() / self.seen).tolist()  # float32 sum, then / seen
        self.run_acc = (self.correct.double() / self.seen).tolist()
        bad = [r for r, v in enumerate(self.run_loss) if not math.isfinite(v)]
        if bad:
            self.drop(bad)
        return bool(self.alive)

    def evaluate(self, at: Evaluation, *, done: bool) -> None:
        self.record_all(full=at.full_train, with_checkpoint=at.checkpoint, done=done)

    # ---- records and checkpoints -----------------------------------------------------------------

    def member_state(self, row: int) -> dict[str, torch.Tensor]:
        return {
            k: _from_stacked(p[row]).detach().cpu().clone(memory_format=torch.contiguous_format)
            for k, p in zip(self.names, self.params, strict=True)
        }

    def checkpoint(self, row: int, m: _Member) -> Checkpoint:
        # Write the member's rows into its template model and optimizer, so the checkpoint has
        # exactly the layout `train_trial` saves and loads.
        with torch.no_grad():
            for p, stacked in zip(m.model.parameters(), self.params, strict=True):
                p.copy_(_from_stacked(stacked[row]))
        opt = m.optimizer
        for group in opt.param_groups:
            group["lr"] = m.lr
        if self.bufs is not None:
            for p, buf in zip(m.model.parameters(), self.bufs, strict=True):
                opt.state[p]["momentum_buffer"] = _from_stacked(buf[row]).contiguous()
        return Checkpoint(
            eval_idx=self.eval_idx,
            step=self.step,
            samples=self.samples,
            train_time_s=self.train_time,
            model_state={k: v.detach().cpu().clone() for k, v in m.model.state_dict().items()},
            optimizer_state=_to_cpu(opt.state_dict()),
            generator_state=m.shuffle.get_state(),
            initial_train_loss=self.initial[self.alive[row]],
        )

    def record_all(self, *, full: bool, with_checkpoint: bool, done: bool = False) -> None:
        spec, data, params, n = self.spec, self.data, self.params, self.n
        t0 = time.perf_counter()
        val = _evaluate(params, data.x_val, data.y_val, spec.eval_batch_size)
        test = _evaluate(params, data.x_test, data.y_test, spec.eval_batch_size)
        g = len(self.alive)
        tr = (
            _evaluate(params, self.x, self.y, spec.eval_batch_size)
            if full
            else ([math.nan] * g, [math.nan] * g)
        )
        eval_time = time.perf_counter() - t0
        peak = peak_memory_bytes(self.device)
        evaluated = evaluated_losses(data, full=full)
        blown: dict[int, str] = {}
        for row, i in enumerate(self.alive):
            m = self.members[i]
            rec = EvalRecord(
                idx=self.eval_idx,
                epoch=self.samples / n,
                step=self.step,
                samples=self.samples,
                current_lr=m.lr,
                train_loss=self.run_loss[row],
                train_acc=self.run_acc[row],
                val_loss=val[0][row],
                val_acc=val[1][row],
                test_loss=test[0][row],
                test_acc=test[1][row],
                full_train_loss=tr[0][row],
                full_train_acc=tr[1][row],
                train_time_s=self.train_time,
                eval_time_s=eval_time,
                samples_per_s=self.seen / self.window if self.window > 0 else math.nan,
                peak_mem_bytes=peak,
            )
            if self.eval_idx == 0:
                self.initial[i] = rec.full_train_loss
            m.sink(rec, self.checkpoint(row, m) if with_checkpoint else None, [])
            why = divergence(
                rec, evaluated=evaluated, initial_train_loss=self.initial[i], done=done
            )
            if why is not None:
                blown[row] = why
        self.eval_idx += 1
        if blown:
            self.drop(sorted(blown), blown)

    def finish(self) -> list[Outcome]:
        for row, i in enumerate(self.alive):
            self.outcomes[i] = Outcome(state=TrialState.COMPLETE, weights=self.member_state(row))
        assert all(o is not None for o in self.outcomes)
        return [o for o in self.outcomes if o is not None]


def train_group(
    trials: Sequence[TrialSpec],
    data: Dataset,
    *,
    device: torch.device,
    sinks: Sequence[EvalSink],
) -> list[Outcome]:
    """Train `trials` (for which `can_fuse` holds) together; one Outcome per trial, in order.

    Each member's evaluations go to its own sink (`sinks[i]` for `trials[i]`), with the same
    records and engine-format checkpoints `train_trial` would hand it, so a fused trial is stored
    and resumed like any other. The loop is the engine's (`engine.run_epochs`).
    """
    reason = _why_not(trials, min_size=1)
    if reason is not None:
        raise ValueError(f"cannot fuse these trials: {reason}")
    if len(sinks) != len(trials):
        raise ValueError(f"need one sink per trial: {len(trials)} trials, {len(sinks)} sinks")
    group = _Group(trials, data, device, sinks)
    reset_peak_memory(device)
    group.record_all(full=True, with_checkpoint=True)  # before training, as the engine does
    run_epochs(group, device=device)
    return group.finish()
