"""The wake-sleep algorithm (Hinton, Dayan, Frey & Neal 1995), the baseline of Kingma & Welling
(2014, Figures 2 and 3), for the same model as the VAE.

Generative model p(z) p(x|z) and recognition model q(z|x) are those of :class:`MLPLatentModel`
(``models/vae.py``): p(z) = N(0, I), an MLP decoder into a likelihood head, an MLP encoder into a
diagonal Gaussian. What differs is how they are fitted:

* wake phase: z ~ q(z|x) for a data example x, drawn without a path for gradients (wake-sleep
  has no reparameterisation: z is detached), and the decoder maximises log p(x, z) = log p(z) +
  log p(x|z): its loss is -log p(x|z) (log p(z) has no parameters);
* sleep phase: a dream (z, x) ~ p(z) p(x|z), drawn without gradients (x is a draw from the
  likelihood, e.g. Bernoulli pixels, not its mean), and the encoder maximises log q(z|x_dream).

The trainer sees one loss, wake + sleep, both in nats per example (batch means; the sleep phase
dreams as many examples as the batch holds). The wake term depends only on the decoder's
parameters (z is detached, so the encoder gets no gradient) and the sleep term only on the
encoder's (the dream is drawn under ``no_grad``), so the gradient of the sum is the decoder's wake
gradient and the encoder's sleep gradient side by side: one optimizer step is one step of each
phase (tests/test_wake_sleep.py checks both zeros).

Wake-sleep maximises no single objective. To compare its training curves with AEVB's (K&W
Figure 2 plots the lower bound for both) ``loss`` also reports the ELBO of the current q,
E_q[log p(x|z)] - KL(q(z|x) || p(z)): the wake sample's log p(x|z) (one-sample estimate) minus
the analytic KL (K&W eq. 10), as ``elbo``, ``reconstruction`` and ``kl``. In eval mode there is
no dream: the loss is -ELBO, the bound that validation, early stopping and the best checkpoint
compare, as they do for the VAE.

Shapes: a batch x is (B, *spec.shape), flattened to (B, D) inside; z is (B, latent_dim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from vaelab.distributions import diag_gaussian
from vaelab.divergences import DiagonalGaussianKL
from vaelab.models.base import LossOutput, register_model
from vaelab.models.vae import MLPLatentConfig, MLPLatentModel

__all__ = ["WakeSleep", "WakeSleepConfig"]


@dataclass
class WakeSleepConfig(MLPLatentConfig):
    """Settings of the wake-sleep baseline: the networks' settings of :class:`MLPLatentConfig`
    (latent_dim, hidden, activation, likelihood, init_std); wake-sleep has no others."""

    name: str = "wake_sleep"


@final
@register_model("wake_sleep")
class WakeSleep(MLPLatentModel):
    """p(z) p(x|z) and q(z|x) fitted by wake-sleep (module doc): ``loss`` = wake + sleep."""

    Config = WakeSleepConfig

    def wake(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The wake phase on a batch x (B, *shape): z ~ q(z|x) detached.

        Returns (B,) tensors: log p(x|z) (the decoder's log-likelihood, whose negative is the
        wake loss; with gradients for the decoder only), and, without gradients, KL(q(z|x)||p(z))
        (analytic, K&W eq. 10) and the ELBO estimate log p(x|z) - KL.
        """
        x = x.flatten(1)
        mu, logvar = self._posterior_params(x)
        with torch.no_grad():
            z = diag_gaussian(mu, logvar).sample()  # no reparameterisation: no wake gradient for q
            kl = DiagonalGaussianKL.to_standard_normal(mu, logvar)  # K&W eq. 10 (App. B)
        log_px_z = self.head.log_prob(self._decoder_params(z), x, (self.spec.n_dims,))
        return log_px_z, kl, log_px_z.detach() - kl

    def sleep(self, n: int) -> Tensor:
        """The sleep phase: n dreams (z, x) ~ p(z) p(x|z), drawn without gradients; returns
        log q(z|x_dream), (n,), with gradients for the encoder only (its negative is the sleep loss)."""
        with torch.no_grad():
            z = self.prior().sample((n,))  # (n, latent_dim)
            x = self.decode(z).sample()  # (n, D): a draw of the likelihood, e.g. Bernoulli pixels
        return self.encode(x).log_prob(z)

    def loss(self, batch: Tensor) -> LossOutput:
        log_px_z, kl, elbo = self.wake(batch)
        if self.training:
            loss = -log_px_z.mean() - self.sleep(batch.shape[0]).mean()  # wake + sleep, disjoint params
        else:
            loss = -elbo.mean()
        return LossOutput(loss=loss, elbo=elbo, reconstruction=log_px_z.detach(), kl=kl)
