"""The branched design (batchlab.branched and engine.BranchRun): branch points, branch trials,
their data stream, starting from a stored checkpoint, resuming, and a whole study."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab import load_study, run_study
from batchlab.branched import (
    branch_points,
    interval,
    stream_indices,
    study_trials,
)
from batchlab.engine import Checkpoint, train_trial
from batchlab.errors import SpecError
from batchlab.probes import ProbeRecord
from batchlab.spec import StudySpec, TrialSpec, spec_from_dict
from batchlab.store import Store
from batchlab.study import load_study_data
from batchlab.trial import EvalRecord, TrialState
from tests.conftest import SpecFactory

TIMES = {"train_time_s", "eval_time_s", "samples_per_s", "peak_mem_bytes"}
CPU = torch.device("cpu")


def branched_spec(make_spec: SpecFactory, **branched: Any) -> dict[str, Any]:
    cfg = {"batch_sizes": [8, 16, 32, 64], "points": 3, "first": 0.25, **branched}
    return make_spec(
        name="br",
        batch_sizes=[8],
        lrs=[0.05],
        momentum=0.9,
        budget={"epochs": 4},
        seeds=[0, 1],
        branched=cfg,
    )


def metrics(records: list[EvalRecord]) -> list[dict[str, Any]]:
    """The measured numbers of evaluations (NaN as a string, so that equal lists compare equal)."""
    return [
        {k: "nan" if v != v else v for k, v in asdict(r).items() if k not in TIMES} for r in records
    ]


def train(
    trial: TrialSpec,
    spec: StudySpec,
    *,
    start: Checkpoint | None = None,
    resume: Checkpoint | None = None,
    stop_after: int | None = None,
) -> tuple[list[EvalRecord], list[Checkpoint | None], dict[int, Checkpoint]]:
    records: list[EvalRecord] = []
    ckpts: list[Checkpoint | None] = []
    snaps: dict[int, Checkpoint] = {}

    class Killed(Exception):
        pass

    def sink(rec: EvalRecord, ckpt: Checkpoint | None, _p: list[ProbeRecord]) -> None:
        records.append(rec)
        ckpts.append(ckpt)
        if stop_after is not None and len(records) >= stop_after:
            raise Killed

    def snap(step: int, ckpt: Checkpoint) -> None:
        snaps[step] = ckpt

    with contextlib.suppress(Killed):
        train_trial(
            trial,
            load_study_data(spec),
            device=CPU,
            on_eval=sink,
            start=start,
            resume=resume,
            on_snapshot=snap,
        )
    return records, ckpts, snaps


def test_branch_points_are_log_spaced_and_end_at_the_end(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(branched_spec(make_spec, points=4, first=0.125))
    ref = spec.trials()[0]
    # 192 training examples at batch 8: 24 steps an epoch, 96 in all; 1/8, 1/4, 1/2 and 1 of it
    assert branch_points(ref, 192) == [12, 24, 48, 96]
    assert branch_points(spec.trials()[0], 192) == sorted(set(branch_points(ref, 192)))


def test_the_branches_of_a_study(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(branched_spec(make_spec, batch_sizes=[16, 64], lr_factors=[0.5, 1]))
    trials = study_trials(spec, 192)
    refs = [t for t in trials if t.branch is None]
    branches = [t for t in trials if t.branch is not None]
    assert len(refs) == 2  # one per seed
    # 3 points x (8, 16, 64: the reference batch size added) x 2 lr factors x 2 seeds
    assert len(branches) == 3 * 3 * 2 * 2
    assert len({t.trial_id for t in trials}) == len(trials)
    # a reference trial's id does not depend on how it is branched... except through the spec
    assert {t.branch.reference for t in branches if t.branch} == {t.trial_id for t in refs}
    b = next(t for t in branches if t.batch_size == 64 and t.branch and t.branch.lr_factor == 1)
    assert b.lr == pytest.approx(0.05)  # no lr scaling in this spec: the base lr
    assert b.study.warmup_epochs == 0 and b.study.lr_decay is None and b.study.probes is None
    # the budget: reach (3) x the window, in whole evaluation intervals
    assert b.branch is not None and b.budget.samples is not None
    every = interval(64, b.branch.window, 8)
    assert b.budget.samples % every == 0 and b.budget.samples >= 3 * b.branch.window


def test_a_branch_takes_its_own_rule_lr_times_the_references_decay(
    make_spec: SpecFactory,
) -> None:
    """Inside the reference's warmup a branch gets its own batch size's rule lr (the ramp is the
    reference's); under lr_decay, times the decay factor at the point, shared by every branch."""
    from batchlab.lr import decay_factor

    raw = branched_spec(make_spec, batch_sizes=[8, 64])
    raw.update(batch_sizes=[32], lr_scaling="linear", reference_batch_size=8, warmup_epochs=2)
    trials = study_trials(spec_from_dict(raw), 192)
    first = {t.batch_size: t.lr for t in trials if t.branch and t.branch.point == 0}
    # point 0 (step 6) lies inside the 12-step warmup: each batch size's rule lr, 0.05 per 8
    assert first == pytest.approx({8: 0.05, 32: 0.2, 64: 0.4})

    raw.update(warmup_epochs=0, lr_decay={"kind": "cosine", "final": 0.1})
    trials = study_trials(spec_from_dict(raw), 192)
    ref = trials[0]
    for t in trials:
        if t.branch is not None and t.batch_size == 64:
            f = decay_factor("cosine", t.branch.step, 24, warmup=0, final=0.1, decay_steps=5)
            assert t.lr == pytest.approx(0.4 * f)
    assert ref.branch is None and ref.lr == pytest.approx(0.2)


def test_the_stream_is_a_sequence_of_permutations() -> None:
    whole = stream_indices(7, 10, 0, 35)
    for p in range(3):
        assert sorted(whole[10 * p : 10 * p + 10].tolist()) == list(range(10))
    # any slice is the same slice of the whole stream
    assert torch.equal(stream_indices(7, 10, 13, 9), whole[13:22])
    assert not torch.equal(stream_indices(8, 10, 0, 10), whole[:10])


def test_branching_from_the_stored_checkpoint_equals_training_the_prefix_itself(
    make_spec: SpecFactory,
) -> None:
    """A branch started from the reference's stored state at step s gives the numbers a run
    that trains those s steps itself and then continues as the branch gives, bit for bit."""
    spec = spec_from_dict(branched_spec(make_spec))
    trials = study_trials(spec, 192)
    ref = trials[0]
    _, _, snaps = train(ref, spec)
    branch = next(
        t for t in trials if t.branch and t.branch.point == 1 and t.batch_size == 32 and t.seed == 0
    )
    assert branch.branch is not None and set(snaps) == set(branch_points(ref, 192))
    stored = Checkpoint.from_bytes(snaps[branch.branch.step].to_bytes())  # through the store
    # the prefix trained by itself: the reference's spec with a budget of s steps
    prefix = TrialSpec(**{**dict(ref), "budget": {"steps": branch.branch.step}})
    records: list[Checkpoint] = []

    def keep(_r: EvalRecord, ckpt: Checkpoint | None, _p: list[ProbeRecord]) -> None:
        if ckpt is not None:
            records.append(ckpt)

    out = train_trial(prefix, load_study_data(spec), device=CPU, on_eval=lambda *a: None)
    assert out.weights is not None
    for k, v in out.weights.items():  # the same weights as the stored checkpoint
        assert torch.equal(v, stored.model_state[k])
    a, _, _ = train(branch, spec, start=stored)
    b, _, _ = train(branch, spec, start=snaps[branch.branch.step])
    assert metrics(a) == metrics(b)
    assert a[0].step == 0 and a[-1].samples == branch.budget.samples
    # the first evaluation is of the reference's weights at the point, not of the init
    ref_evals, _, _ = train(ref, spec)
    assert a[0].val_loss != ref_evals[0].val_loss


def test_a_killed_branch_resumes_bit_for_bit(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(branched_spec(make_spec))
    trials = study_trials(spec, 192)
    _, _, snaps = train(trials[0], spec)
    branch = next(t for t in trials if t.branch and t.branch.point == 0 and t.batch_size == 16)
    assert branch.branch is not None
    start = snaps[branch.branch.step]
    whole, _, _ = train(branch, spec, start=start)
    part, ckpts, _ = train(branch, spec, start=start, stop_after=4)
    last = next(c for c in reversed(ckpts) if c is not None)
    rest, _, _ = train(branch, spec, resume=last)
    kept = [r for r in part if r.idx <= last.eval_idx]
    assert metrics(kept + rest) == metrics(whole)


def test_a_branch_without_its_checkpoint_says_why(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(branched_spec(make_spec))
    branch = next(t for t in study_trials(spec, 192) if t.branch is not None)
    with pytest.raises(ValueError, match="kept no checkpoint at step"):
        train(branch, spec)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_sizes": [8, 16]}, "give one batch size and one lr"),
        ({"lrs": [0.1, 0.2]}, "give one batch size and one lr"),
        ({"budget": {"seconds": 3}}, "not seconds"),
        ({"val_fraction": 0.0}, "val_fraction > 0"),
        ({"lr_decay": {"kind": "cosine", "final": 0.0}}, "final = 0 leaves the branches"),
        (
            {"branched": {"points": 1}},
            "'branched.points': Input should be greater than or equal to 2",
        ),
        ({"variants": [{"label": "a", "momentum": 0.5}]}, "not with variants"),
    ],
)
def test_a_branched_spec_refuses_what_it_cannot_branch(
    make_spec: SpecFactory, overrides: dict[str, Any], message: str
) -> None:
    raw = {**branched_spec(make_spec), **overrides}
    with pytest.raises(SpecError, match=message):
        spec_from_dict(raw)


def test_a_branch_batch_size_above_the_training_set_is_refused(
    make_spec: SpecFactory, store_path: Path
) -> None:
    with pytest.raises(SpecError, match="branched.batch_sizes: 512 exceeds"):
        run_study(branched_spec(make_spec, batch_sizes=[512]), store=store_path)
    assert not store_path.exists()


def test_a_branched_study_runs_resumes_and_keeps_its_checkpoints(
    make_spec: SpecFactory, store_path: Path
) -> None:
    raw = branched_spec(make_spec, batch_sizes=[16, 32], points=2)
    study = run_study(raw, store=store_path)
    refs = [t for t in study.trials if not t.params.get("branch")]
    branches = [t for t in study.trials if t.params.get("branch")]
    assert len(refs) == 2 and len(branches) == 2 * 3 * 2
    assert all(t.state is TrialState.COMPLETE for t in study.trials)
    with Store.open_existing(store_path) as s:
        for ref in refs:  # kept after the reference finished: the branches started from them
            for step in (24, 96):
                assert s.snapshot(ref.trial_id, step) is not None
    again = run_study(raw, store=store_path)  # nothing to do: every trial finished
    assert [metrics(list(t.evals)) for t in again.trials] == [
        metrics(list(t.evals)) for t in study.trials
    ]
    first = branches[0]
    assert first.evals[0].step == 0 and math.isfinite(first.evals[0].val_loss)


def test_an_explicit_batch_schedule_sets_each_epochs_batch_and_the_rules_lr(
    make_spec: SpecFactory,
) -> None:
    from batchlab.plan import epoch_plan

    raw = make_spec(
        batch_sizes=[8],
        lrs=[0.1],
        reference_batch_size=8,
        lr_scaling="sqrt",
        budget={"epochs": 4},
        batch_schedule={"milestones": [1, 3], "batch_sizes": [32, 128]},
    )
    trial = spec_from_dict(raw).trials()[0]
    plans = [epoch_plan(trial, e, 192) for e in range(4)]
    assert [b for b, _ in plans] == [8, 32, 32, 128]
    assert [lr for _, lr in plans] == pytest.approx([0.1, 0.2, 0.2, 0.4])  # sqrt(B / 8) x 0.1


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"milestones": [1], "factor": 2, "batch_sizes": [16]}, "exactly one of factor"),
        ({"milestones": [1, 2], "batch_sizes": [16]}, "one batch size per milestone"),
    ],
)
def test_a_batch_schedule_takes_a_factor_or_sizes(
    make_spec: SpecFactory, schedule: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        spec_from_dict(make_spec(budget={"epochs": 4}, batch_schedule=schedule))
    with pytest.raises(SpecError, match="'lr_schedule': give a factor"):
        spec_from_dict(
            make_spec(budget={"epochs": 4}, lr_schedule={"milestones": [1], "batch_sizes": [4]})
        )


def test_schedule_prints_a_warmup_and_validates_it(
    make_spec: SpecFactory, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tomllib

    from batchlab.cli import main

    run_study(branched_spec(make_spec, batch_sizes=[16, 32, 64], points=2), store=store_path)
    capsys.readouterr()
    main(["schedule", "br", "--store", str(store_path), "--validate"])
    out = capsys.readouterr().out
    lines = out.split("br-validation")[0]
    parsed = tomllib.loads(lines[: lines.rindex("\n")])
    assert parsed["batch_sizes"] == [8]
    assert "constant 8" in out and "each seed's reference final val loss" in out
    with Store.open_existing(store_path) as s:
        assert "br-validation" in s.study_names()


def test_a_pool_of_workers_runs_the_branches_with_the_same_numbers(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    raw = {**branched_spec(make_spec, batch_sizes=[16, 32], points=2), "threads": 1}
    one = run_study(raw, store=tmp_path / "one.db")
    pool = run_study({**raw, "workers": 2}, store=tmp_path / "pool.db")
    assert [t.trial_id for t in pool.trials] == [t.trial_id for t in one.trials]
    assert all(t.state is TrialState.COMPLETE for t in pool.trials)
    assert [metrics(list(t.evals)) for t in pool.trials] == [
        metrics(list(t.evals)) for t in one.trials
    ]


# ---- known answers, by training ----------------------------------------------------------------


def test_without_gradient_noise_cbs20_is_the_perfect_scaling_limit(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    """Every example the same: every batch size computes the same gradient, so each takes the
    same steps to any target, E(B) = B S, and E(B) / E(b_min) = B / b_min reaches 1.2 at
    B = 1.2 b_min (B_noise = 0, so B_crit = 0: no fit)."""
    import numpy as np

    from batchlab.analysis.branched import branched_critical

    x = np.tile(np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32), (600, 1))
    y = np.ones(600, dtype=np.float32)
    path = tmp_path / "same.npz"
    np.savez(path, x_train=x[:512], y_train=y[:512], x_test=x[:88], y_test=y[:88])
    raw = make_spec(
        name="noiseless",
        dataset=f"npz:{path}",
        dataset_args={},
        model_args={"widths": [8]},
        batch_sizes=[8],
        lrs=[0.02],
        budget={"epochs": 2},
        seeds=[0],
        # at 8x the batch, reaching the target takes 8x the samples: reach must allow it
        branched={"batch_sizes": [16, 32, 64], "points": 2, "first": 0.25, "reach": 10},
    )
    study = run_study(raw, store=tmp_path / "s.db")
    result = branched_critical(study.trials)
    for p in result.points:
        steps = [b.steps for b in p.batches]
        assert all(b.reached for b in p.batches)
        assert max(steps) / min(steps) < 1.02  # the same steps at every batch size
        # 1.2 b_min = 9.6: E(B) / E(8) = B / 8 is a power of B, which the log-log
        # interpolation between 8 and 16 recovers exactly
        assert p.cbs20 == pytest.approx(1.2 * 8, rel=0.005)
        assert p.b_crit is None or p.b_crit < 8


def test_in_the_small_lr_limit_linear_scaling_is_perfect(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    """At a small lr, batch k B at lr k eta makes the progress of k steps at batch B and lr eta
    (to first order in eta): the samples to any target do not grow with the batch, so CBS_20
    and B_crit lie above every batch size measured."""
    from batchlab.analysis.branched import branched_critical

    raw = make_spec(
        name="small-lr",
        dataset_args={"kind": "regression", "n_train": 1024, "n_test": 256, "dim": 8},
        model_args={"widths": []},
        batch_sizes=[8],
        lrs=[0.002],
        reference_batch_size=8,
        lr_scaling="linear",
        budget={"epochs": 2},
        seeds=[0, 1],
        threads=1,
        branched={"batch_sizes": [16, 32, 64], "points": 2, "first": 0.25},
    )
    result = branched_critical(run_study(raw, store=tmp_path / "s.db").trials)
    for p in result.points:
        samples = [b.samples for b in p.batches]
        assert all(b.reached for b in p.batches)
        assert max(samples) / min(samples) < 1.05
        assert p.cbs20 is None and p.cbs20_above == 64
        assert p.b_crit is None and "perfect scaling" in p.note


def test_schedule_refuses_a_budget_a_batch_schedule_cannot_step_in(
    make_spec: SpecFactory, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchlab.cli import main

    raw = {**branched_spec(make_spec, batch_sizes=[16], points=2), "budget": {"steps": 48}}
    run_study(raw, store=store_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["schedule", "br", "--store", str(store_path)])
    assert exit_info.value.code == 2
    assert "steps budget" in capsys.readouterr().err


def test_a_samples_budget_of_whole_passes_gets_a_schedule_in_epochs(
    make_spec: SpecFactory, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A samples budget that is a whole number of passes (a language model's, say) is that many
    epochs: the schedule states the budget in epochs, and the validation trains the same
    samples. A samples budget ending inside an epoch is refused, naming the multiple."""
    import tomllib

    from batchlab.cli import main

    n_train = 192  # tiny_spec: 256 examples, a quarter held out
    raw = {**branched_spec(make_spec, batch_sizes=[16, 32], points=2)}
    run_study({**raw, "budget": {"samples": 4 * n_train}}, store=store_path)
    capsys.readouterr()
    main(["schedule", "br", "--store", str(store_path), "--validate"])
    out = capsys.readouterr().out
    lines = out.split("br-validation")[0]
    parsed = tomllib.loads(lines[: lines.rindex("\n")])
    assert parsed["budget"] == {"epochs": 4} and parsed["batch_sizes"] == [8]
    checked = load_study("br-validation", store_path)
    assert checked.spec.budget.epochs == 4
    assert {t.evals[-1].samples for t in checked.trials} == {4 * n_train}

    other = store_path.with_name("other.db")
    run_study({**raw, "budget": {"samples": 4 * n_train + 40}}, store=other)
    with pytest.raises(SystemExit) as exit_info:
        main(["schedule", "br", "--store", str(other)])
    assert exit_info.value.code == 2
    assert f"a multiple of its {n_train} training examples" in capsys.readouterr().err


def test_the_validation_study_takes_what_runs_from_the_store_not_where() -> None:
    from batchlab.analysis.branched import BatchWarmup, validation_spec

    stored = {
        "name": "br",
        "batch_sizes": [16],
        "budget": {"epochs": 4},
        "branched": {"points": 2},
        "executor": "ray",
        "ray_address": "ray://10.0.0.1:10001",
        "workers": 8,
        "device": "cuda",
    }
    warmup = BatchWarmup(start=16, milestones=(2,), batch_sizes=(64,), rule="")
    spec = validation_spec(stored, warmup, 128)
    assert not {"executor", "ray_address", "workers", "device", "branched"} & set(spec)
    assert [v["label"] for v in spec["variants"]] == ["warmup", "constant 16", "constant 128"]
    assert spec_from_dict(spec).name == "br-validation"
