"""Hamiltonian Monte Carlo, vectorised over a batch of independent chains, and a step-size adapter.

A state z is (..., B, D): every leading position is its own chain in D dimensions, with its own
momentum, its own Metropolis test and (optionally) its own step size. The target is given by its
unnormalised log density ``log_prob(z) -> (..., B)``, differentiable w.r.t. z.

The kernel is the standard one (Duane et al. 1987; Neal 2011, "MCMC using Hamiltonian dynamics",
Handbook of MCMC ch. 5): unit mass matrix, momentum p ~ N(0, I), ``n_leapfrog`` leapfrog steps
(Neal 2011, eqs. 5.18-5.20), then accept the end point with probability
min(1, exp(H(z, p) - H(z', p'))), H(z, p) = -log_prob(z) + |p|^2 / 2 (Neal 2011, eq. 5.21).
It leaves the target invariant for any fixed step size.

Step sizes are tuned by :class:`StepSizeAdapter`: a Robbins-Monro stochastic approximation on the log
step size (Robbins & Monro 1951; Andrieu & Thoms 2008, "A tutorial on adaptive MCMC", Sec. 4.2),
log eps <- log eps + gain_t (a_t - target). We chose it over dual averaging (Hoffman & Gelman 2014,
Sec. 3.2) because its default constant gain tracks a *moving* target: in annealed importance
sampling the distribution changes at every transition and the right step size shrinks as the
temperature rises, which dual averaging (built to converge to one value) follows only slowly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from vaelab.errors import VaelabError

__all__ = ["HMCStep", "hmc_step", "StepSizeAdapter"]

LogProb = Callable[[Tensor], Tensor]


@dataclass
class HMCStep:
    """One HMC transition of a batch of chains (all tensors detached).

    z: (..., B, D) the new states; accept_prob: (..., B) min(1, exp(-dH)) of each chain's proposal;
    accepted: (..., B) bool, whether each chain moved; log_prob: (..., B) the target at the new z.
    """

    z: Tensor
    accept_prob: Tensor
    accepted: Tensor
    log_prob: Tensor


def _value_and_grad(log_prob: LogProb, z: Tensor) -> tuple[Tensor, Tensor]:
    """log_prob(z) (..., B) and its gradient w.r.t. z (..., B, D), both detached."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        lp = log_prob(z)
        (grad,) = torch.autograd.grad(lp.sum(), z)
    return lp.detach(), grad


def hmc_step(
    z: Tensor,
    log_prob: LogProb,
    step_size: float | Tensor,
    n_leapfrog: int,
    *,
    generator: torch.Generator | None = None,
) -> HMCStep:
    """One HMC transition of every chain in ``z`` (..., B, D) targeting exp(log_prob).

    ``log_prob(z) -> (..., B)`` must be differentiable w.r.t. z; it is differentiated with
    ``torch.autograd.grad`` under ``torch.enable_grad()``, so callers may run under ``no_grad``.
    Only z's gradient is taken: a model's parameters get no ``.grad``.
    ``step_size``: a float, or a tensor broadcastable to the chains' batch shape z.shape[:-1]
    (per-chain step sizes). Non-finite energies (a diverging trajectory) are rejected.
    """
    if n_leapfrog < 1:
        raise VaelabError(f"HMC needs at least one leapfrog step, got n_leapfrog={n_leapfrog}")
    z0 = z.detach()
    eps = step_size.to(z0).unsqueeze(-1) if isinstance(step_size, Tensor) else step_size  # (..., B, 1)
    lp0, grad = _value_and_grad(log_prob, z0)
    p0 = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
    # leapfrog (Neal 2011, eqs. 5.18-5.20): half momentum step, n full position steps with full
    # momentum steps between them, half momentum step
    p = p0 + 0.5 * eps * grad
    zt = z0
    for i in range(n_leapfrog):
        zt = zt + eps * p
        lp, grad = _value_and_grad(log_prob, zt)
        p = p + (eps if i < n_leapfrog - 1 else 0.5 * eps) * grad
    # Metropolis test on H = -log_prob + |p|^2/2 (Neal 2011, eq. 5.21)
    log_ratio = (lp - 0.5 * p.square().sum(-1)) - (lp0 - 0.5 * p0.square().sum(-1))
    log_ratio = torch.where(torch.isfinite(log_ratio), log_ratio, torch.full_like(log_ratio, -math.inf))
    accept_prob = log_ratio.clamp(max=0.0).exp()
    u = torch.rand(log_ratio.shape, generator=generator, device=z0.device, dtype=log_ratio.dtype)
    accepted = u < accept_prob
    z_new = torch.where(accepted.unsqueeze(-1), zt, z0)
    return HMCStep(z_new.detach(), accept_prob, accepted, torch.where(accepted, lp, lp0))


class StepSizeAdapter:
    """Robbins-Monro adaptation of HMC step sizes towards a target acceptance rate.

    log eps_{t+1} = log eps_t + gain / (t + 1)^decay * (mean accept_prob - target)
    (Andrieu & Thoms 2008, Sec. 4.2, on the log scale so eps stays positive). ``decay = 0`` (the
    default) is a constant gain that follows a changing target (annealing); ``decay`` in (0.5, 1]
    gives the diminishing gains under which the step size converges for a fixed target.

    step_size: the initial step size, a float (one shared step size) or a tensor of the shape of
        the step sizes (e.g. (B,) for one per example); ``update`` averages ``accept_prob`` over its
        leading dims (e.g. chains) down to that shape, and over dims where that shape has size 1.
    ``freeze()`` stops adaptation (after burn-in: a kernel that keeps adapting on its own chain's
    history is no longer guaranteed to leave the target invariant).
    """

    def __init__(self, step_size: float | Tensor, target: float, *, gain: float = 0.5, decay: float = 0.0,
                 min_step: float = 1e-6, max_step: float = 10.0):
        if not 0.0 < target < 1.0:
            raise VaelabError(f"target acceptance rate must be in (0, 1), got {target}")
        step = torch.as_tensor(step_size, dtype=torch.float32).detach().clone()
        if not bool((step > 0).all()):
            raise VaelabError(f"HMC step sizes must be positive, got {step_size}")
        self.log_step = step.log()
        self.target, self.gain, self.decay = target, gain, decay
        self.bounds = (math.log(min_step), math.log(max_step))
        self.t = 0
        self.frozen = False

    @property
    def step_size(self) -> Tensor:
        """The current step size(s): a tensor of the shape given at construction."""
        return self.log_step.exp()

    def freeze(self) -> None:
        """Keep the current step size from now on (``update`` does nothing)."""
        self.frozen = True

    def update(self, accept_prob: Tensor) -> None:
        """One adaptation step from this transition's acceptance probabilities (..., *shape)."""
        if self.frozen:
            return
        a = accept_prob.detach().to(self.log_step)
        while a.dim() > self.log_step.dim():
            a = a.mean(0)
        for d, n in enumerate(self.log_step.shape):
            if n == 1 and a.shape[d] != 1:
                a = a.mean(d, keepdim=True)
        rate = self.gain / (self.t + 1) ** self.decay
        self.log_step = (self.log_step + rate * (a - self.target)).clamp(*self.bounds)
        self.t += 1
