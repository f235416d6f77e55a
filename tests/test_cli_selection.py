"""`show`, `recommend` and `critical` choose on validation and report the chosen cell's test score;
a study stored without a validation split chooses on test and says so in every output.

The stored studies disagree on purpose: on validation the best cell is (B=8, lr 0.1), with test
accuracy 0.80; on test it would be (B=64, lr 0.1), with 0.97.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from batchlab.cli import main
from batchlab.spec import load_spec
from batchlab.store import Store
from batchlab.trial import EvalRecord, TrialState
from tests.conftest import tiny_spec

# (batch size, lr): (final val acc, final test acc); seeds add -0.005 and +0.005
CELLS = {
    (8, 0.1): (0.90, 0.80),
    (8, 0.3): (0.85, 0.95),
    (64, 0.1): (0.82, 0.97),
    (64, 0.3): (0.70, 0.60),
}
NOTE = (
    "Cells are chosen on test accuracy: no validation split was kept (val_fraction = 0), so the"
    " chosen cells' test numbers are optimistic."
)


def steps(b: int) -> int:
    """Training steps of a trial at batch size b: S = 100 + 6400 / b, so B_crit is measurable."""
    return 100 + 6400 // b


def evals(b: int, val: float, test: float) -> list[EvalRecord]:
    """Five evaluations; scores rise linearly from 0 to their final value (NaN val: no split)."""
    out = []
    for i in range(5):
        f = i / 4
        out.append(
            EvalRecord(
                idx=i,
                epoch=float(i),
                step=round(f * steps(b)),
                samples=round(f * steps(b)) * b,
                current_lr=0.1,
                train_loss=math.nan,
                train_acc=math.nan,
                val_loss=1.0,
                val_acc=f * val,
                test_loss=1.0,
                test_acc=f * test,
                full_train_loss=2.0 - f,  # falls: the cell converged
                full_train_acc=0.1 + 0.8 * f,
                train_time_s=f * (20.0 if b == 8 else 4.0),
                eval_time_s=0.0,
                samples_per_s=math.nan,
                peak_mem_bytes=0,
            )
        )
    return out


def put_study(path: Path, name: str, *, val_fraction: float) -> None:
    """Store a finished study with the numbers of CELLS (val NaN when val_fraction is 0)."""
    spec = tiny_spec(
        name=name, batch_sizes=[8, 64], lrs=[0.1, 0.3], seeds=[0, 1], val_fraction=val_fraction
    )
    with Store(path) as s:
        s.put_study(name, load_spec(base=spec).to_toml_dict())
        ids = {(b, lr, seed): f"{name}-{b}-{lr}-{seed}" for (b, lr) in CELLS for seed in (0, 1)}
        s.add_trials(
            name,
            [
                {"trial_id": tid, "batch_size": b, "lr_base": lr, "lr": lr, "seed": seed}
                | {"params": {}}
                for (b, lr, seed), tid in ids.items()
            ],
        )
        for (b, lr, seed), tid in ids.items():
            val, test = CELLS[(b, lr)]
            d = 0.01 * seed - 0.005
            val = val + d if val_fraction > 0 else math.nan
            for e in evals(b, val, test + d):
                s.add_eval(tid, e, None)
            s.finish_trial(tid, TrialState.COMPLETE)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("selection") / "results.db"
    put_study(path, "val", val_fraction=0.25)
    put_study(path, "noval", val_fraction=0.0)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def as_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cli(capsys, *args, "--json"))
    return data


def band_row(out: str, b: int) -> list[str]:
    """The cells of the usable-lr table's row for batch size b."""
    table = out[out.index("usable learning rates") :]
    row = next(r for r in table.splitlines() if re.match(rf"│\s*—\s*│\s*{b}\s*│", r))
    return [c.strip() for c in row.strip("│ ").split("│")]


