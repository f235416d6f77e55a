"""Tiny user workloads for the task tests: token data, a language model and a custom task.

They live in an importable module because a spec names them as `package.module:function`, the
way a user names their own code.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from batchlab.tasks import Task


def tokens(
    *, n_train: int = 96, n_test: int = 32, context: int = 12, vocab: int = 11, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences of a noisy Markov chain (next = 3 * t + 1 mod vocab, 80% of the time), as
    inputs x[:, :-1] and next-token targets x[:, 1:] of shape [N, context]."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    seq = torch.empty(n, context + 1, dtype=torch.int64)
    seq[:, 0] = torch.randint(0, vocab, (n,), generator=g)
    for t in range(context):
        follow = (3 * seq[:, t] + 1) % vocab
        noise = torch.randint(0, vocab, (n,), generator=g)
        seq[:, t + 1] = torch.where(torch.rand(n, generator=g) < 0.8, follow, noise)
    x, y = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def bigram(*, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """Token embedding then a linear read-out: logits [B, T, V] for tokens [B, T]."""
    return nn.Sequential(nn.Embedding(num_classes, width), nn.Linear(width, num_classes))


class _LastToken(nn.Module):
    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed, self.out = nn.Embedding(vocab, width), nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.out(self.embed(x[:, -1]))
        return logits


def last_token(*, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """A user's mistake: a language model that drops the time axis, logits [B, V] for tokens
    [B, T] (one prediction per sequence instead of one per position)."""
    return _LastToken(num_classes, width)


class Huber(Task):
    """A user's task: Huber loss on real targets, score = fraction within `tol` of the target."""

    name = "huber"
    loss_label = "Huber"
    score_label = "within tolerance"

    def __init__(self, *, tol: float = 0.5) -> None:
        self.tol = tol

    def output_size(self, arrays: tuple[torch.Tensor, ...]) -> int:  # type: ignore[override]
        return 1

    def prepare(self, arrays, *, where):  # type: ignore[no-untyped-def]
        return tuple(a.float() for a in arrays)

    def mean_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.huber_loss(out[:, 0], y)

    def score_stats(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((out[:, 0] - y).abs() < self.tol).sum()

    def score(self, stats: torch.Tensor, units: float) -> float:
        return float(stats.item()) / units


def huber(*, tol: float = 0.5) -> Task:
    return Huber(tol=tol)


class Items(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A map-style Dataset over tensors, read one item at a time (as a decoder would)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, as_dict: bool = False) -> None:
        self.x, self.y, self.as_dict = x, y, as_dict

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> Any:
        if self.as_dict:
            return {"image": self.x[i], "label": self.y[i]}
        return self.x[i], self.y[i]


def synthetic_items(*, as_dict: bool = False, **args: Any) -> tuple[Items, Items]:
    """batchlab's synthetic data as (train, test) map-style Datasets."""
    from batchlab.data import make_synthetic

    raw = make_synthetic(**args)
    assert isinstance(raw.x_train, torch.Tensor) and isinstance(raw.x_test, torch.Tensor)
    return (
        Items(raw.x_train, raw.y_train, as_dict=as_dict),
        Items(raw.x_test, raw.y_test, as_dict=as_dict),
    )


def masked_tokens(
    *, n_train: int = 96, n_test: int = 32, context: int = 12, vocab: int = 11, seed: int = 0
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """`tokens` as a dict batch: {"tokens", "mask"} inputs, each sequence padded after a random
    length (mask 0, target -100 there), so batches hold unequal token counts."""
    x_tr, y_tr, x_te, y_te = tokens(
        n_train=n_train, n_test=n_test, context=context, vocab=vocab, seed=seed
    )
    g = torch.Generator().manual_seed(seed + 1)

    def pad(x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        lengths = torch.randint(2, context + 1, (x.shape[0], 1), generator=g)
        mask = (torch.arange(context)[None, :] < lengths).long()
        return {"tokens": x * mask, "mask": mask}, torch.where(mask == 1, y, -100)

    (xa, ya), (xb, yb) = pad(x_tr, y_tr), pad(x_te, y_te)
    return xa, ya, xb, yb


class MaskedBigram(nn.Module):
    """A bigram model taking a dict batch: `model(tokens=..., mask=...)` -> logits [B, T, V]."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.embed(tokens) * mask[..., None])
        return logits


def masked_bigram(*, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    return MaskedBigram(num_classes, width)


class DictItems(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """`masked_tokens` as a map-style Dataset of dict items with two inputs and a label."""

    def __init__(self, x: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.x["tokens"][i], "mask": self.x["mask"][i], "labels": self.y[i]}


def masked_token_items(**args: Any) -> tuple[DictItems, DictItems]:
    xa, ya, xb, yb = masked_tokens(**args)
    return DictItems(xa, ya), DictItems(xb, yb)


def dict_tokens(
    **args: Any,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """`tokens` as a dict batch of one entry, {"tokens": x}: the same data, read as `model(**x)`."""
    x_tr, y_tr, x_te, y_te = tokens(**args)
    return {"tokens": x_tr}, y_tr, {"tokens": x_te}, y_te


class _DictBigram(nn.Sequential):
    """`bigram` called as `model(tokens=...)`: the same parameters, names and initial weights."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out: torch.Tensor = self[1](self[0](tokens))
        return out


def dict_bigram(*, input_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    return _DictBigram(nn.Embedding(num_classes, width), nn.Linear(width, num_classes))
