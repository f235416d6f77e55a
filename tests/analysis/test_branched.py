"""B_crit(t), CBS_20(t) and B_simple(t) from branches, against the hyperbola's closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from batchlab.analysis.branched import (
    OVERHEAD,
    branched_critical,
    cbs20,
    non_increasing,
)
from batchlab.analysis.critical import MIN_BATCH_SIZES, CriticalBatchError
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

L0, DROP = 1.0, 0.5  # every branch starts at loss L0 and meets the target L0 - DROP


def record(idx: int, step: int, samples: int, val_loss: float) -> EvalRecord:
    nan = math.nan
    return EvalRecord(
        idx=idx, epoch=0.0, step=step, samples=samples, current_lr=0.1, train_loss=nan,
        train_acc=nan, val_loss=val_loss, val_acc=nan, test_loss=nan, test_acc=nan,
        train_time_s=float(step), eval_time_s=0.0, samples_per_s=nan, peak_mem_bytes=0,
    )  # fmt: skip


def branch(
    b: int, steps_to_target: float, *, seed: int, point: int, window: int, n_steps: int
) -> FrozenTrial:
    """A branch whose validation loss falls linearly, meeting the target at `steps_to_target`."""
    evals = [record(i, i, i * b, L0 - DROP * i / steps_to_target) for i in range(n_steps + 1)]
    info = {"reference": f"ref{seed}", "point": point, "step": 100 * (point + 1),
            "samples": 1600 * (point + 1), "window": window, "lr_factor": 1.0}  # fmt: skip
    return FrozenTrial(
        trial_id=f"b{point}-{b}-{seed}", study="s", number=0, batch_size=b, lr_base=0.1,
        lr=0.1, seed=seed, state=TrialState.COMPLETE, params={"branch": info},
        evals=tuple(evals),
    )  # fmt: skip


def reference(seed: int, b0: int) -> FrozenTrial:
    return FrozenTrial(
        trial_id=f"ref{seed}", study="s", number=0, batch_size=b0, lr_base=0.1, lr=0.1,
        seed=seed, state=TrialState.COMPLETE, params={}, evals=(record(0, 0, 0, 2.0),),
    )  # fmt: skip


def hyperbola_study(
    sizes: list[int],
    b_noise: list[float],
    *,
    s_min: float = 20.0,
    seeds: int = 1,
    jitter: float = 0.0,
) -> list[FrozenTrial]:
    """Branch points with S(B) = S_min (1 + B_noise / B); the reference batch is sizes[0]."""
    b0 = sizes[0]
    rng = np.random.default_rng(1)
    out = [reference(s, b0) for s in range(seeds)]
    for point, bn in enumerate(b_noise):
        s0 = s_min * (1 + bn / b0)
        window = round(s0 * b0)
        s0 = window / b0  # the window in whole samples: the reference branch's own crossing
        for seed in range(seeds):
            for b in sizes:
                s = s0 if b == b0 else s_min * (1 + bn / b) * (1 + jitter * rng.standard_normal())
                n = math.ceil(3 * window / b) + 1
                out.append(branch(b, s, seed=seed, point=point, window=window, n_steps=n))
    return out  # fmt: skip


def test_b_crit_and_cbs20_are_the_hyperbolas_at_every_point() -> None:
    sizes = [round(16 * 2 ** (k / 4)) for k in range(0, 25)]  # 16 .. 1024, four per doubling
    noise = [40.0, 150.0, 400.0]
    result = branched_critical(hyperbola_study(sizes, noise))
    assert [p.point for p in result.points] == [0, 1, 2]
    for p, bn in zip(result.points, noise, strict=True):
        assert p.b_crit == pytest.approx(bn, rel=0.02)  # B_crit = E_min / S_min = B_noise
        # E(B) / E(b0) = (B + B_noise) / (b0 + B_noise) = 1.2  <=>  B = 1.2 b0 + 0.2 B_noise
        assert p.cbs20 == pytest.approx(OVERHEAD * 16 + (OVERHEAD - 1) * bn, rel=0.03)
        assert p.b_crit_ci is None  # one seed: no interval
        # CBS_20 = 1.2 b0 + 0.2 B_noise: b0's share is the larger below B_noise = 6 b0
        if bn < 6 * 16:
            assert "more the smallest batch's share than the noise's" in p.note
        else:
            assert p.note == ""
    assert result.ci_note.startswith("one seed")
    # B_crit grows with training here as the noise scale does: the branched picture
    assert [p.b_crit for p in result.points] == sorted(p.b_crit or 0 for p in result.points)


def test_the_interval_covers_the_truth_with_noisy_seeds() -> None:
    sizes = [16, 32, 64, 128, 256, 512]
    result = branched_critical(hyperbola_study(sizes, [100.0], seeds=4, jitter=0.05))
    (p,) = result.points
    assert p.b_crit_ci is not None and p.b_crit_ci.lo < 100 < p.b_crit_ci.hi
    assert p.cbs20_ci is not None and p.cbs20_ci.lo <= p.cbs20 <= p.cbs20_ci.hi  # type: ignore[operator]


def test_cbs20_beyond_the_largest_batch_is_a_bound_not_a_number() -> None:
    value, above = cbs20([16, 32, 64], [1000.0, 1050.0, 1100.0])
    assert value is None and above
    result = branched_critical(hyperbola_study([16, 32, 64, 128], [5000.0]))
    assert result.points[0].cbs20 is None and result.points[0].cbs20_above == 128


def test_too_few_batch_sizes_give_a_reason_not_a_number() -> None:
    result = branched_critical(hyperbola_study([16, 32, 64], [100.0]))
    (p,) = result.points
    assert p.b_crit is None and f"a fit needs {MIN_BATCH_SIZES}" in p.note
    assert p.cbs20 is not None  # CBS_20 needs only the measured points


def test_branches_that_never_reach_the_target_are_marked_unreached() -> None:
    trials = hyperbola_study([16, 32, 64, 128, 256], [100.0])
    slow = next(t for t in trials if t.batch_size == 256)
    flat = tuple(EvalRecord(**{**e.as_dict(), "val_loss": L0}) for e in slow.evals)  # never falls
    trials = [t if t is not slow else FrozenTrial(**{**t.__dict__, "evals": flat}) for t in trials]
    (p,) = branched_critical(trials).points
    by_b = {b.batch_size: b for b in p.batches}
    assert not by_b[256].reached and math.isnan(by_b[256].steps)
    assert all(by_b[b].reached for b in (16, 32, 64, 128)) and p.b_crit is not None


def test_a_single_batch_size_or_a_plain_sweep_is_refused_plainly() -> None:
    (p,) = branched_critical(hyperbola_study([16], [100.0])).points
    assert p.b_crit is None and p.cbs20 is None and "fewer than 2 batch sizes" in p.note
    with pytest.raises(CriticalBatchError, match="not a branched study"):
        branched_critical([reference(0, 16)])


def test_non_increasing_is_the_least_squares_monotone_fit() -> None:
    assert non_increasing([3.0, 1.0, 2.0, 0.0]) == [3.0, 1.5, 1.5, 0.0]
    rng = np.random.default_rng(0)
    values = list(rng.standard_normal(12))
    fit = non_increasing(values)
    assert all(a >= b for a, b in itertools.pairwise(fit))
    assert sum(fit) == pytest.approx(sum(values))  # pooling keeps each block's mean

    # brute force on a small case: no other non-increasing sequence on a grid fits better
    small = [0.2, 0.9, 0.1]
    best = min(
        ((a, b, c) for a in np.arange(0, 1.01, 0.05) for b in np.arange(0, 1.01, 0.05)
         for c in np.arange(0, 1.01, 0.05) if a >= b >= c),
        key=lambda f: sum((x - y) ** 2 for x, y in zip(f, small, strict=True)),
    )  # fmt: skip
    assert non_increasing(small) == pytest.approx(list(best), abs=0.03)


def test_b_simple_comes_from_the_reference_probe_nearest_the_point() -> None:
    trials = hyperbola_study([16, 32, 64, 128], [100.0, 300.0])
    probes = pd.DataFrame(
        {
            "trial_id": ["ref0"] * 3,
            "step": [90, 210, 600],
            "probe": ["noise_scale"] * 3,
            "key": ["total"] * 3,
            "value": [50.0, 70.0, 500.0],
        }
    )
    points = branched_critical(trials, probes).points  # points at reference steps 100 and 200
    assert [p.b_simple for p in points] == [50.0, 70.0]
    tokens = branched_critical(trials, probes, tokens_per_sample=64.0).points
    assert tokens[0].tokens == 1600 * 64
    d = tokens[0].to_dict()  # every batch-size number also in tokens per batch
    assert d["b_simple_tokens"] == pytest.approx(50.0 * 64)
    assert d["b_crit_tokens"] == pytest.approx(points[0].b_crit * 64)  # type: ignore[operator]
    assert "b_crit_tokens" not in points[0].to_dict()


def test_the_schedule_from_a_known_cbs() -> None:
    from batchlab.analysis.branched import BranchedResult, PointResult, warmup_schedule

    def point(i: int, samples: int, cbs: float | None, above: int | None = None) -> PointResult:
        return PointResult(
            point=i, step=samples // 16, samples=samples, tokens=None, target=1.0, batches=(),
            cbs20=cbs, cbs20_above=above,
        )  # fmt: skip

    result = BranchedResult(
        reference_batch_size=16,
        seeds=(0,),
        points=(
            point(0, 100, 10.0),  # below the reference batch: keep 16
            point(1, 1000, 40.0),  # 32 from epoch 1
            point(2, 2500, None),  # no number here: keep the batch before
            point(3, 3000, 35.0),  # lower again: never shrink the batch
            point(4, 4200, None, above=256),  # above every measured batch: the largest
        ),
    )
    warmup = warmup_schedule(result, n_train=1000, epochs=6)
    assert (warmup.start, warmup.milestones, warmup.batch_sizes) == (16, (1, 5), (32, 256))
    # a point in the last epoch changes nothing: the study ends there
    short = warmup_schedule(result, n_train=1000, epochs=5)
    assert (short.milestones, short.batch_sizes) == ((1,), (32,))
    toml = warmup.to_toml(study="s")
    assert "batch_schedule = { milestones = [1, 5], batch_sizes = [32, 256] }" in toml
    import tomllib

    from batchlab.spec import spec_from_dict

    parsed = tomllib.loads(toml)  # a study can use the lines as they are
    spec = spec_from_dict({"name": "x", "budget": {"epochs": 6}, **parsed})
    assert spec.batch_schedule is not None and spec.batch_schedule.batch_sizes == (32, 256)


def test_validation_rows_are_paired_by_seed() -> None:
    from batchlab.analysis.branched import validation_rows

    def run(variant: str, seed: int, b: int, losses: list[float]) -> FrozenTrial:
        evals = tuple(record(i, 10 * i, 10 * i * b, v) for i, v in enumerate(losses))
        return FrozenTrial(
            trial_id=f"{variant}{seed}", study="v", number=0, batch_size=b, lr_base=0.1,
            lr=0.1, seed=seed, state=TrialState.COMPLETE, params={"variant": variant},
            evals=evals,
        )  # fmt: skip

    trials = [
        run("warmup", 0, 16, [2.0, 1.0, 0.4]),  # seed 0's target 0.5: at step 10 + 10 * 5/6
        run("warmup", 1, 16, [2.0, 1.0, 0.8]),  # seed 1's target 0.3: never
        run("small", 0, 16, [2.0, 0.9, 0.5]),
        run("small", 1, 16, [2.0, 0.9, 0.3]),
    ]
    rows = {r.variant: r for r in validation_rows(trials, {0: 0.5, 1: 0.3})}
    assert rows["warmup"].reached == 1 and rows["warmup"].steps == pytest.approx(10 + 10 * 5 / 6)
    assert rows["small"].reached == 2 and rows["small"].steps == pytest.approx(20)
    assert rows["warmup"].final_val_loss == pytest.approx(0.6)
    assert rows["warmup"].total_steps == 20


def test_an_interval_reaching_past_every_batch_size_is_open_and_quiet() -> None:
    """Near the largest batch size, some seed resamples put CBS_20 above them all (+inf): the
    interval's upper end is then infinite, computed without numpy's inf - inf warning."""
    import warnings

    sizes = [16, 32, 64, 128]
    trials = hyperbola_study(sizes, [700.0], seeds=4, jitter=0.1)  # CBS_20 near 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (p,) = branched_critical(trials).points
    assert p.cbs20_ci is not None and p.cbs20_ci.hi == math.inf
    assert math.isfinite(p.cbs20_ci.lo)
