"""The report names and formats each task's metrics from its `TaskInfo`.

Regression scores (R²) are plain numbers that can be negative, never percentages; a language
model's loss also reads as perplexity; classification (a study without a task, as every study
stored before tasks reads) keeps its text exactly.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from batchlab.report import DEFAULT_FIGURES, ReportError, build_comparison, build_report
from batchlab.report.figures.accuracy import extract_accuracy
from batchlab.report.figures.curves import extract_curves
from batchlab.report.figures.designs_stability import extract_stability
from batchlab.report.figures.gap import extract_gap
from batchlab.report.figures.heatmap import extract_heatmap
from batchlab.report.figures.parallel import extract_parallel
from batchlab.report.findings import study_findings
from batchlab.report.recommendation import recommendation_view, study_recommendation
from batchlab.tasks.base import TaskInfo
from tests.report.report_factories import FakeStudy, grid_study

REGRESSION = TaskInfo(
    task="regression", loss_label="MSE", score_label="R²", score_is_fraction=False
)
LANGUAGE_MODEL = TaskInfo(
    task="language-model",
    loss_label="cross-entropy per token",
    score_label="token accuracy",
    unit="token",
    tokens_per_sample=12.0,
)
SIZES = (16, 32, 64)


@dataclass
class TaskStudy(FakeStudy):
    """A FakeStudy with a task, as `batchlab.study.Study` has."""

    task: TaskInfo = field(default_factory=TaskInfo)


def score(b: int, lr: float) -> float:
    """Final score before the seed offset (seed s adds 0.002 s): best 0.883 at b=32, lr 0.1."""
    return 0.883 - 0.02 * abs(math.log2(b / 32)) - (0.01 if lr == 0.2 else 0.0)


def task_study(task: TaskInfo, name: str = "reg") -> TaskStudy:
    g = grid_study(name, batch_sizes=SIZES, lr_bases=(0.1, 0.2), acc=score)
    return TaskStudy(name=g.name, spec=g.spec, trials=g.trials, task=task)


def finals(b: int, lr: float = 0.1) -> tuple[list[float], list[float]]:
    """Seed 0 and 1's final scores and test losses (report_factories.curve: loss = -log score)."""
    accs = [score(b, lr) + 0.002 * s for s in (0, 1)]
    return accs, [-math.log(a) for a in accs]


def visible_text(html: str) -> str:
    """What a reader sees: the page without scripts, styles, tags and attributes."""
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


# ---- TaskInfo: the one place labels and formats come from ---------------------------------------


def test_classification_formats_are_the_historic_ones() -> None:
    t = TaskInfo()
    assert t.format_score(0.88376) == "88.38%"
    assert t.format_score(0.88376, space=True) == "88.38 %"
    assert t.format_score(88.376, space=True, scaled=True) == "88.38 %"
    assert t.format_score_diff(0.0123, unit="pp") == "1.23 pp"
    assert t.format_score_mean_std(0.88376, 0.0123) == "88.38% ± 1.23"
    assert t.format_score_mean_std(0.88376, math.nan) == "88.38%"
    assert (t.score_axis("test"), t.score_axis("test", short=True)) == (
        "test accuracy (%)",
        "test acc (%)",
    )
    assert (t.loss_unit, t.loss_short_unit, t.loss_name) == (
        "cross-entropy, nats",
        "nats",
        "loss (cross-entropy)",
    )
    assert not t.shows_loss and not t.has_perplexity and t.loss_text(0.5) == ""


def test_regression_scores_are_plain_numbers_and_may_be_negative() -> None:
    t = REGRESSION
    assert t.format_score(0.88376) == "0.884"
    assert t.format_score(-0.25, space=True) == "-0.250"  # R² below 0: no % and no sign loss
    assert t.format_score_diff(0.0123, unit="pp") == "0.012"  # no percentage points
    assert t.format_score_mean_std(0.88376, 0.0123) == "0.884 ± 0.012"
    assert (t.score_axis("test"), t.score_axis("test", short=True)) == ("test R²", "test R²")
    assert (t.score_title, t.score_scale, t.score_unit) == ("R²", 1.0, "")
    assert (t.loss_unit, t.loss_short_unit, t.loss_name) == ("MSE", "MSE", "loss (MSE)")
    assert t.loss_text(0.19012) == "test loss (MSE) 0.1901"


