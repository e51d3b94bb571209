"""The variational autoencoder of Kingma & Welling (2014), "Auto-Encoding Variational Bayes".

Encoder: an MLP from the flattened example x (D values) to the mean and log-variance of a
diagonal Gaussian q(z|x) (K&W Appendix C.2). Decoder: an MLP from z to the parameters of p(x|z),
either Bernoulli logits (binary data, App. C.1) or a Gaussian mean (optionally squashed into (0, 1)
by a sigmoid) and log-variance (continuous data such as Frey Face, App. C.2). Prior p(z) = N(0, I).
These networks, and all that uses only them, are :class:`MLPLatentModel`, which the VAE and the
wake-sleep baseline (``models/wake_sleep.py``) subclass; the VAE adds its objective.

Training maximises the ELBO with the reparameterisation trick and the analytic KL (K&W eq. 10),
or the IWAE-k bound (Burda et al. 2016) with ``objective = "iwae"``: an estimator choice, the model
is the same. All the mathematics comes from ``vaelab.estimators``; this file only wires networks.

Shapes: a batch x is (B, *spec.shape), e.g. (B, 1, 28, 28); internally it is flattened to (B, D).
z is (..., B, latent_dim) with any number of sample dims in front.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, final

import torch
from torch import Tensor
from torch.distributions import Distribution

from vaelab import estimators
from vaelab.distributions import diag_gaussian, likelihood_head, standard_normal
from vaelab.errors import VaelabError
from vaelab.models.base import (
    KLAnnealed,
    LatentVariableModel,
    LossOutput,
    Model,
    ModelConfig,
    Reconstructing,
    ReportInputs,
    Sampling,
    register_model,
)
from vaelab.models.pictures import explorer_section, is_image_shape
from vaelab.nn import MLP, normal_init_
from vaelab.schedules import linear_ramp
from vaelab.sections import ImagesSection, ManifoldSection, ReconstructionsSection, ScatterSection, Section
from vaelab.spec import DataSpec

__all__ = ["MLPLatentConfig", "MLPLatentModel", "VAE", "VAEConfig", "manifold_section"]


def manifold_section(decode_mean: Callable[[Tensor], Tensor], device: torch.device, n: int = 20
                     ) -> ManifoldSection:
    """The decoder means over an n x n grid of 2-D latents (Kingma & Welling 2014, Fig. 4), for any
    model with a 2-D z: ``decode_mean(z (n, n, 2)) -> (n, n, *shape)``."""
    # a grid of z through the inverse Gaussian CDF
    p = torch.linspace(0.5 / n, 1 - 0.5 / n, n, device=device)
    grid = torch.distributions.Normal(0.0, 1.0).icdf(p)
    # images[i, j] is decoded at z = (grid[j], grid[i]): columns vary z1, rows vary z2
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)[..., [1, 0]]
    return ManifoldSection(
        name="manifold", title="Latent manifold",
        caption=f"Decoder means over a {n}×{n} grid of latent values spaced by the inverse "
                "Gaussian CDF (as in Kingma & Welling 2014, Figure 4).",
        images=decode_mean(z).cpu().numpy(), grid=grid.cpu().numpy())


@dataclass
class MLPLatentConfig(ModelConfig):
    """Settings shared by the MLP latent-variable families (the VAE, wake-sleep).

    hidden: encoder hidden sizes; the decoder mirrors them.
    likelihood: ``bernoulli`` (binary data), ``gaussian`` (learned mean and variance) or
        ``gaussian_sigmoid`` (the Gaussian with its mean squashed into (0, 1), K&W App. C.2).
    init_std: if > 0, every weight and bias is drawn from N(0, init_std^2); 0 keeps PyTorch's
        default initialisation. Kingma & Welling (2014, Section 5) initialise "by random sampling
        from N(0, 0.01)". We read 0.01 as the variance, so their setting is ``init_std = 0.1``:
        the paper writes the second argument of N as a variance throughout (p(z) = N(z; 0, I),
        q(z|x) = N(z; mu, sigma^2 I)). The standard-deviation reading is ``init_std = 0.01``.
    """

    latent_dim: int = 20
    hidden: list[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    likelihood: Literal["bernoulli", "gaussian", "gaussian_sigmoid"] = "bernoulli"
    init_std: float = 0.0

    def validate(self, prefix: str) -> None:
        if self.latent_dim < 1:
            raise VaelabError(f"{prefix}.latent_dim must be a positive integer, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden):
            raise VaelabError(f"{prefix}.hidden sizes must be positive integers, got {self.hidden}")
        if self.init_std < 0:
            raise VaelabError(f"{prefix}.init_std must be >= 0 (0 keeps PyTorch's initialisation), "
                              f"got {self.init_std}")


@dataclass
class VAEConfig(MLPLatentConfig):
    """Settings of the MLP VAE (the networks' settings: :class:`MLPLatentConfig`).

    objective: ``elbo`` or ``iwae``; ``n_samples`` is S for the ELBO, k for IWAE.
    analytic_kl: the closed-form KL (K&W eq. 10) instead of the sampled one (eq. 9).
    kl_warmup_steps: KL weight rises linearly 0 -> 1 over this many steps (Bowman et al. 2016
        style annealing; 0 disables). Evaluation always uses weight 1.
    """

    name: str = "vae"
    objective: Literal["elbo", "iwae"] = "elbo"
    n_samples: int = 1
    analytic_kl: bool = True
    kl_warmup_steps: int = 0

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.n_samples < 1:
            raise VaelabError(f"{prefix}.n_samples must be >= 1, got {self.n_samples}")
        if self.kl_warmup_steps < 0:
            raise VaelabError(f"{prefix}.kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")
        if self.objective == "iwae" and self.kl_warmup_steps:
            raise VaelabError(
                f"{prefix}.kl_warmup_steps needs objective = 'elbo' (the IWAE bound has no KL weight)"
            )


class MLPLatentModel(Model, LatentVariableModel, Reconstructing, Sampling):
    """The generative model p(z) p(x|z) and recognition model q(z|x) that the VAE and wake-sleep
    share (abstract: a family adds ``loss``, how it fits them).

    p(z) = N(0, I); p(x|z): an MLP decoder z -> the likelihood head's parameters; q(z|x): an MLP
    encoder x -> mean and log-variance of a diagonal Gaussian (K&W App. C.2). Here live the
    networks, encode/decode/prior, the importance weights, samples, reconstructions and the report.
    """

    Config = MLPLatentConfig
    data_kinds = frozenset({"images"})  # images or vectors (binary or continuous values)

    def __init__(self, config: MLPLatentConfig, spec: DataSpec):
        super().__init__(config, spec)
        d = spec.n_dims
        self.head = likelihood_head(config.likelihood)
        self.encoder = MLP([d, *config.hidden, 2 * config.latent_dim], config.activation)
        self.decoder = MLP([config.latent_dim, *reversed(config.hidden), self.head.params_per_dim * d],
                           config.activation)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)
        if config.init_std > 0:  # K&W Section 5: every parameter ~ N(0, init_std^2)
            normal_init_(self, config.init_std)

    # ------------------------------------------------------------------ the three pieces
    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x): x (B, *shape) or (B, D) -> diagonal Gaussian, batch (B,), event (latent_dim,)."""
        return diag_gaussian(*self._posterior_params(x))

    def _posterior_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # float32 from here on: under bf16 autocast only the networks' matrix products are bf16
        mu, logvar = self.encoder(x.flatten(1)).float().chunk(2, dim=-1)
        return mu, logvar

    def _decoder_params(self, z: Tensor) -> Tensor:
        out = self.decoder(z).float()  # (..., P * D)
        return out.unflatten(-1, (self.head.params_per_dim, self.spec.n_dims))

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z): z (..., latent_dim) -> distribution over flattened x, batch (...), event (D,)."""
        return self.head(self._decoder_params(z), (self.spec.n_dims,))

    def decode_mean(self, z: Tensor) -> Tensor:
        """E[x|z] as images: z (..., latent_dim) -> (..., *shape)."""
        return self.head.mean(self._decoder_params(z), 1).unflatten(-1, self.spec.shape)

    def prior(self) -> Distribution:
        """p(z) = N(0, I), built once per device and dtype (it is constant; building it costs more
        than the KL it enters)."""
        key = (self._zero.device, self._zero.dtype)
        if getattr(self, "_prior_key", None) != key:
            self._prior = standard_normal(self.config.latent_dim, device=key[0], dtype=key[1])
            self._prior_key = key
        return self._prior

    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        """(k, B) log-weights log p(x,z_k) - log q(z_k|x) for importance-sampled log p(x)."""
        return estimators.log_importance_weights(x.flatten(1), self.encode(x), self.decode, self.prior(), k)

    # ------------------------------------------------------------------ pictures
    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """n images E[x|z], z ~ p(z): (n, *shape)."""
        return self.decode_mean(self.prior().sample((n,)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z = E_q[z|x]]: (B, *shape)."""
        return self.decode_mean(self.encode(x).mean)

    @torch.no_grad()
    def samples_section(self, n: int) -> ImagesSection:
        return ImagesSection(name="samples", title="Samples", caption=f"{n} samples from the model.",
                             images=self.sample(n).cpu().numpy())

    # ------------------------------------------------------------------ what the run code asks of a model
    def check_data(self, examples: Tensor) -> None:
        self.head.check_data(examples)

    @torch.no_grad()
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        """Reconstructions of 16 inputs, ``n_samples`` samples, the latent manifold (2-D z only,
        Kingma & Welling Fig. 4), and the posterior means of the inputs coloured by their labels."""
        x = torch.cat(list(inputs.batches)) if inputs.batches else None
        out: list[Section] = []
        if x is not None:
            pairs = f"{min(len(x), 16)} inputs (upper row of each pair), their reconstructions below."
            out.append(ReconstructionsSection(
                name="reconstructions", title="Reconstructions", caption=pairs,
                original=x[:16].cpu().numpy(), reconstruction=self.reconstruct(x[:16]).cpu().numpy()))
        out.append(self.samples_section(inputs.n_samples))
        if self.config.latent_dim == 2:
            out.append(manifold_section(self.decode_mean, self.device))
        if x is not None:
            codes = torch.cat([self.posterior_mean(c) for c in x.split(500)])
            labels = inputs.labels[: len(codes)].cpu().numpy() if inputs.labels is not None else None
            by = "coloured by label" if labels is not None else "(no labels saved)"
            out.append(ScatterSection(name="latents", title="Latent codes",
                                      caption=f"Posterior means of {len(codes)} examples, {by}.",
                                      codes=codes.cpu().numpy(), labels=labels))
            if self.config.latent_dim == 2 and is_image_shape(self.spec.shape):
                out.append(explorer_section(self.decode_mean, codes, inputs.labels[: len(codes)]
                                            if inputs.labels is not None else None))
        return out


