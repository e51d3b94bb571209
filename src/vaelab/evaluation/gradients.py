"""Monte Carlo estimators of the ELBO's gradient with respect to q(z|x)'s parameters, and their variance.

For a batch x of B examples the quantity estimated is the gradient, with respect to parameters phi
of the approximate posterior q_phi(z|x) (an encoder's weights), of the batch-mean ELBO

    L(phi) = 1/B sum_b ( E_{q(z|x_b)}[ f(z) ] - KL_b ),

in one of two forms (``analytic_kl``):

* ``True``: f(z) = log p(x|z) and KL_b = KL(q(z|x_b) || p(z)) in closed form (Kingma & Welling
  2014, eq. 10), differentiated exactly; the estimators differ only on the reconstruction term.
  This is how vaelab's VAE trains.
* ``False``: f(z) = log p(x|z) + log p(z) - log q_phi(z|x) and no KL term (K&W eq. 6). Here f
  depends on phi directly as well as through z.

The estimators of grad_phi E_q[f(z)] from S draws z_s ~ q per example:

* **pathwise** (the reparameterisation trick, K&W 2014 eq. 4-7): z_s = mu + sigma * eps_s, and
  grad = 1/S sum_s [ (df/dz)(z_s) dz_s/dphi + df/dphi|_{z = z_s} ];
* **score function** (REINFORCE, Williams 1992; K&W sec. 2.2 note its variance):
  grad = 1/S sum_s (f(z_s) - b_s) grad_phi log q_phi(z_s|x), using E_q[grad_phi log q_phi] = 0.
  ``baseline="none"``: b_s = 0. ``baseline="leave_one_out"``: b_s is the mean of the other S - 1
  draws' signals f(z_t), t != s (Kool, van Hoof & Welling 2019, "Buy 4 REINFORCE samples, get a
  baseline for free"). b_s is independent of z_s, so the estimator stays unbiased; it needs S >= 2.

All estimators work for any :class:`~vaelab.models.base.LatentVariableModel` whose q(z|x) has
``rsample`` and ``log_prob`` and whose decoder treats every z on its own (p(x|z_s) depends on z_s
alone, as the interface's batch shape says). One draw serves every estimator and every S up to its
size (the estimate at S uses the first S draws): :func:`gradient_variance` measures each estimator's
variance over independent repetitions this way, with common random numbers across estimators.

Shapes: x (B, ...) as the model's ``loss`` takes it; z (S, B, Dz); gradients have their
parameters' shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from vaelab.divergences import kl as kl_divergence
from vaelab.models.base import LatentVariableModel

__all__ = [
    "ESTIMATORS",
    "Baseline",
    "pathwise_gradient",
    "score_function_gradient",
    "GradientMoments",
    "GradientVariance",
    "gradient_variance",
]

Baseline = Literal["none", "leave_one_out"]

ESTIMATORS: dict[str, str] = {
    "pathwise": "pathwise (reparameterised)",
    "score": "score function (REINFORCE), no baseline",
    "score_loo": "score function, leave-one-out baseline",
}
"""The estimators :func:`gradient_variance` compares: key -> label for tables and legends."""


@dataclass
class _Draw:
    """S draws for a batch, kept with the graphs the estimators differentiate.

    z: (S, B, Dz) ``rsample``, its graph reaching phi (for the pathwise term dz/dphi).
    log_q: (S, B) log q_phi(z|x) at the detached draws, its graph reaching phi (score functions,
        and the direct term df/dphi of the pathwise estimator when ``analytic_kl`` is False).
    signal: (S, B) f(z), detached.
    signal_grad: (S, B, Dz) df_s/dz_s (phi held fixed), detached.
    kl: (B,) the analytic KL with its graph, or None.
    """

    z: Tensor
    log_q: Tensor
    signal: Tensor
    signal_grad: Tensor
    kl: Tensor | None

    @property
    def n_samples(self) -> int:
        return self.z.shape[0]


def _draw(model: LatentVariableModel, x: Tensor, n_samples: int, analytic_kl: bool) -> _Draw:
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    with torch.enable_grad():
        q = model.encode(x)
        z = q.rsample((n_samples,))  # z = mu + sigma * eps (K&W eq. 4), (S, B, Dz)
        log_q = q.log_prob(z.detach())  # (S, B), through phi only
        zd = z.detach().requires_grad_(True)
        px = model.decode(zd)
        xe = x.reshape(x.shape[0], *px.event_shape)  # the decoder's event may be x flattened
        f = px.log_prob(xe)  # (S, B)
        if not analytic_kl:
            f = f + model.prior().log_prob(zd) - q.log_prob(zd)  # K&W eq. 6's integrand
        # each f[s, b] depends on zd[s, b] alone, so the gradient of the sum is every draw's own
        (grad,) = torch.autograd.grad(f.sum(), zd)
        kl = kl_divergence(q, model.prior(), analytic=True) if analytic_kl else None
    return _Draw(z=z, log_q=log_q, signal=f.detach(), signal_grad=grad, kl=kl)


def _backward(draw: _Draw, params: Sequence[Tensor], z_weight: Tensor | None, log_q_weight: Tensor | None
              ) -> list[Tensor]:
    """grad_phi of  sum(z_weight * z) + sum(log_q_weight * log_q) - mean_b KL_b  (weights detached)."""
    outputs, weights = [], []
    if z_weight is not None:
        outputs.append(draw.z)
        weights.append(z_weight)
    if log_q_weight is not None:
        outputs.append(draw.log_q)
        weights.append(log_q_weight)
    if draw.kl is not None:
        outputs.append(draw.kl)
        weights.append(torch.full_like(draw.kl, -1.0 / draw.kl.shape[0]))
    grads = torch.autograd.grad(outputs, list(params), weights, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _first(n: int, total: int, like: Tensor) -> Tensor:
    """(total, 1) weights 1/n on the first n draws, 0 after: the estimate from the first n."""
    w = torch.zeros(total, 1, dtype=like.dtype, device=like.device)
    w[:n] = 1.0 / n
    return w


def _pathwise(draw: _Draw, params: Sequence[Tensor], n: int, analytic_kl: bool) -> list[Tensor]:
    batch = draw.z.shape[1]
    w = _first(n, draw.n_samples, draw.signal) / batch  # (S, 1)
    z_weight = w[..., None] * draw.signal_grad  # chain rule through z = mu + sigma * eps
    # with the sampled KL, f = ... - log q_phi(z|x) also depends on phi at fixed z
    return _backward(draw, params, z_weight, None if analytic_kl else -w.expand_as(draw.log_q))


def _score(draw: _Draw, params: Sequence[Tensor], n: int, baseline: Baseline) -> list[Tensor]:
    batch = draw.z.shape[1]
    f = draw.signal[:n]  # (n, B)
    if baseline == "leave_one_out":
        if n < 2:
            raise ValueError("the leave-one-out baseline needs n_samples >= 2")
        b = (f.sum(0, keepdim=True) - f) / (n - 1)  # mean of the other n - 1 signals
        f = f - b
    elif baseline != "none":
        raise ValueError(f"baseline must be 'none' or 'leave_one_out', got {baseline!r}")
    weight = torch.zeros_like(draw.signal)
    weight[:n] = f / (n * batch)  # 1/(S B) sum_{s,b} (f_sb - b_sb) grad log q(z_sb|x_b)
    return _backward(draw, params, None, weight)


def pathwise_gradient(
    model: LatentVariableModel, x: Tensor, params: Sequence[Tensor], n_samples: int, *,
    analytic_kl: bool = True,
) -> list[Tensor]:
    """The reparameterised (pathwise) estimate of grad_params of the batch-mean ELBO from
    ``n_samples`` draws per example. x: (B, ...); returns one tensor per parameter, its shape.

    For the same random state it equals the autograd gradient of
    ``estimators.elbo(x, q, decode, prior, n_samples, analytic_kl).bound.mean()`` (the same draws)."""
    params = list(params)
    return _pathwise(_draw(model, x, n_samples, analytic_kl), params, n_samples, analytic_kl)


def score_function_gradient(
    model: LatentVariableModel, x: Tensor, params: Sequence[Tensor], n_samples: int, *,
    baseline: Baseline = "none", analytic_kl: bool = True,
) -> list[Tensor]:
    """The score-function (REINFORCE) estimate of grad_params of the batch-mean ELBO from
    ``n_samples`` draws per example, with no baseline or the leave-one-out one (``n_samples >= 2``).
    x: (B, ...); returns one tensor per parameter, its shape."""
    params = list(params)
    return _score(_draw(model, x, n_samples, analytic_kl), params, n_samples, baseline)


class GradientMoments:
    """Running mean and covariance diagonal of repeated gradient estimates (Welford's update, in
    float64): ``add`` one estimate (a list of tensors, one per parameter) per repetition."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: list[Tensor] = []
        self._m2: list[Tensor] = []

    def add(self, grads: Sequence[Tensor]) -> None:
        self.count += 1
        if self.count == 1:
            self.mean = [g.detach().double().clone() for g in grads]
            self._m2 = [torch.zeros_like(m) for m in self.mean]
            return
        for m, s, g in zip(self.mean, self._m2, grads):
            d = g.detach().double() - m
            m.add_(d / self.count)
            s.add_(d * (g.detach().double() - m))

    def variance(self) -> list[Tensor]:
        """Per-element variance of one estimate (unbiased, over ``count - 1``), one per parameter."""
        if self.count < 2:
            raise ValueError("a variance needs at least two repetitions")
        return [s / (self.count - 1) for s in self._m2]

    def trace_covariance(self) -> Tensor:
        """(P,) tr Cov of each parameter's estimate: its total variance."""
        return torch.stack([v.sum() for v in self.variance()])

    def mean_sq_norm(self) -> Tensor:
        """(P,) squared norm of each parameter's mean estimate."""
        return torch.stack([m.square().sum() for m in self.mean])


