"""Hardware profile: throughput and memory against batch size, before running a study.

For each batch size: samples per second of one training step (forward, backward, SGD update),
timed after a warm-up with the device synchronized before the clock is read; the peak memory of
those steps (`engine.reset_peak_memory` / `engine.peak_memory_bytes`); and the fraction of the
device's measured matmul peak that the step reaches.

Rules (see docs/critical-batch-size.md):
- FLOPs per training sample = 6 x the multiply-accumulates of every Linear and Conv layer's
  forward pass (counted with forward hooks on one sample): 2 per MAC forward, 4 backward (input
  and weight gradients). Biases, activations, norms and the optimizer are not counted.
- Peak FLOP/s: the best of a few timed float32 n x n matmuls (2 n³ FLOPs each).
- Knee: the first profiled batch size from which the next one gains less than 10% throughput
  per doubling (gain^(1 / log2(B_next / B))); the largest batch size when gains never drop.
- Out of memory: a training step that raises an out-of-memory error (`is_out_of_memory`:
  `torch.cuda.OutOfMemoryError`, or a RuntimeError saying so, as cuBLAS and the CPU allocator
  do) is caught, the memory freed, and the profile goes on: a profiled batch size that runs out
  is listed in `oom_batch_sizes` (with every larger one, not tried), not timed.
- Largest batch that fits: a doubling then binary search over a monotone `fits(B)`. On CUDA
  `fits` runs a training step and fails on an out-of-memory error or when the step's peak
  exceeds (1 - margin) of the device memory (`fits_with_margin`). On CPU nothing is allocated:
  memory is extrapolated linearly in B from the profiled peaks (extra RSS over the pre-step
  level, the slope at least the analytic 4 bytes x (activations + their gradients) per sample)
  and must stay below (1 - margin) of the cap: `memory_cap_bytes`, by default half of
  MemAvailable (4 GiB where /proc/meminfo is missing). The search stops at `search_limit`,
  and at the training set's size: a larger batch cannot be drawn from it (`capped_at_train`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from batchlab.data import load_dataset, tensor_rows
from batchlab.engine import peak_memory_bytes, reset_peak_memory, resolve_device
from batchlab.errors import SpecError
from batchlab.models import build_model
from batchlab.step import Step, make_step
from batchlab.tasks import Task
from batchlab.tasks.classification import Classification

KNEE_GAIN = 0.10  # throughput gain per doubling below which larger batches stop paying
DEFAULT_BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True, kw_only=True)
class BatchProfile:
    batch_size: int
    samples_per_s: float
    step_time_s: float
    steps_timed: int
    peak_mem_bytes: int  # CUDA: max allocated; CPU: peak RSS of the process during the steps
    extra_mem_bytes: int  # peak minus the level just before the steps
    flops_per_s: float
    fraction_of_peak: float


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    device: str
    model: str
    dataset: str
    threads: int
    flops_per_sample: float  # training FLOPs (see module docstring)
    peak_flops: float  # measured matmul FLOP/s
    rows: tuple[BatchProfile, ...]
    knee_batch_size: int
    knee_saturated: bool  # False: throughput still grew >= 10% per doubling at the largest
    max_batch_size: int  # largest batch that fits with the margin (0 when none does)
    memory_cap_bytes: int  # CPU: the cap used; CUDA: the device's total memory
    margin: float
    search_limit: int
    oom_batch_sizes: tuple[int, ...] = ()  # profiled sizes that ran out of memory (not timed)
    train_examples: int | None = None  # the training set's size (None: a profile before it)
    capped_at_train: bool = False  # the whole training set fits: memory is not the limit

    def marks_knee(self, batch_size: int) -> bool:
        """Whether `batch_size` is the knee (reached: throughput stopped improving there)."""
        return self.knee_saturated and batch_size == self.knee_batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        knee = (
            f"throughput stops improving (< {KNEE_GAIN:.0%} per doubling)"
            f" at B={self.knee_batch_size}"
        )
        if not self.knee_saturated:
            knee = (
                f"throughput still grows >= {KNEE_GAIN:.0%} per doubling at the largest batch"
                f" profiled (B={self.knee_batch_size})"
            )
        fit = f"largest batch that fits with a {self.margin:.0%} margin: {self.max_batch_size:,}"
        if self.capped_at_train:
            fit += (
                f" = the whole training set ({self.train_examples:,} examples; a larger batch"
                " cannot be drawn from it, memory is not the limit)"
            )
        elif self.max_batch_size >= self.search_limit:
            fit += f" (search stopped at {self.search_limit:,})"
        out = [
            f"{self.model} on {self.dataset}, {self.device}, {self.threads} thread(s):"
            f" {self.flops_per_sample:.3g} training FLOPs per sample;"
            f" measured matmul peak {self.peak_flops / 1e9:.3g} GFLOP/s",
            knee,
            fit,
        ]
        if self.oom_batch_sizes:
            sizes = ", ".join(str(b) for b in self.oom_batch_sizes)
            out.append(f"out of memory (not timed): batch sizes {sizes}")
        return out


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of the Linear and Conv layers in one forward pass of `example`."""
    total = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += output.numel() * per_output

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def activation_bytes_per_sample(model: nn.Module, example: torch.Tensor) -> int:
    """4 bytes x 2 x the outputs of every leaf module for one sample (activations and grads)."""
    total = 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return 8 * (total + example.numel())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # deliberate: the clock is read only after the device


