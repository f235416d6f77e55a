"""Hugging Face causal language models (extra `batchlab[hf]`: transformers), never downloaded.

`model = "hf:gpt2"` builds the model type's architecture from its config with random weights
drawn from the trial's seed: `model_args` are the config's fields (`n_layer`, `n_embd`,
`n_head`, `n_positions`, `vocab_size` for GPT-2; a name the config does not have is an error).
`vocab_size` defaults to the data's vocabulary. `model = "hf:/path/to/folder"` reads a local
checkpoint folder (`save_pretrained`'s output): its weights when it holds them, else random
weights for its `config.json`. Nothing touches the network (`local_files_only`).

The model is wrapped so that it maps tokens [B, T] (or a dict batch with `input_ids`,
`attention_mask`...) to logits [B, T, V], like every other language model here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchlab.errors import SpecError

PREFIX = "hf:"
INSTALL = "pip install 'batchlab[hf]'"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CausalLM(nn.Module):
    """A transformers causal LM called as `model(input_ids)` or `model(**batch)`: its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: Any = model  # a transformers PreTrainedModel (untyped)

    def forward(self, input_ids: torch.Tensor | None = None, **inputs: Any) -> torch.Tensor:
        logits: torch.Tensor = self.model(input_ids=input_ids, **inputs).logits
        return logits


def _is_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or Path(ref).is_dir()


def _check_fields(config: Any, args: dict[str, Any], *, name: str) -> None:
    """Configs take any keyword silently: refuse one the config class does not define."""
    unknown = sorted(k for k in args if not hasattr(config, k))
    if unknown:
        raise SpecError(
            f"model_args: {', '.join(unknown)} not a field of {type(config).__name__} ({name});"
            " see its config class for the names"
        )


def build(
    ref: str, input_shape: Sequence[int], num_classes: int, args: dict[str, Any]
) -> nn.Module:
    """The model `hf:ref` for tokens of `input_shape` (T,) and a vocabulary of `num_classes`."""
    try:
        import transformers
    except ImportError:
        raise SpecError(f"model: hf:{ref} needs transformers; install it with {INSTALL}") from None
    name = f"{PREFIX}{ref}"
    if len(input_shape) != 1:
        raise SpecError(
            f"model: {name} needs token ids [N, T] (a language model's data), got examples of "
            f"shape {tuple(input_shape)}"
        )
    folder: Path | None = None
    if _is_path(ref):
        folder = Path(ref).expanduser()
        if not (folder / "config.json").is_file():
            raise SpecError(f"model: {name}: no config.json in {folder}; give a checkpoint folder")
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    else:
        try:
            config = transformers.AutoConfig.for_model(ref)
        except ValueError:
            raise SpecError(
                f"model: {name} is neither a Hugging Face model type (gpt2, llama, ...) nor a "
                "local checkpoint folder; fix the name or give hf:/path/to/folder"
            ) from None
    _check_fields(config, args, name=name)
    fields = dict(args)
    if folder is None:
        fields.setdefault("vocab_size", num_classes)
    for key, value in fields.items():
        setattr(config, key, value)
    config.use_cache = False  # training: no key/value cache to build and discard
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and vocab < num_classes:
        raise SpecError(
            f"model_args.vocab_size: {vocab} is smaller than the data's vocabulary of "
            f"{num_classes} tokens; raise it"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions < input_shape[0]:
        raise SpecError(
            f"model_args: {name} holds {positions} positions, shorter than the data's sequences "
            f"of {input_shape[0]} tokens; raise its positions field (n_positions for gpt2) or "
            "lower dataset_args.context"
        )
    auto: Any = transformers.AutoModelForCausalLM
    try:
        if folder is not None and any((folder / f).is_file() for f in WEIGHT_FILES):
            model = auto.from_pretrained(folder, config=config, local_files_only=True)
        else:
            model = auto.from_config(config)
    except (ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(f"model: {name}: {first}") from None
    return CausalLM(model.float())  # batchlab trains in float32, as its other models
