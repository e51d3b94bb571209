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
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    constraints,
    register_kl,
)
from torch.distributions.utils import broadcast_all

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
    "DiscretizedLogistic",
    "discretized_logistic",
    "discretized_logistic_mixture",
    "DiscretizedLogisticHead",
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

    Its ``sample`` draws u ~ U(0, 1) and returns 1 where u < p: the same distribution as
    ``torch.bernoulli``, about five times faster on CPU (the dreams of wake-sleep draw 784 pixels per
    example at every step). A plain torch.distributions object in every other respect (mean, entropy,
    KL registry).
    """

    def __init__(self, logits: Tensor, event_dims: int):
        super().__init__(Bernoulli(logits=logits, validate_args=False), event_dims, validate_args=False)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(FactorisedBernoulli, _instance)
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value: Tensor) -> Tensor:
        return bernoulli_log_prob(self.base_dist.logits, value, self.reinterpreted_batch_ndims)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            probs = self.base_dist.probs.expand(shape)
            return (torch.rand(shape, dtype=probs.dtype, device=probs.device) < probs).to(probs.dtype)


def bernoulli(logits: Tensor, event_dims: int) -> Independent:
    """Factorised Bernoulli over the last ``event_dims`` dims of ``logits``."""
    return FactorisedBernoulli(logits, event_dims)


_LOG_BIN = -math.log(255)  # log of a bin's width
_MIN_LOG_SCALE = -60.0  # exp(60) ~ 1e26 keeps standardised values finite in float32


def _log1mexp(log_d: Tensor) -> Tensor:
    """log(1 - e^{-d}) for d = exp(log_d) > 0, elementwise, accurate and with finite gradients at
    any log_d: below d = e^-20 it is log d - d/2 (the series; the next term, d^2/24, is below
    float64's epsilon there), which needs no d that underflows; above, log(-expm1(-d)). Each branch
    is evaluated on clamped inputs, so the branch torch.where discards has no inf to back-propagate.
    """
    small = log_d < -20.0
    d_small = torch.exp(log_d.clamp(max=-20.0))
    d_large = torch.exp(log_d.clamp(min=-20.0, max=20.0))  # above e^20, 1 - e^{-d} is 1 exactly
    return torch.where(small, log_d - 0.5 * d_small, torch.log(-torch.expm1(-d_large)))


class DiscretizedLogistic(Distribution):
    """A logistic(loc, exp(log_scale)) density integrated over the 256 bins of 8-bit data scaled to
    [0, 1] (Salimans et al. 2017, PixelCNN++, Section 2.1, one component per value).

    Values are the levels x = k/255, k = 0..255; P(x) is the logistic's mass on
    [x - 1/510, x + 1/510], with the bins of 0 and 1 extended to -inf and +inf so that the 256
    masses sum to 1. ``loc`` and ``log_scale`` broadcast to the batch shape; the event shape is ()
    (``discretized_logistic`` wraps it in ``Independent`` for an image's (C, H, W)).

    Unlike a density on [0, 1], the probabilities are at most 1 and log p(x) <= 0: a sharp
    distribution at the right level costs close to 0 bits, never a negative number.
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval  # the mass sits on its 256 points k/255
    has_rsample = False

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: bool | None = False):
        self.loc, self.log_scale = broadcast_all(loc, log_scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc, new.log_scale = self.loc.expand(batch_shape), self.log_scale.expand(batch_shape)
        super(DiscretizedLogistic, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def scale(self) -> Tensor:
        return torch.exp(self.log_scale)

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(value): value (..., *batch_shape) of levels k/255 -> (..., *batch_shape) nats.

        With u, l the standardised upper and lower edges of the bin, (k + 1/2)/255 and (k - 1/2)/255,
        and F = sigmoid the logistic CDF: bin 0: log F(u); bin 255: log(1 - F(l)) = log F(-l); the
        others: log(F(u) - F(l)), as log F(u) + log F(-l) + log(1 - e^{-(u - l)}), since
        F(u) - F(l) = F(u) F(-l) (1 - e^{l - u}). No difference of two CDFs is taken, so nothing
        cancels in either tail, and u - l = (1/255)/s comes straight from log_scale: when it is too
        small to represent, the last term is log((1/255)/s) and the whole is the density at the
        bin's centre times the bin's width.

        ``value`` is read as the level k = round(255 value): each edge is then the same number for
        the two bins it separates (x +- 1/510 in floating point is not), which keeps the 256
        probabilities summing to 1 even when the scale is below the rounding error of x.
        """
        log_scale = self.log_scale.clamp(min=_MIN_LOG_SCALE)  # below it every bin is a point mass
        inv_scale = torch.exp(-log_scale)
        level = torch.round(value * 255)
        upper = ((level + 0.5) / 255 - self.loc) * inv_scale
        lower = ((level - 0.5) / 255 - self.loc) * inv_scale
        log_cdf_upper = F.logsigmoid(upper)  # log F(u): all of bin 0's mass
        log_sf_lower = F.logsigmoid(-lower)  # log(1 - F(l)): all of bin 255's mass
        log_inner = log_cdf_upper + log_sf_lower + _log1mexp(_LOG_BIN - log_scale)
        return torch.where(level <= 0, log_cdf_upper, torch.where(level >= 255, log_sf_lower, log_inner))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Levels k/255, shape (*sample_shape, *batch_shape): a logistic draw
        loc + s log(u / (1 - u)), u ~ U(0, 1) (the inverse CDF), clipped to [0, 1] and rounded to
        the nearest level, which is exactly the bin it falls in (edge bins extended)."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
            scale = torch.exp(self.log_scale.clamp(_MIN_LOG_SCALE, -_MIN_LOG_SCALE))
            x = self.loc + scale * (torch.log(u) - torch.log1p(-u))
            return torch.round(x.clamp(0.0, 1.0) * 255) / 255

    @property
    def mean(self) -> Tensor:
        """E[x], exactly, shape batch_shape: for x = K/255, E[K] = sum_{k=1}^{255} P(K >= k)
        = sum_k (1 - F((k - 1/2)/255)); 255 elementwise passes, no (256, ...) tensor."""
        log_scale = self.log_scale.clamp(_MIN_LOG_SCALE, -_MIN_LOG_SCALE)
        inv_scale = torch.exp(-log_scale)
        total = torch.zeros_like(self.loc)
        for k in range(1, 256):
            total = total + torch.sigmoid((self.loc - (k - 0.5) / 255) * inv_scale)
        return total / 255


def discretized_logistic(loc: Tensor, log_scale: Tensor, event_dims: int) -> Independent:
    """p(x) = prod_d DiscretizedLogistic(x_d; loc_d, exp(log_scale_d)) over the last ``event_dims``
    dims, e.g. loc, log_scale (B, C, H, W) and event_dims=3: batch (B,), event (C, H, W)."""
    return Independent(DiscretizedLogistic(loc, log_scale), event_dims, validate_args=False)


def discretized_logistic_mixture(
    logits: Tensor, loc: Tensor, log_scale: Tensor, event_dims: int
) -> Independent:
    """A mixture of M discretized logistics per value (PixelCNN++'s likelihood, without its
    coupling of colour channels): logits, loc, log_scale (..., M) with the components last;
    batch ``shape[:-1 - event_dims]``, event the ``event_dims`` dims before the components."""
    mixture = MixtureSameFamily(
        Categorical(logits=logits, validate_args=False),
        DiscretizedLogistic(loc, log_scale),
        validate_args=False,
    )
    return Independent(mixture, event_dims, validate_args=False)


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


class DiscretizedLogisticHead(LikelihoodHead):
    """p(x|z) = prod_d DiscretizedLogistic(x_d; mu_d, s_d) for 8-bit images scaled to [0, 1]
    (Salimans et al. 2017): a decoder output (..., 2, *event_shape) holds the means and raw
    log-scales; the result has batch (...) and event ``event_shape`` (e.g. (C, H, W)).

    The log-scale is bounded below by ``min_log_scale`` (softly, through softplus). The likelihood
    cannot diverge as a Gaussian's can (each bin's probability is at most 1); the bound only keeps
    its gradients in a sensible range. At the default, s >= e^-9 ~ 1.2e-4, a sixteenth of a bin's
    half width, the bin under the mean can still hold all but 2e-7 of the mass.
    """

    name = "discretized_logistic"
    params_per_dim = 2

    def __init__(self, min_log_scale: float = -9.0):
        self.min_log_scale = min_log_scale

    def _split(self, params: Tensor, event_ndim: int) -> tuple[Tensor, Tensor]:
        loc, raw = params.unbind(params.dim() - event_ndim - 1)
        return loc, self.min_log_scale + F.softplus(raw - self.min_log_scale)

    def __call__(self, params: Tensor, event_shape: tuple[int, ...]) -> Distribution:
        loc, log_scale = self._split(params, len(event_shape))
        return discretized_logistic(loc, log_scale, len(event_shape))

    def mean(self, params: Tensor, event_ndim: int) -> Tensor:
        return DiscretizedLogistic(*self._split(params, event_ndim)).mean

    def check_data(self, x: Tensor, chunk: int = 1 << 22) -> None:
        """Values must be 8-bit levels k/255 in [0, 1] (any shape): the likelihood is a probability
        of a level, and says nothing about values between them."""
        for part in x.reshape(-1).split(chunk):
            levels = part * 255
            bad = ~((part >= 0) & (part <= 1) & ((levels - levels.round()).abs() < 1e-3))  # NaN too
            if bool(bad.any()):
                value = part[bad][0].item()
                raise VaelabError(
                    f"the discretized_logistic likelihood models 8-bit levels k/255 in [0, 1], but the "
                    f"data hold {value:.6g}; use undithered images scaled by 1/255, or "
                    "model.likelihood = gaussian_sigmoid"
                )


LIKELIHOODS: dict[str, type[LikelihoodHead]] = {}


def register_likelihood(cls: type[LikelihoodHead]) -> type[LikelihoodHead]:
    LIKELIHOODS[cls.name] = cls
    return cls


register_likelihood(BernoulliHead)
register_likelihood(GaussianHead)
register_likelihood(GaussianSigmoidHead)
register_likelihood(DiscretizedLogisticHead)


def likelihood_head(name: str) -> LikelihoodHead:
    try:
        return LIKELIHOODS[name]()
    except KeyError:
        raise VaelabError(f"unknown likelihood {name!r}; choose one of {sorted(LIKELIHOODS)}") from None
