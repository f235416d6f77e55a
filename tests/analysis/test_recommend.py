from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from batchlab.analysis.critical import Target
from batchlab.analysis.recommend import (
    CellSummary,
    RecommendError,
    pareto_front,
    recommend,
)
from batchlab.cli import main
from batchlab.study import run_study
from batchlab.trial import EvalRecord, FrozenTrial, TrialState
from tests.conftest import SpecFactory


def ev(idx: int, step: int, acc: float, time_s: float) -> EvalRecord:
    return EvalRecord(
        idx=idx,
        epoch=float(idx),
        step=step,
        samples=step,
        current_lr=0.1,
        train_loss=math.nan,
        train_acc=math.nan,
        val_loss=1.0,
        val_acc=acc,
        test_loss=1.0,
        test_acc=acc,
        train_time_s=time_s,
        eval_time_s=0.0,
        samples_per_s=math.nan,
        peak_mem_bytes=0,
    )


def trial(
    b: int,
    lr: float,
    seed: int,
    final_acc: float,
    total_time: float,
    state: TrialState = TrialState.COMPLETE,
) -> FrozenTrial:
    """Accuracy rises linearly from 0 at step 0 to `final_acc` at step 100 (time likewise)."""
    evals = tuple(ev(i, 25 * i, final_acc * i / 4, total_time * i / 4) for i in range(5))
    return FrozenTrial(
        trial_id=f"{b}-{lr}-{seed}",
        study="fake",
        number=0,
        batch_size=b,
        lr_base=lr,
        lr=lr,
        seed=seed,
        state=state,
        evals=evals,
    )


@dataclass(frozen=True)
class Budget:
    kind: str = "epochs"
    value: float = 3.0


@dataclass(frozen=True)
class Spec:
    budget: Budget = field(default_factory=Budget)
    lr_scaling: str = "linear"
    reference_batch_size: int = 32


@dataclass(frozen=True)
class FakeStudy:
    trials: list[FrozenTrial]
    name: str = "fake"
    spec: Spec = field(default_factory=Spec)


def cell(b: int, time_s: float, acc: float) -> CellSummary:
    return CellSummary(
        variant="",
        batch_size=b,
        lr_base=0.1,
        lr=0.1,
        seeds=1,
        test_acc=acc,
        test_acc_std=math.nan,
        train_time_s=time_s,
        time_to_target_s=math.nan,
        reached=0,
    )


def test_pareto_front_keeps_only_undominated_cells() -> None:
    cells = [cell(8, 10.0, 0.90), cell(16, 6.0, 0.91), cell(32, 3.0, 0.85), cell(64, 4.0, 0.80)]
    front = pareto_front(cells)
    assert [c.batch_size for c in front] == [32, 16]  # 8 is slower and worse than 16; 64 than 32


def test_recommendation_best_lead_fastest_and_assumptions() -> None:
    # B=8: 0.90 +- small spread, slow; B=64: 0.80, fast; B=64 at lr 0.4: a seed diverged.
    trials = [
        trial(8, 0.1, 0, 0.90, 20.0),
        trial(8, 0.1, 1, 0.92, 20.0),
        trial(64, 0.1, 0, 0.80, 4.0),
        trial(64, 0.1, 1, 0.82, 4.0),
        trial(64, 0.4, 0, 0.99, 4.0),
        trial(64, 0.4, 1, 0.99, 4.0, state=TrialState.DIVERGED),
    ]
    rec = recommend(FakeStudy(trials), Target(metric="val_acc", value=0.5, fraction=None))
    assert (rec.best.batch_size, rec.best.lr_base) == (8, 0.1)
    assert rec.best.test_acc == pytest.approx(0.91)
    assert rec.runner_up is not None and rec.runner_up.batch_size == 64
    assert rec.lead == pytest.approx(0.10)
    # the sum of the two cells' stdevs: (0.90, 0.92) and (0.80, 0.82), each sqrt(2) * 0.01
    assert rec.spread == pytest.approx(2 * math.sqrt(2) * 0.01)
    assert rec.lead_exceeds_spread is True
    assert rec.excluded == 1  # the lr with a diverged seed
    # time to 0.5 per seed: total * 0.5 / final accuracy; B=64 is the fastest
    assert rec.fastest is not None and rec.fastest.batch_size == 64
    assert rec.fastest.time_to_target_s == pytest.approx((2.0 / 0.80 + 2.0 / 0.82) / 2)
    assert [c.batch_size for c in rec.pareto] == [64, 8]
    assert rec.critical is None and rec.critical_reason.startswith("not enough batch sizes: 2")
    assert "epochs = 3" in rec.assumptions[0]
    assert "'linear'" in rec.assumptions[1] and "32" in rec.assumptions[1]
    text = "\n".join(rec.lines())
    assert "B=8" in text and "larger than the seed spread" in text
    assert "Critical batch size: not enough batch sizes" in text and "B_crit =" not in text
    assert rec.to_dict()["critical"] is None
    payload = json.loads(json.dumps(rec.to_dict()))
    assert payload["best"]["batch_size"] == 8


