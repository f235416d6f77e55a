"""Adaptive sweeps: pausing is exact, rungs land on evaluations, the rule does what it says, and
an adaptive study stops the right trials, matches the full grid elsewhere, and resumes cleanly."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from batchlab.adaptive import (
    Candidate,
    best_overall,
    best_per_batch,
    compute_used,
    decide,
    pause_points,
    pruned_configs,
    pruned_rung,
    run_adaptive,
    rung_plan,
)
from batchlab.cli import main
from batchlab.data import load_dataset
from batchlab.engine import Checkpoint, Outcome, Progress, train_trial
from batchlab.errors import SpecError
from batchlab.plan import planned_steps
from batchlab.probes import ProbeRecord
from batchlab.spec import Adaptive, StudySpec, TrialSpec, spec_from_dict
from batchlab.store import Store
from batchlab.study import NullReporter, Study, load_study, run_study
from batchlab.trial import EvalRecord, FrozenTrial, TrialState
from tests.conftest import tiny_spec

SpecFactory = Callable[..., dict[str, Any]]
TIMES = {"train_time_s", "eval_time_s", "samples_per_s", "peak_mem_bytes"}


def grid_spec(**overrides: Any) -> dict[str, Any]:
    """A 2 x 3 grid whose lrs differ enough that the worst are clearly behind after one epoch."""
    base = tiny_spec(
        name="grid",
        dataset_args={"n_train": 128, "n_test": 64, "dim": 8, "classes": 3},
        batch_sizes=[8, 32],
        lrs=[0.001, 0.03, 0.3],
        seeds=[0],
        budget={"epochs": 9},
    )
    return {**base, **overrides}


def metrics(records: list[EvalRecord]) -> list[dict[str, Any]]:
    """Everything but timings, with NaN made comparable (floats otherwise bit-identical)."""
    return [
        {
            k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(r).items()
            if k not in TIMES
        }
        for r in records
    ]


def train(
    trial: TrialSpec, *, resume: Checkpoint | None = None, stop_at_step: int | None = None
) -> tuple[list[EvalRecord], list[Checkpoint | None], Outcome]:
    spec = trial.study
    data = load_dataset(spec.dataset, args=spec.dataset_args, val_fraction=spec.val_fraction)
    records: list[EvalRecord] = []
    ckpts: list[Checkpoint | None] = []

    def sink(rec: EvalRecord, ckpt: Checkpoint | None, _probes: list[ProbeRecord]) -> None:
        records.append(rec)
        ckpts.append(ckpt)

    out = train_trial(
        trial,
        data,
        device=torch.device("cpu"),
        on_eval=sink,
        resume=resume,
        stop_at_step=stop_at_step,
    )
    return records, ckpts, out


# ---- the engine pauses at a rung and resumes exactly ---------------------------------------------


def test_pause_and_resume_equals_an_uninterrupted_run(make_spec: SpecFactory) -> None:
    spec = spec_from_dict(
        make_spec(batch_sizes=[16], momentum=0.9, budget={"epochs": 4}, warmup_epochs=1.5)
    )
    trial = spec.trials()[0]
    full, _, full_out = train(trial)
    # 192 examples / 16 = 12 steps an epoch: step 13 lies inside epoch 2, so it pauses at step 24.
    first, ckpts, paused = train(trial, stop_at_step=13)
    assert paused.state is TrialState.RUNNING and paused.weights is None
    assert [r.step for r in first] == [0, 12, 24]
    ckpt = ckpts[-1]
    assert ckpt is not None and ckpt.step == 24
    rest, _, end = train(trial, resume=Checkpoint.from_bytes(ckpt.to_bytes()))
    assert end.state is TrialState.COMPLETE
    assert metrics(first + rest) == metrics(full)
    assert full_out.weights is not None and end.weights is not None
    assert all(torch.equal(full_out.weights[k], end.weights[k]) for k in full_out.weights)
    # Resuming a trial that already stands at its stop returns at once, training nothing.
    again, _, held = train(trial, resume=ckpt, stop_at_step=24)
    assert held.state is TrialState.RUNNING and again == []


def test_stop_at_step_must_be_positive(make_spec: SpecFactory) -> None:
    trial = spec_from_dict(make_spec()).trials()[0]
    with pytest.raises(ValueError, match="stop_at_step"):
        train(trial, stop_at_step=0)


# ---- where rungs lie -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"budget": {"epochs": 5}, "eval_every": 2},
        {"budget": {"steps": 40}},
        {"budget": {"samples": 500}},
        {"budget": {"epochs": 4}, "batch_schedule": {"milestones": [2], "factor": 2}},
    ],
    ids=["epochs-every-2", "steps", "samples", "batch-schedule"],
)
def test_pause_points_are_the_engines_checkpointed_evaluations(
    make_spec: SpecFactory, overrides: dict[str, Any]
) -> None:
    spec = spec_from_dict(
        make_spec(dataset_args={"n_train": 96, "n_test": 32, "dim": 4, "classes": 3}, **overrides)
    )
    trial = spec.trials()[0]  # batch 8: 72 / 8 = 9 steps an epoch
    records, ckpts, _ = train(trial)
    inside = [r.step for r, c in zip(records[1:-1], ckpts[1:-1], strict=True) if c is not None]
    assert pause_points(trial, 72) == inside
    assert records[-1].step == planned_steps(trial, 72)


def test_rungs_move_to_evaluations_and_collapsed_rungs_are_dropped(
    make_spec: SpecFactory,
) -> None:
    n = 192  # batch 8: 24 steps an epoch; batch 64: 3
    nine = spec_from_dict(make_spec(budget={"epochs": 9})).trials()
    rungs = rung_plan(nine, n, Adaptive())
    assert [r.fraction for r in rungs] == pytest.approx([1 / 9, 1 / 3])
    assert [r.steps[nine[0].trial_id] for r in rungs] == [24, 72]  # epochs 1 and 3
    assert [r.steps[nine[1].trial_id] for r in rungs] == [3, 9]
    # Evaluating every 2nd epoch moves 1/9 (epoch 1) to epoch 2 and 1/3 (epoch 3) to epoch 4.
    every2 = spec_from_dict(make_spec(budget={"epochs": 9}, eval_every=2)).trials()
    assert [r.steps[every2[0].trial_id] for r in rung_plan(every2, n, Adaptive())] == [48, 96]
    # With 3 epochs both fractions land on epoch 1: one rung, not two decisions on one evidence.
    three = spec_from_dict(make_spec(budget={"epochs": 3})).trials()
    assert [r.steps[three[0].trial_id] for r in rung_plan(three, n, Adaptive())] == [24]
    # With one epoch there is no evaluation before the end: no rung at all.
    one = spec_from_dict(make_spec(budget={"epochs": 1})).trials()
    assert rung_plan(one, n, Adaptive()) == []


# ---- the rule ------------------------------------------------------------------------------------


def cands(scores: dict[tuple[int, float], list[float]], live: bool = True) -> list[Candidate]:
    return [
        Candidate(batch_size=b, lr_base=lr, values=tuple(v), live=live)
        for (b, lr), v in scores.items()
    ]


GRID = {  # 3 batch sizes x 3 lrs, one seed, all different
    (8, 0.01): [0.50],
    (8, 0.1): [0.90],
    (8, 1.0): [0.80],
    (32, 0.01): [0.40],
    (32, 0.1): [0.85],
    (32, 1.0): [0.70],
    (128, 0.01): [0.30],
    (128, 0.1): [0.60],
    (128, 1.0): [0.88],
}


def test_rule_keeps_the_top_fraction() -> None:
    cfg = Adaptive(keep_per_batch=False)
    d = decide(cands(GRID), cfg=cfg, n_val=10**12)  # a huge validation set: no sampling error
    top3 = sorted(GRID, key=lambda k: -GRID[k][0])[:3]
    assert d.n == 9 and d.n_keep == 3 and d.cutoff == pytest.approx(0.85)
    assert d.kept == frozenset(top3)
    assert set(d.stopped) == set(GRID) - set(top3)
    assert d.stopped[0] == (8, 1.0)  # best first


def test_rule_keeps_the_best_lr_at_every_batch_size() -> None:
    d = decide(cands(GRID), cfg=Adaptive(), n_val=10**12)
    assert (128, 1.0) in d.kept  # in the top 3 anyway
    best = {b: max((k for k in GRID if k[0] == b), key=lambda k: GRID[k][0]) for b in (8, 32, 128)}
    assert set(best.values()) <= d.kept
    assert d.kept == {(8, 0.1), (128, 1.0), (32, 0.1)}


def test_rule_spares_configurations_within_the_seed_spread() -> None:
    two_seeds = {
        (8, 0.1): [0.90, 0.92],
        (8, 1.0): [0.84, 0.88],  # mean 0.86: the cut-off with eta = 3 (n_keep = 2 of 4)
        (8, 0.3): [0.83, 0.87],  # mean 0.85: 0.01 behind, within the seed spread
        (8, 0.01): [0.50, 0.54],
    }
    cfg = Adaptive(keep_per_batch=False)
    d = decide(cands(two_seeds), cfg=cfg, n_val=10**12)
    reference = math.sqrt(statistics.fmean(statistics.variance(v) for v in two_seeds.values()))
    assert d.seed_std == pytest.approx(reference)
    assert d.margin == pytest.approx(reference)
    assert d.cutoff == pytest.approx(0.86)
    assert (8, 0.3) in d.kept and d.stopped == ((8, 0.01),)


def test_rule_margin_includes_the_sampling_error_of_the_validation_accuracy() -> None:
    scores = {(8, 0.1): [0.95], (8, 0.2): [0.90], (8, 0.3): [0.875], (8, 0.4): [0.86]}
    cfg = Adaptive(eta=2, keep_per_batch=False)
    d = decide(cands(scores), cfg=cfg, n_val=100)
    assert d.cutoff == pytest.approx(0.90)
    assert d.sampling_se == pytest.approx(math.sqrt(0.9 * 0.1 / 100))  # 0.03
    assert d.stopped == ((8, 0.4),)  # 0.04 behind; 0.875 is 0.025 behind: spared
    strict = decide(
        cands(scores), cfg=Adaptive(eta=2, keep_per_batch=False, min_margin=0.05), n_val=100
    )
    assert strict.margin == pytest.approx(0.05) and strict.stopped == ()


def test_rule_ranks_a_diverged_seed_last_and_never_stops_finished_trials() -> None:
    scores = {(8, 0.1): [0.9, 0.91], (8, 1.0): [0.95, math.nan], (8, 0.01): [0.5, 0.52]}
    d = decide(cands(scores), cfg=Adaptive(keep_per_batch=False), n_val=10**12)
    assert d.scores[(8, 1.0)] == -math.inf
    assert d.stopped == ((8, 0.01), (8, 1.0))
    done = decide(cands(scores, live=False), cfg=Adaptive(keep_per_batch=False), n_val=10**12)
    assert done.stopped == ()


def test_rule_on_a_loss_keeps_the_lowest() -> None:
    losses = {(8, 0.1): [0.3], (8, 1.0): [0.2], (8, 0.01): [1.2]}
    cfg = Adaptive(metric="val_loss", keep_per_batch=False)
    d = decide(cands(losses), cfg=cfg, n_val=100)
    assert d.kept == {(8, 1.0)} and d.sampling_se == 0.0
    assert d.stopped == ((8, 0.1), (8, 0.01))


# ---- the spec ------------------------------------------------------------------------------------


def test_adaptive_is_an_execution_setting(make_spec: SpecFactory) -> None:
    plain = spec_from_dict(make_spec())
    adaptive = spec_from_dict(make_spec(adaptive={"eta": 2, "keep_per_batch": False}))
    assert [t.trial_id for t in plain.trials()] == [t.trial_id for t in adaptive.trials()]
    assert spec_from_dict(make_spec(adaptive=True)).adaptive == Adaptive()
    assert spec_from_dict(make_spec(adaptive=False)).adaptive is None
    assert Adaptive(eta=2, min_fraction=0.125).fractions() == (0.125, 0.25, 0.5)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"budget": {"seconds": 5}}, "field 'adaptive': rungs are fractions of planned steps"),
        ({"val_fraction": 0.0}, "set val_fraction > 0"),
        ({"adaptive": {"etaa": 2}}, "unknown key 'adaptive.etaa'; did you mean 'eta'?"),
        ({"adaptive": {"eta": 1}}, "adaptive.eta"),
        ({"variants": [{"label": "a", "adaptive": True}]}, "cannot override ['adaptive']"),
    ],
)
def test_bad_adaptive_specs_say_what_to_fix(
    make_spec: SpecFactory, overrides: dict[str, Any], needle: str
) -> None:
    with pytest.raises(SpecError, match=None) as err:
        spec = spec_from_dict(make_spec(**{"adaptive": True, **overrides}))
        spec.resolved_variants()
    assert needle in str(err.value)


# ---- a whole adaptive study ----------------------------------------------------------------------


def by_id(study: Study) -> dict[str, FrozenTrial]:
    return {t.trial_id: t for t in study.trials}


@pytest.fixture(scope="module")
def full_and_adaptive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Study, Study]:
    root = tmp_path_factory.mktemp("adaptive")
    full = run_study(grid_spec(), store=root / "full.db")
    adaptive = run_study(grid_spec(adaptive=True), store=root / "adaptive.db")
    return full, adaptive


@pytest.mark.slow
def test_adaptive_study_stops_the_configurations_behind(
    full_and_adaptive: tuple[Study, Study],
) -> None:
    full, adaptive = full_and_adaptive
    assert set(by_id(full)) == set(by_id(adaptive))  # the same trial ids
    spec = adaptive.spec
    assert spec.adaptive is not None
    pruned = adaptive.trials_in(TrialState.PRUNED)
    assert pruned, "the 0.001 lr is far behind after one epoch and must be stopped"
    # Recompute every rung decision from the full grid's evaluations (identical trajectories):
    n_train = 96
    trials = spec.trials(n_train=n_train)
    rungs = rung_plan(trials, n_train, spec.adaptive)
    assert len(rungs) == 2
    reference = by_id(full)
    alive = {(t.batch_size, t.lr_base) for t in trials}
    for rung in rungs:
        values = {
            (t.batch_size, t.lr_base): next(
                e.val_acc for e in reference[t.trial_id].evals if e.step == rung.steps[t.trial_id]
            )
            for t in trials
            if (t.batch_size, t.lr_base) in alive
        }
        d = decide(cands({k: [v] for k, v in values.items()}), cfg=spec.adaptive, n_val=32)
        stopped_here = {(t.batch_size, t.lr_base) for t in pruned if pruned_rung(t) == rung.number}
        assert stopped_here == set(d.stopped)
        alive -= stopped_here
    # Every batch size keeps a configuration to the end (keep_per_batch).
    complete = adaptive.trials_in(TrialState.COMPLETE)
    assert {t.batch_size for t in complete} == set(spec.batch_sizes)


@pytest.mark.slow
def test_adaptive_study_matches_the_full_grid_where_it_trained(
    full_and_adaptive: tuple[Study, Study],
) -> None:
    full, adaptive = full_and_adaptive
    reference = by_id(full)
    for t in adaptive.trials:
        ref = metrics(list(reference[t.trial_id].evals))
        mine = metrics(list(t.evals))
        if t.state is TrialState.PRUNED:
            assert mine == ref[: len(mine)] and len(mine) < len(ref)
        else:
            assert t.state == reference[t.trial_id].state and mine == ref
    used, grid = compute_used(adaptive.trials), compute_used(full.trials)
    expected = sum(t.last.samples for t in adaptive.trials if t.last is not None)
    assert used.samples == expected < grid.samples == 6 * 9 * 96
    assert used.states["PRUNED"] == len(adaptive.trials_in(TrialState.PRUNED))


@pytest.mark.slow
def test_adaptive_study_reports_why_and_where(full_and_adaptive: tuple[Study, Study]) -> None:
    _, adaptive = full_and_adaptive
    df = adaptive.to_dataframe()
    pruned_rows = df[df.state == "PRUNED"]
    assert len(pruned_rows) and pruned_rows.reason.str.startswith("adaptive rung ").all()
    assert df[df.state == "COMPLETE"].reason.isna().all()
    rows = pruned_configs(adaptive.trials)
    assert {(r.batch_size, r.lr_base) for r in rows} == {
        (t.batch_size, t.lr_base) for t in adaptive.trials_in(TrialState.PRUNED)
    }
    for r in rows:
        assert r.rung in (1, 2) and r.epoch in (1.0, 3.0) and "cut-off" in r.reason
    best = best_per_batch(adaptive.trials)
    assert set(best) == {8, 32}
    top = best_overall(best)
    assert top is not None and top.val == max(b.val for b in best.values())


# ---- resuming a killed adaptive study ------------------------------------------------------------


class Killed(BaseException):
    """Like Ctrl-C: not an Exception, so no trial records it as FAILED."""


class KillingReporter(NullReporter):
    def __init__(self, *, at_progress: int | None = None, at_prune: int | None = None) -> None:
        self.progress_calls = 0
        self.prunes = 0
        self.at_progress, self.at_prune = at_progress, at_prune

    def trial_progress(self, progress: Progress) -> None:
        self.progress_calls += 1
        if self.progress_calls == self.at_progress:
            raise Killed

    def trial_finished(self, trial: TrialSpec, state: TrialState) -> None:
        if state is TrialState.PRUNED:
            self.prunes += 1
            if self.prunes == self.at_prune:
                raise Killed


@pytest.mark.slow
@pytest.mark.parametrize(
    "killer",
    [{"at_progress": 14}, {"at_prune": 1}],
    ids=["mid-trial", "mid-decision"],
)
def test_a_killed_adaptive_study_resumes_without_losing_or_repeating(
    full_and_adaptive: tuple[Study, Study],
    tmp_path: Path,
    killer: dict[str, int],
) -> None:
    _, reference = full_and_adaptive
    spec = grid_spec(adaptive=True)
    store = tmp_path / "killed.db"
    with pytest.raises(Killed):
        run_study(spec, store=store, reporter=KillingReporter(**killer))
    half = load_study("grid", store)
    assert any(not t.state.is_finished for t in half.trials)
    resumed = run_study(spec, store=store)
    want = by_id(reference)
    for t in resumed.trials:
        assert t.state == want[t.trial_id].state, t
        assert [e.idx for e in t.evals] == list(range(len(t.evals)))  # none lost or repeated
        assert metrics(list(t.evals)) == metrics(list(want[t.trial_id].evals))


GRID_TOML = """
name = "grid"
dataset = "synthetic"
dataset_args = { n_train = 128, n_test = 64, dim = 8, classes = 3 }
model_args = { widths = [16] }
lrs = [0.001, 0.03, 0.3]
batch_sizes = [8, 32]
seeds = [0]
budget = { epochs = 9 }
val_fraction = 0.25
device = "cpu"
"""


@pytest.mark.slow
def test_run_adaptive_from_the_command_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(GRID_TOML)
    main(["run", "s.toml", "--store", "r.db", "--adaptive", "--quiet"])
    out = capsys.readouterr().out
    assert "stopped by the adaptive rule" in out
    assert StudySpec.model_validate(load_study("grid", "r.db").spec.to_toml_dict()).adaptive
    main(["show", "grid", "--store", "r.db"])
    assert "successive halving" in capsys.readouterr().out


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[1] / "examples" / "adaptive").glob("*.toml")),
    ids=lambda p: p.name,
)
def test_measurement_specs_validate_and_take_the_flag(path: Path) -> None:
    from batchlab.spec import load_spec

    spec = load_spec(path, overrides=["adaptive=true"])
    assert spec.adaptive == Adaptive() and len(spec.trials()) >= 40
    assert load_spec(path).adaptive is None  # the full grid is the file as written


# ---- rungs rank on validation: the test set never decides ---------------------------------------

# lr -> (val_acc, test_acc) at every evaluation: validation and test disagree on the order
SPLIT_SCORES = {0.001: (0.9, 0.1), 0.03: (0.5, 0.5), 0.3: (0.1, 0.9)}


def split_record(step: int, lr_base: float, n_train: int, batch_size: int) -> EvalRecord:
    val, test = SPLIT_SCORES[lr_base]
    return EvalRecord(
        idx=step,
        epoch=step * batch_size / n_train,
        step=step,
        samples=step * batch_size,
        current_lr=lr_base,
        train_loss=1.0,
        train_acc=0.5,
        val_loss=1.0 - val,
        val_acc=val,
        test_loss=1.0 - test,
        test_acc=test,
        train_time_s=float(step),
        eval_time_s=0.0,
        samples_per_s=1.0,
        peak_mem_bytes=0,
    )


def test_rungs_rank_on_validation_not_test(tmp_path: Path) -> None:
    # A driver run with a fake trainer that records chosen numbers: lr 0.001 leads on validation
    # and trails on test, lr 0.3 the reverse. The rung must stop the validation laggards.
    spec = spec_from_dict(grid_spec(adaptive=True))
    assert spec.adaptive is not None and spec.adaptive.metric == "val_acc"  # the default
    n_train = 96
    trials = spec.trials(n_train=n_train)
    path = tmp_path / "r.db"

    def run_one(
        store: Store, t: TrialSpec, prepared: Any, reporter: Any, prov: Any, *, stop_at_step: Any
    ) -> TrialState:
        end = planned_steps(t, n_train)
        assert end is not None
        step = end if stop_at_step is None else stop_at_step
        store.add_eval(t.trial_id, split_record(step, t.lr_base, n_train, t.batch_size), None)
        if stop_at_step is None:
            store.finish_trial(t.trial_id, TrialState.COMPLETE)
            return TrialState.COMPLETE
        return TrialState.RUNNING

    # a huge validation set (a range: its length without the memory), so no sampling margin
    prepared = SimpleNamespace(spec=spec, data=SimpleNamespace(n_train=n_train, val=range(10**9)))
    with Store(path) as s:
        s.put_study(spec.name, spec.to_toml_dict())
        s.add_trials(
            spec.name,
            [
                {"trial_id": t.trial_id, "batch_size": t.batch_size, "lr_base": t.lr_base}
                | {"lr": t.lr, "seed": t.seed, "params": t.params()}
                for t in trials
            ],
        )
        run_adaptive(s, trials, prepared, NullReporter(), {}, run_one=run_one)  # type: ignore[arg-type]
    study = load_study(spec.name, path)
    pruned = {(t.batch_size, t.lr_base) for t in study.trials_in(TrialState.PRUNED)}
    complete = {(t.batch_size, t.lr_base) for t in study.trials_in(TrialState.COMPLETE)}
    assert complete == {(8, 0.001), (32, 0.001)}  # on test lr 0.3 would have been kept
    assert pruned == {(b, lr) for b in (8, 32) for lr in (0.03, 0.3)}
    assert all(pruned_rung(t) == 1 for t in study.trials_in(TrialState.PRUNED))
    # reading the study back also chooses on validation and reports the test score
    best = best_per_batch(study.trials)
    assert {b: (c.lr_base, c.val, c.test_acc) for b, c in best.items()} == {
        8: (0.001, 0.9, 0.1),
        32: (0.001, 0.9, 0.1),
    }


def test_a_rung_metric_on_test_is_refused() -> None:
    with pytest.raises(ValueError, match="val_acc"):
        Adaptive(metric="test_acc")  # type: ignore[arg-type]
