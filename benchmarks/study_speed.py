"""A whole study, end to end: batchlab's `run_study` vs the plain sequential PyTorch loop.

The `seed-sweep` preset (Fashion-MNIST, 10% validation split, MLP 784-512-512-10, plain SGD at
lr 0.01, batch sizes 8..2048, one seed) cut to `--epochs` epochs, run three ways in one process:

  (a) plain: the loop a user would write, one trial after another: `DataLoader` over a
      `TensorDataset` with `shuffle=True`, an `nn.Module` MLP seeded with the trial's seed,
      `torch.optim.SGD`, `loss.backward()`, running loss via `loss.item()`, and after every epoch
      an evaluation on the test set (`DataLoader`, batch 1000, `torch.no_grad`);
  (b) batchlab: `run_study` on the same spec in a temporary store, with the fastest settings
      there are (`workers = "auto"` when the spec has the field);
  (c) batchlab with `workers = 1` (one trial after another, like (a)), to separate the engine's
      share of the gain from concurrency's.

The sides alternate (a, b, c, then c, b, a, ...) over `--repeats`, and the median total of each
is kept, so machine load hits all sides alike. Wall time covers everything each side does,
loading the data included. batchlab evaluates more than (a): validation and test after every
epoch and a full pass over the training set at the start and the end.

Fraction of peak: matmul FLOPs of the work each side did (per sample, 6 x the MLP's
multiply-accumulates for a training step and 2 x for an evaluated example, summed over every
example trained on or evaluated), divided by its wall time and by the measured float32 matmul
peak of this machine (`batchlab.profile.matmul_peak_flops`, same thread count).

    python benchmarks/study_speed.py [--epochs 2] [--batch-sizes 8 16 ... 2048]
                                     [--train-subset N] [--seeds 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from batchlab import presets
from batchlab.data import load_dataset
from batchlab.profile import count_macs, matmul_peak_flops
from batchlab.spec import StudySpec, load_spec
from batchlab.study import Study, run_study


@dataclass(frozen=True, kw_only=True)
class Side:
    """One measured run of a whole study: its wall time, per-batch times and FLOPs done."""

    total_s: float
    per_batch_s: dict[int, float]
    flops: float
    eval_s: float  # of which evaluation (summed over trials; overlapping under a pool)


def study_spec(args: argparse.Namespace, **extra: Any) -> StudySpec:
    """The seed-sweep preset cut to the options given."""
    sets = [f"budget.epochs={args.epochs}", "device='cpu'", "name='study-speed'"]
    if args.batch_sizes:
        sets.append(f"batch_sizes={list(args.batch_sizes)}")
    if args.train_subset:
        sets.append(f"train_subset={args.train_subset}")
    if args.seeds > 1:
        sets.append(f"seeds={list(range(args.seeds))}")
    spec = load_spec(base=presets.get("seed-sweep").data, overrides=sets)
    if extra:
        spec = load_spec(base={**spec.to_toml_dict(), **extra})
    return spec


def has_workers_field() -> bool:
    return "workers" in StudySpec.model_fields


class MLP(nn.Module):
    """The network as a user would write it."""

    def __init__(self, widths: list[int], n_in: int = 784, n_out: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for w in widths:
            layers += [nn.Linear(n_in, w), nn.ReLU()]
            n_in = w
        layers.append(nn.Linear(n_in, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def macs_per_sample(spec: StudySpec) -> int:
    model = MLP(list(spec.model_args["widths"]))
    return count_macs(model, torch.zeros(1, 1, 28, 28))


def plain(spec: StudySpec) -> Side:
    """(a): the plain sequential loop, one trial after another."""
    t0 = time.perf_counter()
    data = load_dataset(
        spec.dataset,
        val_fraction=spec.val_fraction,
        data_seed=spec.data_seed,
        train_subset=spec.train_subset,
    )
    macs = macs_per_sample(spec)
    train_set = TensorDataset(data.x_train, data.y_train)
    test_loader = DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=1000)
    epochs = spec.budget.epochs
    assert epochs is not None
    per_batch: dict[int, float] = {}
    samples_trained = samples_evaluated = 0
    eval_s = 0.0
    for trial in spec.trials():
        t_trial = time.perf_counter()
        torch.manual_seed(trial.seed)
        model = MLP(list(spec.model_args["widths"]))
        opt = torch.optim.SGD(model.parameters(), lr=trial.lr, momentum=spec.momentum)
        loader = DataLoader(train_set, batch_size=trial.batch_size, shuffle=True)
        for _ in range(epochs):
            model.train()
            running = 0.0
            for xb, yb in loader:
                opt.zero_grad()
                loss = F.cross_entropy(model(xb), yb)
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                running += loss.item() * len(xb)
                samples_trained += len(xb)
            model.eval()
            t_eval = time.perf_counter()
            correct, test_loss = 0, 0.0
            with torch.no_grad():
                for xb, yb in test_loader:
                    out = model(xb)
                    test_loss += F.cross_entropy(out, yb, reduction="sum").item()
                    correct += int((out.argmax(1) == yb).sum())
                    samples_evaluated += len(xb)
            eval_s += time.perf_counter() - t_eval
        b = trial.batch_size
        per_batch[b] = per_batch.get(b, 0.0) + time.perf_counter() - t_trial
    total = time.perf_counter() - t0
    return Side(
        total_s=total,
        per_batch_s=per_batch,
        flops=float(macs) * (6 * samples_trained + 2 * samples_evaluated),
        eval_s=eval_s,
    )


def batchlab_side(spec: StudySpec, workdir: Path) -> tuple[Side, Study]:
    """(b)/(c): run_study in a fresh store; FLOPs from the evaluations it recorded."""
    store = workdir / f"study-{time.monotonic_ns()}.db"
    t0 = time.perf_counter()
    study = run_study(spec, store=store)
    total = time.perf_counter() - t0
    data = load_dataset(
        spec.dataset,
        val_fraction=spec.val_fraction,
        data_seed=spec.data_seed,
        train_subset=spec.train_subset,
    )
    n_train, n_val, n_test = data.n_train, data.x_val.shape[0], data.x_test.shape[0]
    per_batch: dict[int, float] = {}
    samples_trained = samples_evaluated = 0
    eval_s = 0.0
    for t in study.trials:
        assert t.state == "COMPLETE", f"trial at batch {t.batch_size} ended {t.state}"
        assert t.started_at is not None and t.ended_at is not None
        per_batch[t.batch_size] = per_batch.get(t.batch_size, 0.0) + t.ended_at - t.started_at
        samples_trained += t.evals[-1].samples
        for e in t.evals:
            eval_s += e.eval_time_s
            samples_evaluated += n_val + n_test + (0 if math.isnan(e.full_train_loss) else n_train)
    macs = macs_per_sample(spec)
    flops = float(macs) * (6 * samples_trained + 2 * samples_evaluated)
    return Side(total_s=total, per_batch_s=per_batch, flops=flops, eval_s=eval_s), study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per batch size")
    args = parser.parse_args()

    workers_field = has_workers_field()
    base = study_spec(args)
    fast = study_spec(args, workers="auto") if workers_field else base
    one = study_spec(args, workers=1) if workers_field else base
    peak = matmul_peak_flops(torch.device("cpu"))
    print(
        f"seed-sweep cut to {args.epochs} epochs: batch sizes {list(base.batch_sizes)},"
        f" seed {list(base.seeds)}, train_subset {base.train_subset};"
        f" torch {torch.__version__}, {torch.get_num_threads()} threads,"
        f" matmul peak {peak / 1e9:.1f} GFLOP/s"
    )
    if not workers_field:
        print("StudySpec has no `workers` field yet: (b) runs with the defaults, like (c)")
    sides: dict[str, list[Side]] = {"plain": [], "auto": [], "one": []}
    with tempfile.TemporaryDirectory(prefix="batchlab-bench-") as tmp:
        workdir = Path(tmp)
        runs: dict[str, Callable[[], Side]] = {
            "plain": lambda: plain(base),
            "auto": lambda: batchlab_side(fast, workdir)[0],
            "one": lambda: batchlab_side(one, workdir)[0],
        }
        for r in range(args.repeats):  # alternate, so all sides see the same machine load
            order = ["plain", "auto", "one"] if r % 2 == 0 else ["one", "auto", "plain"]
            for name in order:
                sides[name].append(runs[name]())

    def med(name: str, fn: Callable[[Side], float]) -> float:
        return float(statistics.median(fn(s) for s in sides[name]))

    label = {"plain": "(a) plain", "auto": "(b) batchlab auto", "one": "(c) batchlab w=1"}
    if not workers_field:
        label["auto"] = "(b) batchlab default"
    print()
    print(f"{'batch':>6} {'plain (s)':>10} {'batchlab auto (s)':>18} {'batchlab w=1 (s)':>17}")
    for b in base.batch_sizes:
        cells = [statistics.median(s.per_batch_s[b] for s in sides[k]) for k in sides]
        print(f"{b:>6} {cells[0]:>10.2f} {cells[1]:>18.2f} {cells[2]:>17.2f}")
    print("(batchlab per-batch times are trials' start-to-end wall times, summed over seeds;")
    print(" under a pool of workers they overlap, so they do not add up to the total)")
    print()
    print(
        f"{'side':<22} {'total (s)':>10} {'eval (s)':>9} {'GFLOP':>8} {'of peak':>8}"
        f" {'plain/side':>11}"
    )
    plain_total = med("plain", lambda s: s.total_s)
    for k in ("plain", "auto", "one"):
        total = med(k, lambda s: s.total_s)
        flops = med(k, lambda s: s.flops)
        eval_s = med(k, lambda s: s.eval_s)
        frac = flops / total / peak
        print(
            f"{label[k]:<22} {total:>10.1f} {eval_s:>9.1f} {flops / 1e9:>8.0f} {frac:>7.1%}"
            f" {plain_total / total:>10.2f}x"
        )


if __name__ == "__main__":
    main()
