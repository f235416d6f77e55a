"""Every example study file validates at each scale, and runs when cut down to a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest

import batchlab
from batchlab import presets
from batchlab.data import SYSTEM_FASHION_MNIST

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))
CUT = [
    "train_subset=600",
    "val_fraction=0.01",
    "batch_sizes=[8, 512]",
    "budget.epochs=1",
    "seeds=[0]",
    "device='cpu'",
]
# Designs whose structure the generic cut would break get their own small version.
SPECIAL = {
    "batch-schedule.toml": [
        "train_subset=600",
        "budget.epochs=3",
        "variants=[{label='lr-decay', lr_schedule={milestones=[1, 2], factor=5}},"
        " {label='batch-increase', batch_schedule={milestones=[1, 2], factor=5}}]",
    ],
    "lr-grid.toml": [*CUT, "lrs='0.001:0.1:2'", "batch_sizes=[64, 512]"],
    # a budget in samples, on the fortunes corpus (make data installs it beside Fashion-MNIST)
    "lm-quick.toml": [
        "train_subset=64",
        "dataset_args={context=16, test_fraction=0.02}",
        "model_args={layers=1, heads=2, width=16}",
        "batch_sizes=[8, 32]",
        "budget.samples=64",
        "device='cpu'",
    ],
    "branched.toml": [  # one reference batch size, branches at two more
        "train_subset=600",
        "val_fraction=0.05",
        "batch_sizes=[8]",
        "budget.epochs=1",
        "seeds=[0]",
        "probes=[]",
        "branched={batch_sizes=[16, 32], points=2}",
        "device='cpu'",
    ],
    "lm-branched.toml": [  # a samples budget of two passes, branches at one more batch size
        "train_subset=64",
        "dataset_args={context=16, test_fraction=0.02}",
        "model_args={layers=1, heads=2, width=16}",
        "seeds=[0]",
        "budget.samples=128",
        "probes=[]",
        "branched={batch_sizes=[16], points=2}",
        "device='cpu'",
    ],
    "lm-critical.toml": [
        "train_subset=64",
        "dataset_args={context=16, test_fraction=0.02}",
        "model_args={layers=1, heads=2, width=16}",
        "batch_sizes=[8, 32]",
        "seeds=[0]",
        "budget.samples=128",
        "device='cpu'",
    ],
}


def test_every_preset_has_an_example() -> None:
    assert {p.stem for p in EXAMPLES} >= set(presets.names())


@pytest.mark.parametrize("scale", [None, "small", "full"])
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path, scale: str | None) -> None:
    spec = batchlab.load_spec(path, scale=scale)
    assert spec.trials(n_train=54000)


@pytest.mark.skipif(
    not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="dataset-fashion-mnist is not installed (make test installs it)",
)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_cut_down(path: Path, tmp_path: Path) -> None:
    study = batchlab.run_study(path, store=tmp_path / "r.db", overrides=SPECIAL.get(path.name, CUT))
    assert study.trials
    states = {t.state for t in study.trials}
    if path.name == "lr-grid.toml":  # high per-example lrs at batch 512 may diverge: that is data
        assert batchlab.TrialState.COMPLETE in states and batchlab.TrialState.FAILED not in states
    else:
        assert states == {batchlab.TrialState.COMPLETE}


def test_language_model_example_runs(tmp_path: Path) -> None:
    import importlib.util

    path = Path(__file__).parents[1] / "examples" / "language_model_example.py"
    spec = importlib.util.spec_from_file_location("language_model_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    last = module.main(epochs=1, store=str(tmp_path / "lm.db"))
    assert sorted(last["batch_size"]) == [8, 32, 128]
    assert (last["batch_tokens"] == 32 * last["batch_size"]).all()
    # At batch 8, better than guessing uniformly over the bytes that occur (perplexity = their
    # count); at a fixed number of epochs, larger batches make fewer updates and end worse.
    vocab = len(set((Path(__file__).parents[1] / "README.md").read_bytes()))
    ppl = last.sort_values("batch_size")["test_perplexity"].tolist()
    assert ppl[0] < vocab
    assert ppl == sorted(ppl)
