"""Variational bounds on log p(x), written once for every latent-variable model.

**Loss scale (the convention everywhere in vaelab).** Every bound is a per-example quantity in
**nats**: log-densities are summed over event dims; a training loss is the mean over the batch of
the negative bound, i.e. nats per example. Images additionally report bits/dim
(nats / (D ln 2)); text reports NLL per sentence and perplexity per word.

A model supplies three things and these functions do the rest:
  * ``posterior``: q(z|x), a Distribution with batch shape (B,) and event shape (Dz,),
  * ``decode``: z of shape (S, B, Dz) -> p(x|z), a Distribution with batch shape (S, B),
  * ``prior``: p(z), a Distribution with event shape (Dz,) (batch shape () or (B,)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab.divergences import DiagonalGaussianKL
from vaelab.divergences import kl as kl_divergence

__all__ = [
    "ElboTerms",
    "logmeanexp",
    "log_importance_weights",
    "elbo",
    "elbo_diag_gaussian",
    "iwae",
    "OBJECTIVES",
    "objective",
]

Decoder = Callable[[Tensor], Distribution]
LogLikelihood = Callable[[Tensor], Tensor]


@dataclass
class ElboTerms:
    """Per-example terms of a bound, each of shape (B,), in nats.

    ``bound`` is what is maximised: the ELBO, or the IWAE-k bound.
    ``reconstruction`` is E_q[log p(x|z)] and ``kl`` is KL(q(z|x) || p(z)) (analytic or sampled),
    so for the ELBO ``bound = reconstruction - kl``; for IWAE they are reported for monitoring.
    """

    bound: Tensor
    reconstruction: Tensor
    kl: Tensor


def logmeanexp(x: Tensor, dim: int = 0, keepdim: bool = False) -> Tensor:
    """log(mean(exp(x))) along ``dim``, computed stably."""
    return torch.logsumexp(x, dim=dim, keepdim=keepdim) - math.log(x.shape[dim])


def log_importance_weights(
    x: Tensor, posterior: Distribution, decode: Decoder, prior: Distribution, k: int
) -> Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x). Returns shape (k, B).

    E_q[w] = p(x), so logmeanexp over k is a stochastically lower-bounded estimate of log p(x)
    (Burda et al. 2016, eq. 8).
    """
    z = posterior.rsample((k,))  # (k, B, Dz)
    return decode(z).log_prob(x) + prior.log_prob(z) - posterior.log_prob(z)


def _elbo_terms(log_px_z: Tensor, kl: Tensor, kl_weight: float | Tensor) -> ElboTerms:
    """ELBO = E_q[log p(x|z)] - beta KL from log p(x|z) of shape (S, B) and the KL of shape (B,);
    beta a number or a 0-dim tensor."""
    # one sample: a view instead of a reduction (and no backward node for it)
    reconstruction = log_px_z.squeeze(0) if log_px_z.shape[0] == 1 else log_px_z.mean(0)  # (B,)
    if isinstance(kl_weight, Tensor) or kl_weight != 1.0:
        bound = reconstruction - kl_weight * kl
    else:
        bound = reconstruction - kl
    return ElboTerms(bound=bound, reconstruction=reconstruction, kl=kl)


def elbo(
    x: Tensor,
    posterior: Distribution,
    decode: Decoder,
    prior: Distribution,
    n_samples: int = 1,
    analytic_kl: bool = True,
    kl_weight: float | Tensor = 1.0,
) -> ElboTerms:
    """ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)), the SGVB estimator (Kingma & Welling 2014, eq. 7
    with the analytic KL; eq. 6 with the sampled one).

    ``kl_weight`` (beta) scales the KL inside ``bound`` (KL annealing, beta-VAE); with beta != 1 the
    result is no longer a bound on log p(x), which is why evaluation always uses beta = 1.
    """
    z = posterior.rsample((n_samples,))  # (S, B, Dz)
    log_px_z = decode(z).log_prob(x)  # (S, B)
    if analytic_kl:
        kl = kl_divergence(posterior, prior, analytic=True)
    else:
        kl = (posterior.log_prob(z) - prior.log_prob(z)).mean(0)
    return _elbo_terms(log_px_z, kl, kl_weight)


def elbo_diag_gaussian(
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    log_likelihood: LogLikelihood,
    n_samples: int = 1,
    kl_weight: float | Tensor = 1.0,
) -> ElboTerms:
    """:func:`elbo` with the analytic KL for q(z|x) = N(mu, diag(exp(logvar))) and p(z) = N(0, I),
    written on tensors: the training hot path, where building Distribution objects every step
    costs more than the KL itself.

    mu, logvar: (B, Dz). ``log_likelihood``: z (S, B, Dz) -> log p(x|z) (S, B). For the same random
    state it returns exactly what ``elbo(x, diag_gaussian(mu, logvar), decode, standard_normal(Dz),
    n_samples, analytic_kl=True, kl_weight=kl_weight)`` returns (the same eps is drawn).
    """
    std = torch.exp(0.5 * logvar)
    eps = torch.randn((n_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    z = torch.addcmul(mu, std, eps)  # z = mu + sigma * eps (Kingma & Welling 2014, eq. 4 / App. C)
    log_px_z = log_likelihood(z)  # (S, B)
    kl = DiagonalGaussianKL.to_standard_normal(mu, logvar)  # K&W eq. 10 / App. B
    return _elbo_terms(log_px_z, kl, kl_weight)


def iwae(
    x: Tensor,
    posterior: Distribution,
    decode: Decoder,
    prior: Distribution,
    n_samples: int = 5,
    analytic_kl: bool = True,
    kl_weight: float = 1.0,
) -> ElboTerms:
    """IWAE-k bound L_k = E[log (1/k) sum_k w_k] (Burda et al. 2016, eq. 8); L_1 is the ELBO and
    L_k rises with k towards log p(x).

    ``reconstruction`` and ``kl`` are the single-sample-style averages over the k draws (for
    monitoring only). ``kl_weight`` must be 1: the importance weights admit no annealing.
    """
    if kl_weight != 1.0:
        raise ValueError("the IWAE bound has no KL weight; anneal with the 'elbo' objective")
    z = posterior.rsample((n_samples,))
    log_px_z = decode(z).log_prob(x)  # (k, B)
    log_q = posterior.log_prob(z)
    log_w = log_px_z + prior.log_prob(z) - log_q
    if analytic_kl:
        kl = kl_divergence(posterior, prior, analytic=True)
    else:
        kl = (log_q - prior.log_prob(z)).mean(0)
    return ElboTerms(bound=logmeanexp(log_w, 0), reconstruction=log_px_z.mean(0), kl=kl)


OBJECTIVES: dict[str, Callable[..., ElboTerms]] = {"elbo": elbo, "iwae": iwae}


def objective(name: str) -> Callable[..., ElboTerms]:
    """Look up a training objective by name ('elbo' or 'iwae')."""
    return OBJECTIVES[name]
