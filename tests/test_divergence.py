"""Blown-up trials are DIVERGED, with the rule that caught them stored, and never recommended."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from batchlab.analysis.recommend import recommend
from batchlab.engine import DIVERGENCE_FACTOR, divergence
from batchlab.errors import SpecError
from batchlab.spec import spec_from_dict
from batchlab.study import run_study
from batchlab.trial import EvalRecord, TrialState
from tests.conftest import SpecFactory

NAN = math.nan


def record(**losses: float) -> EvalRecord:
    base = dict.fromkeys(
        ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"), 1.0
    )
    base.update(full_train_loss=1.0, full_train_acc=1.0)
    base.update(losses)
    return EvalRecord(
        idx=3, epoch=1.0, step=40, samples=320, current_lr=0.1, train_time_s=1.0,
        eval_time_s=0.1, samples_per_s=1.0, peak_mem_bytes=0, **base,
    )  # fmt: skip


def test_the_rule_flags_non_finite_evaluated_losses_and_a_tenfold_rise() -> None:
    every = {"val_loss": True, "test_loss": True, "full_train_loss": True}
    assert divergence(record(), evaluated=every, initial_train_loss=1.0, done=True) is None
    why = divergence(record(test_loss=NAN), evaluated=every, initial_train_loss=1.0, done=False)
    assert why is not None and "test_loss" in why and "step 40" in why
    # NaN where nothing was evaluated (no validation split, no full pass) is not divergence
    some = {"val_loss": False, "test_loss": True, "full_train_loss": False}
    rec = record(val_loss=NAN, full_train_loss=NAN)
    assert divergence(rec, evaluated=some, initial_train_loss=1.0, done=True) is None
    high = record(full_train_loss=DIVERGENCE_FACTOR * 1.01)
    assert divergence(high, evaluated=every, initial_train_loss=1.0, done=False) is None
    why = divergence(high, evaluated=every, initial_train_loss=1.0, done=True)
    assert why is not None and "10x" in why


@pytest.mark.parametrize("fuse", [False, True])
def test_a_blown_up_trial_is_diverged_and_not_recommended(
    make_spec: SpecFactory, tmp_path: Path, fuse: bool
) -> None:
    # lr 1000 keeps every running loss finite (1e31) but the model is useless: COMPLETE before
    spec = make_spec(lrs=[0.1, 1000.0], batch_sizes=[64, 128], seeds=[0, 1], fuse=fuse)
    study = run_study(spec, store=tmp_path / "s.db", notify=lambda _m: None)
    by_lr = {(t.lr_base, t.batch_size, t.seed): t for t in study.trials}
    for (lr, _b, _s), t in by_lr.items():
        if lr == 1000.0:
            assert t.state is TrialState.DIVERGED and t.error is not None
            assert "training loss" in t.error and t.diverged_step is not None
        else:
            assert t.state is TrialState.COMPLETE and t.error is None
    rec = recommend(study)
    assert rec.best.lr_base == 0.1


def test_an_infinite_lr_is_refused_like_nan(make_spec: SpecFactory) -> None:
    for bad in (math.inf, math.nan):
        with pytest.raises(SpecError, match="lrs"):
            spec_from_dict(make_spec(lrs=[bad]))
