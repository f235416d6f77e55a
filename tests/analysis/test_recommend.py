from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
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
    assert rec.critical is None and "fit did not converge" in rec.critical_reason
    assert "epochs = 3" in rec.assumptions[0]
    assert "'linear'" in rec.assumptions[1] and "32" in rec.assumptions[1]
    text = "\n".join(rec.lines())
    assert "B=8" in text and "larger than the seed spread" in text
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
