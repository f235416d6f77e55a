from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import batchlab
from batchlab.analysis.grid import bands, cells, classify
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

SpecFactory = Callable[..., dict[str, Any]]


def ev(
    idx: int,
    full_train_loss: float,
    val_acc: float = 0.5,
    test_acc: float = 0.5,
    full_train_acc: float = math.nan,
) -> EvalRecord:
    return EvalRecord(
        idx=idx,
        epoch=float(idx),
        step=idx,
        samples=idx,
        current_lr=0.1,
        train_loss=math.nan,
        train_acc=math.nan,
        val_loss=1.0,
        val_acc=val_acc,
        test_loss=1.0,
        test_acc=test_acc,
        full_train_loss=full_train_loss,
        full_train_acc=full_train_acc,
        train_time_s=0.0,
        eval_time_s=0.0,
        samples_per_s=math.nan,
        peak_mem_bytes=0,
    )


def tr(
    b: int,
    lr: float,
    state: TrialState,
    losses: tuple[float, ...] = (2.0, 1.0),
    val: float = 0.5,
    seed: int = 0,
) -> FrozenTrial:
    evals = tuple(ev(i, v, val_acc=val, test_acc=val - 0.01) for i, v in enumerate(losses))
    return FrozenTrial(
        trial_id=f"{b}-{lr}-{seed}",
        study="s",
        number=0,
        batch_size=b,
        lr_base=lr,
        lr=lr,
        seed=seed,
        state=state,
        evals=evals,
    )


def test_classify_follows_the_stated_rule() -> None:
    assert classify(tr(8, 0.1, TrialState.COMPLETE)) == "converged"
    assert classify(tr(8, 0.1, TrialState.COMPLETE, (2.0, 2.5))) == "unstable"
    assert classify(tr(8, 0.1, TrialState.COMPLETE, (2.0, math.nan))) == "unstable"
    collapsed = tr(8, 0.1, TrialState.COMPLETE)  # loss fell, accuracy stayed near chance
    evals = (ev(0, 2.32, full_train_acc=0.083), ev(1, 2.305, full_train_acc=0.112))
    assert classify(replace(collapsed, evals=evals)) == "unstable"
    learned = (ev(0, 2.32, full_train_acc=0.083), ev(1, 2.2, full_train_acc=0.17))
    assert classify(replace(collapsed, evals=learned)) == "converged"
    assert classify(tr(8, 0.1, TrialState.DIVERGED)) == "diverged"
    assert classify(tr(8, 0.1, TrialState.FAILED)) == "failed"


def test_cells_take_the_worst_seed_and_bands_pick_by_validation() -> None:
    trials = [
        tr(2, 0.01, TrialState.COMPLETE, val=0.7),
        tr(2, 0.1, TrialState.COMPLETE, val=0.8),
        tr(2, 1.0, TrialState.COMPLETE, val=0.6),
        tr(64, 0.01, TrialState.COMPLETE, val=0.75),
        tr(64, 0.1, TrialState.COMPLETE, val=0.7),
        tr(64, 0.1, TrialState.DIVERGED, seed=1),
        tr(64, 1.0, TrialState.COMPLETE, (2.0, 3.0)),
    ]
    grid = {(c.batch_size, c.lr_base): c.status for c in cells(trials)}
    assert grid[(64, 0.1)] == "diverged" and grid[(64, 1.0)] == "unstable"
    b2, b64 = bands(cells(trials))
    assert (b2.lo, b2.hi, b2.usable, b2.best_lr) == (0.01, 1.0, 3, 0.1)
    assert (b64.lo, b64.hi, b64.usable, b64.best_lr) == (0.01, 0.01, 1, 0.01)
    assert b2.width_decades == pytest.approx(2.0) and b64.width_decades == 0.0


def scored(b: int, lr: float, val: float, test: float) -> FrozenTrial:
    """A converged trial whose final validation and test scores are `val` and `test`."""
    t = tr(b, lr, TrialState.COMPLETE)
    return replace(t, evals=tuple(replace(e, val_acc=val, test_acc=test) for e in t.evals))


def test_the_best_lr_is_chosen_on_validation_and_reports_its_test_score() -> None:
    trials = [
        scored(8, 0.01, val=0.80, test=0.95),  # best on test
        scored(8, 0.1, val=0.90, test=0.70),  # best on validation
        scored(64, 0.01, val=0.85, test=0.60),  # a tie on validation: the smaller lr, not
        scored(64, 0.1, val=0.85, test=0.99),  # the one better on test
    ]
    b8, b64 = bands(cells(trials))
    assert (b8.best_lr, b8.best_val_acc, b8.best_test_acc) == (0.1, 0.90, 0.70)
    assert (b64.best_lr, b64.best_test_acc) == (0.01, 0.60)
    assert b8.selected_on == b64.selected_on == "val"


def test_without_a_validation_split_the_best_lr_is_chosen_on_test_and_marked() -> None:
    nan = math.nan
    trials = [scored(8, 0.01, val=nan, test=0.95), scored(8, 0.1, val=nan, test=0.70)]
    (b8,) = bands(cells(trials))
    assert (b8.best_lr, b8.best_test_acc, b8.selected_on) == (0.01, 0.95, "test")


@pytest.mark.slow
def test_usable_band_shrinks_with_batch_size(make_spec: SpecFactory, store_path: Path) -> None:
    # Masters & Luschi: with a per-example lr (linear scaling from batch 1) the range of lrs that
    # converge at the largest batch is no wider than at the smallest.
    spec = make_spec(
        dataset_args={"n_train": 512, "n_test": 256, "dim": 8, "classes": 3},
        lrs="0.001:1:7",
        lr_scaling="linear",
        reference_batch_size=1,
        batch_sizes=[2, 128],
        budget={"epochs": 2},
    )
    study = batchlab.run_study(spec, store=store_path)
    small, large = bands(cells(study.trials))
    assert small.usable >= large.usable >= 1
    assert large.width_decades <= small.width_decades  # no wider, in decades of lr
    assert large.hi is not None and small.hi is not None and large.hi <= small.hi
