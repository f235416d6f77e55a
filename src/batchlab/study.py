"""Running and loading studies: the Python API (`run_study`, `load_study`, `Study`).

Running a study validates everything first (spec, dataset, model, batch sizes against the
training set) and only then opens the store, so bad input never leaves a trace. Trials are
registered as WAITING, then run one by one; COMPLETE/DIVERGED/FAILED trials are skipped on a rerun
and RUNNING ones (from a killed run) continue from their last checkpoint.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from batchlab import cpuload
from batchlab.adaptive import run_adaptive
from batchlab.branched import study_trials
from batchlab.cpuload import plan_threads
from batchlab.data import tensor_rows
from batchlab.engine import Checkpoint, Outcome, build_model_for, train_trial
from batchlab.errors import SpecError, StoreError
from batchlab.executors import check_executor, run_trials
from batchlab.plugins import callable_ref, code_fingerprint, only_hooks
from batchlab.prepared import (
    NullReporter,
    PreparedStudy,
    Reporter,
    load_study_data,
    prepare,
    provenance,
    task_provenance,
)
from batchlab.probes import ProbeRecord
from batchlab.results import DEFAULT_STORE, TRIAL_COLUMNS, Study, load_study
from batchlab.spec import StudySpec, TrialSpec, load_spec, spec_changes
from batchlab.step import (
    autocast_dtype,
    compile_unsupported,
    precision_name,
    precision_unsupported,
)
from batchlab.store import Store
from batchlab.trial import EvalRecord, FrozenTrial, TrialState

if TYPE_CHECKING:
    from batchlab.check import CheckResult
    from batchlab.trackers import Tracker


__all__ = [
    "DEFAULT_STORE",
    "TRIAL_COLUMNS",
    "NullReporter",
    "PreparedStudy",
    "Reporter",
    "Study",
    "interpolate_trials",
    "load_study",
    "load_study_data",
    "prepare",
    "run_study",
]


def _run_one(
    store: Store,
    trial: TrialSpec,
    prepared: PreparedStudy,
    reporter: Reporter,
    prov: dict[str, Any],
    *,
    stop_at_step: int | None = None,
) -> TrialState:
    """Run (or resume) one trial and record how it ended; with `stop_at_step`, a trial that
    pauses there stays RUNNING with its checkpoint (adaptive sweeps continue it later)."""
    tid = trial.trial_id
    _, payload = store.start_trial(tid, prov)
    resume = Checkpoint.from_bytes(payload) if payload is not None else None

    def sink(record: EvalRecord, ckpt: Checkpoint | None, probes: list[ProbeRecord]) -> None:
        store.add_eval(tid, record, ckpt.to_bytes() if ckpt is not None else None, probes)

    try:
        outcome: Outcome = train_trial(
            trial,
            prepared.data,
            device=prepared.device,
            on_eval=sink,
            resume=resume,
            on_progress=reporter.trial_progress,
            stop_at_step=stop_at_step,
        )
    except StoreError:  # the store failed, not the trial: it stays resumable
        raise
    except Exception:  # any failure of one trial is recorded, and the study goes on
        store.finish_trial(tid, TrialState.FAILED, error=traceback.format_exc())
        return TrialState.FAILED
    if outcome.compiled is not None:  # False where a compiled step raised and it ran eager
        store.update_provenance(tid, {"compile": outcome.compiled})
    if outcome.state == TrialState.RUNNING:  # paused at stop_at_step, checkpoint stored
        return outcome.state
    weights = outcome.weights_bytes(save=prepared.spec.save_weights)
    store.finish_trial(
        tid,
        outcome.state,
        error=outcome.reason,
        diverged_step=outcome.diverged_step,
        probes=outcome.probes,
        weights=weights,
    )
    return outcome.state


def precision_used(spec: StudySpec, device: torch.device) -> str | dict[str, str]:
    """The precision trials of `spec` run with on `device` (what `engine` autocasts to): one
    value, or one per variant label when variants differ."""
    used = {
        label: precision_name(autocast_dtype(v.precision, device))
        for label, v in spec.resolved_variants()
    }
    values = set(used.values())
    return values.pop() if len(values) == 1 else used


def compile_used(spec: StudySpec, device: torch.device) -> bool | dict[str, bool]:
    """Whether trials of `spec` start compiled on `device` (`compile` asked and not
    `compile_unsupported`): one value, or one per variant label when variants differ. A trial
    whose compiled step raises runs eager, and its provenance says `compile` false."""
    used = {
        label: v.compile and compile_unsupported(device.type) is None
        for label, v in spec.resolved_variants()
    }
    values = set(used.values())
    return values.pop() if len(values) == 1 else used


ADAPTIVE = ("adam", "adamw")


def recipe_notes(spec: StudySpec) -> list[str]:
    """The documented default for adaptive optimizers is Malladi et al.'s square-root rule; a
    spec that sweeps batch sizes with Adam and leaves `lr_scaling` unset keeps the old default
    (none: its trial ids and numbers stay), and hears so in one line."""
    adaptive = spec.optimizer in ADAPTIVE or any(
        v.get("optimizer") in ADAPTIVE for v in spec.variants
    )
    chosen = "lr_scaling" in spec.model_fields_set or any("lr_scaling" in v for v in spec.variants)
    several = len(spec.batch_sizes) > 1 or spec.branched is not None
    if adaptive and several and not chosen:
        return [
            "lr_scaling: unset with an adaptive optimizer, so the lr is the same at every batch"
            ' size; lr_scaling = "sqrt" (Malladi et al.) is the rule for adam/adamw'
            ' (docs/recipes.md); set lr_scaling = "none" to keep this and silence this line'
        ]
    return []


def execution_notes(spec: StudySpec, device: torch.device) -> list[str]:
    """One line per setting that `device` cannot run as asked, and what runs instead."""
    notes = []
    for precision in ("bf16", "fp16"):
        if any(v.precision == precision for _, v in spec.resolved_variants()):
            why = precision_unsupported(precision, device.type)
            if why is not None:
                notes.append(
                    f"precision: {precision} asked, but {why}; running fp32 (stored per trial)"
                )
    if any(v.compile for _, v in spec.resolved_variants()):
        why = compile_unsupported(device.type)
        if why is not None:
            notes.append(f"compile: asked, but {why}; running eager (stored per trial)")
    return notes


def run_study(
    spec: StudySpec | str | Path | dict[str, Any],
    *,
    store: str | Path = DEFAULT_STORE,
    data_dir: Path | None = None,
    overrides: Sequence[str] = (),
    scale: str | None = None,
    reporter: Reporter | None = None,
    trackers: Sequence[Tracker] = (),
    force: bool = False,
    retry_failed: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Study:
    """Run (or resume) a study and return it as stored.

    `spec` is a StudySpec, a path to a TOML file, or a dict of spec fields (where `model`,
    `dataset` and `task` may also be top-level functions of an importable module, stored by
    name); `scale` picks a file's `[small]` or `[full]` table. `trackers` (batchlab.trackers)
    get each trial that this process runs, read back from the store when it finishes.

    A study is one spec: a rerun with the same spec (execution fields aside, grid axes
    possibly extended) resumes it; another spec under a stored name is refused, unless
    `force`, which deletes that study's trials first and runs it from scratch.
    `retry_failed` runs the study's FAILED trials again from scratch. `notify` hears what
    either did, in one line (default: printed on stderr).
    """
    say = notify or (lambda line: print(line, file=sys.stderr))
    if isinstance(spec, str | Path):
        spec = load_spec(Path(spec), overrides=list(overrides), scale=scale)
    elif isinstance(spec, dict):
        spec = load_spec(base=hooks_by_name(spec), overrides=list(overrides), scale=scale)
    elif overrides:
        spec = load_spec(base=spec.to_toml_dict(), overrides=list(overrides))
    reporter = reporter or NullReporter()
    if trackers:
        from batchlab.trackers import TrackingReporter

        reporter = TrackingReporter(trackers, store=store, inner=reporter)
    check_executor(spec)
    reading = cpuload.begin_reading()  # the load is read over the data's loading, not after
    prepared = prepare(spec, data_dir=data_dir)
    # Threads: the spec's count, or under "auto" torch's default lowered to the free cores of
    # a busy machine (batchlab.cpuload); read once the spec is valid, recorded with every trial.
    load = cpuload.read_load(reading)
    plan = plan_threads(spec.threads, default=torch.get_num_threads(), load=load)
    notes = [plan.warning] if plan.warning is not None else []
    notes += execution_notes(spec, prepared.device)
    notes += recipe_notes(spec)
    threads_before = torch.get_num_threads()
    if plan.threads != threads_before:
        torch.set_num_threads(plan.threads)
    try:
        prepared = replace(prepared, cores=plan.cores)
        trials = study_trials(spec, prepared.data.n_train)
        verdict = accumulation_check(prepared)
        code = code_fingerprints(spec)
        with Store(store) as s:
            _same_study_or_forced(s, spec, force=force, say=say, code=code)
            for note in notes:  # once nothing can refuse the study any more
                say(f"batchlab: {note}")
            s.put_study(spec.name, spec.to_toml_dict())
            if code or s.study_code(spec.name):  # built-ins only: nothing to write
                s.put_code(spec.name, code)
            if verdict is not None or s.study_check(spec.name) is not None:
                s.put_check(spec.name, verdict)  # a rerun without accumulation drops a stale one
            s.add_trials(
                spec.name,
                [
                    {
                        "trial_id": t.trial_id,
                        "batch_size": t.batch_size,
                        "lr_base": t.lr_base,
                        "lr": t.lr,
                        "seed": t.seed,
                        "params": t.params(),
                    }
                    for t in trials
                ],
            )
            if retry_failed:
                n = s.reset_failed([t.trial_id for t in trials])
                plural = "s" * (n != 1)
                say(f"retry-failed: running {n} failed trial{plural} of study {spec.name!r} again")
            todo = [t for t in trials if not s.trial_state(t.trial_id).is_finished]
            reporter.study_started(spec, len(trials), len(trials) - len(todo))
            prov = provenance(prepared.device)
            prov["task"] = task_provenance(prepared.data)
            prov["precision"] = precision_used(spec, prepared.device)
            prov["compile"] = compile_used(spec, prepared.device)
            if spec.adaptive is not None:  # successive halving over the grid: batchlab.adaptive
                run_adaptive(s, trials, prepared, reporter, prov, run_one=_run_one)
                todo = []
            # Claimed one by one (batchlab.executors); a branched design's branches once
            # every reference trial has finished, here or in another process.
            references = [t for t in todo if t.branch is None]
            run_trials(s, references, prepared, reporter, prov)
            branches = [t for t in todo if t.branch is not None]
            if branches:
                run_trials(s, branches, prepared, reporter, prov)
            reporter.study_finished()
    finally:  # the process's own thread count again, for the caller and the next study
        torch.set_num_threads(threads_before)
    return load_study(spec.name, store, trust_hooks=True)  # the caller's own spec


HOOK_FIELDS = ("model", "dataset", "task")
"""Spec fields that may name code; the Python API also takes them as functions."""


def hooks_by_name(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with each hook given as a Python function or class (a model factory, a dataset
    loader, a task: also a variant's model) replaced by its `package.module:function` name, so
    the spec can store and hash it (`plugins.callable_ref`: a lambda or closure is refused)."""

    def named(d: dict[str, Any]) -> dict[str, Any]:
        return {
            k: callable_ref(v, field=k) if k in HOOK_FIELDS and callable(v) else v
            for k, v in d.items()
        }

    out = named(data)
    variants = out.get("variants")
    if isinstance(variants, list | tuple):
        out["variants"] = [named(v) if isinstance(v, dict) else v for v in variants]
    return out


