"""The nanoGPT-style decoder against a hand-written reference, and its causal mask."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from batchlab import batch
from batchlab.errors import SpecError
from batchlab.models import GPT, build_model
from batchlab.models.gpt import Block
from batchlab.spec import spec_from_dict
from tests.conftest import SpecFactory
from tests.test_engine import run
from tests.workloads import masked_tokens

ARGS = {"layers": 2, "heads": 2, "width": 16}


def tiny(seed: int = 0, **args: object) -> GPT:
    model = build_model("gpt", {**ARGS, **args}, input_shape=(12,), num_classes=11, seed=seed)
    assert isinstance(model, GPT)
    return model


def reference_logits(
    model: GPT, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The same network written out by hand: explicit layer norm, masked softmax attention per
    head, erf GELU, and the tied output matrix. With an `attention_mask` a query attends to the
    earlier tokens that are not padding, and always to itself."""

    def layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias

    t = idx.shape[1]
    x = model.wte.weight[idx] + model.wpe.weight[:t]
    mask = torch.tril(torch.ones(t, t, dtype=torch.bool))
    if attention_mask is not None:  # [B, T, T]
        mask = (mask & attention_mask.bool()[:, None, :]) | torch.eye(t, dtype=torch.bool)
    for block in model.blocks:
        assert isinstance(block, Block)
        attn = block.attn
        h = layer_norm(x, block.ln_1)
        qkv = h @ attn.c_attn.weight.T + attn.c_attn.bias
        c = x.shape[-1]
        d = c // attn.heads
        heads = []
        for i in range(attn.heads):
            q = qkv[..., i * d : (i + 1) * d]
            k = qkv[..., c + i * d : c + (i + 1) * d]
            v = qkv[..., 2 * c + i * d : 2 * c + (i + 1) * d]
            scores = (q @ k.transpose(1, 2)) / math.sqrt(d)
            scores = scores.masked_fill(~mask, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v)
        y = torch.cat(heads, dim=-1)
        x = x + y @ attn.c_proj.weight.T + attn.c_proj.bias
        h = layer_norm(x, block.ln_2)
        mlp = block.mlp
        h = h @ mlp.c_fc.weight.T + mlp.c_fc.bias
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        x = x + h @ mlp.c_proj.weight.T + mlp.c_proj.bias
    return layer_norm(x, model.ln_f) @ model.wte.weight.T


def test_forward_and_backward_match_the_hand_written_reference() -> None:
    model = tiny()
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 11, (3, 12), generator=g)
    targets = torch.randint(0, 11, (3, 12), generator=g)
    logits = model(idx)
    ref = reference_logits(model, idx)
    assert logits.shape == (3, 12, 11)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    params = list(model.parameters())
    grads = torch.autograd.grad(
        F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)), params
    )
    ref_grads = torch.autograd.grad(
        F.cross_entropy(ref.reshape(-1, 11), targets.reshape(-1)), params
    )
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("t", [0, 4, 10])
def test_later_tokens_never_change_earlier_logits(t: int) -> None:
    model = tiny().eval()
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 11, (2, 12), generator=g)
    changed = idx.clone()
    changed[:, t + 1 :] = torch.randint(0, 11, (2, 12 - t - 1), generator=g)
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    if t + 1 < 12 and not torch.equal(idx[:, t + 1 :], changed[:, t + 1 :]):
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # later positions do see them


