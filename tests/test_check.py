"""`batchlab check`: a batch against its micro-batches and data-parallel shards, on tiny models
whose equivalence (or its failure, and why) is known."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab import presets
from batchlab.analysis.recommend import assumptions, check_assumption
from batchlab.check import TOLERANCE_EPS, CheckResult, check, relative, tolerance
from batchlab.cli import main
from batchlab.dryrun import planned_samples
from batchlab.plan import TrialPlan
from batchlab.spec import load_spec
from batchlab.study import run_study
from tests.conftest import TASK_SPECS, tiny_spec

LM = {
    "dataset": "tests.check_workloads:padded_tokens",
    "dataset_args": {"n_train": 96, "n_test": 16},
    "model": "tests.workloads:bigram",
    "model_args": {"width": 8},
    "lrs": [0.5],
    "val_fraction": 0.0,
}


def run_check(**overrides: Any) -> CheckResult:
    return check(tiny_spec(**{"batch_sizes": [8, 32], **overrides}), steps=1)


def names(result: CheckResult) -> set[str]:
    return {f.name for f in result.findings}


@pytest.mark.parametrize("task", sorted(TASK_SPECS))
def test_a_model_without_batch_statistics_is_equivalent_to_float_tolerance(task: str) -> None:
    result = check({**TASK_SPECS[task], "batch_sizes": [8, 32]}, steps=1)
    assert result.ok and result.exit_code == 0
    assert result.tolerance == pytest.approx(TOLERANCE_EPS * torch.finfo(torch.float32).eps)
    acc = [c for c in result.comparisons if c.kind == "accumulate"]
    # every batch size x k = 2, 4, at the initial weights and after a step
    assert {(c.batch_size, c.factor, c.at) for c in acc} == {
        (b, k, at) for b in (8, 32) for k in (2, 4) for at in ("initial weights", "after 1 steps")
    }
    assert all(c.relative <= result.tolerance for c in result.comparisons)
    assert all(v <= 1e-4 for c in acc for v in c.per_tensor.values())
    assert {v.verdict for v in result.verdicts} <= {"equivalent", "equivalent to tolerance"}
    assert not [f for f in result.findings if f.breaks]


def test_batchnorm_is_flagged_with_its_modules_and_ghost_bn_with_whole_chunks_is_not() -> None:
    bn = run_check(model="tests.check_workloads:bn_mlp", model_args={})
    assert not bn.ok and bn.exit_code == 1
    (found,) = [f for f in bn.findings if f.name == "batch-statistics"]
    assert found.modules == ("2",) and "ghost batches of B/k" in found.message
    assert all(v.verdict == "not equivalent" and "batch-statistics" in v.why for v in bn.verdicts)
    assert min(c.relative for c in bn.comparisons) > 1e-3  # far beyond rounding
    # Ghost BatchNorm over chunks of 4: micro-batches of 16, 8, 4 rows are whole chunks.
    ghost = run_check(
        dataset_args={"n_train": 256, "n_test": 64, "dim": 16, "classes": 3},
        model="cnn",
        model_args={"channels": [4], "hidden": 8, "batchnorm": True, "ghost_batch": 4},
        batch_sizes=[16, 32],
    )
    assert ghost.ok, ghost.lines()
    assert "ghost-batch" in names(ghost) and "batch-statistics" not in names(ghost)


def test_the_per_micro_batch_token_mean_is_flagged_and_token_weighting_passes() -> None:
    engine = run_check(**LM)
    assert engine.ok, engine.lines()
    acc = [c for c in engine.comparisons if c.kind == "accumulate"]
    assert any(len(set(c.units)) > 1 for c in acc)  # unequal token counts per micro-batch
    # DDP's equal average over shards of unequal tokens is not the token-weighted batch.
    assert "data-parallel-weighting" in names(engine)
    assert any(v.data_parallel == "not equivalent" for v in engine.verdicts)

    bug = run_check(**LM, task="tests.check_workloads:token_mean_per_sequence")
    assert not bug.ok
    (found,) = [f for f in bug.findings if f.breaks]
    assert found.name == "loss-unit" and "tokens" in found.message
    assert min(v.worst for v in bug.verdicts) > 1e-3


def test_a_summed_loss_is_flagged() -> None:
    result = run_check(
        dataset_args={"kind": "regression", "n_train": 256, "n_test": 64, "dim": 8},
        task="tests.check_workloads:summed_mse",
        lrs=[1e-4],
    )
    assert not result.ok
    assert "loss-sum" in names(result)
    # k micro-batches of a sum weighted by their share: 1/k of the batch's gradient
    for c in result.comparisons:
        if c.kind == "accumulate" and c.at == "initial weights":
            assert c.relative == pytest.approx(1 - 1 / c.factor, rel=1e-4)


def test_dropout_is_compared_with_fixed_masks_and_named() -> None:
    result = run_check(model="tests.check_workloads:dropout_mlp", model_args={})
    assert result.ok
    (found,) = [f for f in result.findings if f.name == "randomness"]
    assert found.modules == ("3",) and not found.breaks


def test_the_accumulation_factor_of_the_study_is_checked_and_results_serialise() -> None:
    result = check(tiny_spec(batch_sizes=[24], accumulate=3), steps=0)
    assert result.factors == (2, 3, 4)
    assert {c.factor for c in result.comparisons if c.kind == "accumulate"} == {2, 3, 4}
    d = result.to_dict()
    assert d["ok"] is True and d["verdicts"][0]["batch_size"] == 24
    assert result.summary()["not_equivalent"] == []
    assert result.lines()[-1].startswith("verdict: equivalent")


def test_relative_difference_against_a_direct_computation() -> None:
    a = [torch.tensor([3.0, 4.0]), torch.tensor([0.0])]
    ref = [torch.tensor([3.0, 0.0]), torch.tensor([0.0])]
    overall, per = relative(a, ref)
    assert overall == pytest.approx(4 / 3) and per == [pytest.approx(4 / 3), 0.0]
    assert tolerance(torch.float64) == pytest.approx(TOLERANCE_EPS * 2.0**-52)
    assert tolerance(torch.bfloat16) == 0.05  # capped


# ---- the command line, the dry run and the stored verdict ---------------------------------------


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err


def toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)  # strings, numbers and booleans read the same in TOML


def write_spec(path: Path, **overrides: Any) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in tiny_spec(**overrides).items()))
    return path


def test_check_command_exit_codes_json_and_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_spec(tmp_path / "good.toml", batch_sizes=[8, 32])
    code, out, _ = cli(["check", str(good), "--json", "--steps", "0"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True
    bn = write_spec(
        tmp_path / "bn.toml", batch_sizes=[8], model="tests.check_workloads:bn_mlp", model_args={}
    )
    code, out, _ = cli(["check", str(bn), "--steps", "0"], capsys)
    assert code == 1 and "batch statistics in 2 (BatchNorm1d)" in out
    assert out.splitlines()[-1] == "verdict: not equivalent at B = 8 (exit 1)"
    for argv, field in (
        (["check", str(good), "--set", "accumulate=3"], "accumulate"),
        (["check", str(good), "--shards", "0"], "--shards"),
        (["check"], "STUDY.toml"),
    ):
        code, _, err = cli(argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and field in err


def test_dry_run_prints_the_grid_runs_the_check_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_spec(tmp_path / "s.toml", accumulate=2, budget={"steps": 6})
    store = tmp_path / "r.db"
    code, out, _ = cli(["run", str(path), "--dry-run", "--store", str(store)], capsys)
    assert code == 0 and not store.exists()
    spec = load_spec(path)
    for t in spec.trials():
        row = next(line for line in out.splitlines() if t.trial_id in line)
        assert row.split()[1] == str(t.batch_size) and row.split()[4] == "6"
    # 6 steps at B = 64 of 192 training rows: 3 steps an epoch, so two epochs of 192
    assert planned_samples(TrialPlan(spec.trials()[1], 192)) == 384
    assert planned_samples(TrialPlan(spec.trials()[0], 192)) == 48
    assert "batchlab check: study tiny" in out and "verdict: equivalent" in out
    assert "total: 12 steps, 432 samples, estimated" in out


def test_presets_name_prints_its_full_toml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["presets", "accumulation"], capsys)
    assert code == 0 and tomllib.loads(out) == presets.get("accumulation").data
    assert out.startswith("# accumulation")  # as written, comments included
    code, _, err = cli(["presets", "nope"], capsys)
    assert code == 2 and "unknown preset 'nope'" in err


def test_a_study_with_accumulation_stores_the_verdict_in_its_assumptions(tmp_path: Path) -> None:
    study = run_study(tiny_spec(accumulate=2, budget={"epochs": 1}), store=tmp_path / "r.db")
    assert study.check is not None and study.check["ok"] is True
    assert study.check["factors"] == [2, 4]
    (line,) = [a for a in assumptions(study) if a.startswith("batchlab check")]
    assert "gives the gradient of the whole batch" in line
    plain = run_study(tiny_spec(name="plain", budget={"epochs": 1}), store=tmp_path / "r.db")
    assert plain.check is None and not check_assumption(plain.check)
    bad = {"ok": False, "factors": [2], "not_equivalent": [{"batch_size": 64}], "findings": ["x"]}
    assert "NOT equivalent to the whole batch at B = 64 (x)" in check_assumption(bad)[0]
