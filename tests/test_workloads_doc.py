"""docs/workloads.md: every study in it validates, and its GPT study runs cut down."""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path

import batchlab
from batchlab.spec import spec_from_dict

PAGE = Path(__file__).parents[1] / "docs" / "workloads.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)


def test_every_study_on_the_page_validates() -> None:
    assert len(BLOCKS) == 3
    for block in BLOCKS:
        assert spec_from_dict(tomllib.loads(block)).trials()


def test_the_gpt_study_runs_cut_down_on_a_text_file(tmp_path: Path) -> None:
    (tmp_path / "corpus").mkdir()
    lines = (f"Fortune {i}: a small batch makes many small steps.\n" for i in range(80))
    (tmp_path / "corpus" / "a.txt").write_text("".join(lines))
    data = tomllib.loads(BLOCKS[0])
    assert data["model"] == "gpt" and data["dataset"].startswith("text:")
    data |= {
        "dataset": f"text:{tmp_path / 'corpus'}",
        "dataset_args": {"context": 16},
        "model_args": {"layers": 1, "heads": 2, "width": 16},
        "batch_sizes": [4, 16],
        "budget": {"samples": 256},
        "device": "cpu",
        "threads": 1,
    }
    study = batchlab.run_study(data, store=tmp_path / "s.db")
    assert {t.state for t in study.trials} == {batchlab.TrialState.COMPLETE}
    df = study.to_dataframe()
    first, last = df.groupby("trial_id").head(1), df.groupby("trial_id").tail(1)
    # GPT-2's init starts near uniform guessing over the 256 bytes; training moves off it
    assert all(abs(v - math.log(256)) < 0.1 for v in first["test_loss"])
    assert (last["test_loss"] < math.log(256) - 1.0).all()
    assert sorted(last["batch_tokens"]) == [4 * 16, 16 * 16]