def accumulation_check_result(prepared: PreparedStudy) -> CheckResult | None:
    """`batchlab check` of a study with gradient accumulation (`accumulate` > 1 in a variant),
    part of its preflight; None without accumulation."""
    if all(v.accumulate == 1 for _, v in prepared.spec.resolved_variants()):
        return None
    from batchlab.check import check_prepared

    return check_prepared(prepared)


def accumulation_check(prepared: PreparedStudy) -> dict[str, Any] | None:
    """The check's verdict (its summary) for a study with accumulation, stored with the study
    and shown in its report's assumptions; None without accumulation."""
    result = accumulation_check_result(prepared)
    return None if result is None else result.summary()


def code_fingerprints(spec: StudySpec) -> dict[str, str]:
    """Hook -> sha256 of the module defining it, for every `package.module:function` the spec
    names (`plugins.code_fingerprint`); built-ins and hf: models have none (batchlab's own
    version is in each trial's provenance). Stored with the study, not in its trial ids, so a
    rerun can refuse results of code that changed without changing any id."""
    out = {}
    for ref in sorted(spec.hooks()):
        if ref.startswith("hf:"):  # a Hugging Face model type or folder, not the user's code
            continue
        digest = code_fingerprint(ref, field=_hook_field(spec, ref))
        if digest is not None:
            out[ref] = digest
    return out


