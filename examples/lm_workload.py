"""A small next-token language model on real English text, for `language_model_example.py`.

The text is this repository's own README (byte-level tokens, nothing to download). A spec names
these functions as `lm_workload:text_windows` and `lm_workload:tiny_lm`, the way a user names
their own code; the example puts this folder on `sys.path` first.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


def text_windows(
    *, path: str = str(README), context: int = 32, test_fraction: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of `context` bytes as inputs and the next bytes as targets
    ([N, context] each); the last `test_fraction` of the text is the test set."""
    data = torch.tensor(list(Path(path).read_bytes()), dtype=torch.int64)
    n = (data.numel() - 1) // context
    x = data[: n * context].reshape(n, context)
    y = data[1 : n * context + 1].reshape(n, context)
    n_test = max(1, round(test_fraction * n))
    return x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:]


class TinyLM(nn.Module):
    """Token embedding, one GRU layer (causal by construction), a linear read-out to logits."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(tokens))
        logits: torch.Tensor = self.head(hidden)
        return logits


def tiny_lm(*, input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> nn.Module:
    """`num_classes` is the vocabulary: one more than the largest byte in the text."""
    return TinyLM(num_classes, width)
