from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import batchlab
from batchlab.errors import DataError, SpecError
from batchlab.store import Store
from batchlab.study import interpolate_trials, load_study, run_study
from batchlab.trial import EvalRecord, TrialState

SpecFactory = Callable[..., dict[str, Any]]
EXPORT_COLUMNS = [
    "study",
    "trial_id",
    "batch_size",
    "lr",
    "seed",
    "state",
    "epoch",
    "step",
    "samples",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "train_time_s",
]


def test_run_and_load_a_study(make_spec: SpecFactory, store_path: Path) -> None:
    study = batchlab.run_study(make_spec(seeds=[0, 1]), store=store_path)
    assert len(study.trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    df = batchlab.load_study("tiny", store=store_path).to_dataframe()
    assert set(EXPORT_COLUMNS) <= set(df.columns)
    assert len(df) == 4 * 3  # 4 trials x (initial + 2 epochs)
    # large batches took fewer updates for the same epochs
    last = df.groupby("trial_id").tail(1)
    assert last[last.batch_size == 8]["step"].unique().tolist() == [2 * 24]
    assert last[last.batch_size == 64]["step"].unique().tolist() == [2 * 3]
    t = study.trials[0]
    assert t.provenance["torch"] and t.provenance["batchlab"] == batchlab.__version__
    assert t.started_at is not None and t.ended_at is not None and t.ended_at >= t.started_at


def test_rerun_skips_finished_trials(make_spec: SpecFactory, store_path: Path) -> None:
    first = batchlab.run_study(make_spec(), store=store_path)
    again = batchlab.run_study(make_spec(batch_sizes=[8, 64, 128]), store=store_path)
    old = {t.trial_id: t for t in first.trials}
    for t in again.trials:
        if t.trial_id in old:
            assert t.ended_at == old[t.trial_id].ended_at  # not rerun
    assert len(again.trials) == 3 and all(t.state == TrialState.COMPLETE for t in again.trials)


def test_stored_metrics_are_bit_identical_across_runs(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    times = {"train_time_s", "eval_time_s", "samples_per_s", "peak_mem_bytes"}
    frames = []
    for name in ("a.db", "b.db"):
        df = batchlab.run_study(make_spec(), store=tmp_path / name).to_dataframe()
        frames.append(df.drop(columns=list(times)))
    assert frames[0].equals(frames[1])


def test_a_failing_trial_is_recorded_and_the_study_goes_on(
    make_spec: SpecFactory, store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flaky.py").write_text(
        "import torch\nfrom torch import nn\n"
        "class Flaky(nn.Module):\n"
        "    def __init__(self, n):\n"
        "        super().__init__(); self.lin = nn.Linear(8, 3); self.calls = 0\n"
        "    def forward(self, x):\n"
        "        if self.training and x.shape[0] == 64:\n"
        "            raise RuntimeError('boom at batch 64')\n"
        "        return self.lin(x)\n"
        "def make(input_shape, num_classes):\n"
        "    return Flaky(input_shape[0])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = make_spec(model="flaky:make", model_args={}, batch_sizes=[8, 64, 16])
    study = batchlab.run_study(spec, store=store_path)
    states = {(t.batch_size, t.lr_base): t.state for t in study.trials}
    assert states[(64, 0.1)] == TrialState.FAILED
    assert states[(8, 0.1)] == states[(16, 0.1)] == TrialState.COMPLETE
    failed = next(t for t in study.trials if t.state == TrialState.FAILED)
    assert failed.error is not None and "boom at batch 64" in failed.error
    sys.modules.pop("flaky", None)


def test_a_diverged_trial_is_recorded_and_the_study_goes_on(
    make_spec: SpecFactory, store_path: Path
) -> None:
    study = batchlab.run_study(make_spec(lrs=[0.1, 1e6]), store=store_path)
    states = {(t.batch_size, t.lr_base): t for t in study.trials}
    assert states[(8, 1e6)].state == TrialState.DIVERGED
    assert states[(8, 1e6)].diverged_step is not None
    assert states[(8, 0.1)].state == states[(64, 0.1)].state == TrialState.COMPLETE


@pytest.mark.parametrize(
    ("overrides", "error", "needle"),
    [
        ({"batch_sizes": [8, 4096]}, SpecError, "exceed the 192 training examples"),
        ({"dataset": "nope"}, DataError, "unknown dataset"),
        ({"model": "nope"}, SpecError, "unknown model"),
        ({"dataset": "npz:/nonexistent/file.npz"}, DataError, "cannot read npz"),
        ({"model_args": {"widths": "wide"}}, SpecError, "model_args.widths"),
    ],
)
def test_bad_input_leaves_no_store(
    make_spec: SpecFactory, store_path: Path, overrides: dict[str, Any], error: type, needle: str
) -> None:
    with pytest.raises(error, match=needle):
        batchlab.run_study(make_spec(**overrides), store=store_path)
    assert not store_path.exists()


def test_bad_input_leaves_an_existing_store_untouched(
    make_spec: SpecFactory, store_path: Path
) -> None:
    batchlab.run_study(make_spec(), store=store_path)
    with Store(store_path) as s:
        before = (s.study_summary(), len(s.trials("tiny")))
    with pytest.raises(SpecError):
        batchlab.run_study(make_spec(name="other", batch_sizes=[10_000]), store=store_path)
    with Store(store_path) as s:
        assert (s.study_summary(), len(s.trials("tiny"))) == before
        assert s.study_names() == ["tiny"]


def test_dataframe_has_a_row_for_a_trial_without_evaluations(
    make_spec: SpecFactory, store_path: Path
) -> None:
    with Store(store_path) as s:
        s.put_study("tiny", batchlab.load_spec(base=make_spec()).to_toml_dict())
        s.add_trials(
            "tiny", [dict(trial_id="x", batch_size=8, lr_base=0.1, lr=0.1, seed=0, params={})]
        )
    df = batchlab.load_study("tiny", store_path).to_dataframe()
    assert len(df) == 1 and df.loc[0, "state"] == "WAITING"
    assert list(df.columns[-len(EvalRecord.columns()) :]) == EvalRecord.columns()


def test_interpolation_defaults_pair_trials_from_one_initialization(
    make_spec: SpecFactory, tmp_path: Path
) -> None:
    """With the largest batch's seed-0 trial gone, the default pair is the seed-1 trials (the
    same init); the line's ends are the two trials' own final test losses."""
    store = tmp_path / "i.db"
    study = run_study(make_spec(name="line", batch_sizes=[8, 64], seeds=[0, 1]), store=store)
    gone = next(t for t in study.trials if (t.batch_size, t.seed) == (64, 0))
    with Store(store) as s:
        s.finish_trial(gone.trial_id, TrialState.FAILED, error="removed for the test")
    study = load_study("line", store=store)
    df = interpolate_trials(study, None, None, points=4)  # alphas -1, 0, 1, 2
    a = next(t for t in study.trials if (t.batch_size, t.seed) == (64, 1))
    b = next(t for t in study.trials if (t.batch_size, t.seed) == (8, 1))
    assert df.attrs["a"].startswith(a.trial_id) and df.attrs["b"].startswith(b.trial_id)
    assert list(df["alpha"]) == [-1.0, 0.0, 1.0, 2.0]
    assert df["test_loss"][2] == pytest.approx(a.evals[-1].test_loss, rel=1e-5)
    assert df["test_loss"][1] == pytest.approx(b.evals[-1].test_loss, rel=1e-5)
