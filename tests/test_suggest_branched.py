"""`batchlab suggest --method branched`: the plan fits the budget, the compute counted from the
stored trials stays within it, the answer on tiny data, and the command's flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab.analysis.critical import MIN_BATCH_SIZES
from batchlab.branched import study_trials
from batchlab.cli import main
from batchlab.results import load_study
from batchlab.suggest import (
    BRANCH_LR_FACTORS,
    SuggestError,
    branch_cost,
    branch_plan,
    load_reference,
    suggest,
    whole_batches,
)

# label noise keeps B_crit inside the batch sizes measured (without it, the steps on this easy
# problem fall as 1 / B up to 128, and B_crit lies above them: no number)
TINY_DATA = {"n_train": 640, "n_test": 200, "dim": 10, "classes": 3, "label_noise": 0.3}
N = round(640 * 0.9)  # training examples after the 10% validation split


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference(tmp_path: Path) -> Path:
    ref = tmp_path / "ref.toml"
    ref.write_text(
        'name = "ref"\ndataset = "synthetic"\nbatch_sizes = "8:128"\nlrs = [0.05, 0.1]\n'
        "seeds = [0, 1]\nbudget = { epochs = 20 }\n",
        encoding="utf-8",
    )
    return ref


def test_the_plan_is_the_largest_that_fits_and_shrinks_before_it_refuses() -> None:
    sizes = [8, 16, 32, 64, 128, 256, 512]
    kw: dict[str, Any] = {"batch_size": 32, "batch_sizes": sizes, "n_train": 10_000}
    roomy = branch_plan(available=500_000, one_trial=120_000, **kw)
    assert roomy.points == 2 and roomy.lr_factors == BRANCH_LR_FACTORS
    assert roomy.batch_sizes == tuple(sizes)
    assert roomy.reference_samples == 14_992  # an eighth of a trial, in whole batches
    assert roomy.window <= roomy.reference_samples // 4
    assert roomy.samples <= 500_000
    assert roomy.branch_samples == branch_cost(
        sizes, window=roomy.window, points=2, lr_factors=2, reach=3.0, evals=8
    )
    # the cost grows with the window: one a tenth larger would not have fit (or hits the cap)
    bigger = branch_cost(sizes, window=int(roomy.window * 1.1), points=2, lr_factors=2)
    assert roomy.window == roomy.reference_samples // 4 or roomy.reference_samples + bigger > 5e5
    # less room: fewer points, then one lr factor, then every other batch size
    tight = [branch_plan(available=a, one_trial=120_000, **kw) for a in (50_000, 24_000, 14_000)]
    assert [(p.points, len(p.lr_factors), len(p.batch_sizes)) for p in tight] == [
        (1, 2, 7),
        (1, 1, 7),
        (1, 1, 4),
    ]
    assert all(p.samples <= a for p, a in zip(tight, (50_000, 24_000, 14_000), strict=True))
    assert len(tight[-1].batch_sizes) >= MIN_BATCH_SIZES and 32 in tight[-1].batch_sizes
    with pytest.raises(SuggestError, match="raise --budget-fraction") as err:
        branch_plan(available=5_000, one_trial=120_000, **kw)
    assert "\n" not in str(err.value)
    # the reference run is a whole number of batches within the epoch (no overshoot)
    assert whole_batches(1000, 90, 32) == 11 * 90 + 0
    assert whole_batches(1050, 90, 32) == 11 * 90 + 32


@pytest.mark.slow
def test_branched_suggestion_within_budget_counted_from_the_stored_trials(
    tmp_path: Path,
) -> None:
    spec, source = load_reference(_reference(tmp_path))
    store = tmp_path / "s.db"
    sug = suggest(
        dataset="synthetic",
        dataset_args=TINY_DATA,
        model_args={"widths": [16]},
        reference=spec,
        reference_source=source,
        batch_size=16,
        method="branched",
        store=store,
    )
    e = sug.branched
    assert e is not None and sug.method == "branched" and sug.run is None
    ref_samples = 5 * 2 * 2 * 20 * N
    c = sug.compute
    assert c.reference_samples == ref_samples and c.budget_fraction == 0.10
    # independently: every stored trial's samples (reference and branches), plus the profile
    study = load_study(e.study, store)
    trained = sum(t.last.samples for t in study.trials if t.last is not None)
    profile = sum(r.batch_size * (1 + r.steps_timed) for r in sug.profile.rows)
    assert c.profile_samples == profile
    assert c.train_samples + c.branch_samples == trained
    assert c.samples == pytest.approx(profile + trained)
    assert (profile + trained) / ref_samples <= 0.10
    assert c.fraction == pytest.approx((profile + trained) / ref_samples)
    # the study is the planned one: a reference at b, branches at every reference batch size
    stored = study_trials(study.spec, N)
    assert len(study.trials) == len(stored) == 1 + e.branches
    assert e.branches == e.plan.points * len(e.plan.lr_factors) * 5
    assert {t.batch_size for t in study.trials} == {8, 16, 32, 64, 128}
    # the answer: a number from the latest point that has one, and the rule's batch size
    assert sug.b_crit == e.b_crit > 0
    numbered = [p for p in e.points if p["b_crit"] is not None]
    assert numbered[-1]["point"] == e.point and numbered[-1]["b_crit"] == e.b_crit
    assert sug.batch_size in [x.batch_size for x in sug.candidates]
    assert sug.lr_lo <= sug.lr <= sug.lr_hi
    assert sug.lines()[1].startswith(f"Measured critical batch size B_crit = {e.b_crit:.3g}")


def test_branched_needs_enough_batch_sizes(tmp_path: Path) -> None:
    """A reference sweep of 3 batch sizes cannot give a fit (4 needed): a plain one-line no."""
    ref = tmp_path / "ref3.toml"
    ref.write_text(
        'name = "ref3"\ndataset = "synthetic"\nbatch_sizes = [8, 16, 32]\nlrs = [0.05]\n'
        "seeds = [0, 1, 2, 3]\nbudget = { epochs = 20 }\n",
        encoding="utf-8",
    )
    spec, source = load_reference(ref)
    with pytest.raises(SuggestError, match="not enough batch sizes") as err:
        suggest(
            dataset="synthetic",
            dataset_args=TINY_DATA,
            model_args={"widths": [16]},
            reference=spec,
            reference_source=source,
            batch_size=16,
            method="branched",
        )
    assert "\n" not in str(err.value)


def test_branched_command_json_and_a_bad_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = _reference(tmp_path)
    base = ["suggest", "--dataset", "synthetic", "--dataset-args", json.dumps(TINY_DATA)]
    base += ["--model-args", '{"widths": [16]}', "--reference", str(ref), "--threads", "1"]
    base += ["--batch-size", "16", "--store", str(tmp_path / "s.db")]
    main([*base, "--method", "branched", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["method"] == "branched" and payload["run"] is None
    assert payload["b_crit"] == payload["branched"]["b_crit"] > 0
    assert 0 < payload["compute"]["fraction"] <= 0.10
    assert payload["compute"]["branch_samples"] == payload["branched"]["branch_samples"] > 0
    assert payload["batch_size"] in [c["batch_size"] for c in payload["candidates"]]
    for argv, message in (
        ([*base, "--method", "nope"], "--method 'nope': choose one of noise, branched"),
        ([*base, "--method", "branched", "--budget-fraction", "0.001"], "raise --budget-fraction"),
    ):
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
        out = capsys.readouterr().err
        assert message in out and len(out.strip().splitlines()) == 1, out
