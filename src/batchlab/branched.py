"""The critical batch size over training, measured by branching (Merrill et al. 2025).

A branched study (`branched = {...}` in a spec) trains its grid, one reference configuration
per seed, as usual; each reference trial also keeps its weights and optimizer state at a few
branch points, log-spaced in samples (`branch_points`). From every branch point, short branch
trials run at several batch sizes: each starts from the reference's stored state, not from a
retrained prefix, draws its data from a stream of its own (the same stream at every batch size
of one point and seed, so the branches differ in batch size alone), and evaluates every few
steps. `batchlab.analysis.branched` turns their curves into steps and samples to a target loss,
then into B_crit(t) and CBS_20(t).

A branch is an ordinary trial for the store and the executors: it has an id, its own
checkpoints, and it resumes bit for bit. Only its start differs, and its "epochs": a branch
evaluates after every `interval` samples (a whole number of its batches), so the engine's loop,
which evaluates at epoch ends, runs it unchanged (`engine.BranchRun`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch

from batchlab.errors import SpecError
from batchlab.lr import decay_factor, scaled_lr
from batchlab.plan import TrialPlan
from batchlab.spec import Branch, Branched, Budget, StudySpec, TrialSpec


def study_trials(spec: StudySpec, n_train: int) -> list[TrialSpec]:
    """Every trial of a study: its grid, then a branched design's branches."""
    grid = spec.trials(n_train=n_train)
    return grid + branch_trials(grid, n_train) if spec.branched is not None else grid


def branch_points(trial: TrialSpec, n_train: int) -> list[int]:
    """Steps of a reference trial at which it keeps a checkpoint to branch from: `points`
    log-spaced from `first` of its planned steps to its last step (distinct, at least 1)."""
    cfg = trial.study.branched
    if cfg is None or trial.branch is not None:
        return []
    total = TrialPlan(trial, n_train).total_steps
    assert total is not None  # the spec refuses a wall-clock budget for a branched design
    fractions = np.geomspace(cfg.first, 1.0, cfg.points)
    return sorted({min(total, max(1, round(float(f) * total))) for f in fractions})


def branch_spec(spec: StudySpec) -> StudySpec:
    """What a branch trains under: the reference's recipe at a constant lr (the rule's lr
    times the reference's schedule factor at the branch point), without probes, with an
    evaluation at the end of every interval."""
    return spec.model_copy(
        update={
            "warmup_epochs": 0.0,
            "lr_decay": None,
            "lr_schedule": None,
            "probes": None,
            "probe_args": {},
            "eval_every": 1,
            "train_eval_every": 0,
        }
    )


def window_samples(cfg: Branched, reference: TrialSpec, n_train: int) -> int:
    """The samples after which the reference batch's branch sets the target."""
    if cfg.window is not None:
        return cfg.window
    plan = TrialPlan(reference, n_train)
    total = plan.total_steps
    assert total is not None
    return max(reference.batch_size, round(total * reference.batch_size / 4))


def interval(batch_size: int, window: int, evals: int) -> int:
    """Samples between a branch's evaluations: whole batches, about `evals` per window."""
    return batch_size * max(1, round(window / (batch_size * evals)))


def branch_trials(references: Sequence[TrialSpec], n_train: int) -> list[TrialSpec]:
    """Every branch of every reference trial, in a fixed order: point, batch size, lr factor,
    seed (the earliest points first: they need the least of the reference)."""
    out: list[TrialSpec] = []
    by_point: dict[tuple[int, int, float], list[TrialSpec]] = {}
    for ref in references:
        spec, cfg = ref.study, ref.study.branched
        assert cfg is not None
        sizes = sorted({ref.batch_size, *cfg.batch_sizes})
        too_big = [b for b in sizes if b > n_train]
        if too_big:
            raise SpecError(
                f"branched.batch_sizes: {too_big[0]} exceeds the {n_train:,} training examples;"
                " use batch sizes up to the training-set size"
            )
        plan = TrialPlan(ref, n_train)
        window = window_samples(cfg, ref, n_train)
        child = branch_spec(spec)
        per_epoch = math.ceil(n_train / ref.batch_size)
        for i, step in enumerate(branch_points(ref, n_train)):
            epoch = step // per_epoch
            factor = schedule_factor(ref, plan, step, epoch)
            samples = epoch * n_train + (step - epoch * per_epoch) * ref.batch_size
            for b in sizes:
                every = interval(b, window, cfg.evals)
                budget = Budget(samples=every * math.ceil(cfg.reach * window / every))
                for f in cfg.lr_factors:
                    lr = scaled_lr(ref.lr_base, b, spec.reference_batch_size, spec.lr_scaling)
                    trial = TrialSpec(
                        study=child,
                        variant=ref.variant,
                        batch_size=b,
                        lr_base=ref.lr_base,
                        lr=lr * factor * f,
                        seed=ref.seed,
                        budget=budget,
                        branch=Branch(
                            reference=ref.trial_id,
                            point=i,
                            step=step,
                            samples=samples,
                            window=window,
                            lr_factor=f,
                        ),
                    )
                    by_point.setdefault((i, b, f), []).append(trial)
    for key in sorted(by_point):
        out += by_point[key]
    return out


def schedule_factor(ref: TrialSpec, plan: TrialPlan, step: int, epoch: int) -> float:
    """The reference's lr schedule at a branch point, as a factor of its lr: its lr_schedule's
    step decays and its lr_decay's decay, both of which every branch at that point shares. A
    warmup ramp (warmup_epochs, or lr_decay's own) is left out: it belongs to the reference's
    batch size, and a branch inside it trains at its own batch size's rule lr."""
    factor = plan.epoch(epoch)[1] / ref.lr
    decay = ref.study.lr_decay
    total = plan.total_steps
    if decay is not None and total is not None:
        warm = decay.warmup(total)
        factor *= decay_factor(
            decay.kind,
            max(step, warm),
            total,
            warmup=warm,
            final=decay.final,
            decay_steps=max(1, round(decay.decay_fraction * total)),
        )
    return factor


def stream_seed(seed: int, point: int) -> int:
    """The seed of a branch's data stream: one per (seed, point), shared by its batch sizes."""
    digest = hashlib.sha256(f"branch:{seed}:{point}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def stream_indices(seed: int, n: int, start: int, count: int) -> torch.Tensor:
    """Positions `start` to `start + count` of an endless stream of seeded permutations of
    range(n): every example once per pass, the passes in a fresh order each."""
    g = torch.Generator().manual_seed(seed)
    first_pass, last_pass = start // n, (start + count - 1) // n
    parts = []
    for p in range(last_pass + 1):
        perm = torch.randperm(n, generator=g)
        if p >= first_pass:
            parts.append(perm)
    flat = torch.cat(parts)
    offset = start - first_pass * n
    return flat[offset : offset + count]
