"""Learning rates read to 3 significant digits in tables and reports (a log grid's 0.0223607
is 0.0224), with more digits only where two lrs would otherwise read the same."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchlab.cli import main
from batchlab.fmt import lr_text, lr_texts
from batchlab.study import run_study
from tests.conftest import SpecFactory


def test_lr_text_keeps_three_significant_digits() -> None:
    assert lr_text(0.0223607) == "0.0224"
    assert lr_text(0.1) == "0.1" and lr_text(3.16228e-4) == "0.000316"
    assert lr_texts([0.01, 0.0316228, 0.1]) == ["0.01", "0.0316", "0.1"]
    assert lr_texts([0.10001, 0.10002]) == ["0.10001", "0.10002"]  # distinct labels


def test_show_prints_lrs_rounded(
    make_spec: SpecFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "s.db"
    run_study(make_spec(lrs=[0.0223607], batch_sizes=[8], budget={"epochs": 1}), store=store)
    capsys.readouterr()
    main(["show", "tiny", "--store", str(store)])
    out = capsys.readouterr().out
    assert "0.0224" in out and "0.02236" not in out
