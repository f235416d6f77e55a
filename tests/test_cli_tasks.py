"""`show` and `recommend` name each task's score and loss from the stored study's task."""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

import pytest

from batchlab.cli import main
from batchlab.study import Study, load_study, run_study
from tests.conftest import TASK_SPECS, tiny_spec


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store with a tiny regression, language-model and classification study (seconds)."""
    path = tmp_path_factory.mktemp("tasks") / "results.db"
    run_study(
        {**TASK_SPECS["regression"], "name": "reg", "lrs": [0.05, 0.025], "seeds": [0, 1]},
        store=path,
    )
    run_study({**TASK_SPECS["language-model"], "name": "lm"}, store=path)
    run_study(tiny_spec(name="cls"), store=path)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def final(study: Study, batch_size: int, lr_base: float, metric: str) -> list[float]:
    """The final `metric` of every seed of one (batch size, lr_base) cell."""
    return [
        getattr(t.last, metric)
        for t in study.trials
        if t.batch_size == batch_size and t.lr_base == lr_base and t.last is not None
    ]


def test_show_regression_gives_r2_as_a_number_and_the_mse(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = load_study("reg", store)
    assert study.task.score_label == "R²" and study.task.loss_label == "MSE"
    out = cli(capsys, "show", "reg", "--store", str(store))
    assert "test R² (mean ± std)" in out and "test loss (MSE)" in out
    r2 = final(study, 8, 0.05, "test_acc")
    assert f"{statistics.fmean(r2):.3f} ± {statistics.stdev(r2):.3f}" in out
    mse = final(study, 8, 0.05, "test_loss")
    assert f"{statistics.fmean(mse):.4g} ± {statistics.stdev(mse):.2g}" in out
    assert "%" not in out and "acc" not in out  # the bands table says "test R²" too


def test_recommend_regression_names_r2_and_mse(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(capsys, "recommend", "reg", "--store", str(store), "--target", "test_loss")
    best = next(line for line in out.splitlines() if line.startswith("Best final test R²: "))
    study = load_study("reg", store)
    b = int(best.split("B=")[1].split(",")[0])
    lr_base = float(best.split("(lr_base ")[1].split(")")[0])
    r2, mse = final(study, b, lr_base, "test_acc"), final(study, b, lr_base, "test_loss")
    assert best.endswith(
        f": {statistics.fmean(r2):.3f} ± {statistics.stdev(r2):.3f} over 2 seed(s);"
        f" test loss (MSE) {statistics.fmean(mse):.4g}."
    )
    assert "final test R²" in out and "accuracy" not in out
    # R² differences are plain numbers, never percentage points or a score in %
    assert not re.search(r"\d\.\d+ (points|pp)\b", out) and not re.search(r"\d\.\d+ ?%", out)


def test_show_language_model_gives_token_accuracy_and_perplexity(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = load_study("lm", store)
    out = cli(capsys, "show", "lm", "--store", str(store))
    assert "perplexity" in out and "token acc" in out
    for b in (8, 64):
        (loss,) = final(study, b, 0.5, "test_loss")
        (acc,) = final(study, b, 0.5, "test_acc")
        assert f"{100 * acc:.2f}%" in out and f"{loss:.4g}" in out
        assert f"{math.exp(loss):.4g}" in out


def test_show_classification_keeps_its_table(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = load_study("cls", store)
    out = cli(capsys, "show", "cls", "--store", str(store))
    header = next(line for line in out.splitlines() if "batch size" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == [
        "batch size",
        "lr (used)",
        "seeds",
        "test acc (mean ± std)",
        "updates",
        "train time (s)",
        "peak mem (MiB)",
        "state",
    ]
    (acc,) = final(study, 8, 0.1, "test_acc")
    assert f"{100 * acc:.2f}%" in out and "loss" not in out and "perplexity" not in out
