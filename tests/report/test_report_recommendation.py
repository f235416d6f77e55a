"""The report opens with the recommendation; summary.json carries its numbers."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from batchlab.report import build_comparison, build_report
from batchlab.report.recommendation import recommendation_view, study_recommendation
from batchlab.trial import FrozenTrial
from tests.report.report_factories import (
    FakeProbeStudy,
    FakeSpec,
    grid_study,
    probe_rows,
    record,
    trial,
)

S_MIN, E_MIN = 40.0, 2560.0  # B_crit = 64
SIZES = (8, 16, 32, 64, 128, 256)


def _summary(out: Path) -> dict[str, Any]:
    text = (out / "summary.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text, parse_constant=lambda c: pytest.fail(f"bad {c}"))
    return data


def hyperbola_trials(study: str = "crit") -> list[FrozenTrial]:
    """Accuracy 0.1 at step 0, exactly the default target 0.98 x best at step S_min + E_min / b,
    and the best, 0.9, at twice that: the steps to target lie on McCandlish's curve."""
    out: list[FrozenTrial] = []
    for b in SIZES:
        s = round(S_MIN + E_MIN / b)  # integral for these sizes
        for seed in (0, 1):
            evals = [
                record(idx=0, step=0, test_acc=0.1),
                record(idx=1, step=s, samples=s * b, test_acc=0.98 * 0.9, train_time_s=s / 100),
                record(idx=2, step=2 * s, samples=2 * s * b, test_acc=0.9, train_time_s=s / 50),
            ]
            out.append(trial(study=study, number=len(out), batch_size=b, seed=seed, evals=evals))
    return out


def test_summary_recommendation_matches_the_study(tmp_path: Path) -> None:
    study = grid_study("grid")  # acc 0.9 - 0.02 |log2(b/32)|, seed s adds 0.002 s
    build_report(study, tmp_path, png=False)
    summary = _summary(tmp_path)
    rec = summary["recommendation"]
    assert rec == summary["studies"][0]["recommendation"]
    assert rec["available"] is True
    assert rec["best"]["batch_size"] == 32
    assert rec["best"]["test_acc"] == pytest.approx(0.901)
    assert rec["best"]["test_acc_std"] == pytest.approx(statistics.stdev([0.9, 0.902]))
    assert rec["runner_up"]["batch_size"] in (16, 64)
    assert rec["lead"] == pytest.approx(0.02)
    assert rec["lead_exceeds_spread"] is True
    # train time falls with batch size in the factory; 8 and 16 are slower and worse than 32
    assert [c["batch_size"] for c in rec["pareto"]] == [256, 128, 64, 32]
    assert rec["assumptions"][0].startswith("Every trial got the same budget (epochs = 4)")
    assert rec["lines"][0].startswith("Best final test accuracy: B=32")


def test_page_opens_with_the_recommendation(tmp_path: Path) -> None:
    html = build_report(grid_study("grid"), tmp_path, png=False).read_text(encoding="utf-8")
    card = html.index('<section class="card recommendation"><h2>Recommendation</h2>')
    assert card < html.index('<table class="meta">') < html.index("What this study shows")
    assert "<dt>Best batch size and lr</dt>" in html and "<dt>Assumptions</dt>" in html
    assert "<td>32 (best)</td>" in html  # the Pareto table marks the best cell


def test_critical_batch_size_and_noise_scale_in_the_first_section(tmp_path: Path) -> None:
    trials = hyperbola_trials()
    rows = []
    for t in trials:  # B_simple grows over training: late half median = 300 + 10 b
        for step, value in ((10, 5.0), (60, 300.0 + 10 * t.batch_size), (100, 300.0)):
            rows += probe_rows(t, "noise_scale", {"total": value}, step)
    study = FakeProbeStudy(name="crit", spec=FakeSpec(), trials=trials, rows=rows)
    build_report(study, tmp_path, png=False)
    rec = _summary(tmp_path)["recommendation"]
    crit = rec["critical"]
    assert crit["s_min"] == pytest.approx(S_MIN, rel=1e-6)
    assert crit["e_min"] == pytest.approx(E_MIN, rel=1e-6)
    assert crit["b_crit"] == pytest.approx(E_MIN / S_MIN, rel=1e-6)
    assert rec["critical_reason"] == ""
    per = rec["noise_scale"]["per_batch_size"]
    assert per == {str(b): pytest.approx(statistics.median([300.0 + 10 * b, 300.0])) for b in SIZES}
    ratio = rec["noise_scale"]["overall"] / crit["b_crit"]
    assert rec["noise_to_critical"] == pytest.approx(ratio)
    assert any(line.strip().startswith(f"B_simple / B_crit = {ratio:.2g}") for line in rec["lines"])
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Critical batch size: B_crit = E_min / S_min = 64" in html


def test_no_recommendation_gives_the_reason_not_a_number(tmp_path: Path) -> None:
    study = grid_study("<b>one</b>", batch_sizes=(32,))
    html = build_report(study, tmp_path, png=False).read_text(encoding="utf-8")
    rec = _summary(tmp_path)["recommendation"]
    assert rec["available"] is False and "best" not in rec
    assert "has one batch size (32)" in rec["reason"] and "add batch sizes" in rec["reason"]
    assert "No recommendation: recommend: study &#x27;&lt;b&gt;one&lt;/b&gt;&#x27;" in html
    assert "<b>one</b>" not in html


def test_comparison_has_one_escaped_recommendation_per_study(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    a = grid_study(evil, seeds=(0,))
    b = grid_study("plain", seeds=(0,), acc=lambda bs, lr: 0.8)
    html = build_comparison([a, b], tmp_path, png=False).read_text(encoding="utf-8")
    assert evil not in html
    assert "<h2>Recommendation: &lt;script&gt;alert(1)&lt;/script&gt;</h2>" in html
    assert "<h2>Recommendation: plain</h2>" in html
    summary = _summary(tmp_path)
    assert "recommendation" not in summary  # per study only when several are compared
    recs = {s["name"]: s["recommendation"] for s in summary["studies"]}
    assert recs[evil]["best"]["batch_size"] == 32
    assert recs[evil]["lead_exceeds_spread"] is None  # one seed: cannot be told


def test_view_is_plain_strings_from_the_recommendation() -> None:
    sr = study_recommendation(grid_study("grid"), n_boot=0)
    assert sr.recommendation is not None
    view = recommendation_view(sr, heading="Recommendation")
    assert [title for title, _ in view.items] == [
        "Best batch size and lr",
        "Fastest to the target",
        "Critical batch size",
        "Time vs accuracy",
        "Assumptions",
    ]
    flat = [s for _, sentences in view.items for s in sentences]
    assert flat == [line.strip() for line in sr.recommendation.lines()]
    assert [r[0] for r in view.table_rows] == ["256", "128", "64", "32 (best)"]
    assert all(math.isfinite(float(r[4])) for r in view.table_rows)