def test_language_model_loss_reads_as_perplexity() -> None:
    t = LANGUAGE_MODEL
    assert t.has_perplexity and t.perplexity(math.log(10.0)) == pytest.approx(10.0)
    assert t.perplexity(1e6) == math.inf
    assert t.loss_unit == "cross-entropy per token, nats"
    assert t.score_short == "token acc" and t.score_title == "Token accuracy"
    assert t.loss_text(math.log(10.0)) == (
        "test loss (cross-entropy per token) 2.303, perplexity 10"
    )


def test_task_of_a_study_without_one_is_classification() -> None:
    assert TaskInfo.of(grid_study()) == TaskInfo()
    assert TaskInfo.of(task_study(REGRESSION)) == REGRESSION


# ---- figure titles and captions -----------------------------------------------------------------


def test_classification_figure_text_is_unchanged() -> None:
    by_name = {f.name: f.text_for(TaskInfo()) for f in DEFAULT_FIGURES}
    for f in DEFAULT_FIGURES:
        assert by_name[f.name] == (f.title, f.description)
    assert by_name["accuracy"][0] == "Test accuracy and error vs batch size"
    assert by_name["accuracy"][1].startswith(
        "Final test accuracy and test error (100 − accuracy) of the COMPLETE trials"
    )
    assert by_name["heatmap"] == (
        "Test accuracy over learning rate × batch size",
        "Mean final test accuracy (%) of the COMPLETE trials in each (lr_base, batch size) cell;"
        " red crosses mark cells where trials diverged, empty cells had no COMPLETE trial."
        " Shown only when the study tried more than one learning rate.",
    )


def test_regression_figure_text_names_r2_never_accuracy() -> None:
    texts = {f.name: f.text_for(REGRESSION) for f in DEFAULT_FIGURES}
    for name, (title, description) in texts.items():
        assert "accuracy" not in (title + description).lower(), name
    assert texts["accuracy"][0] == "Test R² and loss vs batch size"
    assert "test loss (MSE)" in texts["accuracy"][1]
    assert texts["heatmap"][0] == "Test R² over learning rate × batch size"
    assert texts["heatmap"][1].startswith("Mean final test R² of the COMPLETE trials")


# ---- figure data --------------------------------------------------------------------------------


def test_regression_figures_plot_r2_unscaled_and_the_mse() -> None:
    study = task_study(REGRESSION)
    accs, losses = finals(32)
    data = extract_accuracy([study])
    assert data is not None
    r2, loss = data.panels
    assert (r2.title, r2.y_label, r2.unit) == ("Final test R²", "test R²", "")
    line = next(s for s in r2.series if s.key.lr_base == 0.1)
    assert line.mean[line.batch_sizes.index(32)] == pytest.approx(statistics.fmean(accs))
    assert r2.marks[0].text == f"best at batch size 32: {statistics.fmean(accs):.3f}"
    assert (loss.y_label, loss.unit) == ("test loss", "MSE")
    line = next(s for s in loss.series if s.key.lr_base == 0.1)
    assert line.mean[line.batch_sizes.index(32)] == pytest.approx(statistics.fmean(losses))

    heat = extract_heatmap([study])
    assert heat is not None and heat.task == REGRESSION
    g = heat.grids[0]
    assert g.acc[g.lr_bases.index(0.1)][g.batch_sizes.index(32)] == pytest.approx(
        statistics.fmean(accs)
    )

    gap = extract_gap([study])
    assert gap is not None
    assert [(p.y_label, p.unit) for p in gap.panels] == [
        ("train − test R²", ""),
        ("test − train loss", "MSE"),
    ]
    assert gap.panels[0].title.startswith("R² gap")

    par = extract_parallel([study])
    assert par is not None
    labels = [a.label for a in par.axes]
    assert labels[-2:] == ["final train loss (MSE)", "final test R²"]
    assert max(par.axes[-1].values) == pytest.approx(max(score(b, 0.1) for b in SIZES) + 0.002)

    curves = extract_curves([study])
    assert curves is not None
    c32 = next(c for c in curves.curves if c.batch_size == 32)
    assert c32.heldout_acc[-1] == pytest.approx(statistics.fmean(accs))

    stab = extract_stability([study])
    assert stab is not None and stab.best_label == "best lr (val. R²)"


