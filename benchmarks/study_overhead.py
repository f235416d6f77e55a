"""Where a small study's wall time goes: start-up, data, training, evaluation, store, the rest.

Runs `batchlab run --preset quick --report` (as `make run` does) in a fresh interpreter with
timing hooks, and splits the command's wall time, in one run, into:

- start-up: the interpreter and the imports the `run` command makes before it reads its spec;
- data loading: `load_study_data` (decoding the IDX files, the split, standardizing);
- preflight: the rest of `prepare` (batch sizes against the data, the model on two examples);
- training and evaluation: the stored `train_time_s` (last evaluation of each trial) and the
  sum of every evaluation's `eval_time_s`;
- engine, other: the rest of `train_trial` (building each model and optimizer, epoch set-up,
  progress);
- store: every `Store` call of the main thread (open, schema, claims, evaluations, outcomes)
  plus serializing checkpoints and weights;
- provenance, results read back, report: `provenance` (it runs git), `load_study` at the end
  and `build_report`;
- rest: everything else (spec validation, tables printed, the heartbeat thread's start).

Each hook times its own calls exclusive of the hooks nested in it, so the parts add up to the
wall time. `--set` passes overrides through (the tiny mode of tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class Phases:
    """Exclusive wall time per phase: time goes to the innermost phase entered (a stack)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stack = ["rest"]
        self.last = time.perf_counter()
        self.main = 0  # the main thread's ident, set by `start`

    def start(self) -> None:
        import threading

        self.main = threading.get_ident()
        self.last = time.perf_counter()

    def _switch(self) -> None:
        now = time.perf_counter()
        top = self.stack[-1]
        self.seconds[top] = self.seconds.get(top, 0.0) + now - self.last
        self.last = now

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        """Time `owner.name` (a module function or a class's method) as `phase`."""
        import functools
        import threading

        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self.main:  # the heartbeat thread runs concurrently
                return inner(*args, **kwargs)
            self._switch()
            self.stack.append(phase)
            try:
                return inner(*args, **kwargs)
            finally:
                self._switch()
                self.stack.pop()

        setattr(owner, name, timed)


def child(store: str, report: str | None, sets: list[str], out: str) -> None:
    """Run the study with the hooks in place; write the phases (JSON) to `out`."""
    t0 = time.perf_counter()
    wall0 = time.time()
    # What `batchlab run` imports before training: the CLI, then (inside the command) the
    # progress display, the trackers and the study runner, which brings torch.
    import batchlab.cli as cli
    import batchlab.progress
    import batchlab.study as study
    import batchlab.trackers

    imports = time.perf_counter() - t0
    report_import = 0.0
    if report is not None:  # imported by `run --report` after the study: part of the report
        t = time.perf_counter()
        import batchlab.report

        report_import = time.perf_counter() - t
    from batchlab import prepared, results
    from batchlab.engine import Checkpoint, Outcome
    from batchlab.executors import base
    from batchlab.store import Store

    phases = Phases()
    phases.wrap(prepared, "load_study_data", "data loading")
    phases.wrap(study, "prepare", "preflight")
    phases.wrap(study, "provenance", "provenance")
    phases.wrap(study, "load_study", "results read back")
    phases.wrap(base, "train_trial", "train_trial")
    if report is not None:
        phases.wrap(batchlab.report, "build_report", "report")
    phases.wrap(Checkpoint, "to_bytes", "store")
    phases.wrap(Outcome, "weights_bytes", "store")
    for name, attr in list(vars(Store).items()):  # methods only: no classmethods, properties
        if isinstance(attr, types.FunctionType) and (
            not name.startswith("_") or name in ("__init__", "__exit__")
        ):
            phases.wrap(Store, name, "store")
    args = ["run", "--preset", "quick", "--store", store, "--quiet"]
    args += [arg for s in sets for arg in ("--set", s)]
    args += ["--report", report] if report is not None else []
    phases.start()
    cli.main(args)
    phases._switch()
    phases.seconds["report"] = phases.seconds.get("report", 0.0) + report_import
    done = results.load_study("quick", store)
    df = done.to_dataframe()
    threads = sorted({int(t.provenance.get("threads", 0)) for t in done.trials})
    train = float(df.groupby("trial_id")["train_time_s"].max().sum())
    evaluation = float(df["eval_time_s"].sum())
    Path(out).write_text(
        json.dumps(
            {
                "started_at": wall0,
                "imports": imports,
                "phases": phases.seconds,
                "train": train,
                "eval": evaluation,
                "trials": int(df["trial_id"].nunique()),
                "evaluations": len(df),
                "threads": threads,
            }
        ),
        encoding="utf-8",
    )


def measure(sets: list[str], *, report: bool) -> dict[str, Any]:
    """One run of the study in a fresh interpreter: seconds per part, and the wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phases.json"
        cmd = [sys.executable, __file__, "--child", "--store", str(Path(tmp) / "s.db")]
        cmd += ["--out", str(out)] + [a for s in sets for a in ("--set", s)]
        cmd += ["--report-dir", str(Path(tmp) / "report")] if report else []
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        start = time.time()
        subprocess.run(cmd, cwd=tmp, env=env, check=True, stdout=subprocess.DEVNULL)
        wall = time.time() - start
        got = json.loads(out.read_text(encoding="utf-8"))
    p: dict[str, float] = got["phases"]
    in_trial = p.pop("train_trial", 0.0)
    parts = {
        "start-up (interpreter, imports)": got["started_at"] - start + got["imports"],
        "data loading": p.pop("data loading", 0.0),
        "preflight": p.pop("preflight", 0.0),
        "training": got["train"],
        "evaluation": got["eval"],
        "engine, other": in_trial - got["train"] - got["eval"],
        "store (sqlite, checkpoints)": p.pop("store", 0.0),
        "provenance": p.pop("provenance", 0.0),
        "results read back": p.pop("results read back", 0.0),
        "report": p.pop("report", 0.0),
    }
    parts["rest"] = wall - sum(parts.values())
    counts = {k: got[k] for k in ("trials", "evaluations", "threads")}
    return {**parts, "wall": wall, **counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a spec override")
    ap.add_argument("--no-report", action="store_true", help="run without --report")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--report-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.store, a.report_dir, a.sets, a.out)
        return
    m = measure(a.sets, report=not a.no_report)
    wall = m.pop("wall")
    trials, evaluations = int(m.pop("trials")), int(m.pop("evaluations"))
    threads = "/".join(str(t) for t in m.pop("threads"))
    print(
        f"batchlab run --preset quick: {trials} trials, {evaluations} evaluations,"
        f" {threads} thread(s) per trial"
    )
    print(f"{'part':<32} {'seconds':>8} {'of wall':>8}")
    for name, secs in m.items():
        print(f"{name:<32} {secs:8.2f} {secs / wall:8.1%}")
    print(f"{'wall':<32} {wall:8.2f} {1:8.1%}")
    floor = m["training"] + m["evaluation"]  # what the spec asks for: no overhead left
    print(f"wall / (training + evaluation): {wall / floor:.2f}x")
    print(f"wall / training: {wall / m['training']:.2f}x")


if __name__ == "__main__":
    main()
