"""What probes cost: the `quick` preset's trials with and without a probe tier, alternating.

The cost is wall time of the whole trial minus its evaluations (the engine's own training clock
excludes probe time by design, so it cannot be used here). Ratios are medians over `--repeats`.

    python benchmarks/probe_cost.py [--tier cheap] [--repeats 3] [--batch-sizes 8 64 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from batchlab import presets
from batchlab.data import Dataset, load_dataset
from batchlab.engine import train_trial
from batchlab.spec import load_spec


def trial_cost(data: Dataset, batch_size: int, probes: str | None) -> float:
    overrides = [f"batch_sizes=[{batch_size}]", "seeds=[0]", "device='cpu'"]
    if probes:
        overrides.append(f"probes='{probes}'")
    spec = load_spec(base=presets.get("quick").data, overrides=overrides)
    evals: list[float] = []
    t0 = time.perf_counter()
    train_trial(
        spec.trials()[0],
        data,
        device=torch.device("cpu"),
        on_eval=lambda rec, _ckpt, _probes: evals.append(rec.eval_time_s),
    )
    return time.perf_counter() - t0 - sum(evals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", default="cheap", help="cheap | standard | full | a probe name")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 512])
    args = parser.parse_args()
    spec = load_spec(base=presets.get("quick").data)
    data = load_dataset(
        spec.dataset, val_fraction=spec.val_fraction, train_subset=spec.train_subset
    )
    print(
        f"quick preset trials ({spec.budget.epochs} epochs of {data.n_train} examples),"
        f" probes '{args.tier}' vs none; torch {torch.__version__}"
    )
    print(f"{'batch':>6} {'no probes (s)':>14} {'with probes (s)':>16} {'overhead':>9}")
    total_plain = total_probed = 0.0
    for b in args.batch_sizes:
        plain, probed = [], []
        for _ in range(args.repeats):
            plain.append(trial_cost(data, b, None))
            probed.append(trial_cost(data, b, args.tier))
        tp, tq = statistics.median(plain), statistics.median(probed)
        total_plain += tp
        total_probed += tq
        print(f"{b:>6} {tp:>14.2f} {tq:>16.2f} {100 * (tq / tp - 1):>8.1f}%")
    print(
        f"{'all':>6} {total_plain:>14.2f} {total_probed:>16.2f}"
        f" {100 * (total_probed / total_plain - 1):>8.1f}%"
    )


if __name__ == "__main__":
    main()
