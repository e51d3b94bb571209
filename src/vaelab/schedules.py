"""Weights that are pure functions of the step, used inside losses (KL annealing).

Below both ``models/`` and ``train/``: a model's loss reads the weight of its step, the trainer's
learning-rate schedule lives beside it in ``vaelab.train.schedules`` and re-exports this.
"""

from __future__ import annotations

import math

__all__ = ["linear_ramp", "logistic_ramp"]


def linear_ramp(step: int, length: int, start: float = 0.0, end: float = 1.0) -> float:
    """``start`` at step 0 rising linearly to ``end`` at ``length`` (and after). length 0: ``end``."""
    if length <= 0 or step >= length:
        return end
    return start + (end - start) * step / length


def logistic_ramp(step: int, length: int, steepness: float = 10.0) -> float:
    """A logistic rise from 0 at step 0 to 1 at ``length`` (and after); length 0: 1.

    The KL annealing of Bowman et al. (2016, Section 3.1): s(t) = 1 / (1 + exp(-k (t - t0))) with
    midpoint t0 = length / 2 and slope k = steepness / length, rescaled so that the ramp starts at
    exactly 0 and ends at exactly 1: w(t) = (s(t) - s(0)) / (s(length) - s(0)). By symmetry
    w(length / 2) = 1/2; with the default steepness s(0) = 1 / (1 + e^5) = 0.0067, so the rescaling
    changes the plain logistic by less than 1%.
    """
    if length <= 0 or step >= length:
        return 1.0
    if step <= 0:
        return 0.0
    k, t0 = steepness / length, length / 2

    def s(t: float) -> float:
        return 1.0 / (1.0 + math.exp(-k * (t - t0)))

    return (s(step) - s(0)) / (s(length) - s(0))
