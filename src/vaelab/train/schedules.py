"""Schedules: pure functions of the step (no state, so resuming is exact by construction)."""

from __future__ import annotations

import math

from vaelab.schedules import linear_ramp

__all__ = ["learning_rate", "linear_ramp"]


def learning_rate(
    step: int, total_steps: int, lr: float, lr_final: float, kind: str, warmup_steps: int = 0
) -> float:
    """Learning rate at ``step`` of ``total_steps``.

    A linear warm-up from 0 over ``warmup_steps``, then ``constant`` (lr), ``cosine`` (half a
    cosine from lr to lr_final) or ``exponential`` (geometric from lr to lr_final).
    """
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    if kind == "constant":
        return lr
    if kind == "cosine":
        return lr_final + 0.5 * (lr - lr_final) * (1 + math.cos(math.pi * t))
    if kind == "exponential":
        return lr * (lr_final / lr) ** t
    raise ValueError(f"unknown schedule {kind!r}")