def _hook_field(spec: StudySpec, ref: str) -> str:
    """The spec field that names hook `ref` (a variant's model when none of the base's)."""
    return next((f for f in ("model", "dataset", "task") if getattr(spec, f) == ref), "model")


def _same_study_or_forced(
    s: Store,
    spec: StudySpec,
    *,
    force: bool,
    say: Callable[[str], None],
    code: dict[str, str] | None = None,
) -> None:
    """Refuse, before anything is written, a spec that differs from the one stored under its
    name (a study is one spec), or whose user code (`code`: hook -> fingerprint) changed since
    it ran; with `force`, delete that study's trials instead."""
    stored = s.stored_spec(spec.name)
    if stored is None:
        return
    if force:
        busy = s.live_owners(spec.name)
        if busy:
            raise StoreError(
                f"--force: study {spec.name!r} in {s.path} is running in {busy[0]};"
                " stop it first, or rerun under another --name"
            )
        n = s.delete_study_trials(spec.name)
        say(f"force: deleted the {n} stored trials of study {spec.name!r}; running it afresh")
        return
    changes = spec_changes(stored, spec, source=f"store {s.path}: stored study {spec.name!r}")
    if changes:
        raise SpecError(
            f"study {spec.name!r} in {s.path} was run with another spec ({'; '.join(changes)});"
            " a study is one spec: rerun under a new name (--name NEW), replace its trials"
            " (--force), or use another store (--store NEW.db)"
        )
    stored_code = s.study_code(spec.name) or {}
    changed = [
        ref for ref, digest in (code or {}).items() if stored_code.get(ref, digest) != digest
    ]
    if changed:
        ref = changed[0]
        raise SpecError(
            f"{_hook_field(spec, ref)}: the code of {ref} changed since study {spec.name!r} in"
            f" {s.path} ran, so its stored results are of the old code: rerun under a new name"
            " (--name NEW), replace its trials (--force), or use another store (--store NEW.db)"
        )


