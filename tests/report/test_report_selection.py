"""Every "best" in the report is chosen on validation, and its test score is the one shown.

The studies here disagree on purpose: on validation the best cell is (b=16, lr_base=0.1), on
test it is (b=64, lr_base=0.3). A study without a validation split chooses on test and says so
in every output: findings, the recommendation, summary.json, the page and the figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from batchlab.report import build_report
from batchlab.report.figures._runs import best_runs, sweep_runs
from batchlab.report.figures.accuracy import extract_accuracy
from batchlab.report.figures.curves import extract_curves
from batchlab.report.figures.designs_stability import extract_stability
from batchlab.report.findings import Finding, comparison_findings, study_findings
from batchlab.report.recommendation import recommendation_view, study_recommendation
from tests.report.report_factories import FakeStudy, grid_study

SIZES = (8, 16, 32, 64)
NOTE = (
    "Cells are chosen on test accuracy: no validation split was kept (val_fraction = 0), so the"
    " chosen cells' test numbers are optimistic."
)


def score_test(b: int, lr: float) -> float:
    """Best on test at b=64, lr_base=0.3."""
    return 0.9 - 0.02 * abs(math.log2(b / 64)) - (0.0 if lr == 0.3 else 0.01)


def score_val(b: int, lr: float) -> float:
    """Best on validation at b=16, lr_base=0.1."""
    return 0.9 - 0.02 * abs(math.log2(b / 16)) - (0.0 if lr == 0.1 else 0.01)


def disagreeing(name: str = "dis", *, val_split: bool = True) -> FakeStudy:
    """Two seeds per cell; seed s adds 0.002 s, so a cell's mean is its score + 0.001."""
    return grid_study(
        name,
        batch_sizes=SIZES,
        lr_bases=(0.1, 0.3),
        acc=score_test,
        val=score_val if val_split else (lambda b, lr: math.nan),
    )


def one(fs: list[Finding], kind: str) -> Finding:
    (f,) = [f for f in fs if f.kind == kind]
    return f


