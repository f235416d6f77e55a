"""Fused trials: several trials of one MLP shape and batch size trained as one batched step.

Trials that differ only in seed and/or learning rate run the same computation on different
numbers, so a group of G of them can share every kernel launch: the weights of the members are
stacked into (G, out, in) tensors, each member draws its own batch (its own permutation, seeded
by its own seed, exactly as `engine.train_trial` draws it), the forward pass is one `baddbmm` per
layer, one backward pass gives every member its own gradient (the members' losses are summed and
share no parameter), and SGD updates all members at once with a per-member learning rate.

What fuses (`can_fuse`): the built-in `mlp` model (no BatchNorm), `optimizer = "sgd"` with any
momentum, nesterov and weight decay, any warmup, lr schedule and batch schedule, an epochs,
steps or samples budget (not seconds: a wall-clock budget belongs to one trial), no probes, no
gradient accumulation, fresh trials only (a resumed trial goes through the engine). Everything
else runs through `engine.train_trial`.

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
from collections.abc import Sequence
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
    make_optimizer,
    peak_memory_bytes,
    reset_peak_memory,
)
from batchlab.models import MLP
from batchlab.plan import TrialPlan
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
    and resumed like any other.
    """
    reason = _why_not(trials, min_size=1)
    if reason is not None:
        raise ValueError(f"cannot fuse these trials: {reason}")
    if len(sinks) != len(trials):
        raise ValueError(f"need one sink per trial: {len(trials)} trials, {len(sinks)} sinks")
    first = trials[0]
    spec = first.study
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    x_flat = x.reshape(n, -1)
    check_every = 1 if device.type == "cpu" else 25  # as in the engine: same diverged_step

    members: list[_Member] = []
    for t, sink in zip(trials, sinks, strict=True):
        model = build_model_for(spec, data, seed=t.seed)
        assert isinstance(model, MLP)
        model = model.to(device)
        members.append(
            _Member(
                trial=t,
                sink=sink,
                shuffle=torch.Generator().manual_seed(t.seed),  # CPU: same order on any device
                model=model,
                optimizer=make_optimizer(spec, model.parameters(), t.lr),
                lr=t.lr,
            )
        )
    names = [k for k, _ in members[0].model.named_parameters()]
    params = [
        _to_stacked(torch.stack([dict(m.model.named_parameters())[k].detach() for m in members]))
        .contiguous()
        .requires_grad_(True)
        for k in names
    ]
    bufs: list[torch.Tensor] | None = None  # momentum buffers, stacked like params
    group = members[0].optimizer.param_groups[0]
    momentum, wd, nesterov = group["momentum"], group["weight_decay"], group["nesterov"]
    alive = list(range(len(members)))  # positions in `members` of the rows of the stack
    outcomes: list[Outcome | None] = [None] * len(members)
    reset_peak_memory(device)

    step = samples = eval_idx = 0
    train_time = 0.0

    def lr_views() -> list[torch.Tensor]:
        """-lr of each live member, shaped to broadcast against each stacked parameter."""
        neg = torch.tensor([-members[i].lr for i in alive], device=device, dtype=params[0].dtype)
        return [neg.view(-1, *([1] * (p.dim() - 1))) for p in params]

    def set_lrs(lrs: dict[int, float]) -> list[torch.Tensor]:
        """Set each live member's lr (keyed by its position in `trials`); the per-param views."""
        for i in alive:
            members[i].lr = lrs[i]
        return lr_views()

    plan = TrialPlan(first, n)  # the schedule every member shares (they differ in seed and lr)
    plans = [TrialPlan(m.trial, n) for m in members]  # for each member's own lr

    def exhausted() -> bool:
        return plan.exhausted(step=step, samples=samples)

    def member_state(row: int) -> dict[str, torch.Tensor]:
        return {
            k: _from_stacked(p[row]).detach().cpu().clone(memory_format=torch.contiguous_format)
            for k, p in zip(names, params, strict=True)
        }

    def checkpoint(row: int, m: _Member) -> Checkpoint:
        # Write the member's rows into its template model and optimizer, so the checkpoint has
        # exactly the layout `train_trial` saves and loads.
        with torch.no_grad():
            for p, stacked in zip(m.model.parameters(), params, strict=True):
                p.copy_(_from_stacked(stacked[row]))
        opt = m.optimizer
        for group in opt.param_groups:
            group["lr"] = m.lr
        if bufs is not None:
            for p, buf in zip(m.model.parameters(), bufs, strict=True):
                opt.state[p]["momentum_buffer"] = _from_stacked(buf[row]).contiguous()
        return Checkpoint(
            eval_idx=eval_idx,
            step=step,
            samples=samples,
            train_time_s=train_time,
            model_state={k: v.detach().cpu().clone() for k, v in m.model.state_dict().items()},
            optimizer_state=_to_cpu(opt.state_dict()),
            generator_state=m.shuffle.get_state(),
        )

    def record_all(
        *,
        run_loss: list[float],
        run_acc: list[float],
        window_samples: int,
        window_time: float,
        full: bool,
        with_checkpoint: bool,
    ) -> None:
        t0 = time.perf_counter()
        val = _evaluate(params, data.x_val, data.y_val, spec.eval_batch_size)
        test = _evaluate(params, data.x_test, data.y_test, spec.eval_batch_size)
        g = len(alive)
        tr = (
            _evaluate(params, x, y, spec.eval_batch_size)
            if full
            else ([math.nan] * g, [math.nan] * g)
        )
        eval_time = time.perf_counter() - t0
        peak = peak_memory_bytes(device)
        for row, i in enumerate(alive):
            m = members[i]
            rec = EvalRecord(
                idx=eval_idx,
                epoch=samples / n,
                step=step,
                samples=samples,
                current_lr=m.lr,
                train_loss=run_loss[row],
                train_acc=run_acc[row],
                val_loss=val[0][row],
                val_acc=val[1][row],
                test_loss=test[0][row],
                test_acc=test[1][row],
                full_train_loss=tr[0][row],
                full_train_acc=tr[1][row],
                train_time_s=train_time,
                eval_time_s=eval_time,
                samples_per_s=window_samples / window_time if window_time > 0 else math.nan,
                peak_mem_bytes=peak,
            )
            m.sink(rec, checkpoint(row, m) if with_checkpoint else None, [])

    def drop(rows: list[int]) -> None:
        """Record the members at `rows` DIVERGED at this step and remove them from the stack."""
        nonlocal params, bufs, alive
        for row in rows:
            outcomes[alive[row]] = Outcome(state=TrialState.DIVERGED, diverged_step=step)
        keep = [r for r in range(len(alive)) if r not in rows]
        if not keep:
            alive = []
            return
        sel = torch.tensor(keep, device=device)
        with torch.no_grad():
            params = [p.detach().index_select(0, sel).requires_grad_(True) for p in params]
            if bufs is not None:
                bufs = [b.index_select(0, sel) for b in bufs]
        alive = [alive[r] for r in keep]

    nan = [math.nan] * len(members)
    record_all(
        run_loss=nan, run_acc=nan, window_samples=0, window_time=0, full=True, with_checkpoint=True
    )
    eval_idx += 1

    while alive and not exhausted():
        # ---- one epoch for every member (or the part of it the budget allows) -----------------
        epoch = samples // n
        B = plan.epoch(epoch)[0]  # the same for every member: same batch and schedule
        epoch_lrs = {i: plans[i].epoch(epoch)[1] for i in alive}
        lrs = set_lrs(epoch_lrs)
        # (G, n): row r is the epoch's permutation of member alive[r], from its own generator
        perms = torch.stack([torch.randperm(n, generator=members[i].shuffle) for i in alive])
        perms = perms.to(device)
        loss_sum = torch.zeros(len(alive), device=device)
        correct = torch.zeros(len(alive), device=device, dtype=torch.int64)
        seen = 0
        _sync(device)
        t_start = time.perf_counter()
        for i in range(0, n, B):
            if plan.warmup_steps and step <= plan.warmup_steps:  # the ramp, then the epoch's lr
                lrs = set_lrs({j: plans[j].lr(step, epoch_lrs[j]) for j in alive})
            idx = perms[:, i : i + B]  # (G, bs): each member's own batch
            xb, yb = x_flat[idx], y[idx]
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
            loss_sum += losses.detach() * bs
            correct += (out.detach().argmax(dim=2) == yb).sum(dim=1)
            with torch.no_grad():  # `step.sgd_step`'s arithmetic, one lr per member
                grads, bufs = sgd_direction(
                    [p.grad for p in params if p.grad is not None],
                    params,
                    bufs,
                    momentum=momentum,
                    weight_decay=wd,
                    nesterov=nesterov,
                )
                for p, g_, neg_lr in zip(params, grads, lrs, strict=True):
                    p.addcmul_(g_, neg_lr)  # p + (-lr) g, rounded as the engine's alpha=-lr
            step += 1
            seen += bs
            samples += bs
            if step % check_every == 0:
                finite = torch.isfinite(loss_sum).tolist()  # deliberate sync (free on CPU)
                bad = [r for r, ok in enumerate(finite) if not ok]
                if bad:
                    keep = [r for r in range(len(alive)) if r not in bad]
                    drop(bad)
                    if not alive:
                        break
                    sel = torch.tensor(keep, device=device)
                    loss_sum, correct, perms = loss_sum[sel], correct[sel], perms[sel]
                    lrs = lr_views()
            if plan.stops_within_epoch(step=step, samples=samples):
                break
        _sync(device)
        window = time.perf_counter() - t_start
        train_time += window
        if not alive:
            break
        run_loss = (loss_sum.double() / seen).tolist()  # as the engine: float32 sum, then / seen
        run_acc = (correct.double() / seen).tolist()
        bad = [r for r, v in enumerate(run_loss) if not math.isfinite(v)]
        if bad:
            keep = [r for r in range(len(alive)) if r not in bad]
            drop(bad)
            if not alive:
                break
            run_loss = [run_loss[r] for r in keep]
            run_acc = [run_acc[r] for r in keep]
        at = plan.after_epoch(samples=samples, done=exhausted())
        if at.evaluate:
            record_all(
                run_loss=run_loss,
                run_acc=run_acc,
                window_samples=seen,
                window_time=window,
                full=at.full_train,
                with_checkpoint=at.checkpoint,
            )
            eval_idx += 1
    for row, i in enumerate(alive):
        outcomes[i] = Outcome(state=TrialState.COMPLETE, weights=member_state(row))
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]
