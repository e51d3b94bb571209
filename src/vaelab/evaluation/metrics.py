"""Dataset-level metrics: mean loss terms, active units, posterior codes, mutual information."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["loss_term_sums", "mean_loss_terms", "posterior_means", "active_units", "posterior_parameters",
           "mutual_information"]


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


@torch.no_grad()
def posterior_parameters(model: nn.Module, batches: Iterable) -> tuple[Tensor, Tensor] | None:
    """(loc, logvar), each (N, latent_dim), of a ``LatentVariableModel`` whose ``encode`` returns a
    diagonal Gaussian (:class:`~vaelab.distributions.DiagonalGaussian`); None for other posteriors."""
    from vaelab.distributions import DiagonalGaussian

    model.eval()
    locs, logvars = [], []
    for x in batches:
        q = model.encode(x)
        if not isinstance(q, DiagonalGaussian):
            return None
        locs.append(q.base_dist.loc.detach().double().cpu())
        logvars.append(q.logvar.detach().double().cpu())
    return torch.cat(locs), torch.cat(logvars)


def mutual_information(loc: Tensor, logvar: Tensor, *, generator: torch.Generator | None = None,
                       chunk: int = 256) -> float:
    """I_q(x; z) under the aggregate posterior, as He et al. (2019) estimate it, in nats.

    The data distribution is the N examples; q(x, z) = q(z|x) / N; the aggregate posterior is the
    mixture q(z) = 1/N sum_m q(z|x_m). Then

        I = E_x E_q(z|x)[log q(z|x)] - E_x E_q(z|x)[log q(z)]

    with the first term in closed form (minus the Gaussian entropy) and the second by one sample
    z_n ~ q(z|x_n) per example, log q(z_n) evaluated exactly against all N mixture components.
    It lies in [0, log N] up to Monte Carlo error; it is 0 when every posterior is the same and
    approaches log N when the posteriors do not overlap. Cost: N^2 * latent_dim, in row chunks.

    loc, logvar: (N, D) posterior means and log-variances.
    """
    loc, logvar = loc.double(), logvar.double()
    n, d = loc.shape
    neg_entropy = (-0.5 * d * math.log(2 * math.pi) - 0.5 * (1 + logvar).sum(1)).mean()
    eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
    z = loc + torch.exp(0.5 * logvar) * eps
    inv_var = torch.exp(-logvar)  # (N, D)
    log_norm = -0.5 * (d * math.log(2 * math.pi) + logvar.sum(1))  # (N,)
    scaled_loc = loc * inv_var
    loc_term = (loc * scaled_loc).sum(1)  # sum_j mu_mj^2 / var_mj  (N,)
    total = loc.new_zeros(())
    for rows in z.split(chunk):
        # sum_j (z_rj - mu_mj)^2 / var_mj for every row r of the chunk and component m, (r, N), as
        # three matmul-shaped terms (no (r, N, D) intermediate)
        sq = rows.square() @ inv_var.T - 2 * rows @ scaled_loc.T + loc_term[None]
        log_qz = torch.logsumexp(log_norm[None] - 0.5 * sq, dim=1) - math.log(n)
        total = total + log_qz.sum()
    return (neg_entropy - total / n).item()
