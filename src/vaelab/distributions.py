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
from torch.distributions import Bernoulli, Distribution, Independent, Normal, register_kl

from vaelab.divergences import DiagonalGaussianKL
from vaelab.errors import VaelabError

__all__ = [
    "diag_gaussian",
    "standard_normal",
    "DiagonalGaussian",
    "StandardNormal",
    "bernoulli",
    "bernoulli_log_prob",
    "FactorisedBernoulli",
    "LikelihoodHead",
    "BernoulliHead",
    "GaussianHead",
    "GaussianSigmoidHead",
    "LIKELIHOODS",
    "register_likelihood",
    "likelihood_head",
]


_LOG_2PI = math.log(2 * math.pi)


class DiagonalGaussian(Independent):
    """N(mu, diag(exp(logvar))) over the last dim: ``Independent(Normal(mu, exp(logvar / 2)), 1)``.

    It keeps ``logvar``, so that its KL to :class:`StandardNormal` is the closed form of Kingma &
    Welling (2014, App. B), registered below, in one fused expression with no sqrt/log round trip,
    and its log-density needs no log of the scale. A plain torch.distributions object otherwise.
    """

    def __init__(self, mu: Tensor, logvar: Tensor):
        self.logvar = logvar
        super().__init__(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiagonalGaussian, _instance)
        new.logvar = self.logvar.expand(torch.Size(batch_shape) + self.event_shape)
        return super().expand(batch_shape, _instance=new)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) (the reparameterisation trick), in one fused op."""
        base = self.base_dist
        eps = torch.randn(self._extended_shape(sample_shape), dtype=base.loc.dtype, device=base.loc.device)
        return torch.addcmul(base.loc, base.scale, eps)

    def log_prob(self, value: Tensor) -> Tensor:
        """-1/2 sum_j [(z_j - mu_j)^2 exp(-logvar_j) + logvar_j + log 2 pi]."""
        lv = self.logvar
        return -0.5 * ((value - self.base_dist.loc).square() * torch.exp(-lv) + lv + _LOG_2PI).sum(-1)


class StandardNormal(Independent):
    """The prior N(0, I_dim): batch shape (), event shape (dim,).

    Its log-density is -1/2 (|z|^2 + dim log 2 pi), one reduction instead of Normal's five passes.
    """

    def __init__(self, dim: int, device=None, dtype=None):
        zeros = torch.zeros(dim, device=device, dtype=dtype)
        super().__init__(Normal(zeros, torch.ones_like(zeros), validate_args=False), 1, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(StandardNormal, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: Tensor) -> Tensor:
        out = -0.5 * (value.square().sum(-1) + self.event_shape[0] * _LOG_2PI)
        # an expanded prior has a batch shape that value may not carry (Normal broadcasts it too)
        return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape)) if self.batch_shape else out


@register_kl(DiagonalGaussian, StandardNormal)
def _kl_diagonal_gaussian_standard_normal(p: DiagonalGaussian, q: StandardNormal) -> Tensor:
    # KL(N(mu, diag(e^lv)) || N(0, I)) = 1/2 sum_j (mu_j^2 + e^lv_j - lv_j - 1) (Kingma & Welling App. B),
    # the formula of divergences.DiagonalGaussianKL, put on the registry's dispatch path.
    if p.event_shape != q.event_shape:
        raise ValueError(f"KL between event shapes {tuple(p.event_shape)} and {tuple(q.event_shape)}")
    kl = DiagonalGaussianKL.to_standard_normal(p.base_dist.loc, p.logvar)
    return kl.expand(torch.broadcast_shapes(kl.shape, q.batch_shape)) if q.batch_shape else kl


def diag_gaussian(mu: Tensor, logvar: Tensor) -> DiagonalGaussian:
    """q = N(mu, diag(exp(logvar))) with the last dim as the event. mu, logvar: (..., D)."""
    return DiagonalGaussian(mu, logvar)


def standard_normal(dim: int, device=None, dtype=None) -> StandardNormal:
    """The prior p(z) = N(0, I_dim), batch shape (), event shape (dim,)."""
    return StandardNormal(dim, device=device, dtype=dtype)


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
    # softplus(l) is taken as l above the threshold; at 40 the error (e^-40) is below float64's epsilon
    return torch.linalg.vecdot(logits, x) - F.softplus(logits, threshold=40.0).sum(-1)


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

    def log_prob(self, params: Tensor, x: Tensor, event_shape: tuple[int, ...]) -> Tensor:
        """log p(x|z) from the decoder's output, shape (...): ``self(params, event_shape).log_prob(x)``.
        Heads with a fused form override it (it is the training hot path)."""
        return self(params, event_shape).log_prob(x)

    @abstractmethod
    def mean(self, params: Tensor, event_ndim: int) -> Tensor:
        """E[x|z], shape (..., *event_shape): for pictures of reconstructions and samples."""

    def check_data(self, x: Tensor) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Raise VaelabError when data cannot come from this likelihood."""


