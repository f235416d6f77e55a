from __future__ import annotations

import itertools
import math

import pytest

from batchlab.lr import momentum_rule_batch, noise_scale, scaled_lr, warmup_lr


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [
        ("none", 256, 0.01),
        ("linear", 256, 0.08),  # Chang & Pathak: 0.01 at 32 -> 0.08 at 256
        ("linear", 8, 0.0025),
        ("sqrt", 128, 0.02),
        ("sqrt", 8, 0.005),
    ],
)
def test_scaling_rules_match_reference(rule: str, batch: int, expected: float) -> None:
    assert scaled_lr(0.01, batch, 32, rule) == pytest.approx(expected)  # type: ignore[arg-type]


def test_linear_rule_keeps_lr_per_example_constant() -> None:
    # Masters & Luschi: eta = B * eta_tilde, so eta / B is the same at every batch size.
    per_example = {b: scaled_lr(0.01, b, 32, "linear") / b for b in (2, 8, 64, 1024)}
    assert len({round(v, 15) for v in per_example.values()}) == 1


def test_warmup_ramps_linearly_from_reference_to_scaled() -> None:
    lrs = [warmup_lr(s, lr_ref=0.1, lr=0.5, warmup_steps=4) for s in range(7)]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[2] == pytest.approx(0.3)
    assert lrs[4:] == [0.5, 0.5, 0.5]
    diffs = [b - a for a, b in itertools.pairwise(lrs[:5])]
    assert all(math.isclose(d, 0.1) for d in diffs)


def test_no_warmup_is_constant() -> None:
    assert warmup_lr(0, lr_ref=0.1, lr=0.5, warmup_steps=0) == 0.5


def test_momentum_rule_keeps_the_noise_scale() -> None:
    # Smith et al.: g = eta N / (B (1 - m)); B proportional to 1 / (1 - m) keeps it fixed.
    b = momentum_rule_batch(32, 0.0, 0.9)
    assert b == pytest.approx(320)
    g0 = noise_scale(0.1, 50_000, 32, 0.0)
    g1 = noise_scale(0.1, 50_000, round(b), 0.9)
    assert g0 == pytest.approx(0.1 * (50_000 / 32 - 1))
    assert g1 == pytest.approx(g0, rel=0.01)  # exact up to the N/B - 1 correction
    # and B proportional to eta: doubling both leaves g (nearly) unchanged
    assert noise_scale(0.2, 50_000, 64) == pytest.approx(noise_scale(0.1, 50_000, 32), rel=1e-3)
