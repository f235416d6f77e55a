from __future__ import annotations

import math

import pytest

from batchlab.report.findings import Finding, budget_text, comparison_findings, study_findings
from batchlab.trial import TrialState
from tests.report.report_factories import (
    FakeBudget,
    FakeSpec,
    FakeStudy,
    final_only,
    grid_study,
    rich_study,
    trial,
)


def by_kind(fs: list[Finding], kind: str) -> list[Finding]:
    return [f for f in fs if f.kind == kind]


def one(fs: list[Finding], kind: str) -> Finding:
    (f,) = by_kind(fs, kind)
    return f


def seeds_study(accs: dict[int, list[float]], **spec: object) -> FakeStudy:
    """Batch size -> final test accuracy per seed."""
    trials = [
        trial(number=10 * b + s, batch_size=b, seed=s, evals=final_only(test_acc=a, step=4096 // b))
        for b, per_seed in accs.items()
        for s, a in enumerate(per_seed)
    ]
    return FakeStudy(name="s", spec=FakeSpec(**spec), trials=trials)  # type: ignore[arg-type]


def test_best_and_neighbours_beyond_the_seed_spread() -> None:
    fs = study_findings(
        seeds_study({8: [0.80, 0.81], 16: [0.90, 0.91], 32: [0.895, 0.905], 64: [0.7, 0.7]})
    )
    best = one(fs, "best")
    assert best.data["batch_size"] == 16
    assert best.data["test_acc_mean"] == pytest.approx(0.905)
    assert "90.50 %" in best.text and "2 seeds" in best.text
    left, right = by_kind(fs, "neighbour")
    assert left.data["batch_size"] == 8 and left.data["separated"] is True
    assert left.data["difference"] == pytest.approx(0.1)
    # 16 vs 32: same mean, overlapping spread: a tie
    assert right.data["batch_size"] == 32 and right.data["separated"] is False
    assert "tied" in right.text
    assert not by_kind(fs, "edge_batch_size")


def test_single_seed_cannot_be_told_from_noise() -> None:
    fs = study_findings(seeds_study({8: [0.8], 16: [0.9], 32: [0.85]}))
    for f in by_kind(fs, "neighbour"):
        assert f.data["separated"] is None and "single seed" in f.text


@pytest.mark.parametrize(("accs", "side"), [((0.9, 0.8, 0.7), "low"), ((0.7, 0.8, 0.9), "high")])
def test_best_on_the_edge_says_to_widen_the_range(accs: tuple[float, ...], side: str) -> None:
    fs = study_findings(seeds_study(dict(zip((8, 16, 32), ([a] for a in accs), strict=True))))
    edge = one(fs, "edge_batch_size")
    assert edge.data["side"] == side and edge.level == "warning"
    assert edge.data["tied_with"] == [] and "plateau" not in edge.text
    assert ("e.g. 4" if side == "low" else "e.g. 64") in edge.text


def test_an_edge_best_tied_with_its_neighbour_may_be_a_plateau() -> None:
    fs = study_findings(seeds_study({8: [0.9, 0.92], 16: [0.9, 0.915], 32: [0.7, 0.7]}))
    edge = one(fs, "edge_batch_size")
    assert edge.data["tied_with"] == [16] and "plateau" in edge.text


def test_best_lr_on_the_edge() -> None:
    fs = study_findings(rich_study())
    assert one(fs, "edge_lr").data == {"lr_base": 0.1, "side": "low"}
    per_lr = by_kind(fs, "best_per_lr")
    assert [(f.data["lr_base"], f.data["batch_size"]) for f in per_lr] == [(0.1, 32), (1.0, 32)]


def test_fastest_compares_time_and_accuracy_with_the_best() -> None:
    fast = one(study_findings(rich_study()), "fastest")
    assert fast.data["batch_size"] == 256 and fast.data["lr_base"] == 0.1  # ties go to accuracy
    assert "6.00 pp below the best" in fast.text


def test_fastest_under_a_wall_clock_budget_is_by_throughput() -> None:
    s = grid_study(spec=FakeSpec(budget=FakeBudget(kind="seconds", value=10.0)), seeds=(0,))
    fast = one(study_findings(s), "fastest")
    assert fast.data["batch_size"] == 256 and "samples/s" in fast.text


def test_epoch_budget_reminds_that_large_batches_took_fewer_updates() -> None:
    s = grid_study(batch_sizes=(8, 256), seeds=(0,))
    budget = one(study_findings(s), "budget")
    assert budget.data["kind"] == "epochs"
    assert budget.data["steps_by_batch_size"] == {"8": 512.0, "256": 16.0}
    assert "fewer parameter updates" in budget.text and "b=8: 512" in budget.text


def test_budget_is_written_with_its_unit_in_the_singular_for_one() -> None:
    assert budget_text("epochs", 1.0) == "1 epoch"
    assert budget_text("epochs", 4.0) == "4 epochs"
    assert budget_text("samples", 60_000.0) == "60,000 samples"
    assert budget_text("steps", 1.0) == "1 step"
    assert budget_text("seconds", 30.0) == "30 s"
    s = grid_study(batch_sizes=(8, 16), seeds=(0,), spec=FakeSpec(budget=FakeBudget("epochs", 1)))
    assert one(study_findings(s), "budget").text.startswith("Budget held equal: 1 epoch per trial")


def test_steps_budget_reports_epochs_seen() -> None:
    s = grid_study(batch_sizes=(8, 256), seeds=(0,), spec=FakeSpec(budget=FakeBudget("steps", 64)))
    budget = one(study_findings(s), "budget")
    assert "more data" in budget.text and budget.data["epochs_by_batch_size"]["8"] == 4.0


def test_lr_scaling_is_spelled_out() -> None:
    s = grid_study(seeds=(0,), spec=FakeSpec(lr_scaling="sqrt", reference_batch_size=64))
    f = one(study_findings(s), "lr_scaling")
    assert "√(b / 64)" in f.text and f.data == {"rule": "sqrt", "reference_batch_size": 64}


def test_diverged_failed_and_unfinished_trials_are_listed() -> None:
    fs = study_findings(rich_study())
    div = one(fs, "diverged")
    assert len(div.data["trials"]) == 4 and div.level == "warning"
    assert "b=8 lr_base=1 (2 of 2 seeds at step 7, 7)" in div.text
    s = FakeStudy(
        name="s",
        spec=FakeSpec(),
        trials=[
            trial(number=0, evals=final_only(test_acc=0.5)),
            trial(
                number=1, state=TrialState.FAILED, error="Traceback...\nRuntimeError: out of memory"
            ),
            trial(number=2, state=TrialState.RUNNING),
        ],
    )
    fs2 = study_findings(s)
    assert "RuntimeError: out of memory" in one(fs2, "failed").text
    assert one(fs2, "unfinished").data == {"unfinished": 1, "pruned": 0}


def test_empty_and_nothing_completed_say_so() -> None:
    (empty,) = study_findings(FakeStudy(name="e", spec=FakeSpec(), trials=[]))
    assert empty.kind == "empty" and "no trials" in empty.text
    s = FakeStudy(
        name="d",
        spec=FakeSpec(),
        trials=[trial(number=i, seed=i, state=TrialState.DIVERGED) for i in range(3)],
    )
    fs = study_findings(s)
    assert fs[0].kind == "no_complete" and fs[0].data["states"] == {"DIVERGED": 3}
    assert "None of the 3 trials completed" in fs[0].text
    assert by_kind(fs, "diverged")


def test_comparison_names_the_better_study() -> None:
    a = grid_study("with-scaling", acc=lambda b, lr: 0.95 if b == 128 else 0.8)
    b = grid_study("no-scaling")
    (f,) = comparison_findings([a, b])
    assert f.data["best"]["study"] == "with-scaling" and f.data["best"]["batch_size"] == 128
    assert f.data["difference"] == pytest.approx(0.05)
    assert "more than the seed spread" in f.text
    assert comparison_findings([a]) == []
    assert math.isfinite(f.data["spread"])
