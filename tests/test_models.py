from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from batchlab.errors import SpecError
from batchlab.models import build_model


def test_mlp_is_the_simple_architecture() -> None:
    m = build_model("mlp", {"widths": [32, 16]}, input_shape=(1, 8, 8), num_classes=10, seed=0)
    linears = [x for x in m.modules() if isinstance(x, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (64, 32),
        (32, 16),
        (16, 10),
    ]
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert m(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model("mlp", {}, input_shape=(4,), num_classes=2, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model("mlp", {}, input_shape=(4,), num_classes=2, seed=7)
    c = build_model("mlp", {}, input_shape=(4,), num_classes=2, seed=8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 8, 8), (40,), (2, 40)])
@pytest.mark.parametrize("bn", [False, True])
def test_cnn_on_images_and_signals(shape: tuple[int, ...], bn: bool) -> None:
    m = build_model(
        "cnn", {"batchnorm": bn, "channels": [4, 8]}, input_shape=shape, num_classes=3, seed=0
    )
    assert m(torch.randn(6, *shape)).shape == (6, 3)
    has_bn = any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert has_bn == bn


def test_user_factory_gets_shape_and_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n"
        "def tiny(input_shape, num_classes, hidden=3):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], hidden),\n"
        "                         nn.Linear(hidden, num_classes))\n"
        "def not_a_model(**kw):\n"
        "    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("mymodels:tiny", {"hidden": 5}, input_shape=(4,), num_classes=2, seed=0)
    assert isinstance(m, nn.Sequential) and m[1].out_features == 5
    with pytest.raises(SpecError, match="not an nn.Module"):
        build_model("mymodels:not_a_model", {}, input_shape=(4,), num_classes=2, seed=0)
    sys.modules.pop("mymodels", None)


def test_bad_model_names_and_args() -> None:
    with pytest.raises(SpecError, match="unknown model 'vgg'"):
        build_model("vgg", {}, input_shape=(4,), num_classes=2, seed=0)
    with pytest.raises(SpecError, match="mlp takes only 'widths'"):
        build_model("mlp", {"depth": 3}, input_shape=(4,), num_classes=2, seed=0)
    with pytest.raises(SpecError, match="widths"):
        build_model("mlp", {"widths": [0]}, input_shape=(4,), num_classes=2, seed=0)


def typo_factory(
    *, input_shape: tuple[int, ...], num_classes: int, width: int = 8
) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(math.prod(input_shape), width),
        torch.nn.Linear(width, num_classes),
    )


def test_a_model_arg_the_users_factory_does_not_take_is_an_error() -> None:
    """A typo used to be dropped silently (the factory then ran with its default width)."""
    ok = build_model(
        "tests.test_models:typo_factory", {"width": 5}, input_shape=(3,), num_classes=2, seed=0
    )
    assert isinstance(ok, torch.nn.Sequential) and ok[1].out_features == 5
    with pytest.raises(
        SpecError, match="model_args: tests.test_models:typo_factory takes width, not widht"
    ):
        build_model(
            "tests.test_models:typo_factory", {"widht": 5}, input_shape=(3,), num_classes=2, seed=0
        )
