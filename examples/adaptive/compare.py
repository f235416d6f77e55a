"""Compare an adaptive sweep with the full grid it prunes (docs/adaptive.md).

    python examples/adaptive/compare.py STUDY FULL.db ADAPTIVE.db [MORE_ADAPTIVE.db ...]

Prints, for each store: trial states, examples trained (sum over trials of steps x batch),
training time (evaluation excluded), and the best (batch size, lr) by final validation accuracy
overall and at each batch size, with its test accuracy. Wall time is measured outside (`time`).
"""

from __future__ import annotations

import sys

from batchlab import load_study
from batchlab.adaptive import best_overall, best_per_batch, compute_used


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit(__doc__)
    name, full_store, *stores = argv
    full = load_study(name, full_store)
    ref = compute_used(full.trials)
    ref_best = best_per_batch(full.trials)
    top = best_overall(ref_best)
    for store in (full_store, *stores):
        study = load_study(name, store)
        used = compute_used(study.trials)
        best = best_per_batch(study.trials)
        win = best_overall(best)
        states = ", ".join(f"{v} {k.lower()}" for k, v in sorted(used.states.items()))
        print(f"== {store}: {states}")
        print(
            f"   examples trained {used.samples:,} ({100 * used.samples / ref.samples:.1f}% of the"
            f" full grid); training time {used.train_time_s:.1f} s"
            f" ({100 * used.train_time_s / ref.train_time_s:.1f}%)"
        )
        if win is not None and top is not None:
            same = (
                "same as"
                if (win.batch_size, win.lr_base) == (top.batch_size, top.lr_base)
                else "differs from"
            )
            print(
                f"   best: batch {win.batch_size}, lr_base {win.lr_base:g}: val_acc {win.val:.4f},"
                f" test_acc {win.test_acc:.4f} ({same} the full grid's)"
            )
        for b, ref_b in sorted(ref_best.items()):
            mine = best.get(b)
            if mine is None:
                print(f"   batch {b:5d}: full grid lr {ref_b.lr_base:g}; none finished here")
                continue
            agree = "=" if mine.lr_base == ref_b.lr_base else "!="
            print(
                f"   batch {b:5d}: lr {mine.lr_base:g} {agree} full grid's {ref_b.lr_base:g};"
                f" test_acc {mine.test_acc:.4f} (full grid best {ref_b.test_acc:.4f})"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
