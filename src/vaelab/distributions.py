"""Constructors for the distributions vaelab models use, and likelihood heads.

Everything returned is a plain ``torch.distributions.Distribution``: a diagonal Gaussian is
``Independent(Normal, 1)``, a factorised Bernoulli over an image is ``Independent(Bernoulli, 3)``.
Argument validation is switched off in these hot paths (shapes are checked by the models' tests).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from vaelab.errors import VaelabError

__all__ = [
    "diag_gaussian",
    "standard_normal",
    "bernoulli",
    "bernoulli_log_prob",
    "FactorisedBernoulli",
    "LikelihoodHead",
    "BernoulliHead",
    "GaussianHead",
    "LIKELIHOODS",
    "register_likelihood",
    "likelihood_head",
]


def diag_gaussian(mu: Tensor, logvar: Tensor) -> Independent:
    """q = N(mu, diag(exp(logvar))) with the last dim as the event. mu, logvar: (..., D)."""
    return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False)


def standard_normal(dim: int, device=None, dtype=None) -> Independent:
    """The prior p(z) = N(0, I_dim), batch shape (), event shape (dim,)."""
    zeros = torch.zeros(dim, device=device, dtype=dtype)
    return Independent(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1, validate_args=False)


def bernoulli_log_prob(logits: Tensor, x: Tensor, event_dims: int = 1) -> Tensor:
    """log prod_d Bernoulli(x_d; sigmoid(l_d)) = sum_d [x_d l_d - softplus(l_d)] over the last
    ``event_dims`` dims.

    Because log sigmoid(l) = l - softplus(l) and log(1 - sigmoid(l)) = -softplus(l). ``x`` (values in
    [0, 1]) broadcasts against ``logits``, e.g. x (B, D) against logits (S, B, D), without being
    copied. The same number as ``Independent(Bernoulli(logits=l), event_dims).log_prob(x)``, in two
    passes over l instead of binary_cross_entropy_with_logits' four: the x.l term is a dot product
    and softplus is the only transcendental (it dominates the cost of the importance-sampled
    log-likelihood after the decoder's matmuls).
    """
    if event_dims != 1:
        logits, x = logits.flatten(-event_dims), x.flatten(-event_dims)
    return torch.linalg.vecdot(logits, x) - F.softplus(logits).sum(-1)


class FactorisedBernoulli(Independent):
    """``Independent(Bernoulli(logits), event_dims)`` whose ``log_prob`` is :func:`bernoulli_log_prob`.

    A plain torch.distributions object in every other respect (sample, mean, entropy, KL registry).
    """

    def __init__(self, logits: Tensor, event_dims: int):
        super().__init__(Bernoulli(logits=logits, validate_args=False), event_dims, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FactorisedBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: Tensor) -> Tensor:
        return bernoulli_log_prob(self.base_dist.logits, value, self.reinterpreted_batch_ndims)


def bernoulli(logits: Tensor, event_dims: int) -> Independent:
    """Factorised Bernoulli over the last ``event_dims`` dims of ``logits``."""
    return FactorisedBernoulli(logits, event_dims)


class LikelihoodHead(ABC):
    """Turns a decoder's raw output into p(x|z).

    A head needs ``params_per_dim`` numbers per data dimension; the decoder outputs a tensor of
    shape (..., params_per_dim, *event_shape) which ``__call__`` turns into a distribution with
    batch shape (...) and the given event shape.
    """

    name: ClassVar[str]
    params_per_dim: ClassVar[int]

    @abstractmethod
    def __call__(self, params: Tensor, event_shape: tuple[int, ...]) -> Distribution: ...

    @abstractmethod
    def mean(self, params: Tensor, event_ndim: int) -> Tensor:
        """E[x|z], shape (..., *event_shape): for pictures of reconstructions and samples."""

    def check_data(self, x: Tensor) -> None:
        """Raise VaelabError when data cannot come from this likelihood."""


class BernoulliHead(LikelihoodHead):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(l_d)) for binary data (Kingma & Welling App. C.1)."""

    name = "bernoulli"
    params_per_dim = 1

    def __call__(self, params: Tensor, event_shape: tuple[int, ...]) -> Distribution:
        return bernoulli(params.squeeze(-len(event_shape) - 1), len(event_shape))

    def mean(self, params: Tensor, event_ndim: int) -> Tensor:
        return torch.sigmoid(params.select(params.dim() - event_ndim - 1, 0))

    def check_data(self, x: Tensor) -> None:
        if x.min() < 0 or x.max() > 1:
            raise VaelabError(
                "the Bernoulli decoder needs data in [0, 1]; set data.binarize or use model.likelihood='gaussian'"
            )


class GaussianHead(LikelihoodHead):
    """p(x|z) = prod_d N(x_d; mu_d, sigma_d^2), mean and log-variance both decoded (K&W App. C.2).

    The log-variance is bounded below by ``min_logvar`` (softly, through softplus) so the density
    cannot collapse onto a pixel that is constant in the training set.
    """

    name = "gaussian"
    params_per_dim = 2

    def __init__(self, min_logvar: float = math.log(1e-4)):
        self.min_logvar = min_logvar

    def _split(self, params: Tensor, event_ndim: int) -> tuple[Tensor, Tensor]:
        axis = params.dim() - event_ndim - 1
        mu, raw = params.unbind(axis)
        logvar = self.min_logvar + F.softplus(raw - self.min_logvar)
        return mu, logvar

    def __call__(self, params: Tensor, event_shape: tuple[int, ...]) -> Distribution:
        mu, logvar = self._split(params, len(event_shape))
        return Independent(
            Normal(mu, torch.exp(0.5 * logvar), validate_args=False), len(event_shape), validate_args=False
        )

    def mean(self, params: Tensor, event_ndim: int) -> Tensor:
        return params.select(params.dim() - event_ndim - 1, 0)


LIKELIHOODS: dict[str, type[LikelihoodHead]] = {}


def register_likelihood(cls: type[LikelihoodHead]) -> type[LikelihoodHead]:
    LIKELIHOODS[cls.name] = cls
    return cls


register_likelihood(BernoulliHead)
register_likelihood(GaussianHead)


def likelihood_head(name: str) -> LikelihoodHead:
    try:
        return LIKELIHOODS[name]()
    except KeyError:
        raise VaelabError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}") from None
