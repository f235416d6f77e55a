"""`batchlab critical` on a language model: B_crit, E_min and the samples to the target also in
tokens (a batch of B sequences of 64 tokens is 64 B tokens), in the table and in `--json`.

The stored study follows McCandlish's hyperbola S(B) = 100 (1 + 50 / B) for seed 0 and
S(B) = 100 (1 + 60 / B) for seed 1 (as in tests/test_cli_regimes.py), so the fit on the seeds'
mean is S_min = 100 steps and E_min = 5500 sequences: B_crit = 55 sequences = 3520 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from batchlab.cli import main
from batchlab.spec import load_spec
from batchlab.store import Store
from batchlab.tasks.base import TaskInfo
from batchlab.trial import TrialState
from tests.conftest import tiny_spec
from tests.test_cli_regimes import evals

BATCHES = (8, 16, 32, 64, 128, 256)
NOISE = {0: 50.0, 1: 60.0}  # seed: B_noise of its hyperbola
LM = TaskInfo(
    task="language-model",
    loss_label="cross-entropy per token",
    score_label="token accuracy",
    unit="token",
    tokens_per_sample=64.0,
)


def put_study(path: Path, name: str, task: TaskInfo) -> None:
    spec = tiny_spec(name=name, batch_sizes=list(BATCHES), lrs=[0.1], seeds=list(NOISE))
    with Store(path) as s:
        s.put_study(name, load_spec(base=spec).to_toml_dict())
        ids = {(b, seed): f"{name}-{b}-{seed}" for b in BATCHES for seed in NOISE}
        s.add_trials(
            name,
            [
                {"trial_id": tid, "batch_size": b, "lr_base": 0.1, "lr": 0.1, "seed": seed}
                | {"params": {}}
                for (b, seed), tid in ids.items()
            ],
        )
        for (b, seed), tid in ids.items():
            s.start_trial(tid, {"task": task.as_dict()})
            for e in evals(b, 100.0 * (1 + NOISE[seed] / b)):
                s.add_eval(tid, e, None)
            s.finish_trial(tid, TrialState.COMPLETE)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "results.db"
    put_study(path, "lm", LM)
    put_study(path, "images", TaskInfo())
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main(list(args))
    return capsys.readouterr().out


def args(store: Path, name: str, *more: str) -> tuple[str, ...]:
    return ("critical", name, "--store", str(store), "--target", "val_acc=0.9", *more)


def test_json_gives_b_crit_its_ci_and_each_point_in_tokens(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data: dict[str, Any] = json.loads(cli(capsys, *args(store, "lm", "--boot", "200", "--json")))
    assert data["s_min"] == pytest.approx(100.0)
    assert data["e_min"] == pytest.approx(5500.0)
    assert data["tokens_per_sample"] == 64.0
    assert data["b_crit_tokens"] == pytest.approx(55.0 * 64)
    assert data["e_min_tokens"] == pytest.approx(5500.0 * 64)
    lo, hi = data["b_crit_ci95"]
    assert lo < 55.0 < hi  # the seeds disagree: a real interval
    assert data["b_crit_tokens_ci95"] == pytest.approx([64 * lo, 64 * hi])
    assert data["e_min_tokens_ci95"] == pytest.approx([64 * v for v in data["e_min_ci95"]])
    for p in data["points"]:
        assert p["tokens"] == pytest.approx(64 * p["samples"])


def test_the_table_and_the_answer_say_tokens(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads(cli(capsys, *args(store, "lm", "--boot", "200", "--json")))
    lo, hi = data["b_crit_tokens_ci95"]
    out = cli(capsys, *args(store, "lm", "--boot", "200"))
    assert "tokens E" in out
    at_8 = next(p for p in data["points"] if p["batch_size"] == 8)
    assert f"{at_8['tokens']:,.0f}" in out  # 8 x 787.5 steps x 64 tokens = 403,200
    assert (
        f"B_crit in tokens = 55 x 64 tokens per sample = 3,520 tokens per batch"
        f" (95% CI {lo:,.0f} .. {hi:,.0f}); E_min = 352,000 tokens" in out
    )


def test_a_study_of_examples_has_no_tokens(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(cli(capsys, *args(store, "images", "--boot", "0", "--json")))
    assert data["b_crit"] == pytest.approx(55.0)
    assert not any("tokens" in k for k in data) and "tokens" not in data["points"][0]
    out = cli(capsys, *args(store, "images", "--boot", "0"))
    assert "tokens" not in out


def test_too_few_batch_sizes_keep_the_points_in_tokens_and_no_b_crit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "few.db"
    put_study(path, "lm", LM)
    with Store(path) as s:  # batch 64 .. 256 fail: 8, 16 and 32 are left
        for b in (64, 128, 256):
            for seed in NOISE:
                s.finish_trial(f"lm-{b}-{seed}", TrialState.FAILED, error="crafted")
    data = json.loads(cli(capsys, *args(path, "lm", "--boot", "0", "--json")))
    assert data["not_enough_batch_sizes"] is True
    assert data["b_crit"] is None and data["b_crit_tokens"] is None
    assert data["b_crit_tokens_ci95"] is None and data["tokens_per_sample"] == 64.0
    assert [p["tokens"] for p in data["points"]] == pytest.approx([64 * 6300, 64 * 7100, 64 * 8700])
