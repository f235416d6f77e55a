"""Learning-rate rules from ../shared/REFERENCE.md: scaling with batch size, and linear warmup.

An lr in batchlab is always given at a reference batch size; these functions turn it into the lr
passed to the optimizer at batch size B.
"""

from __future__ import annotations

import math
from typing import Literal

Scaling = Literal["none", "linear", "sqrt"]


def scaled_lr(lr_ref: float, batch_size: int, reference_batch_size: int, rule: Scaling) -> float:
    """eta at batch B from eta_ref at B_ref: none, linear (x B/B_ref) or sqrt (x sqrt(B/B_ref))."""
    ratio = batch_size / reference_batch_size
    if rule == "none":
        return lr_ref
    if rule == "linear":
        return lr_ref * ratio
    if rule == "sqrt":
        return lr_ref * math.sqrt(ratio)
    raise ValueError(f"unknown lr scaling rule {rule!r}; use none, linear or sqrt")


def warmup_lr(step: int, *, lr_ref: float, lr: float, warmup_steps: int) -> float:
    """Goyal et al.'s warmup: ramp linearly from eta_ref to the scaled eta over `warmup_steps`.

    `step` is the number of updates already applied, so the first update uses eta_ref and update
    number `warmup_steps` (0-based) and later use eta.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return lr
    return lr_ref + (lr - lr_ref) * step / warmup_steps


def noise_scale(lr: float, n_train: int, batch_size: int, momentum: float = 0.0) -> float:
    """Smith et al.'s SGD noise scale g = eta (N / B - 1) / (1 - m), about eta N / (B (1 - m))."""
    return lr * (n_train / batch_size - 1) / (1 - momentum)


def momentum_rule_batch(batch_size: int, momentum: float, new_momentum: float) -> float:
    """The batch that keeps the noise scale when momentum changes: B proportional to 1 / (1 - m)."""
    return batch_size * (1 - momentum) / (1 - new_momentum)
