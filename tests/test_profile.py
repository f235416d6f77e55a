from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from torch import nn

import batchlab.profile
from batchlab.cli import main
from batchlab.errors import SpecError
from batchlab.profile import (
    count_macs,
    fits_with_margin,
    is_out_of_memory,
    knee,
    largest_fitting,
    linear_memory_model,
    profile_hardware,
)

TINY: dict[str, object] = {"n_train": 256, "n_test": 32, "dim": 8, "classes": 3}


def test_largest_fitting_finds_the_boundary_of_a_monotone_predicate() -> None:
    def counted(lim: int, calls: list[int]) -> Callable[[int], bool]:
        def fits(b: int) -> bool:
            calls.append(b)
            return b <= lim

        return fits

    for limit_true in (1, 2, 3, 7, 8, 9, 100, 1000, 4095):
        calls: list[int] = []
        assert largest_fitting(counted(limit_true, calls), start=8, limit=2**20) == limit_true
        assert len(calls) <= 2 * 20 + 2  # doubling plus bisection: logarithmic
    assert largest_fitting(lambda b: False, start=8) == 0
    assert largest_fitting(lambda b: True, start=8, limit=5000) == 5000
    assert largest_fitting(lambda b: b <= 4999, start=8, limit=5000) == 4999


def test_knee_is_the_first_batch_whose_doubling_gains_under_ten_percent() -> None:
    sizes = [8, 16, 32, 64, 128]
    assert knee(sizes, [100.0, 200.0, 300.0, 320.0, 330.0]) == (32, True)  # 32 -> 64: +6.7%
    assert knee(sizes, [100.0, 200.0, 400.0, 800.0, 1600.0]) == (128, False)
    # a gap of two doublings: +22% over 4x is > 10% per doubling, +20% is less
    assert knee([8, 32], [100.0, 122.0]) == (32, False)
    assert knee([8, 32], [100.0, 120.0]) == (8, True)


def test_count_macs_of_linear_and_conv_layers() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    assert count_macs(mlp, torch.zeros(1, 8)) == 8 * 16 + 16 * 3
    conv = nn.Conv2d(2, 4, kernel_size=3, padding=1)  # 4 x 5 x 5 outputs, 2 x 3 x 3 MACs each
    assert count_macs(conv, torch.zeros(1, 2, 5, 5)) == 4 * 5 * 5 * 2 * 9


def test_linear_memory_model_bounds_every_measurement() -> None:
    base, slope = linear_memory_model([8, 16, 32], [1000, 1800, 3400], min_slope=10.0)
    assert slope == pytest.approx(100.0)
    assert base == pytest.approx(200.0)
    base, slope = linear_memory_model([8, 16], [500, 400], min_slope=10.0)  # noisy: slope < 0
    assert slope == 10.0
    assert all(base + slope * b >= m for b, m in ((8, 500), (16, 400)))


def test_profile_a_tiny_mlp() -> None:
    prof = profile_hardware(
        model="mlp",
        dataset="synthetic",
        model_args={"widths": [16]},
        dataset_args=TINY,
        batch_sizes=[8, 32, 128],
        warmup=1,
        min_steps=2,
        min_time_s=0.01,
        matmul_n=256,
        memory_cap_bytes=2**30,
    )
    assert [r.batch_size for r in prof.rows] == [8, 32, 128]
    assert prof.flops_per_sample == 6 * (8 * 16 + 16 * 3)
    for r in prof.rows:
        assert r.samples_per_s > 0 and r.step_time_s > 0
        assert r.samples_per_s == pytest.approx(r.batch_size / r.step_time_s)
        assert 0 < r.fraction_of_peak <= 1.5
        assert r.peak_mem_bytes > 0
    assert prof.knee_batch_size in (8, 32, 128)
    assert 0 < prof.max_batch_size <= prof.search_limit
    # the predicted memory of the largest batch stays under the margin of the cap
    assert prof.max_batch_size >= 128