@dataclass
class GradientVariance:
    """What :func:`gradient_variance` measured.

    names: the parameters (P,), in order. sample_sizes: the S values (K,). repetitions: R.
    moments: (estimator key of :data:`ESTIMATORS`, S) -> the moments of its R estimates; the
        leave-one-out estimator has none at S = 1.
    """

    names: list[str]
    sample_sizes: list[int]
    repetitions: int
    moments: dict[tuple[str, int], GradientMoments] = field(default_factory=dict)

    def variance(self, estimator: str) -> Tensor:
        """(K, P) total variance tr Cov of each parameter's estimate at each S (NaN where not measured)."""
        rows = [self.moments[(estimator, s)].trace_covariance() if (estimator, s) in self.moments
                else torch.full((len(self.names),), math.nan, dtype=torch.float64) for s in self.sample_sizes]
        return torch.stack(rows)

    def gradient_sq_norm(self) -> Tensor:
        """(P,) ||E grad||^2 per parameter, from the pathwise estimator at the largest S (the most
        precise mean): ||mean||^2 less its expected excess tr Cov / R, floored at 0."""
        m = self.moments[("pathwise", max(self.sample_sizes))]
        return (m.mean_sq_norm() - m.trace_covariance() / m.count).clamp_min(0.0)

    def relative_variance(self, estimator: str) -> Tensor:
        """(K, P) tr Cov / ||E grad||^2: the estimator's noise against the size of the gradient."""
        return self.variance(estimator) / self.gradient_sq_norm()


