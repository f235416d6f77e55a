"""`batchlab show` and `batchlab critical` on a branched study: `show` tables the reference runs
and counts the branches, `critical` gives B_crit(t) per branch point.

The stored study is `tests.analysis.test_branched.hyperbola_study`: two seeds of a reference at
batch 16 and, at two branch points, branches whose steps follow S(B) = 20 (1 + B_noise / B).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batchlab.cli import main
from batchlab.spec import load_spec
from batchlab.store import Store
from tests.analysis.test_branched import hyperbola_study
from tests.conftest import tiny_spec

SIZES = [16, 32, 64, 128, 256, 512]
NOISE = [40.0, 150.0]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("branched") / "results.db"
    trials = hyperbola_study(SIZES, NOISE, seeds=2, jitter=0.02)
    with Store(path) as s:
        s.put_study("br", load_spec(base=tiny_spec(name="br", batch_sizes=[16])).to_toml_dict())
        s.add_trials(
            "br",
            [
                {"trial_id": t.trial_id, "batch_size": t.batch_size, "lr_base": t.lr_base}
                | {"lr": t.lr, "seed": t.seed, "params": dict(t.params)}
                for t in trials
            ],
        )
        for t in trials:
            for e in t.evals:
                s.add_eval(t.trial_id, e, None)
            s.finish_trial(t.trial_id, t.state)
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def test_show_tables_the_references_and_counts_the_branches(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(capsys, "show", "br", "--store", str(store))
    rows = [r for r in out.splitlines() if re.match(r"│\s*\d+\s*│", r)]
    assert [r.strip("│ ").split("│")[0].strip() for r in rows] == ["16"]  # the references only
    assert re.search(r"│\s*16\s*│[^│]*│\s*2\s*│", rows[0])  # two seeds in it
    n_branches = len(SIZES) * len(NOISE) * 2
    assert f"{n_branches} branch trials: see `batchlab critical br`" in out
    assert "usable learning rates" not in out  # the branches add no lr band


def test_critical_gives_b_crit_at_each_branch_point(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = cli(capsys, "critical", "br", "--store", str(store))
    assert "critical batch size over training (branched; reference batch 16, 2 seeds)" in out
    rows = [r for r in out.splitlines() if re.match(r"│\s*[01]\s*│", r)]
    assert len(rows) == 2
    crit = [float(r.strip("│ ").split("│")[3]) for r in rows]
    assert crit == pytest.approx(NOISE, rel=0.15)
