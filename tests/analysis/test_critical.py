from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import pytest

from batchlab.analysis.critical import (
    MIN_BATCH_SIZES,
    CriticalBatchError,
    NotEnoughBatchSizes,
    Target,
    critical_batch_size,
    fit_steps,
    noise_scale_summary,
    reach,
)
from batchlab.errors import BatchlabError
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

S_MIN, E_MIN = 100.0, 6400.0  # B_crit = 64
BATCHES = (8, 16, 32, 64, 128, 256, 512)


def ev(
    idx: int, step: int, batch: int, acc: float, loss: float = 1.0, time_s: float | None = None
) -> EvalRecord:
    return EvalRecord(
        idx=idx,
        epoch=float(idx),
        step=step,
        samples=step * batch,
        current_lr=0.1,
        train_loss=math.nan,
        train_acc=math.nan,
        val_loss=loss,
        val_acc=acc,
        test_loss=loss,
        test_acc=acc,
        train_time_s=0.01 * step if time_s is None else time_s,
        eval_time_s=0.0,
        samples_per_s=math.nan,
        peak_mem_bytes=0,
    )


def trial(
    b: int,
    evals: tuple[EvalRecord, ...],
    *,
    lr: float = 0.1,
    seed: int = 0,
    state: TrialState = TrialState.COMPLETE,
    **params: object,
) -> FrozenTrial:
    return FrozenTrial(
        trial_id=f"{b}-{lr}-{seed}",
        study="s",
        number=0,
        batch_size=b,
        lr_base=lr,
        lr=lr,
        seed=seed,
        state=state,
        params=dict(params),
        evals=evals,
    )


def linear_trial(
    b: int, s_true: float, *, lr: float = 0.1, seed: int = 0, level: float = 0.9
) -> FrozenTrial:
    """val_acc = level * step / s_true up to 1.0: the target `level` is met at exactly s_true."""
    spacing = s_true / 3.7  # evaluations never land on the crossing
    steps = [round(i * spacing) for i in range(7)]
    evals = tuple(ev(i, s, b, min(1.0, level * s / s_true)) for i, s in enumerate(steps))
    return trial(b, evals, lr=lr, seed=seed)


def model_steps(b: int) -> float:
    return S_MIN + E_MIN / b


