"""Engine speed: batchlab's training loop vs the plain PyTorch loop users write.

Both train the same MLP (784-512-512-10 by default, `--widths` to change; SGD) on the same
Fashion-MNIST examples for one epoch per measurement; (a) and (b) alternate in one run and the
median of `--repeats` is kept, so the ratio is measured under the same machine load. Training
time only (no evaluation in either).

    python benchmarks/engine_speed.py [--n 10000] [--repeats 3] [--widths 512 512]
                                      [--batch-sizes 8 32 128 512 2048]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from batchlab.data import Dataset, load_dataset
from batchlab.engine import train_trial
from batchlab.models import build_model
from batchlab.spec import StudySpec
from batchlab.trial import EvalRecord


def plain_loop(data: Dataset, batch_size: int, seed: int, widths: list[int]) -> float:
    """The loop from the PyTorch tutorials: DataLoader over a TensorDataset, shuffle=True."""
    torch.manual_seed(seed)
    model = build_model(
        "mlp",
        {"widths": widths},
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        seed=seed,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = DataLoader(
        TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True
    )
    running_loss, correct = 0.0, 0
    t0 = time.perf_counter()
    for xb, yb in loader:
        opt.zero_grad()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        running_loss += loss.item() * len(xb)
        correct += int((out.argmax(1) == yb).sum().item())
    return time.perf_counter() - t0


def engine_loop(data: Dataset, batch_size: int, seed: int, widths: list[int]) -> float:
    """batchlab's engine for one epoch; its own clock excludes the evaluations."""
    spec = StudySpec(
        name="bench",
        model_args={"widths": widths},
        lrs=(0.01,),
        batch_sizes=(batch_size,),
        seeds=(seed,),
        budget={"epochs": 1},  # type: ignore[arg-type]
        eval_batch_size=8192,
    )
    records: list[EvalRecord] = []
    train_trial(
        spec.trials()[0],
        data,
        device=torch.device("cpu"),
        on_eval=lambda rec, _ckpt, _probes: records.append(rec),
    )
    return records[-1].train_time_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="training examples per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 512, 2048])
    parser.add_argument(
        "--widths", type=int, nargs="+", default=[512, 512], help="MLP hidden widths"
    )
    args = parser.parse_args()
    data = load_dataset("fashion-mnist", val_fraction=0.0, train_subset=args.n)
    n = data.n_train
    print(
        f"MLP 784-{'-'.join(map(str, args.widths))}-10, torch {torch.__version__},"
        f" {torch.get_num_threads()} threads, {n} examples per epoch"
    )
    print(f"{'batch':>6} {'plain samples/s':>16} {'batchlab samples/s':>19} {'ratio':>6}")
    for b in args.batch_sizes:
        plain, ours = [], []
        for r in range(args.repeats):  # alternate, so both see the same machine load
            plain.append(plain_loop(data, b, seed=r, widths=args.widths))
            ours.append(engine_loop(data, b, seed=r, widths=args.widths))
        tp, te = statistics.median(plain), statistics.median(ours)
        print(f"{b:>6} {n / tp:>16.0f} {n / te:>19.0f} {tp / te:>6.2f}x")


if __name__ == "__main__":
    main()
