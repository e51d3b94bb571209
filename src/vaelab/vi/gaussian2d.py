"""Mean-field Gaussian fits to a correlated Gaussian p (Example 3 of the lecture).

p(z) = N(mu, Sigma) with precision Lambda = Sigma^-1; q(z) = prod_i N(z_i; m_i, s_i^2).

* Reverse KL, KL(q || p), minimised by CAVI (Bishop 2006, eqs. 10.12-10.13):
  s_i^2 = 1 / Lambda_ii and m_i = mu_i - Lambda_ii^-1 sum_{k != i} Lambda_ik (m_k - mu_k).
  The fixed point is m = mu with the *conditional* variances 1 / Lambda_ii, which are smaller than the
  marginal variances Sigma_ii whenever p is correlated: reverse KL under-disperses.
* Forward KL, KL(p || q), is minimised by matching moments: m = mu, s_i^2 = Sigma_ii (the marginals).

Because p is normalised, ELBO(q) = E_q[log p(z)] + H[q] = -KL(q || p) <= 0 = log Z. Everything is
float64 torch; shapes are (D,) for means and (D, D) for covariances. Works for any D, not only 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vaelab.divergences import kl_gaussian
from vaelab.vi.cavi import CaviTrace, cavi

__all__ = [
    "DiagonalGaussian",
    "correlated_gaussian",
    "elbo",
    "reverse_kl_cavi",
    "reverse_kl_closed_form",
    "forward_kl_fit",
]


@dataclass(frozen=True)
class DiagonalGaussian:
    """A mean-field Gaussian q(z) = prod_i N(z_i; mean_i, var_i); ``mean`` and ``var`` have shape (D,)."""

    mean: Tensor
    var: Tensor

    @property
    def cov(self) -> Tensor:
        return torch.diag(self.var)


def correlated_gaussian(rho: float = 0.9, scales: tuple[float, float] = (1.0, 1.0), mean=(0.0, 0.0)):
    """A 2-D Gaussian with correlation ``rho``: returns (mu (2,), Sigma (2, 2)), float64."""
    if not -1.0 < rho < 1.0:
        raise ValueError(f"rho must be in (-1, 1), got {rho}")
    s = torch.tensor(scales, dtype=torch.float64)
    corr = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    return torch.as_tensor(mean, dtype=torch.float64), corr * s[:, None] * s[None, :]


def _as64(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def elbo(q: DiagonalGaussian, mu, cov) -> float:
    """ELBO(q) = -KL(q || p) for a normalised p = N(mu, cov) (log Z = 0), in nats."""
    return -float(kl_gaussian(q.mean, q.cov, _as64(mu), _as64(cov)))


def reverse_kl_closed_form(mu, cov) -> DiagonalGaussian:
    """argmin_q KL(q || p) over mean-field q: mean mu, variances 1 / diag(Sigma^-1)."""
    mu, cov = _as64(mu), _as64(cov)
    return DiagonalGaussian(mu.clone(), 1.0 / torch.diagonal(torch.linalg.inv(cov)))


def forward_kl_fit(mu, cov) -> DiagonalGaussian:
    """argmin_q KL(p || q) over mean-field q: the marginals, mean mu and variances diag(Sigma)."""
    mu, cov = _as64(mu), _as64(cov)
    return DiagonalGaussian(mu.clone(), torch.diagonal(cov).clone())


def reverse_kl_cavi(
    mu, cov, init_mean=None, *, tol: float = 1e-15, max_sweeps: int = 10000, check_every_update: bool = True
) -> tuple[DiagonalGaussian, CaviTrace, list[Tensor]]:
    """Minimise KL(q || p) by CAVI, one coordinate per update (Bishop 2006, eqs. 10.12-10.13).

    Args:
        mu: (D,) mean of p; cov: (D, D) covariance of p.
        init_mean: (D,) starting means (default: mu + 2, so the path is visible in a plot).
    Returns:
        (q, trace, path): the fitted q, the CAVI trace (ELBO per sweep), and the means after every
        single coordinate update (for drawing the zig-zag path), each of shape (D,).
    """
    mu, cov = _as64(mu), _as64(cov)
    lam = torch.linalg.inv(cov)
    d = mu.shape[0]
    var = 1.0 / torch.diagonal(lam)  # eq. 10.13: the factor's variance does not depend on the others
    m0 = (mu + 2.0) if init_mean is None else _as64(init_mean).clone()
    path = [m0.clone()]

    def make_update(i: int):
        def update(m: Tensor) -> Tensor:
            m = m.clone()
            others = lam[i] @ (m - mu) - lam[i, i] * (m[i] - mu[i])
            m[i] = mu[i] - others / lam[i, i]  # eq. 10.12
            path.append(m.clone())
            return m

        return update

    trace = cavi(
        m0,
        [make_update(i) for i in range(d)],
        lambda m: elbo(DiagonalGaussian(m, var), mu, cov),
        tol=tol,
        max_sweeps=max_sweeps,
        round_off=1e-12,
        check_every_update=check_every_update,
    )
    return DiagonalGaussian(trace.state, var), trace, path
