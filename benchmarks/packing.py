"""Packing: is it faster to run trials side by side on one thread each, or one at a time on all
cores? This measures the rule `workers = "auto"` uses (see `batchlab.executors.threads_for`).

For each batch size, the same trial (one epoch of the seeds' MLP, 784-512-512-10, SGD) runs
(a) alone in one process with every core's thread, and (b) once per core, concurrently, in
that many single-threaded processes started together. Throughput is training samples per
second summed over the concurrent processes (each process's own clock, evaluations excluded).
(a) and (b) alternate `--repeats` times in one run in the same long-lived worker processes, so
start-up is excluded and machine load hits both sides alike; the median is kept.

    python benchmarks/packing.py [--n 10000] [--repeats 3] [--widths 512 512]
                                 [--batch-sizes 8 32 128 512 2048]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

import torch
import torch.multiprocessing as mp

from batchlab.data import Dataset, load_dataset
from batchlab.data.rows import TensorRows
from batchlab.engine import train_trial
from batchlab.executors import PACK_MAX_BATCH, usable_cores
from batchlab.spec import StudySpec
from batchlab.trial import EvalRecord


def one_epoch(data: Dataset, batch_size: int, widths: list[int], threads: int) -> float:
    """Train one epoch with `threads` torch threads; return the engine's training seconds."""
    torch.set_num_threads(threads)
    spec = StudySpec(
        name="packing",
        model_args={"widths": widths},
        lrs=(0.01,),
        batch_sizes=(batch_size,),
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


def worker(conn: Connection, barrier: Any, data: Dataset, widths: list[int]) -> None:
    """Wait for (batch size, threads); start with the others at the barrier; send the time."""
    while True:
        job = conn.recv()
        if job is None:
            return
        batch_size, threads, together = job
        if together:
            barrier.wait()
        conn.send(one_epoch(data, batch_size, widths, threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="training examples per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 128, 512, 2048])
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 512])
    args = parser.parse_args()
    cores = usable_cores()
    data = load_dataset("fashion-mnist", val_fraction=0.0, train_subset=args.n)
    # Evaluations are excluded from the engine's clock; a small test split keeps them short.
    data = replace(data, test=TensorRows(data.x_test[:256], data.y_test[:256]))
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        t.share_memory_()  # type: ignore[no-untyped-call]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(cores)
    pipes, procs = [], []
    for _ in range(cores):
        here, there = ctx.Pipe()
        p = ctx.Process(target=worker, args=(there, barrier, data, args.widths), daemon=True)
        p.start()
        pipes.append(here)
        procs.append(p)
    n = data.n_train
    print(
        f"MLP 784-{'-'.join(map(str, args.widths))}-10, torch {torch.__version__}, {cores} cores,"
        f" {n} examples per epoch; rule: batch <= {PACK_MAX_BATCH} packed"
    )
    print(
        f"{'batch':>6} {f'1 proc x {cores} thr':>16} {f'{cores} proc x 1 thr':>16}"
        f" {'(samples/s)':>11} {'packed/wide':>11}"
    )
    for b in args.batch_sizes:
        wide, packed = [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            pipes[0].send((b, cores, False))
            wide.append(n / pipes[0].recv())
            for pipe in pipes:
                pipe.send((b, 1, True))
            packed.append(sum(n / pipe.recv() for pipe in pipes))
        w, p = statistics.median(wide), statistics.median(packed)
        print(f"{b:>6} {w:>16.0f} {p:>16.0f} {'':>11} {p / w:>10.2f}x")
    for pipe in pipes:
        pipe.send(None)
    for proc in procs:
        proc.join(timeout=10)


if __name__ == "__main__":
    main()
