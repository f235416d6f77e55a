"""Small edges of issue 17: odd study names, one-batch-size interpolation, huge seed lists."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from batchlab.cli import _report_dir, main
from batchlab.errors import SpecError
from batchlab.spec import MAX_TRIALS, load_spec
from batchlab.study import interpolate_trials, run_study
from tests.conftest import tiny_spec
from tests.test_multiprocess import write_study


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "../up", "a/../../b"])
def test_a_report_stays_inside_reports(name: str) -> None:
    out = _report_dir(name, None)
    assert out.parent == Path("reports") and out.name not in (".", "..")
    assert not out.name.startswith(".")


def test_the_show_hint_is_shell_quoted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_study(tmp_path / "s.toml", name="it's mine", budget={"epochs": 1})
    main(["run", str(spec), "--store", "my results.db", "--quiet"])
    hint = next(ln for ln in capsys.readouterr().out.splitlines() if "see them:" in ln)
    assert shlex.split(hint.split("see them:")[1]) == [
        "batchlab",
        "show",
        "it's mine",
        "--store",
        "my results.db",
    ]


def test_interpolate_refuses_one_trial_as_both_ends(tmp_path: Path) -> None:
    study = run_study(
        tiny_spec(batch_sizes=[8], seeds=[0, 1], budget={"epochs": 1}), store=tmp_path / "r.db"
    )
    with pytest.raises(SpecError, match="both ends"):
        interpolate_trials(study, None, None, points=2)


def test_a_million_seeds_are_refused_with_the_limit() -> None:
    started = time.monotonic()
    with pytest.raises(SpecError, match=f"at most {MAX_TRIALS:,} trials"):
        load_spec(base=tiny_spec(seeds=list(range(1_400_000))))
    with pytest.raises(SpecError, match="more than the"):
        load_spec(base=tiny_spec(seeds=list(range(60_000)), batch_sizes=[8, 16]))
    assert time.monotonic() - started < 10