def matmul_peak_flops(device: torch.device, *, n: int = 2048, repeats: int = 3) -> float:
    """Best FLOP/s of `repeats` float32 n x n matmuls (after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    a @ b
    _sync(device)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def _step(step: Step, x: torch.Tensor, y: torch.Tensor) -> None:
    step.backward(x, y, torch.zeros((), device=y.device))
    step.update()


def time_steps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    *,
    warmup: int = 2,
    min_steps: int = 3,
    min_time_s: float = 0.2,
    task: Task | None = None,
) -> tuple[float, int, int, int]:
    """Seconds per training step on (x, y) after `warmup` steps, the steps timed, the peak
    memory and the peak above the pre-step level, in bytes (the task's loss: classification's
    cross-entropy by default)."""
    task = task if task is not None else Classification()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    step = make_step(model, opt, task)  # the step the engine takes: the same kernels
    _sync(device)
    reset_peak_memory(device)
    before = peak_memory_bytes(device)
    for _ in range(warmup):
        _step(step, x, y)
    _sync(device)
    steps, t0 = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - t0 < min_time_s:
        _step(step, x, y)
        steps += 1
        if steps >= min_steps:
            _sync(device)
    _sync(device)
    elapsed = time.perf_counter() - t0
    peak = peak_memory_bytes(device)
    return elapsed / steps, steps, peak, max(0, peak - before)


def is_out_of_memory(err: BaseException) -> bool:
    """An allocation failure: CUDA's OutOfMemoryError, or a RuntimeError that says so (cuBLAS
    handle and workspace allocations, the CPU allocator)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("out of memory", "cublas_status_alloc_failed", "can't allocate memory")
    )


def fits_with_margin(
    step: Callable[[int], int],
    batch_size: int,
    *,
    budget_bytes: float,
    release: Callable[[], None] = lambda: None,
) -> bool:
    """Whether `step(batch_size)` (one training step, returning its peak bytes) runs within
    `budget_bytes`. An out-of-memory error is "does not fit", not a crash; `release` frees the
    memory afterwards (after the exception is cleared, so its frames hold no tensors)."""
    try:
        ok = step(batch_size) <= budget_bytes
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        ok = False
    release()
    return ok


def knee(batch_sizes: Sequence[int], throughput: Sequence[float]) -> tuple[int, bool]:
    """The first batch size whose next one gains < 10% per doubling; (largest, False) if none."""
    pairs = sorted(zip(batch_sizes, throughput, strict=True))
    for (b0, t0), (b1, t1) in itertools.pairwise(pairs):
        per_doubling = (t1 / t0) ** (1.0 / math.log2(b1 / b0)) - 1.0
        if per_doubling < KNEE_GAIN:
            return b0, True
    return pairs[-1][0], False


def largest_fitting(fits: Callable[[int], bool], *, start: int = 1, limit: int = 2**24) -> int:
    """Largest B in [1, limit] with fits(B), for a monotone `fits` (0 when fits(1) fails).

    Doubling from `start` finds a bracket [ok, bad), then bisection closes it.
    """
    start = max(1, min(start, limit))
    if fits(start):
        ok, bad = start, None
        while bad is None:
            if ok >= limit:
                return limit
            nxt = min(2 * ok, limit)
            if fits(nxt):
                ok = nxt
            else:
                bad = nxt
    else:
        ok, bad = 0, start
    while bad - ok > 1:
        mid = (ok + bad) // 2
        if fits(mid):
            ok = mid
        else:
            bad = mid
    return ok