def gradient_variance(
    model: LatentVariableModel, x: Tensor, params: Mapping[str, Tensor], sample_sizes: Sequence[int],
    repetitions: int, *, analytic_kl: bool = True, progress: bool = False,
) -> GradientVariance:
    """Each estimator of :data:`ESTIMATORS` at each S in ``sample_sizes``, ``repetitions`` times on the
    fixed batch x: the moments of the estimates of grad_params of the batch-mean ELBO.

    Every repetition draws max(S) samples per example once; the estimate at S uses the first S of
    them, for every estimator (common random numbers). The estimates at different S of one
    repetition are therefore correlated, but over the repetitions each is an independent draw of
    its own estimator, which is all a variance needs. Seed the global generator for reproducible
    numbers. x: (B, ...); params: name -> parameter of q(z|x) (e.g. an encoder's named_parameters).
    """
    from tqdm.auto import tqdm

    sizes = sorted({int(s) for s in sample_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"sample sizes must be positive integers, got {list(sample_sizes)}")
    if repetitions < 2:
        raise ValueError(f"a variance needs at least two repetitions, got {repetitions}")
    names, tensors = list(params), list(params.values())
    out = GradientVariance(names=names, sample_sizes=sizes, repetitions=repetitions)
    for _ in tqdm(range(repetitions), desc="gradient estimates", unit="rep", disable=not progress):
        draw = _draw(model, x, sizes[-1], analytic_kl)
        for s in sizes:
            estimates = {"pathwise": _pathwise(draw, tensors, s, analytic_kl),
                         "score": _score(draw, tensors, s, "none")}
            if s >= 2:
                estimates["score_loo"] = _score(draw, tensors, s, "leave_one_out")
            for key, grads in estimates.items():
                out.moments.setdefault((key, s), GradientMoments()).add(grads)
    return out