@final
@register_model("vae")
class VAE(MLPLatentModel, KLAnnealed):
    """The VAE: the ELBO (or IWAE-k bound) maximised by the reparameterisation trick (module doc)."""

    Config = VAEConfig
    supports_bf16 = True

    # ------------------------------------------------------------------ objectives
    def bound(self, x: Tensor, kl_weight: float | Tensor = 1.0) -> estimators.ElboTerms:
        cfg = self.config
        x = x.flatten(1)
        if cfg.objective == "elbo" and cfg.analytic_kl:
            # the same bound on tensors (q is a diagonal Gaussian, p(z) = N(0, I)): no Distribution
            # objects are built in the training loop
            event = (self.spec.n_dims,)
            return estimators.elbo_diag_gaussian(
                x, *self._posterior_params(x),
                lambda z: self.head.log_prob(self._decoder_params(z), x, event),
                n_samples=cfg.n_samples, kl_weight=kl_weight,
            )
        fn = estimators.objective(cfg.objective)
        return fn(x, self.encode(x), self.decode, self.prior(), n_samples=cfg.n_samples,
                  analytic_kl=cfg.analytic_kl, kl_weight=kl_weight)

    def kl_weight_at(self, step: int) -> float:
        return linear_ramp(step, self.config.kl_warmup_steps)

    def loss(self, batch: Tensor) -> LossOutput:
        if self.training and self.kl_weight_now != 1.0:
            terms = self.bound(batch, kl_weight=self._kl_weight)
            elbo = terms.reconstruction - terms.kl  # the true ELBO beside the annealed objective
        else:
            terms = self.bound(batch)
            elbo = terms.bound
        return LossOutput(
            loss=-terms.bound.mean(), elbo=elbo, reconstruction=terms.reconstruction, kl=terms.kl
        )