def test_profile_command_prints_a_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", "--model-args", '{"widths": [16]}', "--dataset-args", json.dumps(TINY)]
    main([*args, "--batch-sizes", "8,32", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert [r["batch_size"] for r in payload["rows"]] == [8, 32]
    with pytest.raises(SystemExit) as err:
        main([*args, "--batch-sizes", "8,x"])
    assert err.value.code == 2
    assert "--batch-sizes" in capsys.readouterr().err


def test_the_search_survives_out_of_memory_errors() -> None:
    # A fake device with 10,000 bytes: a step of B samples peaks at 100 B bytes, and raises
    # CUDA's out-of-memory error once B > 100 (as a real step would, mid-allocation).
    released: list[int] = []

    def step(b: int) -> int:
        if b > 100:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {b} B")
        return 100 * b

    def fits(b: int) -> bool:
        ok = fits_with_margin(
            step, b, budget_bytes=0.8 * 10_000, release=lambda: released.append(b)
        )
        return ok

    assert fits(80) and not fits(81)  # the margin: 80 x 100 = 8,000 bytes = 0.8 of 10,000
    assert not fits(101)  # out of memory is "does not fit", not a crash
    assert largest_fitting(fits, start=8, limit=2**20) == 80
    assert released[:3] == [80, 81, 101]  # memory released after every try, OOM or not
    # cuBLAS and the CPU allocator report running out as plain RuntimeErrors
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))

    def broken(b: int) -> int:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):  # a real bug is not hidden as "no fit"
        fits_with_margin(broken, 8, budget_bytes=1.0)


def test_profiled_sizes_that_run_out_of_memory_are_listed_not_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = batchlab.profile.time_steps

    def time_steps(model: nn.Module, x: torch.Tensor, *args: object, **kw: object) -> object:
        if x.shape[0] >= 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return real(model, x, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(batchlab.profile, "time_steps", time_steps)
    common: dict[str, object] = {
        "model_args": {"widths": [16]},
        "dataset_args": TINY,
        "warmup": 1,
        "min_steps": 2,
        "min_time_s": 0.01,
        "matmul_n": 64,
        "memory_cap_bytes": 2**30,
    }
    prof = profile_hardware(batch_sizes=[8, 32, 64, 128], **common)  # type: ignore[arg-type]
    assert [r.batch_size for r in prof.rows] == [8, 32]
    assert prof.oom_batch_sizes == (64, 128)
    assert prof.knee_batch_size in (8, 32)
    assert prof.lines()[-1] == "out of memory (not timed): batch sizes 64, 128"
    with pytest.raises(SpecError, match="the smallest, 64, already runs out of memory"):
        profile_hardware(batch_sizes=[64, 128], **common)  # type: ignore[arg-type]


def test_the_largest_batch_is_capped_at_the_training_set() -> None:
    """Memory would allow a far larger batch; the training set (256 examples) cannot."""
    prof = profile_hardware(
        model_args={"widths": [16]},
        dataset_args=TINY,
        batch_sizes=[8, 32],
        warmup=1,
        min_steps=2,
        min_time_s=0.01,
        matmul_n=256,
        memory_cap_bytes=2**30,
    )
    assert prof.max_batch_size == 256 and prof.train_examples == 256 and prof.capped_at_train
    fit = next(line for line in prof.lines() if line.startswith("largest batch"))
    assert "256 = the whole training set (256 examples" in fit and "search stopped" not in fit


def _fixed_profile(*, saturated: bool) -> batchlab.profile.HardwareProfile:
    rows = tuple(
        batchlab.profile.BatchProfile(
            batch_size=b,
            samples_per_s=100.0 * b,
            step_time_s=0.01,
            steps_timed=3,
            peak_mem_bytes=2**20,
            extra_mem_bytes=0,
            flops_per_s=1e9,
            fraction_of_peak=0.1,
        )
        for b in (8, 16, 32)
    )
    return batchlab.profile.HardwareProfile(
        device="cpu",
        model="mlp",
        dataset="synthetic",
        threads=1,
        flops_per_sample=1.0,
        peak_flops=1e10,
        rows=rows,
        knee_batch_size=16 if saturated else 32,
        knee_saturated=saturated,
        max_batch_size=64,
        memory_cap_bytes=2**30,
        margin=0.2,
        search_limit=2**24,
    )


@pytest.mark.parametrize("saturated", [False, True])
def test_the_table_marks_a_knee_only_where_the_lines_say_one_was_reached(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], saturated: bool
) -> None:
    monkeypatch.setattr(
        batchlab.profile, "profile_hardware", lambda **_: _fixed_profile(saturated=saturated)
    )
    main(["profile", "--no-save"])
    out = capsys.readouterr().out
    assert out.count("(knee)") == (1 if saturated else 0)
    assert ("16 (knee)" in out) == saturated
    assert ("still grows" in out) != saturated and ("stops improving" in out) == saturated