def test_a_tie_within_the_seed_spread_is_called_one() -> None:
    trials = [
        trial(8, 0.1, 0, 0.80, 2.0),
        trial(8, 0.1, 1, 0.90, 2.0),
        trial(16, 0.1, 0, 0.84, 1.0),
        trial(16, 0.1, 1, 0.84, 1.0),
    ]
    rec = recommend(FakeStudy(trials), n_boot=0)
    assert rec.best.batch_size == 8 and rec.lead == pytest.approx(0.01)
    assert rec.lead_exceeds_spread is False


def test_bad_input_is_a_one_line_error() -> None:
    with pytest.raises(RecommendError, match="no COMPLETE trial"):
        recommend(FakeStudy([trial(8, 0.1, 0, 0.9, 1.0, state=TrialState.FAILED)]))
    with pytest.raises(RecommendError, match="one batch size"):
        recommend(FakeStudy([trial(8, 0.1, 0, 0.9, 1.0), trial(8, 0.2, 0, 0.9, 1.0)]))


def test_recommend_command_on_a_tiny_study(
    make_spec: SpecFactory, store_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_study(make_spec(batch_sizes=[16, 64], budget={"epochs": 2}), store=store_path)
    main(["recommend", "tiny", "--store", str(store_path), "--target", "val_acc=0.9*best"])
    out = capsys.readouterr().out
    assert "Best final test accuracy" in out and "Pareto front" in out
    main(["recommend", "tiny", "--store", str(store_path), "--json"])
    payload: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert payload["best"]["batch_size"] in (16, 64)
    assert payload["critical"] is not None or payload["critical_reason"]
    with pytest.raises(SystemExit) as err:
        main(["recommend", "nope", "--store", str(store_path)])
    assert err.value.code == 2
    assert "no study named 'nope'" in capsys.readouterr().err


# ---- every choice on validation, test reported for the chosen cell -----------------------------


def split_trial(
    b: int, lr: float, seed: int, val: float, test: float, total_time: float
) -> FrozenTrial:
    """Validation and test scores rise linearly from 0 at step 0 to `val` and `test` at step 100
    (NaN `val`: no validation split)."""
    evals = tuple(
        replace(
            ev(i, 25 * i, test * i / 4, total_time * i / 4),
            val_acc=val * i / 4 if i else (math.nan if math.isnan(val) else 0.0),
        )
        for i in range(5)
    )
    return replace(trial(b, lr, seed, test, total_time), evals=evals)


def disagreeing(val_split: bool = True) -> FakeStudy:
    """B=8 is best on validation (0.90 vs 0.80), B=64 on test (0.95 vs 0.80); B=64 is faster."""
    nan = math.nan
    return FakeStudy(
        [
            split_trial(8, 0.1, 0, 0.89 if val_split else nan, 0.79, 20.0),
            split_trial(8, 0.1, 1, 0.91 if val_split else nan, 0.81, 20.0),
            split_trial(64, 0.1, 0, 0.80 if val_split else nan, 0.95, 4.0),
            split_trial(64, 0.1, 1, 0.80 if val_split else nan, 0.95, 4.0),
        ]
    )


def test_best_is_chosen_on_validation_and_its_test_score_is_reported() -> None:
    rec = recommend(disagreeing(), n_boot=0)
    assert rec.best.batch_size == 8  # the test-best is 64
    assert rec.best.val_acc == pytest.approx(0.90)
    assert rec.best.test_acc == pytest.approx(0.80)  # the chosen cell's test, not the best test
    assert rec.runner_up is not None and rec.runner_up.batch_size == 64
    assert rec.lead == pytest.approx(0.10)  # on validation: 0.90 - 0.80
    assert rec.spread == pytest.approx(statistics.stdev([0.89, 0.91]))  # 64's seeds agree
    # on validation B=64 is faster but worse, so both are on the front (on test 64 dominates 8)
    assert [c.batch_size for c in rec.pareto] == [64, 8]
    assert not rec.selection.on_test and rec.selection_notes() == []
    assert rec.target.startswith("val_acc")  # the default target is on validation
    text = rec.lines()
    assert text[0].startswith("Best final test accuracy: B=8")
    assert text[1] == (
        "  Chosen on validation accuracy (90.00% ± 1.41); the test accuracy is reported for"
        " this cell, not tuned on."
    )
    assert "Cells are chosen on the final validation accuracy" in rec.assumptions[2]
    payload = json.loads(json.dumps(rec.to_dict()))
    assert payload["best"]["batch_size"] == 8 and payload["best"]["test_acc"] == pytest.approx(0.8)
    assert payload["selection"] == {
        "split": "val",
        "metric": "val_acc",
        "on_test": False,
        "why": "",
        "target_split": "val",
        "target_on_test": False,
        "notes": [],
    }


def test_fastest_ties_are_broken_on_validation() -> None:
    # both cells meet the target at their first evaluation (time 0): the one better on
    # validation (worse on test) is the fastest
    trials = [
        split_trial(8, 0.1, 0, 0.90, 0.80, 4.0),
        split_trial(64, 0.1, 0, 0.80, 0.95, 4.0),
    ]
    rec = recommend(FakeStudy(trials), Target(metric="val_acc", value=0.0, fraction=None), n_boot=0)
    assert rec.fastest is not None and rec.fastest.time_to_target_s == 0.0
    assert rec.fastest.batch_size == 8


def test_a_target_on_test_is_reached_on_test_and_says_so() -> None:
    study = disagreeing()
    on_val = recommend(study, Target(metric="val_acc", value=0.85, fraction=None), n_boot=0)
    assert on_val.fastest is not None and on_val.fastest.batch_size == 8  # 64 never gets 0.85
    rec = recommend(study, Target(metric="test_acc", value=0.85, fraction=None), n_boot=0)
    assert rec.fastest is not None and rec.fastest.batch_size == 64  # 8 never gets 0.85 on test
    assert rec.best.batch_size == 8  # the best is still chosen on validation
    assert rec.target_selection.on_test and not rec.selection.on_test
    note = "The fastest cell and B_crit's lr per batch size are chosen on test: the target names"
    assert rec.selection_notes() == [f"{note} test_acc."]
    assert rec.parts()[0] == ("selection", [f"{note} test_acc."])
    sel = rec.to_dict()["selection"]
    assert (sel["split"], sel["target_split"], sel["target_on_test"]) == ("val", "test", True)


def test_without_a_validation_split_the_choice_is_on_test_and_says_so() -> None:
    rec = recommend(disagreeing(val_split=False), n_boot=0)
    assert rec.best.batch_size == 64 and rec.best.test_acc == pytest.approx(0.95)
    assert rec.target.startswith("test_acc")  # the default target falls back to test
    assert rec.selection.on_test and rec.selection.why == "no validation split"
    note = (
        "Cells are chosen on test accuracy: no validation split was kept (val_fraction = 0),"
        " so the chosen cells' test numbers are optimistic."
    )
    assert rec.selection_notes() == [note]  # one line, also covering the target
    lines = rec.lines()
    assert lines[0] == note
    assert (
        lines[2]
        == "  Chosen on test accuracy (no validation split), so this test number is optimistic."
    )
    assert "no validation split" in rec.assumptions[2]
    sel = rec.to_dict()["selection"]
    assert sel["on_test"] is True and sel["target_on_test"] is True and sel["notes"] == [note]
    assert [c.batch_size for c in rec.pareto] == [64]  # on test 64 is faster and better


def test_pareto_front_ranks_on_validation_when_the_cells_have_it() -> None:
    cells = [
        replace(cell(8, 10.0, 0.80), val_acc=0.95),
        replace(cell(16, 6.0, 0.91), val_acc=0.90),
    ]
    assert [c.batch_size for c in pareto_front(cells)] == [16, 8]
    assert [c.batch_size for c in pareto_front(cells, "test")] == [16]
