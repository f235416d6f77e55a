"""The pre-activation ResNet: shapes, each norm option trains, and what each norm adds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from batchlab.errors import SpecError
from batchlab.models import GhostBatchNorm, PreActResNet, build_model

SHAPE = (1, 28, 28)


def resnet(norm: str, seed: int = 0, **args: object) -> nn.Module:
    return build_model(
        "resnet",
        {"depth": 1, "width": 4, "norm": norm, **args},
        input_shape=SHAPE,
        num_classes=10,
        seed=seed,
    )


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 9, 13), (8, 8)])
def test_any_image_size_gives_class_logits(shape: tuple[int, ...]) -> None:
    m = build_model("resnet", {"depth": 2, "width": 4}, input_shape=shape, num_classes=7, seed=0)
    assert isinstance(m, PreActResNet)
    assert m(torch.randn(5, *shape)).shape == (5, 7)
    assert len(m.blocks) == 3 * 2  # three stages of `depth` blocks


@pytest.mark.parametrize("norm", ["batch", "ghost", "none"])
def test_each_norm_trains_a_step(norm: str) -> None:
    m = resnet(norm, ghost_batch=4) if norm == "ghost" else resnet(norm)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, *SHAPE, generator=g), torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = F.cross_entropy(m(x), y).item()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
    assert F.cross_entropy(m(x), y).item() < before


def test_parameters_differ_by_norm_as_expected() -> None:
    batch, ghost, none = resnet("batch"), resnet("ghost", ghost_batch=4), resnet("none")
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in batch.modules())
    assert n_bn == 1 + 2 * 3  # two per block, one before the head
    assert sum(isinstance(x, GhostBatchNorm) for x in ghost.modules()) == n_bn
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in none.modules())
    # ghost is batch's network with every norm wrapped: the same parameters, drawn alike
    pb, pg = list(batch.parameters()), list(ghost.parameters())
    assert len(pb) == len(pg) and all(torch.equal(a, b) for a, b in zip(pb, pg, strict=True))
    # none drops each norm's scale and shift, and gives every convolution a bias instead

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    bn_params = sum(2 * x.num_features for x in batch.modules() if isinstance(x, nn.BatchNorm2d))
    conv_bias = sum(x.out_channels for x in none.modules() if isinstance(x, nn.Conv2d))
    assert count(none) == count(batch) - bn_params + conv_bias
    # the same network in eval mode (running statistics); in training mode ghost normalizes
    # chunks of 4 where batch normalizes all 12
    x = torch.randn(12, *SHAPE)
    batch.eval(), ghost.eval()
    torch.testing.assert_close(batch(x), ghost(x))
    batch.train(), ghost.train()
    assert not torch.allclose(batch(x), ghost(x))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"norm": "layer"}, "model_args.norm: 'layer' is unknown; use batch, ghost or none"),
        ({"norm": "batch", "ghost_batch": 8}, 'model_args.ghost_batch: only with norm = "ghost"'),
        ({"depth": 0}, "model_args.depth: need a positive integer"),
        ({"widths": [8]}, "resnet takes depth, width, norm, ghost_batch, not widths"),
    ],
)
def test_bad_resnet_args_are_one_line_errors(args: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        build_model("resnet", args, input_shape=SHAPE, num_classes=10, seed=0)
    with pytest.raises(SpecError, match="model: resnet needs images"):
        build_model("resnet", {}, input_shape=(40,), num_classes=10, seed=0)
