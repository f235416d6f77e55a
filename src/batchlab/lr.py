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


def decay_factor(
    kind: str, step: float, total_steps: int, *, warmup: int, final: float, decay_steps: int
) -> float:
    """The multiplier of the peak lr for the update after `step` updates, out of `total_steps`
    (nanoGPT's `get_lr`): warmup (step + 1) / (warmup + 1) for the first `warmup` updates; then
    constant 1; cosine final + (1 - final) (1 + cos(pi p)) / 2 or linear 1 - (1 - final) p, with
    p = (step - warmup) / (total_steps - warmup) going from 0 to 1; or wsd: 1 until the last
    `decay_steps` updates, then linear from 1 to `final` over them."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    if kind == "wsd":
        start = total_steps - decay_steps
        if step < start:
            return 1.0
        return 1.0 - (1.0 - final) * min(1.0, (step - start) / max(1, decay_steps))
    p = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if kind == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    if kind == "linear":
        return 1.0 - (1.0 - final) * p
    raise ValueError(f"unknown lr decay {kind!r}; use constant, cosine, linear or wsd")


def noise_scale(lr: float, n_train: int, batch_size: int, momentum: float = 0.0) -> float:
    """Smith et al.'s SGD noise scale g = eta (N / B - 1) / (1 - m), about eta N / (B (1 - m))."""
    return lr * (n_train / batch_size - 1) / (1 - momentum)


def momentum_rule_batch(batch_size: int, momentum: float, new_momentum: float) -> float:
    """The batch that keeps the noise scale when momentum changes: B proportional to 1 / (1 - m)."""
    return batch_size * (1 - momentum) / (1 - new_momentum)