def default_memory_cap() -> int:
    """Half of MemAvailable (Linux), else 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * 2**30


def linear_memory_model(
    batch_sizes: Sequence[int], extra_bytes: Sequence[int], *, min_slope: float
) -> tuple[float, float]:
    """(base, bytes per sample) of extra memory against B: least squares, slope >= min_slope."""
    b = np.asarray(batch_sizes, dtype=float)
    m = np.asarray(extra_bytes, dtype=float)
    if len(b) >= 2 and np.ptp(b) > 0:
        slope, base = np.polyfit(b, m, 1)
    else:
        slope, base = 0.0, float(m.mean())
    slope = max(float(slope), min_slope)
    base = max(0.0, float((m - slope * b).max()))  # every measurement lies on or under the line
    return base, slope


def profile_hardware(
    *,
    model: str = "mlp",
    dataset: str = "synthetic",
    model_args: dict[str, Any] | None = None,
    dataset_args: dict[str, Any] | None = None,
    device: str = "cpu",
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    warmup: int = 2,
    min_steps: int = 3,
    min_time_s: float = 0.2,
    matmul_n: int = 2048,
    memory_cap_bytes: int | None = None,
    margin: float = 0.2,
    search_limit: int | None = None,
    seed: int = 0,
    task: str | None = None,
    task_args: dict[str, Any] | None = None,
) -> HardwareProfile:
    """Profile one model on one device; see the module docstring for every rule."""
    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] <= 0:
        raise SpecError("--batch-sizes: need at least one positive batch size")
    if not 0 <= margin < 1:
        raise SpecError(f"--margin {margin}: need 0 <= margin < 1")
    dev = resolve_device(device)
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as err:
        raise SpecError(f"--device: {device!r} is not usable here ({err}); use cpu") from None
    data = load_dataset(
        dataset, args=dataset_args or {}, val_fraction=0.0, task=task, task_args=task_args
    )
    net = build_model(
        model,
        dict(model_args or {}),
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=seed,
    ).to(dev)
    # Batches are drawn with replacement from the training rows (the first 4096 of a Dataset
    # read by index: a profile measures speed and memory, not learning).
    x_all, y_all = tensor_rows(data.train, len(data.train) if data.in_memory else 4096)
    x_all, y_all = x_all.to(dev), y_all.to(dev)
    example = x_all[:1]
    flops_per_sample = 6.0 * count_macs(net, example)
    act_bytes = activation_bytes_per_sample(net, example)
    peak = matmul_peak_flops(dev, n=matmul_n)
    g = torch.Generator().manual_seed(seed)

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, x_all.shape[0], (b,), generator=g).to(dev)  # with replacement
        return x_all[idx], y_all[idx]

    def release() -> None:
        net.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    def timed(b: int) -> tuple[float, int, int, int]:
        xb, yb = batch(b)  # local: freed on return, before the next size
        return time_steps(
            net,
            xb,
            yb,
            dev,
            warmup=warmup,
            min_steps=min_steps,
            min_time_s=min_time_s,
            task=data.task,
        )

    rows = []
    oom: list[int] = []

    for b in sizes:  # ascending, so allocator caches from bigger batches do not hide growth
        result: tuple[float, int, int, int] | None = None
        try:
            result = timed(b)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
        if result is None:  # out of memory: larger sizes would be too; list them, do not try
            release()
            oom = [s for s in sizes if s >= b]
            break
        step_s, steps, peak_mem, extra = result
        rate = b / step_s
        rows.append(
            BatchProfile(
                batch_size=b,
                samples_per_s=rate,
                step_time_s=step_s,
                steps_timed=steps,
                peak_mem_bytes=peak_mem,
                extra_mem_bytes=extra,
                flops_per_s=rate * flops_per_sample,
                fraction_of_peak=rate * flops_per_sample / peak,
            )
        )
    if not rows:
        raise SpecError(
            f"--batch-sizes: the smallest, {sizes[0]}, already runs out of memory on {dev};"
            " try smaller batch sizes or a smaller model"
        )
    knee_b, saturated = knee([r.batch_size for r in rows], [r.samples_per_s for r in rows])

    if dev.type == "cuda":
        cap = int(torch.cuda.get_device_properties(dev).total_memory)
        limit = search_limit or 2**22

        def cuda_step(b: int) -> int:
            xb, yb = batch(b)
            torch.cuda.reset_peak_memory_stats(dev)
            _step(make_step(net, torch.optim.SGD(net.parameters(), lr=1e-3), data.task), xb, yb)
            _sync(dev)
            return int(torch.cuda.max_memory_allocated(dev))

        def fits(b: int) -> bool:
            return fits_with_margin(cuda_step, b, budget_bytes=(1 - margin) * cap, release=release)

    else:
        cap = memory_cap_bytes or default_memory_cap()
        limit = search_limit or 2**24
        base, slope = linear_memory_model(
            [r.batch_size for r in rows], [r.extra_mem_bytes for r in rows], min_slope=act_bytes
        )

        def fits(b: int) -> bool:
            return base + slope * b <= (1 - margin) * cap

    n_train = len(data.train)
    max_b = largest_fitting(fits, start=rows[-1].batch_size, limit=min(limit, n_train))
    return HardwareProfile(
        device=str(dev),
        model=model,
        dataset=dataset,
        threads=torch.get_num_threads(),
        flops_per_sample=flops_per_sample,
        peak_flops=peak,
        rows=tuple(rows),
        knee_batch_size=knee_b,
        knee_saturated=saturated,
        max_batch_size=max_b,
        memory_cap_bytes=cap,
        margin=margin,
        search_limit=limit,
        oom_batch_sizes=tuple(oom),
        train_examples=n_train,
        capped_at_train=max_b >= n_train,
    )
