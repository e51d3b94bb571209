"""Monte Carlo EM, the baseline of Kingma & Welling (2014), Section 5 and Figure 3.

The generative model is the VAE's (``models/vae.py``): prior p(z) = N(0, I) and an MLP decoder to
the parameters of p(x|z) (Bernoulli logits or a Gaussian mean and log-variance), with the same
config keys; there is no encoder. Training alternates, per minibatch:

* E-step (Monte Carlo): one sample z ~ p(z|x) per example by Hamiltonian Monte Carlo (``vaelab.mcmc``):
  chains start from the prior and run ``hmc_transitions`` transitions of ``leapfrog_steps`` leapfrog
  steps each; one step size shared by all examples is adapted towards ``target_accept`` (K&W: 10
  leapfrog steps, step size tuned to 90 % acceptance). The adapted step size is a buffer, so it
  carries over from minibatch to minibatch and is saved in checkpoints.
* M-step: ``updates_per_sample`` weight updates (K&W: 5) on -log p(x, z) with that sample.

The trainer calls ``loss`` once per step, so the M-step's updates are consecutive steps on the same
batch: the model declares ``steps_per_batch = updates_per_sample`` and the pipeline repeats each
training batch that many times (``train.batching.RepeatedBatches``). ``loss`` draws a fresh sample
when ``train_step % steps_per_batch == 0`` and reuses the one it holds otherwise.

Evaluation (``loss`` in eval mode) draws a fresh sample each call with the step size frozen.
log p(x) is estimated by annealed importance sampling (``vaelab.evaluation.ais``), which needs only
what :class:`~vaelab.models.base.GenerativeLatentModel` declares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab.distributions import likelihood_head, standard_normal
from vaelab.errors import VaelabError
from vaelab.mcmc import StepSizeAdapter, hmc_step
from vaelab.models.base import (
    GenerativeLatentModel,
    LossOutput,
    Model,
    ReportInputs,
    Sampling,
    register_model,
)
from vaelab.models.vae import MLPLatentConfig, manifold_section
from vaelab.nn import MLP, normal_init_
from vaelab.sections import ImagesSection, Section
from vaelab.spec import DataSpec

__all__ = ["MCEM", "MCEMConfig"]


@dataclass
class MCEMConfig(MLPLatentConfig):
    """Settings of the Monte Carlo EM baseline: the MLP latent families' settings (``latent_dim``,
    ``hidden``, ``activation``, ``likelihood``, ``init_std``; ``hidden`` are the sizes the VAE's
    encoder has, the decoder mirrors them, so the same keys give the same decoder), with K&W's
    Figure 3 network as defaults, and the E-step's:

    hmc_transitions: HMC transitions per posterior sample, chains started from the prior.
    leapfrog_steps: leapfrog steps per transition (K&W: 10).
    target_accept: acceptance rate the step size is adapted towards (K&W: 0.9).
    step_size: the initial step size; step_size_gain: Robbins-Monro gain on the log step size.
    updates_per_sample: weight updates with each sample (K&W: 5).
    """

    name: str = "mcem"
    latent_dim: int = 3
    hidden: list[int] = field(default_factory=lambda: [100])
    activation: str = "tanh"
    hmc_transitions: int = 10
    leapfrog_steps: int = 10
    target_accept: float = 0.9
    step_size: float = 0.1
    step_size_gain: float = 0.05
    updates_per_sample: int = 5

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        for key in ("hmc_transitions", "leapfrog_steps", "updates_per_sample"):
            if getattr(self, key) < 1:
                raise VaelabError(f"{prefix}.{key} must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.target_accept < 1.0:
            raise VaelabError(f"{prefix}.target_accept must be in (0, 1), got {self.target_accept}")
        if self.step_size <= 0 or self.step_size_gain < 0:
            raise VaelabError(f"{prefix}.step_size must be > 0 and step_size_gain >= 0, got "
                              f"{self.step_size} and {self.step_size_gain}")


@register_model("mcem")
class MCEM(Model, GenerativeLatentModel, Sampling):
    Config = MCEMConfig
    data_kinds = frozenset({"images"})  # images or vectors (binary or continuous values)

    def __init__(self, config: MCEMConfig, spec: DataSpec):
        super().__init__(config, spec)
        d = spec.n_dims
        self.head = likelihood_head(config.likelihood)
        self.decoder = MLP([config.latent_dim, *reversed(config.hidden), self.head.params_per_dim * d],
                           config.activation)
        if config.init_std > 0:  # K&W Section 5: every parameter ~ N(0, init_std^2)
            normal_init_(self.decoder, config.init_std)
        # the adapted HMC step size: state of the E-step that persists across minibatches
        self.register_buffer("hmc_step_size", torch.tensor(float(config.step_size)))
        self._sample: tuple[Tensor, Tensor] | None = None  # (z (B, latent_dim), accept rate (B,))

    # ------------------------------------------------------------------ the generative model
    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def steps_per_batch(self) -> int:
        return self.config.updates_per_sample

    def _decoder_params(self, z: Tensor) -> Tensor:
        return self.decoder(z).unflatten(-1, (self.head.params_per_dim, self.spec.n_dims))

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z): z (..., latent_dim) -> distribution over flattened x, batch (...), event (D,)."""
        return self.head(self._decoder_params(z), (self.spec.n_dims,))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z] as images: z (..., latent_dim) -> (..., *shape)."""
        return self.head.mean(self._decoder_params(z), 1).unflatten(-1, self.spec.shape)

    def prior(self) -> Distribution:
        """p(z) = N(0, I): event (latent_dim,)."""
        ref = self.hmc_step_size
        return standard_normal(self.config.latent_dim, device=ref.device, dtype=ref.dtype)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z): x (B, ...), z (..., B, latent_dim) -> (..., B) (on tensors, no Distribution)."""
        return self.head.log_prob(self._decoder_params(z), x.flatten(1), (self.spec.n_dims,))

    # ------------------------------------------------------------------ E-step and M-step
    def posterior_sample(self, x: Tensor, *, adapt: bool) -> tuple[Tensor, Tensor]:
        """z ~ p(z|x) by HMC from the prior: x (B, ...) -> (z (B, latent_dim), mean acceptance
        probability over the transitions (B,)), detached. With ``adapt`` the shared step size is
        tuned towards ``target_accept`` along the way and kept (the ``hmc_step_size`` buffer)."""
        cfg = self.config
        prior = self.prior()
        z = prior.sample((x.shape[0],))
        adapter = StepSizeAdapter(self.hmc_step_size, cfg.target_accept, gain=cfg.step_size_gain)
        if not adapt:
            adapter.freeze()
        accept = torch.zeros(x.shape[0], device=z.device)

        def log_prob(zz: Tensor) -> Tensor:
            return prior.log_prob(zz) + self.log_likelihood(x, zz)

        for _ in range(cfg.hmc_transitions):
            step = hmc_step(z, log_prob, adapter.step_size, cfg.leapfrog_steps)
            z = step.z
            accept += step.accept_prob
            adapter.update(step.accept_prob)
        if adapt:
            self.hmc_step_size.copy_(adapter.step_size)
        return z, accept / cfg.hmc_transitions

    def loss(self, batch: Tensor) -> LossOutput:
        """-mean log p(x, z) at a posterior sample z (K&W Section 5's M-step objective).

        Training: the sample is drawn at steps ``train_step % steps_per_batch == 0`` and reused for
        the next ``steps_per_batch - 1`` steps (the same batch, repeated by the pipeline). A model
        that holds no sample (a run resumed in the middle of a cycle) draws one at once, so after a
        resume the cycle's remaining updates use a fresh sample of the same batch. Eval: a fresh
        sample with the step size frozen, every call. ``extras["accept_rate"]``: per example, the
        mean HMC acceptance probability of that sample's transitions."""
        if self.training:
            if self._sample is None or self.train_step % self.steps_per_batch == 0:
                self._sample = self.posterior_sample(batch, adapt=True)
            z, accept = self._sample
        else:
            z, accept = self.posterior_sample(batch, adapt=False)
        log_joint = self.log_joint(batch, z)  # (B,)
        return LossOutput(loss=-log_joint.mean(), extras={"accept_rate": accept})

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n images E[x|z], z ~ p(z): (n, *shape)."""
        return self.decode_mean(self.prior().sample((n,)))

    @torch.no_grad()
    def samples_section(self, n: int) -> ImagesSection:
        return ImagesSection(name="samples", title="Samples", caption=f"{n} samples from the model.",
                             images=self.sample(n).cpu().numpy())

    def check_data(self, examples: Tensor) -> None:
        self.head.check_data(examples)

    @torch.no_grad()
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        """``n_samples`` samples and, for a 2-D z, the latent manifold (as the VAE's)."""
        out: list[Section] = [self.samples_section(inputs.n_samples)]
        if self.config.latent_dim == 2:
            out.append(manifold_section(self.decode_mean, self.device))
        return out