def interpolate_trials(
    study: Study,
    ref_a: str | None,
    ref_b: str | None,
    *,
    points: int = 31,
    data_dir: Path | None = None,
    max_examples: int = 10_000,
) -> pd.DataFrame:
    """Train and test loss/accuracy along the line from trial B (alpha 0) to trial A (alpha 1).

    Defaults: A = the largest batch size, B = the smallest, of the first (seed, lr, variant) with
    two finished batch sizes, so that they share their initialization (Keskar et al.'s picture).
    Uses up to `max_examples` of each split.
    """
    from batchlab.probes import interpolate

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(done) < 2:
        raise StoreError(f"study {study.name!r}: need two COMPLETE trials to interpolate")
    groups: dict[tuple[int, float, str], list[FrozenTrial]] = {}
    for t in sorted(done, key=lambda t: (t.seed, t.lr_base, t.number)):
        groups.setdefault((t.seed, t.lr_base, str(t.params.get("variant", ""))), []).append(t)
    pair = next((g for g in groups.values() if len({t.batch_size for t in g}) > 1), done)
    a = study.find_trial(ref_a) if ref_a else max(pair, key=lambda t: t.batch_size)
    b = study.find_trial(ref_b) if ref_b else min(pair, key=lambda t: t.batch_size)
    if a.trial_id == b.trial_id:
        raise SpecError(
            f"interpolate: trial {a.trial_id} would be both ends of the line (study"
            f" {study.name!r} has no two finished batch sizes of one seed and lr); pass --a"
            " and --b with two different trials"
        )
    if points < 2:
        raise SpecError("--points: need at least 2 points")
    spec = dict(study.spec.resolved_variants()).get(str(a.params.get("variant", "")), study.spec)
    with only_hooks(study.allowed_hooks):  # a store is data: it names no code to import
        data = load_study_data(spec, data_dir=data_dir)
        model = build_model_for(spec, data, seed=0)
    alphas = [-1.0 + 3.0 * i / (points - 1) for i in range(points)]
    wa, wb = study.weights(a.trial_id), study.weights(b.trial_id)
    train = interpolate(
        model,
        wa,
        wb,
        *tensor_rows(data.train, max_examples),
        alphas=alphas,
        task=data.task,
    )
    test = interpolate(
        model,
        wa,
        wb,
        *tensor_rows(data.test, max_examples),
        alphas=alphas,
        task=data.task,
    )
    df = pd.DataFrame(
        {
            "alpha": alphas,
            "train_loss": [r[1] for r in train],
            "train_acc": [r[2] for r in train],
            "test_loss": [r[1] for r in test],
            "test_acc": [r[2] for r in test],
        }
    )
    df.attrs["a"] = f"{a.trial_id} (B={a.batch_size})"
    df.attrs["b"] = f"{b.trial_id} (B={b.batch_size})"
    return df
