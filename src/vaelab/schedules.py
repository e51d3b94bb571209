"""Weights that are pure functions of the step, used inside losses (KL annealing).

Below both ``models/`` and ``train/``: a model's loss reads the weight of its step, the trainer's
learning-rate schedule lives beside it in ``vaelab.train.schedules`` and re-exports this.
"""

from __future__ import annotations

__all__ = ["linear_ramp"]


def linear_ramp(step: int, length: int, start: float = 0.0, end: float = 1.0) -> float:
    """``start`` at step 0 rising linearly to ``end`` at ``length`` (and after). length 0: ``end``."""
    if length <= 0 or step >= length:
        return end
    return start + (end - start) * step / length
