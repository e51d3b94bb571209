"""KL divergences: closed forms through torch.distributions' registry, Monte Carlo otherwise.

Every closed form vaelab needs is either already in ``torch.distributions.kl`` or registered here
with :func:`torch.distributions.kl.register_kl`, so ``torch.distributions.kl_divergence`` (and
:func:`kl` below) find it. Pairs without a closed form fall back to a Monte Carlo estimate.

Shapes follow torch.distributions: the result has the distributions' ``batch_shape``; event dims
(``Independent``) are summed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal, register_kl
from torch.distributions.kl import _KL_REGISTRY, kl_divergence

__all__ = [
    "kl",
    "kl_monte_carlo",
    "has_closed_form",
    "kl_categorical",
    "kl_terms",
    "kl_gaussian",
    "DiagonalGaussianKL",
]


def has_closed_form(p: Distribution, q: Distribution) -> bool:
    """True when torch.distributions' registry holds a closed form for KL(p || q)."""
    try:
        kl_divergence(p, q)
    except NotImplementedError:
        return False
    return True


def kl_monte_carlo(
    p: Distribution, q: Distribution, n_samples: int = 1, *, reparameterize: bool = True
) -> Tensor:
    """Monte Carlo estimate of KL(p || q) = E_p[log p(z) - log q(z)].

    Args:
        p, q: distributions with equal batch and event shapes.
        n_samples: samples drawn from p; the estimate is their mean (unbiased, variance ~ 1/n).
        reparameterize: use ``rsample`` so the estimate is differentiable in p's parameters.
    Returns:
        Tensor of shape ``batch_shape``.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    z = p.rsample((n_samples,)) if reparameterize and p.has_rsample else p.sample((n_samples,))
    return (p.log_prob(z) - q.log_prob(z)).mean(0)


def kl(p: Distribution, q: Distribution, *, n_samples: int = 1, analytic: bool | None = None) -> Tensor:
    """KL(p || q): the closed form when one is registered, else a Monte Carlo estimate.

    ``analytic=True`` demands the closed form (raises if none), ``False`` forces Monte Carlo,
    ``None`` (default) picks the closed form when available.
    """
    if analytic is not False:
        try:
            return kl_divergence(p, q)
        except NotImplementedError:
            if analytic:
                raise
    return kl_monte_carlo(p, q, n_samples)


def kl_terms(q: Tensor, p: Tensor) -> Tensor:
    """Per-outcome contributions q_i log(q_i / p_i) of the discrete KL(q || p), in nats.

    Uses the convention 0 log(0/p) = 0. Shapes broadcast; ``q`` and ``p`` are probabilities
    (not logits). A contribution can be negative; only their sum is >= 0.
    """
    q = torch.as_tensor(q, dtype=torch.float64)
    p = torch.as_tensor(p, dtype=torch.float64)
    ratio = torch.where(q > 0, q / p, torch.ones_like(q))
    return torch.where(q > 0, q * torch.log(ratio), torch.zeros_like(q))


def kl_categorical(q: Tensor, p: Tensor, dim: int = -1) -> Tensor:
    """KL(q || p) for discrete distributions given as probability vectors along ``dim``."""
    return kl_terms(q, p).sum(dim)


def kl_gaussian(mu_q: Tensor, cov_q: Tensor, mu_p: Tensor, cov_p: Tensor) -> Tensor:
    """KL(N(mu_q, cov_q) || N(mu_p, cov_p)) for full covariances (shape (..., D) and (..., D, D)).

    0.5 [tr(S_p^-1 S_q) + (m_p - m_q)^T S_p^-1 (m_p - m_q) - D + log det S_p - log det S_q].
    """
    d = mu_q.shape[-1]
    lp = torch.linalg.cholesky(cov_p)
    lq = torch.linalg.cholesky(cov_q)
    diff = (mu_p - mu_q).unsqueeze(-1)
    sol = torch.cholesky_solve(torch.cat([cov_q, diff], -1), lp)
    trace = torch.diagonal(sol[..., :d], dim1=-2, dim2=-1).sum(-1)
    maha = (diff * sol[..., d:]).sum((-2, -1))
    logdet_p = 2 * torch.log(torch.diagonal(lp, dim1=-2, dim2=-1)).sum(-1)
    logdet_q = 2 * torch.log(torch.diagonal(lq, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (trace + maha - d + logdet_p - logdet_q)


class DiagonalGaussianKL:
    """Namespace for the diagonal-Gaussian KL written directly in (mu, log variance) form.

    KL(N(mu, diag(exp(logvar))) || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 - exp(logvar_j))
    (Kingma & Welling 2014, Appendix B). Equal to the registry's Independent(Normal) pair; kept
    because it needs no sqrt/log round trip and fuses well.
    """

    @staticmethod
    def to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
        """Shape (..., D) -> (...): summed over the last (event) dim."""
        return -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1)


# torch ships Normal/Normal and Independent/Independent; Categorical/Categorical too. The extra
# pair we register is Independent(Normal) against a plain Normal prior of matching batch shape
# broadcast over the event, which comes up when a prior is built as Normal(0, 1) without Independent.
if (Independent, Normal) not in _KL_REGISTRY:

    @register_kl(Independent, Normal)
    def _kl_independent_normal(p: Independent, q: Normal) -> Tensor:
        base = p.base_dist
        if not isinstance(base, Normal):
            raise NotImplementedError
        ndims = p.reinterpreted_batch_ndims
        terms = kl_divergence(base, q)
        return terms.sum(tuple(range(-ndims, 0))) if ndims else terms
