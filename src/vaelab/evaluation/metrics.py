"""Dataset-level metrics: mean loss terms, active units, posterior codes."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["loss_term_sums", "mean_loss_terms", "posterior_means", "active_units"]


@torch.no_grad()
def loss_term_sums(model: nn.Module, batches: Iterable) -> tuple[dict[str, Tensor], int]:
    """Sum over examples of every term in ``model(batch).scalars()`` (eval mode), and the count."""
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    count = 0
    try:
        for batch in batches:
            n = len(batch)  # examples in the batch: rows of a tensor, sequences of a TokenBatch
            for k, v in model(batch).scalars().items():
                sums[k] = sums[k] + v * n if k in sums else v * n
            count += n
    finally:
        model.train(was_training)
    return sums, count


def mean_loss_terms(model: nn.Module, batches: Iterable) -> dict[str, float]:
    """Per-example means of every loss term over ``batches`` (e.g. the test ELBO, KL, ...)."""
    sums, count = loss_term_sums(model, batches)
    return {k: v.item() / count for k, v in sums.items()}


@torch.no_grad()
def posterior_means(model: nn.Module, batches: Iterable) -> Tensor:
    """E_q[z|x] for every example: (N, latent_dim), from a ``LatentVariableModel``'s ``posterior_mean``."""
    model.eval()
    return torch.cat([model.posterior_mean(x) for x in batches])


def active_units(codes: Tensor, threshold: float = 1e-2) -> tuple[int, Tensor]:
    """Burda et al. (2016) active units: dimension u is active when Cov_x(E_q[z_u|x]) > threshold.

    codes: (N, latent_dim) posterior means. Returns (count, per-dimension variance (latent_dim,)).
    """
    var = codes.double().var(dim=0, unbiased=True)
    return int((var > threshold).sum()), var
