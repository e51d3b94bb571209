"""Weight averaging: an exponential moving average (EMA) of the parameters along the training path.

The averaged weights are usually better than the last iterate, whose noise comes from the last few
minibatches: evaluating the average is a cheap form of Polyak-Ruppert averaging. The trainer keeps
the average beside the parameters, validates with it, writes it as the checkpoint's weights (so
``vaelab eval``, ``sample`` and ``report`` use it without knowing) and keeps the raw training
weights in the trainer state, so that a resumed run continues exactly.

The update ``a <- a + (1 - d) (p - a)`` runs every ``every`` optimizer steps (and after the first
and the last step of a run) with
``d = min(decay ** every, (1 + n) / (10 + n))`` after ``n`` updates: early on, when the decay would
mostly remember the random initialisation, the average follows the parameters more closely.
Updating every few steps with the decay raised to that power averages over the same horizon at a
fraction of the memory traffic.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["ParameterAverage", "raw_weights", "raw_weight_tensors"]

RAW_PREFIX = "raw."
"""Trainer-state key prefix of the raw training weights saved beside an averaged checkpoint."""


def raw_weight_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Name -> tensor as trainer-state entries: ``raw.<name>``."""
    return {RAW_PREFIX + n: t for n, t in state.items()}


def raw_weights(trainer_state: dict[str, Tensor] | None) -> dict[str, Tensor]:
    """The raw training weights in a checkpoint's trainer state (empty when it was not averaged)."""
    return {k[len(RAW_PREFIX):]: v for k, v in (trainer_state or {}).items() if k.startswith(RAW_PREFIX)}


class ParameterAverage:
    """The EMA of ``params`` (name -> parameter).

    Args:
        named_params: the parameters to average, e.g. ``model.named_parameters()``.
        decay: per-step decay in [0, 1); the average spans about ``1 / (1 - decay)`` steps.
        every: update every this many steps (with ``decay ** every``).
    """

    def __init__(self, named_params: Iterable[tuple[str, nn.Parameter]], decay: float, every: int = 1):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        pairs = [(n, p) for n, p in named_params if p.requires_grad]
        self.names = [n for n, _ in pairs]
        self.params = [p for _, p in pairs]
        self.average = [p.detach().clone() for p in self.params]
        self.decay = decay
        self.every = every
        self.updates = 0
        self.swapped = False  # True while the parameters hold the average (see ``swap``)

    def weight(self) -> float:
        """The interpolation weight ``1 - d`` of the next update."""
        n = self.updates + 1
        return 1.0 - min(self.decay**self.every, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, step: int, last: bool = False) -> None:
        """Call after optimizer step number ``step`` (1-based). Updates when ``step % every == 0``,
        and also on the first call and on the run's ``last`` step, so that the average never
        stands at the initial weights, nor lags behind the end of a run shorter than ``every``."""
        if step % self.every and self.updates and not last:
            return
        if self.swapped:
            raise RuntimeError("ParameterAverage.update while the parameters hold the average")
        w = self.weight()
        self.updates += 1
        for a, p in zip(self.average, self.params):  # a <- a + w (p - a)
            a.lerp_(p.detach(), w)

    def unswap(self) -> None:
        """Make sure the parameters hold the training weights (after ``swap``, or already)."""
        if self.swapped:
            self.swap()

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the values of the parameters and of the average (twice restores both)."""
        for p, a in zip(self.params, self.average):
            tmp = p.detach().clone()
            p.copy_(a)
            a.copy_(tmp)
        self.swapped = not self.swapped

    def averaged_state(self) -> dict[str, Tensor]:
        """Name -> averaged tensor, whichever side holds it."""
        src = self.params if self.swapped else self.average
        return {n: t.detach() for n, t in zip(self.names, src)}

    def training_state(self) -> dict[str, Tensor]:
        """Name -> the optimizer's own (raw) parameter values, whichever side holds them."""
        src = self.average if self.swapped else self.params
        return {n: t.detach() for n, t in zip(self.names, src)}

    @torch.no_grad()
    def load(self, averaged: dict[str, Tensor], updates: int) -> None:
        """Set the average (and the update count) from a checkpoint; the parameters are untouched."""
        self.unswap()
        for n, a in zip(self.names, self.average):
            a.copy_(averaged[n])
        self.updates = int(updates)