def test_show_picks_the_best_lr_on_validation(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(capsys, "show", "val", "--store", str(store))
    assert "best lr (by val)" in out
    assert band_row(out, 8)[-2:] == ["0.1", "80.00%"]  # on test lr 0.3 (95.00%) would win
    out = cli(capsys, "show", "noval", "--store", str(store))
    assert "best lr (by test: no val split)" in out
    assert band_row(out, 8)[-2:] == ["0.3", "95.00%"]


def test_recommend_chooses_on_validation_and_reports_that_cells_test_score(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(capsys, "recommend", "val", "--store", str(store))
    lines = out.splitlines()
    assert (
        lines[1]
        == "Best final test accuracy: B=8, lr=0.1 (lr_base 0.1): 80.00% ± 0.71 over 2 seed(s)."
    )
    assert lines[2].startswith("  Chosen on validation accuracy (90.00% ± 0.71)")
    assert "val_fraction" not in out
    rec = as_json(capsys, "recommend", "val", "--store", str(store))
    assert (rec["best"]["batch_size"], rec["best"]["lr_base"]) == (8, 0.1)
    assert rec["best"]["test_acc"] == pytest.approx(0.80)
    assert rec["selection"]["split"] == "val" and rec["selection"]["notes"] == []
    assert rec["target"].startswith("val_acc")  # the default target: on validation


def test_a_test_target_reaches_it_on_test_and_says_so(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ("recommend", "val", "--store", str(store), "--target", "test_acc=0.9")
    rec = as_json(capsys, *args)
    assert rec["fastest_to_target"]["batch_size"] == 64  # 8 gets there (lr 0.3) but slower
    assert rec["best"]["batch_size"] == 8  # still chosen on validation
    sel = rec["selection"]
    assert (sel["split"], sel["target_split"], sel["target_on_test"]) == ("val", "test", True)
    note = "The fastest cell and B_crit's lr per batch size are chosen on test: the target names"
    assert sel["notes"] == [f"{note} test_acc."]
    assert cli(capsys, *args).splitlines()[1] == f"{note} test_acc."
    fit = as_json(capsys, "critical", "val", "--store", str(store), "--target", "test_acc=0.6")
    assert [p["lr_base"] for p in fit["points"]] == [0.3, 0.1]  # on validation: [0.1, 0.1]
    assert fit["selection"]["on_test"] is True
    out = cli(capsys, "critical", "val", "--store", str(store), "--target", "test_acc=0.6")
    assert (
        out.splitlines()[0]
        == "The lr at each batch size is chosen on test: the target names test_acc."
    )


def test_critical_chooses_each_lr_on_validation(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fit = as_json(capsys, "critical", "val", "--store", str(store), "--target", "val_acc=0.6")
    assert [p["lr_base"] for p in fit["points"]] == [0.1, 0.1]
    assert fit["b_crit"] is None and fit["not_enough_batch_sizes"] is True  # 2 batch sizes
    assert fit["selection"] == {
        "split": "val",
        "metric": "val_acc",
        "on_test": False,
        "why": "",
        "note": "",
    }
    out = cli(capsys, "critical", "val", "--store", str(store), "--target", "val_acc=0.6")
    assert "chosen on test" not in out
    assert "B_crit: not enough batch sizes: 2 (8, 64) of 2 reach" in out
    assert "R²" not in out and "B_crit =" not in out


def test_without_a_validation_split_every_command_says_it_chose_on_test(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(capsys, "recommend", "noval", "--store", str(store))
    lines = out.splitlines()
    assert lines[1] == NOTE
    assert lines[2].startswith("Best final test accuracy: B=64, lr=0.1 (lr_base 0.1): 97.00%")
    rec = as_json(capsys, "recommend", "noval", "--store", str(store))
    assert rec["best"]["batch_size"] == 64 and rec["target"].startswith("test_acc")
    assert rec["selection"]["on_test"] is True and rec["selection"]["notes"] == [NOTE]
    args = ("critical", "noval", "--store", str(store), "--target", "test_acc=0.6")
    fit = as_json(capsys, *args)
    assert fit["selection"]["why"] == "no validation split"
    assert "val_fraction = 0" in fit["selection"]["note"]
    assert (
        cli(capsys, *args)
        .splitlines()[0]
        .startswith(
            "The lr at each batch size is chosen on test accuracy: no validation split was kept"
        )
    )
