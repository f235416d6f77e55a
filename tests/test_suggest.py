"""`batchlab suggest`: the noise-scale measurement against an analytic case, the prediction rules,
the compute accounting against the reference sweep, and the command on tiny data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from batchlab.cli import main
from batchlab.data import Dataset
from batchlab.errors import BatchlabError
from batchlab.models import build_model
from batchlab.spec import spec_from_dict
from batchlab.suggest import (
    NoiseMeasurement,
    SuggestError,
    b_simple,
    lr_at,
    lr_range,
    measurement_steps,
    rank_batch_sizes,
    reference_sweep,
    short_run,
    suggest,
)
from batchlab.tasks.regression import Regression

DIM, N = 6, 3000


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny models run fastest on one thread (and a busy CI machine makes two spin)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def linear_model(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A linear regression model w . x (no bias); built through build_model's factory path."""
    return nn.Linear(input_shape[0], 1, bias=False)


def regression_data() -> Dataset:
    """y = w* . x + noise; float targets (the short run only needs the loss to accept them)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, DIM, generator=g)
    w_star = torch.linspace(-1.0, 1.0, DIM)
    y = x @ w_star + 0.5 * torch.randn(N, generator=g)
    empty = torch.zeros(0, DIM)
    return Dataset.from_tensors(
        name="regression",
        x_train=x,
        y_train=y,
        x_val=empty,
        y_val=torch.zeros(0),
        x_test=empty,
        y_test=torch.zeros(0),
        num_classes=1,
        task=Regression(),
    )


def exact_b_simple(data: Dataset, w: torch.Tensor) -> float:
    """tr(Sigma) / |G|^2 from the per-example gradients g_i = (w . x_i - y_i) x_i (the population
    covariance over the training set: batches are drawn from it with replacement)."""
    x, y = data.x_train.double(), data.y_train.double()
    g = (x @ w.double() - y)[:, None] * x
    mean = g.mean(0)
    trace = float(((g - mean) ** 2).sum(1).mean())
    return trace / float(mean @ mean)


@pytest.mark.slow
def test_measured_b_simple_matches_the_analytic_value() -> None:
    data = regression_data()
    model_ref = "tests.test_suggest:linear_model"
    layer = build_model(model_ref, {}, input_shape=(DIM,), num_classes=1, seed=3)
    assert isinstance(layer, nn.Linear)
    w0 = layer.weight[0].detach()
    expected = exact_b_simple(data, w0)
    assert 2 < expected < 200  # a case where both tr(Sigma) and |G|^2 matter
    run = short_run(
        data,
        model=model_ref,
        model_args={},
        batch_size=8,
        lr=1e-12,  # the weights stay at w0, so every measurement estimates the same B_simple
        momentum=0.0,
        steps=120,
        measurements=120,
        draws=16,
        seed=3,
        device=torch.device("cpu"),
        max_seconds=60.0,
    )
    assert run.noise_samples == 120 * 16 * 8 and run.train_samples == 120 * 8
    noise = b_simple(run.measurements, late_fraction=1.0)
    assert noise.measurements == 120
    assert noise.value == pytest.approx(expected, rel=0.1)
    assert noise.ci_lo <= expected <= noise.ci_hi
    assert noise.settled


def test_b_simple_is_a_ratio_of_means_over_the_late_window() -> None:
    ms = [
        NoiseMeasurement(step=s, samples=8 * s, trace=tr, g2=g2)
        for s, tr, g2 in ((10, 1.0, 1.0), (20, 100.0, 2.0), (30, 300.0, -1.0), (40, 200.0, 3.0))
    ]
    noise = b_simple(ms, late_fraction=0.5, n_boot=0)  # steps >= 20
    assert noise.value == pytest.approx((100 + 300 + 200) / (2 - 1 + 3))
    assert noise.from_step == 20 and noise.measurements == 3
    assert noise.early == pytest.approx(100 / 2)  # first half of the window: one measurement
    assert noise.late == pytest.approx(500 / 2)
    assert not noise.settled  # 50 -> 250 is more than a factor 1.5
    with pytest.raises(SuggestError, match="not positive"):
        b_simple([NoiseMeasurement(step=1, samples=1, trace=5.0, g2=-1.0)])


def test_lr_rule_is_linear_below_the_noise_scale_and_saturates_above() -> None:
    lr, b0, bn = 0.05, 32, 1000.0
    assert lr_at(b0, lr=lr, small_batch=b0, b_noise=bn) == pytest.approx(lr)
    assert lr_at(64, lr=lr, small_batch=b0, b_noise=bn) == pytest.approx(
        lr * (1 + bn / b0) / (1 + bn / 64)
    )
    assert lr_at(64, lr=lr, small_batch=b0, b_noise=1e9) == pytest.approx(2 * lr, rel=1e-6)
    assert lr_at(1e12, lr=lr, small_batch=b0, b_noise=bn) == pytest.approx(lr * (1 + bn / b0))
    lo, hi = lr_range(128, lr=lr, small_batch=b0, b_noise=bn)
    assert lo == pytest.approx(lr * 2) and hi == pytest.approx(
        lr_at(128, lr=lr, small_batch=b0, b_noise=bn)
    )
    lo, hi = lr_range(8, lr=lr, small_batch=b0, b_noise=bn)
    assert lo <= hi and hi == pytest.approx(lr * 0.5)  # below b the sqrt rule is the larger


def test_suggested_size_minimizes_predicted_time_to_target() -> None:
    sizes = [8, 16, 32, 64, 128, 256]
    kw: dict[str, Any] = {"lr": 0.1, "small_batch": 32}
    # constant throughput: every extra sample costs time, so the smallest batch is fastest
    cands, best = rank_batch_sizes([(b, 1000.0) for b in sizes], 16.0, **kw)
    assert best == 8
    assert [c.steps_factor for c in cands] == pytest.approx([1 + 16 / b for b in sizes])
    assert [c.samples_factor for c in cands] == pytest.approx([1 + b / 16 for b in sizes])
    # perfectly parallel hardware: time ~ (B + B_crit) / B falls with B
    _, best = rank_batch_sizes([(b, 10.0 * b) for b in sizes], 16.0, **kw)
    assert best == 256
    # throughput grows up to a knee at 64, flat after: (B + 16) / min(B, 64) is least at 64
    cands, best = rank_batch_sizes([(b, 10.0 * min(b, 64)) for b in sizes], 16.0, **kw)
    assert best == 64
    assert min(c.relative_time for c in cands) == 1.0
    assert cands[-1].relative_time == pytest.approx((256 + 16) / (64 + 16))
    # within 5% of the least counts as a tie: the smaller size wins
    _, best = rank_batch_sizes([(32, 1000.0), (64, 1702.0)], 16.0, **kw)
    assert best == 32  # 48 / 1000 = 0.0480 is within 5% of 80 / 1702 = 0.0470
    _, best = rank_batch_sizes([(32, 1000.0), (64, 1900.0)], 16.0, **kw)
    assert best == 64  # 80 / 1900 = 0.0421: 14% less than 0.0480
    with pytest.raises(SuggestError, match="positive"):
        rank_batch_sizes([(8, 1.0)], 0.0, **kw)


def test_reference_sweep_counts_training_samples() -> None:
    spec = spec_from_dict(
        {"name": "r", "batch_sizes": [8, 64], "lrs": [0.1, 0.2, 0.3], "seeds": [0, 1]}
        | {"budget": {"epochs": 4}}
    )
    ref = reference_sweep(spec, 1000, source="test")
    assert ref.trials == 2 * 3 * 2
    assert ref.samples == 12 * 4 * 1000
    assert ref.samples_by_batch == {8: 6 * 4000.0, 64: 6 * 4000.0}
    by_steps = spec_from_dict(spec.to_toml_dict() | {"budget": {"steps": 10}})
    steps = reference_sweep(by_steps, 1000, source="t")
    assert steps.samples == 6 * 10 * (8 + 64)
    timed = spec_from_dict({"name": "r", "budget": {"seconds": 5.0}})
    with pytest.raises(SuggestError, match="seconds budget"):
        reference_sweep(timed, 1000, source="t")
    assert measurement_steps(100, 4) == [25, 50, 75, 100]
    assert measurement_steps(3, 5) == [1, 2, 3]


TINY_DATA = {"n_train": 640, "n_test": 200, "dim": 10, "classes": 3}


def _reference(tmp_path: Path, epochs: int = 20) -> Path:
    ref = tmp_path / "ref.toml"
    ref.write_text(
        'name = "ref"\ndataset = "synthetic"\nbatch_sizes = "8:128"\nlrs = [0.05, 0.1]\n'
        f"seeds = [0, 1]\nbudget = {{ epochs = {epochs} }}\n",
        encoding="utf-8",
    )
    return ref


def test_suggest_stays_within_its_compute_budget(tmp_path: Path) -> None:
    ref_path = _reference(tmp_path)
    from batchlab.suggest import load_reference

    spec, source = load_reference(ref_path)
    sug = suggest(
        dataset="synthetic",
        dataset_args=TINY_DATA,
        model_args={"widths": [16]},
        reference=spec,
        reference_source=source,
        batch_size=16,
        measurements=6,
        draws=4,
        max_seconds=30.0,
    )
    n = round(640 * 0.9)
    ref_samples = 5 * 2 * 2 * 20 * n  # 5 batch sizes x 2 lrs x 2 seeds x 20 epochs
    c = sug.compute
    assert sug.method == "noise" and sug.run is not None and sug.noise is not None
    assert sug.n_train == n and c.reference_samples == ref_samples
    profile = sum(r.batch_size * (1 + r.steps_timed) for r in sug.profile.rows)
    assert c.profile_samples == profile
    assert c.noise_samples == 4 * 16 * len(sug.run.measurements)
    assert c.train_samples == 16 * sug.run.steps  # 16 divides the 576 examples
    assert c.samples == profile + c.train_samples + c.noise_samples
    assert c.fraction == pytest.approx(c.samples / ref_samples)
    assert c.fraction <= 0.05
    assert sug.batch_size in [x.batch_size for x in sug.candidates]
    assert sug.lr_lo <= sug.lr <= sug.lr_hi
    assert sug.b_crit == sug.noise.value > 0


def test_suggest_command_json_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = _reference(tmp_path)
    base = ["suggest", "--dataset", "synthetic", "--dataset-args", json.dumps(TINY_DATA)]
    base += ["--model-args", '{"widths": [16]}', "--reference", str(ref), "--threads", "1"]
    main([*base, "--batch-size", "16", "--measurements", "6", "--draws", "4", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert payload["batch_size"] in [c["batch_size"] for c in payload["candidates"]]
    assert payload["compute"]["fraction"] <= 0.05
    assert payload["b_crit"] == payload["noise"]["value"]
    assert payload["reference"]["trials"] == 20
    assert payload["lines"][0].startswith(f"Suggested batch size: {payload['batch_size']}")
    for argv, message in (
        (["suggest", "--dataset", "nope"], "unknown dataset 'nope'"),
        ([*base, "--budget-fraction", "0"], "--budget-fraction 0.0"),
        ([*base, "--model-args", "[1]"], "--model-args: need a JSON object"),
        ([*base, "--budget-fraction", "0.0001"], "raise --budget-fraction"),
    ):
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
        out = capsys.readouterr().err
        assert message in out and len(out.strip().splitlines()) == 1, out


@pytest.mark.slow
def test_verify_runs_the_suggestion_and_its_neighbours(tmp_path: Path) -> None:
    from batchlab.suggest import load_reference

    spec, source = load_reference(_reference(tmp_path, epochs=40))
    sug = suggest(
        dataset="synthetic",
        dataset_args=TINY_DATA,
        model_args={"widths": [16]},
        reference=spec,
        reference_source=source,
        batch_size=16,
        measurements=6,
        draws=4,
        verify=True,
        store=tmp_path / "v.db",
    )
    v = sug.verification
    assert v is not None
    b = sug.batch_size
    assert [r.batch_size for r in v.rows] == [b // 2, b, 2 * b]
    for r in v.rows:
        assert r.lr == pytest.approx(
            lr_at(r.batch_size, lr=0.05, small_batch=16, b_noise=sug.b_crit)
        )
        assert r.seeds == 2
    best = max(v.rows, key=lambda r: (r.val_acc, -r.batch_size))
    assert v.best_batch_size == best.batch_size
    mine = next(r for r in v.rows if r.batch_size == b)
    assert v.gap == pytest.approx(best.val_acc - mine.val_acc)
    assert v.within_spread == (b == best.batch_size or v.gap <= v.spread)
    assert v.samples == 6 * v.samples_per_trial
    assert sug.compute.fraction_with_verify == pytest.approx(
        (sug.compute.samples + v.samples) / sug.compute.reference_samples
    )
    with pytest.raises(BatchlabError):
        suggest(dataset="synthetic", dataset_args=TINY_DATA, verify=True, val_fraction=0.0)


@pytest.mark.parametrize("name", ["fmnist", "mnist1d"])
def test_validation_studies_are_valid_reference_sweeps(name: str) -> None:
    """The study files docs/suggest.md validated against: each is a full grid 8..1024."""
    from batchlab.suggest import load_reference

    path = Path(__file__).parents[1] / "examples" / "validation" / f"{name}.toml"
    spec, source = load_reference(path)
    ref = reference_sweep(spec, 1000, source=source)
    assert ref.batch_sizes == (8, 16, 32, 64, 128, 256, 512, 1024)
    assert ref.seeds == 2 and ref.trials == 8 * ref.lrs * 2
    assert ref.samples == ref.trials * spec.budget.value * 1000


def test_default_reference_on_a_small_dataset_fits_the_budget() -> None:
    """The seed-sweep grid on digits: 5% is small, so the profile skips sizes above the training
    set and the measurements shrink to fit; the accounting still holds."""
    sug = suggest(dataset="digits", model_args={"widths": [16]}, lr=0.05)
    ref = sug.reference
    assert ref.source == "seed-sweep preset" and ref.batch_sizes[-1] == 2048
    assert ref.samples == 9 * 25 * sug.n_train
    assert max(r.batch_size for r in sug.profile.rows) <= sug.n_train
    assert sug.run is not None and 4 <= len(sug.run.measurements) < 40
    assert sug.compute.fraction <= 0.05
