"""How long `batchlab check` takes on the `quick` preset's study: the built-in MLP on
Fashion-MNIST, batch sizes 8..512, k = 2, 4 and W = 2, 4, at the initial weights and after two
steps. The data load (the preflight) is timed apart from the check itself; medians over
`--repeats`, each in the same process after one warm-up check.

    python benchmarks/check_speed.py [--repeats 3] [--batch-sizes 8 64 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

from batchlab import presets
from batchlab.check import check_prepared
from batchlab.prepared import prepare
from batchlab.spec import load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    args = parser.parse_args()
    overrides = ["device='cpu'"]
    if args.batch_sizes:
        overrides.append(f"batch_sizes={list(args.batch_sizes)}")
    spec = load_spec(base=presets.get("quick").data, overrides=overrides)
    t0 = time.perf_counter()
    prepared = prepare(spec)
    load_s = time.perf_counter() - t0
    check_prepared(prepared)  # warm-up: first kernels, lazy imports
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = check_prepared(prepared)
        times.append(time.perf_counter() - t0)
    assert result.ok, result.lines()
    n = len(result.comparisons)
    print(f"batch sizes {', '.join(map(str, spec.batch_sizes))}: {n} comparisons")
    print(f"data load and preflight: {load_s:.2f} s")
    print(f"check (median of {args.repeats}): {statistics.median(times):.2f} s")
    total = statistics.median(times) + load_s
    print(f"check + load: {total:.2f} s ({'within' if total < 5 else 'over'} the 5 s goal)")
    print(f"the check itself: {statistics.median(times) / load_s:.2f}x the data load")


if __name__ == "__main__":
    main()
