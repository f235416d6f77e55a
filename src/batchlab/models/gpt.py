"""A decoder-only transformer in the nanoGPT mould (karpathy/nanoGPT, `model.py`).

Token and learned position embeddings, `layers` pre-LayerNorm blocks (causal self-attention,
then a 4x GELU MLP, each added to the residual stream), a final LayerNorm and an output layer
tied to the token embedding. Initialisation follows GPT-2 as nanoGPT does: N(0, 0.02) for every
linear and embedding weight, zero biases, and the residual projections scaled down by
1/sqrt(2 * layers). Maps tokens [B, T] to next-token logits [B, T, V], so it trains through the
`language-model` task; a dict batch (`input_ids`, `attention_mask`) is taken as Hugging Face
models take it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from batchlab.errors import SpecError


@dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """The model's shape; `context` unset means the data's sequence length."""

    layers: int = 4
    heads: int = 4
    width: int = 128
    context: int | None = None
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    """Multi-head attention where position t attends to positions <= t only."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.c_attn = nn.Linear(width, 3 * width)  # query, key and value in one matmul
        self.c_proj = nn.Linear(width, width)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`mask`: None (causal), or a boolean [B, 1, T, T] of the key positions each query
        may attend to (causal and not padding; `GPT.forward` builds it)."""
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        # [B, T, C] -> [B, heads, T, C / heads]
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=mask is None,
        )
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        out: torch.Tensor = self.resid_dropout(self.c_proj(y))
        return out


class MLPBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.dropout(self.c_proj(self.gelu(self.c_fc(x))))
        return out


class Block(nn.Module):
    """Pre-LayerNorm: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLPBlock(width, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


class GPT(nn.Module):
    """Tokens [B, T] (T <= context) -> logits [B, T, vocab]."""

    def __init__(self, *, vocab: int, context: int, layers: int, heads: int, width: int,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.context = context
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied: one matrix embeds and un-embeds tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: residual projections scaled by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`model(idx)`, or a dict batch as Hugging Face models take it: `model(**batch)` with
        `input_ids` and an optional `attention_mask` [B, T] (1 for a token, 0 for padding).
        Padding is never attended to; positions count from 0 whatever the padding, as GPT-2's
        do without `position_ids`."""
        if (idx is None) == (input_ids is None):
            raise TypeError("GPT: pass the token ids once, as idx or as input_ids")
        idx = input_ids if idx is None else idx
        assert idx is not None
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"a sequence of {t} tokens is longer than the context {self.context}")
        mask = None
        if attention_mask is not None:  # (no check for "all ones": that would sync with it)
            # causal and not padding; a query may always see itself, so a padding position
            # whose earlier keys are all padding gets a finite (ignored) output, never NaN
            causal = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril()
            keys = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
            eye = torch.eye(t, dtype=torch.bool, device=idx.device)
            mask = (causal & keys) | eye
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x, mask)
        out: torch.Tensor = self.lm_head(self.ln_f(x))
        return out


def _positive_int(args: dict[str, Any], key: str, default: int | None) -> int | None:
    value = args.get(key, default)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise SpecError(f"model_args.{key}: need a positive integer, got {value!r}")
    return value


def build(input_shape: Sequence[int], num_classes: int, args: dict[str, Any]) -> nn.Module:
    allowed = [f.name for f in fields(GPTConfig)]
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise SpecError(f"model_args: gpt takes {', '.join(allowed)}, not {', '.join(unknown)}")
    if len(input_shape) != 1:
        raise SpecError(
            f"model: gpt needs token ids [N, T] (a language model's data), got examples of shape "
            f"{tuple(input_shape)}; use a text dataset such as text:PATH or fortunes"
        )
    seq = int(input_shape[0])
    d = GPTConfig()
    layers, heads, width = (
        _positive_int(args, k, getattr(d, k)) for k in ("layers", "heads", "width")
    )
    assert layers is not None and heads is not None and width is not None
    context = _positive_int(args, "context", None) or seq
    if context < seq:
        raise SpecError(
            f"model_args.context: {context} is shorter than the data's sequences of {seq} tokens;"
            " raise it or lower dataset_args.context"
        )
    if width % heads:
        raise SpecError(
            f"model_args.width: {width} is not a multiple of heads = {heads}; change one of them"
        )
    dropout = args.get("dropout", d.dropout)
    if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise SpecError(f"model_args.dropout: need a number in [0, 1), got {dropout!r}")
    return GPT(
        vocab=num_classes,
        context=context,
        layers=layers,
        heads=heads,
        width=width,
        dropout=float(dropout),
    )
