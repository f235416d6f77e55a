"""How numbers read in tables, reports and messages: one rule per kind of number, here."""

from __future__ import annotations

from collections.abc import Sequence

LR_DIGITS = 3
"""Significant digits of a learning rate on screen: 0.0224, not 0.0223607 (a log grid's)."""


def lr_text(lr: float) -> str:
    """A learning rate to 3 significant digits: 0.0223607 -> "0.0224", 0.1 -> "0.1"."""
    return f"{lr:.{LR_DIGITS}g}"


def lr_texts(lrs: Sequence[float]) -> list[str]:
    """Labels for distinct learning rates (an axis, a legend): 3 significant digits, more only
    where two would otherwise read the same."""
    for digits in range(LR_DIGITS, 17):
        labels = [f"{lr:.{digits}g}" for lr in lrs]
        if len(set(labels)) == len(set(lrs)):
            return labels
    return [repr(lr) for lr in lrs]
