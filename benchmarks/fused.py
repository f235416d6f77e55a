"""Fused trials vs separate runs: does training G seeds as one batched step pay on this device?

For each batch size, G trials that differ only in seed (the seeds' MLP, SGD) are trained (a) one
after another with `engine.train_trial` and (b) together with `fused.train_group`, alternating
(a) and (b) in one run; the median of `--repeats` training times (evaluation excluded) is kept,
so the ratio is measured under the same machine load.

    python benchmarks/fused.py [--n 4000] [--seeds 5] [--batch-sizes 8 32 128 512]
                               [--widths 512 512] [--repeats 3] [--device cpu] [--threads T]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

import torch

from batchlab.data import Dataset, load_dataset
from batchlab.data.rows import TensorRows
from batchlab.engine import Checkpoint, resolve_device, train_trial
from batchlab.fused import can_fuse, train_group
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, TrialSpec
from batchlab.trial import EvalRecord


def make_trials(batch_size: int, seeds: int, widths: list[int]) -> list[TrialSpec]:
    spec = StudySpec(
        name="bench-fused",
        model_args={"widths": widths},
        lrs=(0.01,),
        batch_sizes=(batch_size,),
        seeds=tuple(range(seeds)),
        budget={"epochs": 1},  # type: ignore[arg-type]
        eval_batch_size=8192,
    )
    return spec.trials()


def separate(trials: list[TrialSpec], data: Dataset, device: torch.device) -> float:
    """Training seconds of the trials run one after another through the engine."""
    last: list[EvalRecord] = []

    def sink(rec: EvalRecord, _c: Checkpoint | None, _p: list[ProbeRecord]) -> None:
        last[:] = [rec]

    total = 0.0
    for t in trials:
        train_trial(t, data, device=device, on_eval=sink)
        total += last[0].train_time_s
    return total


def fused(trials: list[TrialSpec], data: Dataset, device: torch.device) -> float:
    """Training seconds of the trials trained as one fused group."""
    last: list[EvalRecord] = []

    def sink(rec: EvalRecord, _c: Checkpoint | None, _p: list[ProbeRecord]) -> None:
        last[:] = [rec]

    train_group(trials, data, device=device, sinks=[sink] * len(trials))
    return last[0].train_time_s  # the group's wall time, shared by every member


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000, help="training examples per epoch")
    parser.add_argument("--seeds", type=int, default=5, help="trials per fused group")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 512])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset("fashion-mnist", val_fraction=0.0, train_subset=args.n).to(device)
    # evaluation is excluded from both clocks; keep the test split small so runs stay short
    data = replace(data, test=TensorRows(data.x_test[:1000], data.y_test[:1000]))
    print(
        f"MLP 784-{'-'.join(map(str, args.widths))}-10, {args.seeds} seeds per group,"
        f" {data.n_train} examples, 1 epoch, device {device}, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads"
    )
    print(f"{'batch':>6} {'separate (s)':>13} {'fused (s)':>10} {'ratio':>6}")
    for b in args.batch_sizes:
        trials = make_trials(b, args.seeds, args.widths)
        assert can_fuse(trials)
        sep, fus = [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            sep.append(separate(trials, data, device))
            fus.append(fused(trials, data, device))
        ts, tf = statistics.median(sep), statistics.median(fus)
        print(f"{b:>6} {ts:>13.2f} {tf:>10.2f} {ts / tf:>5.2f}x")


if __name__ == "__main__":
    main()
