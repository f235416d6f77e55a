"""Hugging Face models (`hf:NAME`, `hf:/folder`) built offline from their configs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import batchlab
from batchlab.errors import SpecError
from batchlab.models import build_model
from batchlab.models.hf import CausalLM

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="transformers is not installed: pip install 'batchlab[hf]' (make install does)",
)
GPT2 = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 16}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def gpt2(seed: int = 0, **args: object) -> torch.nn.Module:
    return build_model("hf:gpt2", {**GPT2, **args}, input_shape=(16,), num_classes=50, seed=seed)


def test_a_two_layer_gpt2_from_its_config_with_seeded_weights() -> None:
    a, b, c = gpt2(), gpt2(), gpt2(seed=1)
    assert isinstance(a, CausalLM)
    config = a.model.config
    assert (config.n_layer, config.n_embd, config.vocab_size) == (2, 32, 50)  # vocab: the data's
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    idx = torch.randint(0, 50, (3, 16))
    a.eval()  # GPT-2's config has dropout 0.1
    out = a(idx)  # a tensor batch is the input ids; the wrapper returns the logits
    assert isinstance(out, torch.Tensor) and out.shape == (3, 16, 50)
    mask = torch.ones(3, 16, dtype=torch.long)
    torch.testing.assert_close(a(input_ids=idx, attention_mask=mask), out)


def test_a_local_checkpoint_folder_is_read_without_the_network(tmp_path: Path) -> None:
    model = gpt2()
    assert isinstance(model, CausalLM)
    model.model.save_pretrained(tmp_path / "ckpt")
    loaded = build_model(f"hf:{tmp_path / 'ckpt'}", {}, input_shape=(16,), num_classes=50, seed=9)
    idx = torch.randint(0, 50, (2, 16))
    model.eval(), loaded.eval()
    torch.testing.assert_close(loaded(idx), model(idx))  # its weights, not the seed's


@pytest.mark.parametrize(
    ("name", "args", "needle"),
    [
        ("hf:no-such-model", {}, "hf:no-such-model is neither a Hugging Face model type"),
        ("hf:./missing-folder", {}, "no config.json in missing-folder"),
        ("hf:gpt2", {"n_layers": 2}, "n_layers not a field of GPT2Config"),
        ("hf:gpt2", {"vocab_size": 10}, "model_args.vocab_size: 10 is smaller than"),
        ("hf:gpt2", {"n_positions": 8}, "holds 8 positions, shorter than the data's sequences"),
    ],
)
def test_bad_hf_models_are_one_line_errors(name: str, args: dict[str, object], needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as err:
        build_model(name, args, input_shape=(16,), num_classes=50, seed=0)
    assert "\n" not in str(err.value)


def test_a_two_batch_size_study_offline(tmp_path: Path) -> None:
    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"Entry {i}: batch sizes and learning rates.\n" for i in range(40)))
    study = batchlab.run_study(
        {
            "name": "hf-gpt2",
            "dataset": f"text:{text}",
            "dataset_args": {"context": 16},
            "model": "hf:gpt2",
            "model_args": GPT2,
            "optimizer": "adamw",
            "lrs": [3e-3],
            "batch_sizes": [4, 16],
            "budget": {"steps": 6},
            "device": "cpu",
            "threads": 1,
        },
        store=tmp_path / "hf.db",
    )
    assert {t.state for t in study.trials} == {batchlab.TrialState.COMPLETE}
    df = study.to_dataframe()
    assert study.task is not None and study.task.task == "language-model"
    final = df.groupby("trial_id").tail(1).sort_values("batch_size")
    assert final["batch_size"].tolist() == [4, 16]
    assert (final["batch_tokens"] == 16 * final["batch_size"]).all()
    first = df.groupby("trial_id").head(1)
    # from uniform guessing over 256 bytes (loss ~ ln 256) the loss falls in 6 steps
    assert (first["test_loss"] > 5.0).all() and (
        final["test_loss"] < first["test_loss"].max()
    ).all()