def _summary(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return data


def test_findings_choose_on_validation_and_report_the_chosen_cells_test_score() -> None:
    fs = study_findings(disagreeing())
    best = one(fs, "best")
    assert (best.data["batch_size"], best.data["lr_base"]) == (16, 0.1)
    assert best.data["test_acc_mean"] == pytest.approx(score_test(16, 0.1) + 0.001)
    assert best.data["val_acc_mean"] == pytest.approx(score_val(16, 0.1) + 0.001)
    assert best.data["selected_on"] == "val"
    assert "test accuracy 85.10 %" in best.text
    sel = one(fs, "selection")
    assert sel.level == "info" and sel.data["split"] == "val"
    assert sel.text.startswith("Cells are chosen on the final validation accuracy (the best: 90.10")
    per_lr = [f for f in fs if f.kind == "best_per_lr"]
    assert [(f.data["lr_base"], f.data["batch_size"]) for f in per_lr] == [(0.1, 16), (0.3, 16)]
    neighbours = [f for f in fs if f.kind == "neighbour"]
    assert [f.data["batch_size"] for f in neighbours] == [8, 32]
    assert [f.data["difference"] for f in neighbours] == pytest.approx([0.02, 0.02])
    assert all(f.text.startswith("On validation accuracy, against") for f in neighbours)
    assert not [f for f in fs if f.kind == "edge_batch_size"]  # 16 is inside 8..64
    # the fastest batch size (64) is a tie in time between the lrs: broken on validation
    fast = one(fs, "fastest")
    assert (fast.data["batch_size"], fast.data["lr_base"]) == (64, 0.1)
    assert "reaching test 89.10 %, 4.00 pp above the best" in fast.text


def test_without_a_validation_split_findings_choose_on_test_and_warn() -> None:
    fs = study_findings(disagreeing(val_split=False))
    best = one(fs, "best")
    assert (best.data["batch_size"], best.data["lr_base"]) == (64, 0.3)
    assert best.data["selected_on"] == "test"
    sel = one(fs, "selection")
    assert sel.level == "warning" and sel.text == NOTE
    assert sel.data == {
        "split": "test",
        "metric": "test_acc",
        "on_test": True,
        "why": "no validation split",
    }
    assert all(f.text.startswith("On test accuracy") for f in fs if f.kind == "neighbour")


def test_comparison_ranks_studies_on_validation() -> None:
    # "flat" is better on test everywhere (0.95) but worse on validation (0.80)
    flat = grid_study(
        "flat",
        batch_sizes=SIZES,
        lr_bases=(0.1, 0.3),
        acc=lambda b, lr: 0.95,
        val=lambda b, lr: 0.8,
    )
    (f,) = comparison_findings([disagreeing(), flat])
    assert f.data["best"]["study"] == "dis" and f.data["best"]["batch_size"] == 16
    assert f.data["difference"] == pytest.approx(0.10)
    assert f.text.startswith("Best overall on validation accuracy: 'dis' at batch size 16")
    assert "test 85.10 %" in f.text
    (g,) = comparison_findings([disagreeing(val_split=False), flat])
    assert g.data["selection"]["on_test"] is True
    assert g.data["best"]["study"] == "flat"
    assert "The studies are compared on test accuracy: no validation split was kept" in g.text


def test_summary_and_page_recommend_the_validation_best(tmp_path: Path) -> None:
    build_report(disagreeing(), tmp_path, png=False)
    summary = _summary(tmp_path)
    rec = summary["recommendation"]
    assert (rec["best"]["batch_size"], rec["best"]["lr_base"]) == (16, 0.1)
    assert rec["best"]["test_acc"] == pytest.approx(score_test(16, 0.1) + 0.001)
    assert rec["best"]["val_acc"] == pytest.approx(score_val(16, 0.1) + 0.001)
    assert rec["selection"]["split"] == "val" and rec["selection"]["notes"] == []
    assert rec["lines"][1].startswith("  Chosen on validation accuracy (90.10% ± 0.14)")
    (s,) = summary["studies"]
    assert s["selection"] == {
        "split": "val",
        "metric": "val_acc",
        "on_test": False,
        "why": "",
        "note": "",
    }
    cell = next(c for c in s["cells"] if c["batch_size"] == 16 and c["lr_base"] == 0.1)
    assert cell["val_acc"]["mean"] == pytest.approx(score_val(16, 0.1) + 0.001)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Selection on test" not in html and "val_fraction = 0" not in html
    view = recommendation_view(study_recommendation(disagreeing(), n_boot=0), heading="R")
    assert view.table_headers[-2:] == ("val acc (mean ± std)", "test acc (mean ± std)")


def test_without_a_validation_split_every_output_says_so(tmp_path: Path) -> None:
    study = disagreeing(val_split=False)
    build_report(study, tmp_path, png=False)
    summary = _summary(tmp_path)
    rec = summary["recommendation"]
    assert (rec["best"]["batch_size"], rec["best"]["lr_base"]) == (64, 0.3)
    assert rec["selection"]["on_test"] is True and rec["selection"]["notes"] == [NOTE]
    assert rec["target"].startswith("test_acc")
    assert rec["lines"][0] == NOTE
    assert summary["studies"][0]["selection"]["note"] == NOTE
    assert any(
        f["kind"] == "selection" and f["text"] == NOTE for f in summary["studies"][0]["findings"]
    )
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<dt>Selection on test</dt>" in html and html.count("val_fraction = 0") >= 2
    view = recommendation_view(study_recommendation(study, n_boot=0), heading="R")
    assert view.items[0] == ("Selection on test", (NOTE,))
    assert "val acc (mean ± std)" not in view.table_headers


def test_figures_mark_the_validation_best() -> None:
    acc = extract_accuracy([disagreeing()])
    assert acc is not None
    marks = {m.key.lr_base: m for m in acc.panels[0].marks}
    assert {lr: m.batch_size for lr, m in marks.items()} == {0.1: 16, 0.3: 16}
    assert marks[0.1].value == pytest.approx(100 * (score_test(16, 0.1) + 0.001))  # its test
    assert marks[0.1].text == "best at batch size 16: 85.10 %"
    assert acc.panels[0].title == "Final test accuracy"
    curves = extract_curves([disagreeing()])
    assert curves is not None
    assert {c.lr_base for c in curves.curves} == {0.1}  # on test lr 0.3 wins at every size
    assert not any(c.chosen_on_test for c in curves.curves)
    runs = best_runs(sweep_runs([disagreeing()]))
    assert {ts[0].lr_base for ts in runs.values()} == {0.1}
    stab = extract_stability([disagreeing()])
    assert stab is not None and stab.grids[0].best_lr == (0.1,) * len(SIZES)
    assert stab.best_label == "best lr (val. acc.)"


def test_figures_without_a_validation_split_say_the_best_is_chosen_on_test() -> None:
    acc = extract_accuracy([disagreeing(val_split=False)])
    assert acc is not None
    panel = acc.panels[0]
    assert panel.title == "Final test accuracy (best chosen on test: no validation split)"
    assert {m.key.lr_base: m.batch_size for m in panel.marks} == {0.1: 64, 0.3: 64}
    assert all("(chosen on test: no validation split)" in m.text for m in panel.marks)
    curves = extract_curves([disagreeing(val_split=False)])
    assert curves is not None
    assert {c.lr_base for c in curves.curves} == {0.3} and all(
        c.chosen_on_test for c in curves.curves
    )
    stab = extract_stability([disagreeing(val_split=False)])
    assert stab is not None and stab.grids[0].best_lr == (0.3,) * len(SIZES)
    assert stab.best_label == "best lr (test acc., no val. split)"