class BernoulliHead(LikelihoodHead):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(l_d)) for binary data (Kingma & Welling App. C.1)."""

    name = "bernoulli"
    params_per_dim = 1

    def __call__(self, params: Tensor, event_shape: tuple[int, ...]) -> Distribution:
        return bernoulli(params.squeeze(-len(event_shape) - 1), len(event_shape))

    def log_prob(self, params: Tensor, x: Tensor, event_shape: tuple[int, ...]) -> Tensor:
        return bernoulli_log_prob(params.squeeze(-len(event_shape) - 1), x, len(event_shape))

    def mean(self, params: Tensor, event_ndim: int) -> Tensor:
        return torch.sigmoid(params.select(params.dim() - event_ndim - 1, 0))

    def check_data(self, x: Tensor, chunk: int = 1 << 22) -> None:
        """Bernoulli is a distribution on {0, 1}: every value of ``x`` (any shape) must be exactly 0
        or 1. On grey levels its "log p(x)" and bits/dim would describe no density at all."""
        for part in x.reshape(-1).split(chunk):
            bad = (part != 0) & (part != 1)  # NaN is caught too
            if bool(bad.any()):
                value = part[bad][0].item()
                raise VaelabError(
                    f"the Bernoulli likelihood needs binary data (every value 0 or 1), but the data hold "
                    f"{value:.4g}; set data.binarize to dynamic/fixed/threshold, or use "
                    "model.likelihood = gaussian"
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


class GaussianSigmoidHead(GaussianHead):
    """p(x|z) = prod_d N(x_d; sigmoid(m_d), sigma_d^2): the Gaussian of :class:`GaussianHead` with
    its mean squashed into (0, 1), for data in [0, 1] such as Frey Face (Kingma & Welling 2014,
    App. C.2: "with a sigmoidal activation function at the output" of the mean). The variance is
    the bounded learned one of ``GaussianHead``; the density is still over the whole real line.
    """

    name = "gaussian_sigmoid"

    def _split(self, params: Tensor, event_ndim: int) -> tuple[Tensor, Tensor]:
        raw_mu, logvar = super()._split(params, event_ndim)
        return torch.sigmoid(raw_mu), logvar

    def mean(self, params: Tensor, event_ndim: int) -> Tensor:
        return torch.sigmoid(super().mean(params, event_ndim))

    def check_data(self, x: Tensor, chunk: int = 1 << 22) -> None:
        """The mean lies in (0, 1): data must be values in [0, 1] (grey levels / 255), any shape."""
        for part in x.reshape(-1).split(chunk):
            bad = ~((part >= 0) & (part <= 1))  # NaN is caught too
            if bool(bad.any()):
                value = part[bad][0].item()
                raise VaelabError(
                    f"the gaussian_sigmoid likelihood models values in [0, 1], but the data hold "
                    f"{value:.4g}; scale the data into [0, 1] or use model.likelihood = gaussian"
                )


LIKELIHOODS: dict[str, type[LikelihoodHead]] = {}


def register_likelihood(cls: type[LikelihoodHead]) -> type[LikelihoodHead]:
    LIKELIHOODS[cls.name] = cls
    return cls


register_likelihood(BernoulliHead)
register_likelihood(GaussianHead)
register_likelihood(GaussianSigmoidHead)


def likelihood_head(name: str) -> LikelihoodHead:
    try:
        return LIKELIHOODS[name]()
    except KeyError:
        raise VaelabError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}") from None