def test_fit_recovers_s_min_and_e_min_from_the_exact_model() -> None:
    trials = [
        linear_trial(b, model_steps(b) * slow, lr=lr, seed=seed)
        for b in BATCHES
        for lr, slow in ((0.1, 1.0), (0.3, 1.3))  # the slower lr must not be picked
        for seed in (0, 1)
    ]
    fit = critical_batch_size(trials, Target(metric="val_acc", value=0.9, fraction=None))
    assert fit.s_min == pytest.approx(S_MIN, rel=1e-6)
    assert fit.e_min == pytest.approx(E_MIN, rel=1e-6)
    assert fit.b_crit == pytest.approx(64.0, rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    assert [p.lr_base for p in fit.points] == [0.1] * len(BATCHES)
    for p in fit.points:
        assert p.steps == pytest.approx(model_steps(p.batch_size), rel=1e-9)
        assert p.samples == pytest.approx(p.batch_size * p.steps, rel=1e-9)
        assert p.time_s == pytest.approx(0.01 * p.steps, rel=1e-9)
        assert p.seeds == 2
    # identical seeds: the bootstrap interval collapses onto the estimate
    assert fit.b_crit_ci is not None
    assert fit.b_crit_ci.lo == pytest.approx(64.0) and fit.b_crit_ci.hi == pytest.approx(64.0)
    assert not fit.extrapolated and fit.caveat() == ""  # 64 lies inside 8..512
    # at B_crit: twice S_min steps and twice E_min samples
    assert fit.steps_at(fit.b_crit) == pytest.approx(2 * S_MIN)
    assert fit.samples_at(fit.b_crit) == pytest.approx(2 * E_MIN)


def test_fit_steps_is_the_hyperbola_in_steps_and_samples() -> None:
    s_min, e_min, _ = fit_steps(BATCHES, [model_steps(b) for b in BATCHES])
    for b in BATCHES:
        s = s_min + e_min / b
        e = b * s
        assert (s / S_MIN - 1) * (e / E_MIN - 1) == pytest.approx(1.0)


def test_fraction_target_uses_the_best_accuracy_reached() -> None:
    trials = [linear_trial(b, model_steps(b)) for b in BATCHES]  # every curve tops out at 1.0
    fit = critical_batch_size(trials, Target(metric="val_acc", fraction=0.9), n_boot=0)
    assert fit.threshold == pytest.approx(0.9)
    assert fit.b_crit == pytest.approx(64.0, rel=1e-6)
    assert fit.b_crit_ci is None


def test_loss_fraction_target_is_best_divided_by_fraction() -> None:
    evals = (ev(0, 0, 8, 0.1, loss=2.0), ev(1, 10, 8, 0.5, loss=0.5))
    t = trial(8, evals)
    assert Target(metric="val_loss", fraction=0.8).threshold([t]) == pytest.approx(0.5 / 0.8)


def test_interpolation_on_hand_made_curves() -> None:
    accs, losses, times = (0.1, 0.5, 0.7, 0.95), (2.0, 1.0, 0.5, 0.4), (0.0, 1.0, 2.5, 4.0)
    evals = tuple(
        ev(i, 10 * i, 4, a, loss=lo, time_s=tm)
        for i, (a, lo, tm) in enumerate(zip(accs, losses, times, strict=True))
    )
    t = trial(4, evals)
    r = reach(t, Target(metric="val_acc", value=0.8, fraction=None), 0.8)
    assert r.reached
    assert r.steps == pytest.approx(24.0)  # 20 + 0.4 * 10
    assert r.samples == pytest.approx(96.0)
    assert r.time_s == pytest.approx(3.1)
    r = reach(t, Target(metric="test_loss", value=0.45, fraction=None), 0.45)
    assert r.steps == pytest.approx(25.0)
    assert r.time_s == pytest.approx(3.25)
    r = reach(t, Target(metric="val_acc", value=0.05, fraction=None), 0.05)
    assert (r.steps, r.samples, r.time_s) == (0.0, 0.0, 0.0)  # met at the step-0 evaluation


def test_never_reached_is_marked_not_made_up() -> None:
    evals = (ev(0, 0, 8, 0.1), ev(1, 10, 8, 0.6))
    r = reach(trial(8, evals), Target(metric="val_acc", value=0.8, fraction=None), 0.8)
    assert not r.reached
    assert math.isnan(r.steps) and math.isnan(r.samples) and math.isnan(r.time_s)


def test_a_seed_that_misses_disqualifies_its_lr_and_unreached_batches_are_listed() -> None:
    never = (ev(0, 0, 512, 0.1), ev(1, 500, 512, 0.5))
    trials = [linear_trial(b, model_steps(b), seed=s) for b in BATCHES[:-1] for s in (0, 1)]
    trials += [linear_trial(512, model_steps(512), seed=0), trial(512, never, seed=1)]
    fit = critical_batch_size(trials, Target(metric="val_acc", value=0.9, fraction=None))
    assert fit.unreached == (512,)
    assert [p.batch_size for p in fit.points] == list(BATCHES[:-1])
    assert fit.b_crit == pytest.approx(64.0, rel=1e-6)
    assert sum(not r.reached for r in fit.reaches) == 1


def test_errors_are_one_line_and_never_numbers() -> None:
    trials = [linear_trial(b, model_steps(b)) for b in BATCHES]
    with pytest.raises(CriticalBatchError, match="no trial ever reached"):
        critical_batch_size(trials, Target(metric="val_acc", value=1.5, fraction=None))
    only_one = [linear_trial(8, 50.0)] + [
        trial(b, (ev(0, 0, b, 0.1), ev(1, 10, b, 0.2))) for b in BATCHES[1:]
    ]
    with pytest.raises(CriticalBatchError, match=r"not enough batch sizes: 1 \(8\) of 7 reach"):
        critical_batch_size(only_one, Target(metric="val_acc", value=0.9, fraction=None))
    growing = [linear_trial(b, 10.0 * b) for b in BATCHES]  # more steps at larger batches
    with pytest.raises(CriticalBatchError, match="fit did not converge") as err:
        critical_batch_size(growing, Target(metric="val_acc", value=0.9, fraction=None))
    assert "\n" not in str(err.value)
    assert isinstance(err.value, BatchlabError) and isinstance(err.value, ValueError)
    with pytest.raises(CriticalBatchError, match="METRIC=VALUE"):
        Target.parse("accuracy=0.9")


def test_a_b_crit_outside_the_fitted_batch_sizes_is_flagged_as_an_extrapolation() -> None:
    target = Target(metric="val_acc", value=0.9, fraction=None)
    small = [linear_trial(b, model_steps(b)) for b in (4, 8, 16, 32)]  # true B_crit 64 > 32
    fit = critical_batch_size(small, target, n_boot=0)
    assert fit.b_crit == pytest.approx(64.0, rel=1e-6) and fit.extrapolated
    assert fit.caveat().startswith("B_crit is above the largest batch size fitted (32)")
    assert fit.to_dict()["extrapolated"] is True
    large = [linear_trial(b, model_steps(b)) for b in (128, 256, 512, 1024)]
    fit = critical_batch_size(large, target, n_boot=0)
    assert fit.extrapolated and "below the smallest batch size fitted (128)" in fit.caveat()


def test_no_fit_messages_say_what_is_missing() -> None:
    target = Target(metric="val_acc", value=0.9, fraction=None)
    one_size = [linear_trial(64, model_steps(64), seed=s) for s in (0, 1)]
    with pytest.raises(CriticalBatchError, match=r"one batch size \(64\).*add batch sizes"):
        critical_batch_size(one_size, target)
    # Perfect scaling (S = E_min / B, S_min = 0 minus a little): B_crit is above the range.
    linear = [linear_trial(b, 6400.0 / b - 1.0) for b in (4, 8, 16, 32)]
    with pytest.raises(CriticalBatchError, match="fit did not converge") as err:
        critical_batch_size(linear, target)
    assert "B_crit is probably above 32: add larger batch sizes" in str(err.value)
    # Steps that grow with B: E_min < 0, B_crit below the smallest batch size.
    growing = [linear_trial(b, 10.0 * b) for b in (8, 16, 32, 64)]
    with pytest.raises(CriticalBatchError, match="probably below 8") as err:
        critical_batch_size(growing, target)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("sizes", [(8, 64), (8, 64, 512)])
def test_too_few_batch_sizes_give_no_number_only_the_points(sizes: tuple[int, ...]) -> None:
    """Two points fit S_min + E_min / B exactly (R² = 1 whatever the data) and three leave one
    degree of freedom: below MIN_BATCH_SIZES the answer is "not enough batch sizes"."""
    target = Target(metric="val_acc", value=0.9, fraction=None)
    noisy = {8: 1.3, 64: 0.8, 512: 1.2}  # far off the model: a fit would still look perfect
    trials = [linear_trial(b, model_steps(b) * noisy[b], seed=s) for b in sizes for s in (0, 1)]
    with pytest.raises(NotEnoughBatchSizes, match="not enough batch sizes") as err:
        critical_batch_size(trials, target)
    assert MIN_BATCH_SIZES == 4 and "at least 4" in str(err.value)
    assert [p.batch_size for p in err.value.points] == list(sizes)
    assert err.value.points[0].steps == pytest.approx(model_steps(8) * 1.3)
    payload = err.value.to_dict()
    assert payload["b_crit"] is None and payload["r2"] is None and payload["b_crit_ci95"] is None
    assert payload["not_enough_batch_sizes"] is True
    assert isinstance(err.value, CriticalBatchError)  # callers that catch the base still do
    four = (*sizes, 4096) if len(sizes) == 3 else (*sizes, 512, 4096)
    noisy[4096] = 1.0
    more = [linear_trial(b, model_steps(b) * noisy[b]) for b in four]
    assert critical_batch_size(more, target, n_boot=0).b_crit > 0  # four: a number again


def test_target_parse() -> None:
    assert Target.parse("val_acc=0.98*best") == Target(metric="val_acc", fraction=0.98)
    assert Target.parse("test_loss=0.3") == Target(metric="test_loss", value=0.3, fraction=None)
    assert Target.parse("test_acc") == Target(metric="test_acc")


def test_variants_must_be_chosen_and_controls_are_left_out() -> None:
    a = [linear_trial(b, model_steps(b)) for b in BATCHES]
    b_ = [
        trial(b, t.evals, lr=0.2, variant="other", control=b == 512)
        for b, t in zip(BATCHES, a, strict=True)
    ]
    with pytest.raises(CriticalBatchError, match="variants"):
        critical_batch_size(a + b_, Target(metric="val_acc", value=0.9, fraction=None))
    fit = critical_batch_size(
        a + b_, Target(metric="val_acc", value=0.9, fraction=None), variant="other"
    )
    assert fit.variant == "other"
    assert [p.batch_size for p in fit.points] == list(BATCHES[:-1])


def noisy_trials(k: int, seeds: int = 5) -> list[FrozenTrial]:
    """Steps to target = S(B) times 5% log-normal seed noise."""
    rng = random.Random(k)
    return [
        linear_trial(b, model_steps(b) * math.exp(rng.gauss(0.0, 0.05)), seed=s)
        for b in BATCHES
        for s in range(seeds)
    ]


def test_bootstrap_interval_contains_the_truth_on_noisy_seeds() -> None:
    """A 95% interval covers the truth in most noisy data sets (percentile intervals from 5
    seeds run a little narrow, so ask for 75% over 20 sets, not 95%)."""
    target = Target(metric="val_acc", value=0.9, fraction=None)
    hits = {"b": 0, "s": 0, "e": 0}
    runs = 20
    for k in range(runs):
        fit = critical_batch_size(noisy_trials(k), target, n_boot=300, seed=k)
        assert fit.b_crit_ci is not None and fit.s_min_ci is not None
        assert fit.e_min_ci is not None
        assert fit.b_crit_ci.lo <= fit.b_crit <= fit.b_crit_ci.hi
        hits["b"] += fit.b_crit_ci.lo < 64.0 < fit.b_crit_ci.hi
        hits["s"] += fit.s_min_ci.lo < S_MIN < fit.s_min_ci.hi
        hits["e"] += fit.e_min_ci.lo < E_MIN < fit.e_min_ci.hi
    assert min(hits.values()) >= 0.75 * runs, hits
    one = noisy_trials(0)
    again = critical_batch_size(one, target, n_boot=300, seed=0)
    assert again.b_crit_ci == critical_batch_size(one, target, n_boot=300, seed=0).b_crit_ci


def test_noise_scale_summary_takes_late_medians() -> None:
    rows = []
    for tid, b, values in (("t8", 8, [1.0, 2.0, 10.0, 20.0]), ("t64", 64, [5.0, 6.0, 30.0, 50.0])):
        for step, v in zip((10, 20, 30, 40), values, strict=True):
            rows.append(
                {
                    "trial_id": tid,
                    "batch_size": b,
                    "step": step,
                    "probe": "noise_scale",
                    "key": "total",
                    "value": v,
                }
            )
    rows.append(
        {
            "trial_id": "t8",
            "batch_size": 8,
            "step": 40,
            "probe": "noise_scale",
            "key": "tr_sigma",
            "value": 1e9,
        }
    )
    ns = noise_scale_summary(pd.DataFrame(rows), late_fraction=0.5)  # steps >= 20
    assert ns is not None
    assert ns.per_batch == {8: 10.0, 64: 30.0}
    assert ns.overall == pytest.approx(15.0)  # median of 2, 10, 20, 6, 30, 50
    assert noise_scale_summary(pd.DataFrame(rows[-1:])) is None


@dataclass(frozen=True)
class _Study:
    trials: list[FrozenTrial]
    name: str = "s"
    spec: Any = None


def test_report_figure_extracts_the_fit_and_renders() -> None:
    from batchlab.report.figures.critical import FIGURE, hyperbola
    from batchlab.report.palette import Palette

    study = _Study([linear_trial(b, model_steps(b)) for b in BATCHES])
    data = FIGURE.extract([study])  # default target: 0.98 of the best val_acc (1.0)
    assert data is not None
    trade, timing = data.panels
    measured, curve = trade.lines
    fit = critical_batch_size(study.trials, Target(metric="val_acc", value=0.98, fraction=None))
    assert measured.y == pytest.approx([p.steps for p in fit.points])
    assert curve.label == f"fit, B_crit = {fit.b_crit:.3g}"
    assert fit.b_crit == pytest.approx(64.0, rel=0.02)  # 0.98 falls past the curves' cap
    for e, s in zip(curve.x, curve.y, strict=True):  # the curve is the hyperbola
        assert (s / fit.s_min - 1) * (e / fit.e_min - 1) == pytest.approx(1.0)
    assert timing.lines[0].x == tuple(float(b) for b in BATCHES)
    es, ss = hyperbola(fit, 1.0, 1e4)
    assert ss[0] == pytest.approx(fit.s_min + fit.e_min)
    assert es[-1] == pytest.approx(1e4 * fit.s_min + fit.e_min)
    palette = Palette(batch_sizes=BATCHES, series=())
    assert len(FIGURE.render_matplotlib(data, palette).axes) >= 2
    assert len(FIGURE.render_plotly(data, palette).data) >= 3
    growing = _Study([linear_trial(b, 100.0 + b) for b in BATCHES])  # S grows with B: no fit
    assert FIGURE.extract([growing]) is None


# ---- the lr at each batch size is chosen on the target's split (validation by default) ---------


def split_trial(b: int, s_val: float, s_test: float, *, lr: float, val: bool = True) -> FrozenTrial:
    """val_acc and test_acc rise as level 0.9 * step / s_* (capped at 1): 0.9 is met on
    validation at step s_val and on test at s_test (`val=False`: no validation split)."""
    spacing = max(s_val, s_test) / 3.7
    evals = tuple(
        replace(
            ev(i, s, b, min(1.0, 0.9 * s / s_test)),
            val_acc=min(1.0, 0.9 * s / s_val) if val else math.nan,
        )
        for i, s in enumerate(round(i * spacing) for i in range(7))
    )
    return trial(b, evals, lr=lr)


def disagreeing(val: bool = True) -> list[FrozenTrial]:
    """lr 0.1 is the faster on validation at every batch size, lr 0.3 the faster on test."""
    return [
        split_trial(b, model_steps(b) * sv, model_steps(b) * st, lr=lr, val=val)
        for b in BATCHES
        for lr, sv, st in ((0.1, 1.0, 2.0), (0.3, 1.3, 0.5))
    ]


def test_each_batch_size_takes_the_lr_fastest_on_validation() -> None:
    fit = critical_batch_size(disagreeing(), n_boot=0)  # the default target: on validation
    assert fit.target.metric == "val_acc"
    assert [p.lr_base for p in fit.points] == [0.1] * len(BATCHES)
    assert fit.selection.split == "val" and fit.to_dict()["selection"]["on_test"] is False
    exact = critical_batch_size(
        disagreeing(), Target(metric="val_acc", value=0.9, fraction=None), n_boot=0
    )
    assert exact.b_crit == pytest.approx(64.0, rel=1e-6)


def test_a_test_target_chooses_the_lr_on_test_and_says_so() -> None:
    target = Target(metric="test_acc", value=0.9, fraction=None)
    fit = critical_batch_size(disagreeing(), target, n_boot=0)
    assert [p.lr_base for p in fit.points] == [0.3] * len(BATCHES)
    assert fit.selection.on_test and fit.selection.why == "test target"
    assert fit.to_dict()["selection"] == {
        "split": "test",
        "metric": "test_acc",
        "on_test": True,
        "why": "test target",
    }


def test_without_a_validation_split_the_default_target_is_on_test_and_says_so() -> None:
    fit = critical_batch_size(disagreeing(val=False), n_boot=0)
    assert fit.target.metric == "test_acc"
    assert [p.lr_base for p in fit.points] == [0.3] * len(BATCHES)
    assert fit.selection.on_test and fit.selection.why == "no validation split"


def test_select_trials_leaves_controls_and_branches_out() -> None:
    from batchlab.analysis.critical import select_trials

    sweep = [trial(b, (ev(0, 0, b, 0.0),)) for b in (8, 16)]
    control = replace(sweep[1], trial_id="c", params={**sweep[1].params, "control": True})
    branch_info = {"reference": sweep[0].trial_id, "point": 0, "step": 1, "samples": 8,
                   "window": 64, "lr_factor": 1.0}  # fmt: skip
    branch = replace(sweep[0], trial_id="br", batch_size=64, params={"branch": branch_info})
    assert select_trials([*sweep, control, branch]) == ("", sweep)
