"""Annealed importance sampling (AIS) estimates of log p(x) for any model with a prior and a decoder.

AIS (Neal 2001, "Annealed importance sampling") moves chains from the prior p(z) to the posterior
p(z|x) through the geometric path f_t(z) = p(z) p(x|z)^beta_t, 0 = beta_0 < ... < beta_T = 1. Each
chain starts at z_0 ~ p(z) and accumulates the log weight

    log w = sum_{t=1..T} (beta_t - beta_{t-1}) log p(x | z_{t-1})        (Neal 2001, eq. 3),

where z_t is z_{t-1} moved by an HMC transition (``vaelab.mcmc``) that leaves f_t invariant. E[w] =
p(x), so the log-mean-exp of w over C independent chains is a stochastic lower bound on log p(x)
(Jensen), tight as T grows; unlike importance sampling it needs no encoder, which makes it the
encoder-independent yardstick of Kingma & Welling (2014), Fig. 3 and of Wu et al. (2017), "On the
quantitative analysis of decoder-based generative models".

Settings (:class:`AISSettings`):

* the beta schedule: ``sigmoid`` by default, beta_t proportional to sigmoid(delta (2t/T - 1)) with
  delta = 4, rescaled to [0, 1] (Wu et al. 2017, Sec. 3): it spends more steps near beta = 0 and 1,
  where the distributions change fastest (near 1 the posterior narrows, near 0 each small beta already
  moves mass far from the prior); ``linear`` spaces beta evenly.
* HMC transitions of ``leapfrog`` steps; one step size per example (shared by its chains) adapted
  towards 0.65 acceptance along the run with :class:`~vaelab.mcmc.StepSizeAdapter` (constant gain,
  so it follows the narrowing target). The adaptation uses only the acceptance rates of earlier
  transitions, as in Wu et al. (2017); strictly, a kernel tuned on its own chains' past makes the
  estimate only asymptotically unbiased, a bias much smaller than the annealing's at any T in use.

Shapes: z is (C, B, latent_dim), C chains for each of B examples, all advanced together.
Reported per example: the AIS estimate (nats) and its Monte Carlo standard error over the C chains
(delta method: std(w) / (sqrt(C) mean(w))); over the dataset, the mean and its standard error over
examples, as the importance-sampling evaluation (``likelihood.py``) reports them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor

from vaelab.errors import VaelabError
from vaelab.estimators import logmeanexp
from vaelab.evaluation.likelihood import LogLikelihoodEstimate
from vaelab.mcmc import StepSizeAdapter, hmc_step
from vaelab.models.base import GenerativeLatentModel

__all__ = ["AISSettings", "AISEstimate", "AISResult", "beta_schedule", "ais", "ais_log_likelihood"]


@dataclass
class AISSettings:
    """n_steps: T, the annealing steps (intermediate distributions) from the prior to the posterior.
    chains: C independent chains per example. leapfrog: leapfrog steps per HMC transition.
    schedule: ``sigmoid`` (default) or ``linear`` betas. target_accept: acceptance rate the per-example
    step size is adapted towards; step_size: its initial value; gain: the Robbins-Monro gain."""

    n_steps: int = 500
    chains: int = 16
    leapfrog: int = 10
    schedule: Literal["sigmoid", "linear"] = "sigmoid"
    target_accept: float = 0.65
    step_size: float = 0.1
    gain: float = 0.5

    def validate(self) -> None:
        if self.n_steps < 1 or self.chains < 1 or self.leapfrog < 1:
            raise VaelabError(f"AIS needs at least one step, chain and leapfrog step; got --ais "
                              f"{self.n_steps}, --ais-chains {self.chains}, --ais-leapfrog {self.leapfrog}")
        if self.schedule not in ("sigmoid", "linear"):
            raise VaelabError(f"unknown AIS schedule {self.schedule!r}; use sigmoid or linear")


def beta_schedule(n_steps: int, kind: str = "sigmoid", delta: float = 4.0) -> Tensor:
    """(n_steps + 1,) float64 inverse temperatures from beta_0 = 0 to beta_T = 1, increasing.

    sigmoid: beta_t = (s(t) - s(0)) / (s(T) - s(0)), s(t) = sigmoid(delta (2t/T - 1)) (Wu et al. 2017).
    """
    t = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    if kind != "sigmoid":
        raise VaelabError(f"unknown AIS schedule {kind!r}; use sigmoid or linear")
    s = torch.sigmoid(delta * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


@dataclass
class AISEstimate:
    """AIS on one batch. log_px: (B,) log-mean-exp of the chains' weights; stderr: (B,) its Monte
    Carlo standard error over chains; log_weights: (C, B); accept_rate: (B,) mean HMC acceptance."""

    log_px: Tensor
    stderr: Tensor
    log_weights: Tensor
    accept_rate: Tensor


@torch.no_grad()
def ais(model: GenerativeLatentModel, x: Tensor, settings: AISSettings | None = None) -> AISEstimate:
    """AIS estimates of log p(x) for a batch x (B, ...) under ``model`` (prior and decoder only).

    Uses the global random generator (seed it for reproducible numbers).
    """
    s = settings or AISSettings()
    s.validate()
    prior = model.prior()
    betas = beta_schedule(s.n_steps, s.schedule).tolist()
    b = x.shape[0]
    z = prior.sample((s.chains, b))  # (C, B, Dz)
    log_w = torch.zeros(s.chains, b, dtype=torch.float64, device=z.device)
    adapter = StepSizeAdapter(torch.full((b,), s.step_size, device=z.device), s.target_accept, gain=s.gain)
    accept = torch.zeros(b, dtype=torch.float64, device=z.device)
    log_lik = model.log_likelihood(x, z)  # (C, B)
    for t in range(1, s.n_steps + 1):
        log_w += (betas[t] - betas[t - 1]) * log_lik.double()  # Neal 2001, eq. 3
        if t == s.n_steps:  # the last weight uses z_{T-1}: no transition at beta_T is needed
            break
        beta = betas[t]

        def log_f(zz: Tensor, beta: float = beta) -> Tensor:
            return prior.log_prob(zz) + beta * model.log_likelihood(x, zz)  # log f_t, the geometric path

        step = hmc_step(z, log_f, adapter.step_size, s.leapfrog)
        adapter.update(step.accept_prob)
        accept += step.accept_prob.double().mean(0)
        z = step.z
        log_lik = model.log_likelihood(x, z)
    log_px = logmeanexp(log_w, 0)
    # delta method: Var[log mean w] ~ Var[w] / (C mean(w)^2), with w normalised by its mean
    w = torch.exp(log_w - log_px)
    se = w.std(0) / math.sqrt(s.chains) if s.chains > 1 else torch.full_like(log_px, math.nan)
    return AISEstimate(log_px, se, log_w, accept / max(1, s.n_steps - 1))


@dataclass
class AISResult(LogLikelihoodEstimate):
    """Per-example AIS estimates over a dataset and their summaries.

    log_px: (N,) nats; chain_stderr: (N,) Monte Carlo standard error of each over its chains;
    accept_rate: (N,); n_dims: D; settings: the AIS settings used.
    """

    chain_stderr: Tensor
    accept_rate: Tensor
    n_dims: int
    settings: AISSettings
    seconds: float = 0.0

    @property
    def chain_stderr_of_mean(self) -> float:
        """The Monte Carlo standard error of the dataset mean from the chains alone:
        sqrt(sum_i se_i^2) / N (the examples' chains are independent)."""
        se = self.chain_stderr.double()
        return (se.square().sum().sqrt() / se.numel()).item()

    def as_dict(self) -> dict:
        """The summaries for eval.json (``method`` "ais" and the settings; cf. the IS ``as_dict``)."""
        return {
            "method": "ais",
            "log_px": self.mean,
            "log_px_stderr": self.stderr,
            "log_px_chain_stderr": self.chain_stderr_of_mean,
            "n_examples": self.log_px.numel(),
            "ais_accept_rate": self.accept_rate.double().mean().item(),
            **{f"ais_{k}": v for k, v in asdict(self.settings).items()},
            "seconds": self.seconds,
        }


@torch.no_grad()
def ais_log_likelihood(
    model: GenerativeLatentModel,
    batches: Iterable[Tensor],
    settings: AISSettings | None = None,
    *,
    max_elements: int = 1 << 21,
    progress: bool = False,
) -> AISResult:
    """AIS log p(x) of every example in ``batches`` (tensors (B, ...)); ``model`` also provides
    ``spec.n_dims`` (a vaelab ``Model``).

    A batch is split so that one HMC evaluation sees chains x examples x D about ``max_elements``
    decoder outputs (2^21: 8 MB), which keeps memory bounded whatever the batch size.
    """
    s = settings or AISSettings()
    s.validate()
    if isinstance(model, torch.nn.Module):
        model.eval()
    n_dims = model.spec.n_dims
    batches = list(batches)
    iterator: Iterable[Tensor] = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=f"AIS log p(x), T={s.n_steps}, C={s.chains}", unit="batch")
    per_call = max(1, max_elements // max(1, n_dims * s.chains))
    t0 = time.perf_counter()
    lp, se, acc = [], [], []
    for x in iterator:
        for xs in x.split(per_call):
            est = ais(model, xs, s)
            lp.append(est.log_px.cpu())
            se.append(est.stderr.cpu())
            acc.append(est.accept_rate.cpu())
    return AISResult(torch.cat(lp), torch.cat(se), torch.cat(acc), n_dims, s, time.perf_counter() - t0)