def test_classification_figures_stay_in_percent() -> None:
    data = extract_accuracy([grid_study()])
    assert data is not None
    acc, err = data.panels
    assert (acc.y_label, acc.unit, err.y_label, err.unit) == (
        "test accuracy",
        "%",
        "test error",
        "%",
    )
    b32 = acc.series[0].batch_sizes.index(32)
    assert acc.series[0].mean[b32] == pytest.approx(100 * 0.901)  # 0.9 plus seed 1's 0.002 / 2
    stab = extract_stability([grid_study(lr_bases=(0.1, 0.2))])
    assert stab is not None and stab.best_label == "best lr (val. acc.)"


# ---- findings, recommendation and the page ------------------------------------------------------


def test_regression_findings_give_r2_and_mse_without_percent() -> None:
    accs, losses = finals(32)
    found = {f.kind: f for f in study_findings(task_study(REGRESSION))}
    mean, std = statistics.fmean(accs), statistics.stdev(accs)
    assert found["best"].text == (
        f"Best batch size: 32 at lr_base=0.1, test R² {mean:.3f} ± {std:.3f} (std over 2 seeds);"
        f" test loss (MSE) {statistics.fmean(losses):.4g}."
    )
    assert found["best"].data["test_loss_mean"] == pytest.approx(statistics.fmean(losses))
    neighbour = next(f for f in study_findings(task_study(REGRESSION)) if f.kind == "neighbour")
    assert "ahead by 0.020," in neighbour.text and "pp" not in neighbour.text
    for f in found.values():
        assert "%" not in f.text and "accuracy" not in f.text, f.kind


def test_language_model_findings_give_perplexity() -> None:
    _, losses = finals(32)
    best = study_findings(task_study(LANGUAGE_MODEL, "lm"))[0]
    ppl = math.exp(statistics.fmean(losses))
    assert best.kind == "best" and "test token accuracy 88.40 % ± 0.14 pp" in best.text
    assert best.text.endswith(f", perplexity {ppl:.4g}.")
    assert best.data["test_perplexity"] == pytest.approx(ppl)


def test_regression_recommendation_view_names_r2() -> None:
    accs, _ = finals(32)
    view = recommendation_view(
        study_recommendation(task_study(REGRESSION), n_boot=0), heading="Recommendation"
    )
    assert view.table_headers[-1] == "test R² (mean ± std)"
    best_row = next(r for r in view.table_rows if r[0].endswith("(best)"))
    assert best_row[-1] == f"{statistics.fmean(accs):.3f} ± {statistics.stdev(accs):.3f}"
    titles = dict(view.items)
    assert "Time vs R²" in titles
    assert titles["Best batch size and lr"][0].startswith("Best final test R²: B=32")
    assert "MSE" in titles["Best batch size and lr"][0]


def test_regression_page_says_r2_and_mse(tmp_path: Path) -> None:
    index = build_report(task_study(REGRESSION), tmp_path)  # with PNGs: the renderers run
    html = index.read_text(encoding="utf-8")
    text = visible_text(html)
    assert "R²" in text and "MSE" in text
    assert "accuracy" not in text.lower()
    assert not re.search(r"\d\.\d+ ?%", text), "a score printed as a percentage"
    assert " pp" not in text
    # the charts' axes (plotly JSON escapes ², so look for the ASCII labels)
    assert '"test loss (MSE)"' in html and '"loss (MSE, log scale)"' in html
    assert '"final train loss (MSE)"' in html
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["studies"][0]["task"]["score_label"] == "R²"
    assert summary["recommendation"]["task"]["task"] == "regression"
    assert (tmp_path / "figures" / "accuracy.png").exists()


def test_comparing_studies_of_different_tasks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="different tasks"):
        build_comparison([task_study(REGRESSION), grid_study("cls")], tmp_path, png=False)