def padded() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids [4, 12] and an attention mask: no padding, right padding, left padding, and
    padding on both sides."""
    idx = torch.randint(0, 11, (4, 12), generator=torch.Generator().manual_seed(5))
    keep = torch.ones(4, 12, dtype=torch.long)
    keep[1, 7:] = 0
    keep[2, :5] = 0
    keep[3, :2] = keep[3, 9:] = 0
    return idx, keep


def test_a_dict_batch_is_taken_as_hugging_face_models_take_it() -> None:
    model = tiny().eval()
    idx, keep = padded()
    plain = model(idx)
    torch.testing.assert_close(batch.call(model, {"input_ids": idx}), plain, rtol=0, atol=0)
    every = torch.ones_like(keep)  # a mask of all tokens is the causal mask
    got = batch.call(model, {"input_ids": idx, "attention_mask": every})
    torch.testing.assert_close(got, plain, rtol=1e-5, atol=1e-6)
    masked = batch.call(model, {"input_ids": idx, "attention_mask": keep})
    torch.testing.assert_close(masked, reference_logits(model, idx, keep), rtol=1e-5, atol=1e-5)
    assert torch.isfinite(masked).all()  # a left-padded first position sees only itself
    torch.testing.assert_close(masked[0], plain[0], rtol=1e-5, atol=1e-6)  # no padding
    right = keep[1].bool()  # right padding: what is kept sees only earlier tokens anyway
    torch.testing.assert_close(masked[1, right], plain[1, right], rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="as idx or as input_ids"):
        model(idx, input_ids=idx)


def test_padding_tokens_never_change_the_logits_of_the_kept_ones() -> None:
    model = tiny().eval()
    idx, keep = padded()
    other = torch.where(keep.bool(), idx, (idx + 3) % 11)
    a = model(input_ids=idx, attention_mask=keep)
    b = model(input_ids=other, attention_mask=keep)
    kept = keep.bool()
    torch.testing.assert_close(a[kept], b[kept], rtol=0, atol=1e-6)
    assert not torch.allclose(model(idx)[2], model(other)[2])  # without the mask they would


def hf_style_tokens(
    *, n_train: int = 96, n_test: int = 32
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """`tests.workloads.masked_tokens` under Hugging Face's names: input_ids, attention_mask."""
    xa, ya, xb, yb = masked_tokens(n_train=n_train, n_test=n_test)

    def rename(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"input_ids": x["tokens"], "attention_mask": x["mask"]}

    return rename(xa), ya, rename(xb), yb


def test_a_gpt_study_of_dict_batches_accumulates_like_the_whole_batch(
    make_spec: SpecFactory,
) -> None:
    spec = make_spec(
        dataset="tests.models.test_gpt:hf_style_tokens",
        dataset_args={"n_train": 96, "n_test": 32},
        model="gpt",
        model_args={"layers": 1, "heads": 2, "width": 16},
        optimizer="adamw",
        lrs=[0.01],
        batch_sizes=[16],
        budget={"epochs": 3},
    )
    whole, _, out = run(spec_from_dict(spec))
    assert out.state.value == "COMPLETE"
    assert whole[-1].val_loss < whole[0].val_loss - 0.2  # it learns from the kept tokens
    acc, _, _ = run(spec_from_dict({**spec, "accumulate": 4}))  # micro-batches of unequal tokens
    for a, b in zip(whole, acc, strict=True):
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-4)


def test_embeddings_are_tied_and_init_is_gpt2s() -> None:
    model = tiny()
    assert model.lm_head.weight is model.wte.weight
    n_params = sum(p.numel() for p in model.parameters())  # the tied matrix counted once
    width, vocab, context, layers = 16, 11, 12, 2
    per_block = 2 * 2 * width + (width * 3 * width + 3 * width) + (width * width + width)
    per_block += (width * 4 * width + 4 * width) + (4 * width * width + width)
    assert n_params == vocab * width + context * width + layers * per_block + 2 * width
    first = model.blocks[0]
    assert isinstance(first, Block)
    proj = first.attn.c_proj.weight
    assert float(proj.detach().std()) == pytest.approx(0.02 / math.sqrt(2 * layers), rel=0.25)
    assert torch.count_nonzero(first.attn.c_attn.bias) == 0


def test_same_seed_same_weights_and_dropout_only_in_training() -> None:
    a, b, c = tiny(seed=3), tiny(seed=3), tiny(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.wte.weight, c.wte.weight)
    drop = tiny(dropout=0.5)
    idx = torch.randint(0, 11, (2, 12))
    drop.eval()
    torch.testing.assert_close(drop(idx), drop(idx))
    drop.train()
    assert not torch.allclose(drop(idx), drop(idx))


def test_context_defaults_to_the_data_and_may_be_longer() -> None:
    assert tiny().context == 12
    long = tiny(context=32)
    assert long.context == 32 and long(torch.zeros(1, 12, dtype=torch.long)).shape == (1, 12, 11)


@pytest.mark.parametrize(
    ("args", "shape", "message"),
    [
        ({"width": 15}, (12,), "model_args.width: 15 is not a multiple of heads = 2"),
        ({"context": 8}, (12,), "model_args.context: 8 is shorter than the data's sequences"),
        ({"layers": 0}, (12,), "model_args.layers: need a positive integer"),
        ({"dropout": 1.5}, (12,), "model_args.dropout"),
        ({"depth": 2}, (12,), "gpt takes layers, heads, width, context, dropout, not depth"),
        ({}, (1, 28, 28), "model: gpt needs token ids"),
    ],
)
def test_bad_gpt_args_are_one_line_errors(
    args: dict[str, object], shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(SpecError, match=message) as err:
        build_model("gpt", {**ARGS, **args}, input_shape=shape, num_classes=11, seed=0)
    assert "\n" not in str(err.value)
