"""The VQ-VAE of van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation
Learning", for images.

Encoder (Section 4.1, "2 strided convolutional layers with stride 2 and window size 4 x 4, followed
by two residual 3 x 3 blocks"): ``downsample`` 4x4 stride-2 convolutions with ReLUs, a 3x3
convolution, a residual stack (``vaelab.nn.ResidualStack``: ReLU, 3x3 conv, ReLU, 1x1 conv, per
block) and a 1x1 convolution to the code dimension D. The vectors z_e(x) (B, D, H', W') are
quantised to the nearest of K codebook vectors (``vaelab.quantizers``: ``VectorQuantizerEMA`` or
``VectorQuantizer``). Decoder, the mirror: a 3x3 convolution from D, a residual stack, and
``downsample`` 4x4 stride-2 transposed convolutions (ReLUs between) to the likelihood's parameters.

Sizes: each stride-2 convolution halves H and W exactly when they are even (padding 1), and each
transposed one doubles them, so 32x32 -> 8x8 -> 32x32 and 28x28 -> 7x7 -> 28x28 with
``downsample = 2``. Images whose sides are not multiples of m = 2^downsample are zero-padded at the
bottom and right to the next multiple and the decoder's output is cropped back: codes are
(B, ceil(H/m), ceil(W/m)).

Likelihood p(x|z_q), per pixel, independent (``likelihood``):

* ``bernoulli``: logits, for binary images (``vaelab.distributions.bernoulli``).
* ``gaussian``: N(x; mu, sigma_c^2) with the mean decoded and one learned variance per colour channel
  (shared by every pixel and image), through ``vaelab.distributions.GaussianHead`` (so the
  log-variance is bounded softly below by log 1e-4). A density on the real line over pixels in
  [0, 1]: its bits/dim are those of a continuous density, not of 8-bit images (the discretized
  logistic gives those). The per-channel variance starts at 0.1^2 (Adam moves a
  log-variance by about ``lr`` per step, so starting at 1 would leave the reconstruction term
  under-weighted against the commitment term for thousands of steps); its maximum-likelihood value
  is each channel's mean squared error, so it follows the reconstructions as they improve.
* ``discretized_logistic``: 8-bit images, values k/255; each pixel a logistic with decoded mean and
  log-scale, integrated over its level's bin (edge bins open), ``vaelab.distributions.
  DiscretizedLogisticHead``; the decoder has two outputs per channel. Its bits/dim is a bound on
  the 8-bit data's, comparable with the papers'.

Loss (eq. 3, in nats per example like every vaelab loss):
    -log p(x | z_q(x)) + ||sg[z_e] - e||^2 (``vq`` only) + beta ||z_e - sg[e]||^2,
each term summed over the example (pixels; code positions and D) and averaged over the batch. The
bound reported as ``elbo`` (Section 3.1): q(z|x) is one-hot and p(z) uniform over the K^(H'W') code
maps, so KL(q||p) = H'W' log K and log p(x) >= log p(x|z_q) - H'W' log K; the evaluation turns it into
bits/dim. (During training the prior is not learned; a PixelCNN fitted to the codes afterwards
tightens it.)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, final

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab.distributions import BernoulliHead, DiscretizedLogisticHead, GaussianHead, LikelihoodHead
from vaelab.errors import VaelabError
from vaelab.models.base import (
    DiscreteCodeModel,
    LossOutput,
    Model,
    ModelConfig,
    Reconstructing,
    ReportInputs,
    register_model,
)
from vaelab.nn import ResidualStack
from vaelab.quantizers import (
    CodebookQuantizer,
    CodeUsage,
    Quantized,
    VectorQuantizer,
    VectorQuantizerEMA,
    nearest_code,
)
from vaelab.sections import LinesSection, ReconstructionsSection, Section
from vaelab.spec import DataSpec

__all__ = [
    "VQVAEConfig",
    "VQVAE",
    "PixelLikelihood",
    "BernoulliPixels",
    "GaussianPixels",
    "PIXEL_LIKELIHOODS",
    "DiscretizedLogisticPixels",
    "build_quantizer",
    "validate_vq_settings",
]


def validate_vq_settings(cfg, prefix: str, positive: tuple[str, ...] = ()) -> None:
    """The checks every convolutional VQ family's config shares (the image and the speech VQ-VAE):
    widths, downsampling, codebook, quantizer and its settings; ``positive`` names more keys that must
    be >= 1. One-line errors naming the key."""
    for key in ("hidden", "res_channels", "downsample", "code_dim", *positive):
        if getattr(cfg, key) < 1:
            raise VaelabError(f"{prefix}.{key} must be a positive integer, got {getattr(cfg, key)}")
    if cfg.downsample > 1 and cfg.hidden < 2:
        raise VaelabError(f"{prefix}.hidden must be >= 2 with downsample > 1 (the outer convolutions "
                          f"have hidden // 2 channels), got {cfg.hidden}")
    if cfg.codebook_size < 2:
        raise VaelabError(f"{prefix}.codebook_size must be >= 2 codes, got {cfg.codebook_size}")
    for key in ("res_blocks", "kmeans_iters", "restart_after"):
        if getattr(cfg, key) < 0:
            raise VaelabError(f"{prefix}.{key} must be >= 0 (0 turns it off), got {getattr(cfg, key)}")
    if not cfg.restart_below >= 0:
        raise VaelabError(f"{prefix}.restart_below must be >= 0 vectors a step (0 turns it off), "
                          f"got {cfg.restart_below}")
    if not cfg.beta >= 0:
        raise VaelabError(f"{prefix}.beta must be >= 0 (0.25 in the paper), got {cfg.beta}")
    if not 0.0 <= cfg.ema_decay < 1.0:
        raise VaelabError(f"{prefix}.ema_decay must be in [0, 1) (0.99 in the paper), got {cfg.ema_decay}")
    if cfg.quantizer not in QUANTIZERS:
        raise VaelabError(f"{prefix}.quantizer must be one of {', '.join(map(repr, QUANTIZERS))}; "
                          f"got {cfg.quantizer!r}")


def build_quantizer(cfg) -> CodebookQuantizer:
    """The quantizer ``cfg.quantizer`` names, with the config's codebook settings (any config with
    codebook_size, code_dim, beta, kmeans_iters, restart_after, restart_below, ema_decay)."""
    return QUANTIZERS[cfg.quantizer](cfg)


@dataclass
class VQVAEConfig(ModelConfig):
    """Settings of the image VQ-VAE (module docstring for the architecture).

    hidden: channels of the encoder's and decoder's convolutions; every stride-2 convolution but the
        innermost (and its transposed mirror) has hidden // 2, as the first of two in Sonnet's example.
    res_blocks / res_channels: residual blocks in each stack, and the width of their 3x3 convolution.
    downsample: stride-2 convolutions; codes are (H / 2^downsample, W / 2^downsample).
    codebook_size: K. code_dim: D.
    quantizer: ``ema`` (codebook as moving averages, App. A.1) or ``vq`` (learned by gradient, eq. 3).
    beta: commitment weight. ema_decay: gamma of the EMA quantizer (unused with ``vq``).
    kmeans_iters: > 0 initialises the codebook by k-means of the first training batch's encoder
        outputs with this many Lloyd iterations; 0 keeps the random N(0, 1) codebook.
    restart_after: re-seed a code unused for this many training steps with a random encoder output
        of the current batch (0: never).
    restart_below: also re-seed a code whose moving average of use (over about 100 steps) is below
        this many vectors a step: rare codes, not only unused ones (0: off; ``CodebookQuantizer``).
    likelihood: ``bernoulli`` (binary images), ``gaussian`` (learned per-channel variance; a density,
        so its bits/dim are not those of 8-bit images) or ``discretized_logistic`` (8-bit images:
        a probability of each level, so bits/dim is a real bound).
    """

    name: str = "vqvae"
    hidden: int = 128
    res_blocks: int = 2
    res_channels: int = 32
    downsample: int = 2
    codebook_size: int = 512
    code_dim: int = 64
    quantizer: Literal["ema", "vq"] = "ema"
    beta: float = 0.25
    ema_decay: float = 0.99
    kmeans_iters: int = 0
    restart_after: int = 0
    restart_below: float = 0.0
    likelihood: Literal["bernoulli", "gaussian", "discretized_logistic"] = "bernoulli"

    def validate(self, prefix: str) -> None:
        validate_vq_settings(self, prefix)
        if self.likelihood not in PIXEL_LIKELIHOODS:
            names = ", ".join(map(repr, PIXEL_LIKELIHOODS))
            raise VaelabError(f"{prefix}.likelihood must be one of {names}; got {self.likelihood!r}")


# ----------------------------------------------------------------------------- likelihoods
class PixelLikelihood(nn.Module, ABC):
    """p(x|z_q) over images (B, C, H, W) from the decoder's output, which has
    ``params_per_channel * C`` channels: (B, P * C, H, W), parameter-major (the P parameters of
    channel c are channels c, C + c, ...). A module, so that a likelihood may hold parameters."""

    params_per_channel: int = 1

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def _params(self, out: Tensor) -> Tensor:
        """(B, P * C, H, W) -> (B, P, C, H, W), the layout of ``vaelab.distributions.LikelihoodHead``."""
        return out.unflatten(1, (self.params_per_channel, self.channels))

    @abstractmethod
    def distribution(self, out: Tensor) -> Distribution:
        """p(x|z_q): batch (B,), event (C, H, W)."""

    @abstractmethod
    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        """log p(x|z_q): out (B, P * C, H, W), x (B, C, H, W) -> (B,) nats."""

    @abstractmethod
    def mean(self, out: Tensor) -> Tensor:
        """E[x|z_q]: (B, C, H, W)."""

    def check_data(self, x: Tensor) -> None:  # noqa: B027 - accepting everything is the default
        """Raise VaelabError (naming the fix) when images ``x`` cannot come from this likelihood."""


class _HeadPixels(PixelLikelihood):
    """A likelihood that is one of ``vaelab.distributions``' heads over the decoder's output,
    ``head`` set by the subclass."""

    head: LikelihoodHead

    def distribution(self, out: Tensor) -> Distribution:
        return self.head(self._params(out), (self.channels, *out.shape[-2:]))

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        return self.head.log_prob(self._params(out), x, tuple(x.shape[1:]))

    def mean(self, out: Tensor) -> Tensor:
        return self.head.mean(self._params(out), 3)

    def check_data(self, x: Tensor) -> None:
        self.head.check_data(x)


class BernoulliPixels(_HeadPixels):
    """Independent Bernoulli pixels with decoded logits (binary images)."""

    def __init__(self, channels: int):
        super().__init__(channels)
        self.head = BernoulliHead()


class GaussianPixels(PixelLikelihood):
    """Independent Gaussian pixels N(x; mu, sigma_c^2): mean decoded, one learned log-variance per
    channel (``raw_logvar`` (C,), bounded below softly by ``GaussianHead``), starting at sigma = 0.1."""

    def __init__(self, channels: int, init_std: float = 0.1):
        super().__init__(channels)
        self.head = GaussianHead()
        # GaussianHead maps raw r to min + softplus(r - min): start where that gives 2 log init_std
        target = 2 * math.log(init_std) - self.head.min_logvar
        raw = self.head.min_logvar + math.log(math.expm1(target))
        self.raw_logvar = nn.Parameter(torch.full((channels,), raw))

    def _head_params(self, out: Tensor) -> Tensor:
        """(B, C, H, W) means -> (B, 2, C, H, W): means and the per-channel raw log-variances."""
        return torch.stack([out, self.raw_logvar[:, None, None].expand_as(out)], 1)

    def distribution(self, out: Tensor) -> Distribution:
        return self.head(self._head_params(out), tuple(out.shape[1:]))

    def log_prob(self, out: Tensor, x: Tensor) -> Tensor:
        return self.head.log_prob(self._head_params(out), x, tuple(x.shape[1:]))

    def mean(self, out: Tensor) -> Tensor:
        return out


class DiscretizedLogisticPixels(_HeadPixels):
    """8-bit pixels, each a discretized logistic over the 256 levels k/255 (Salimans et al. 2017), with
    a decoded mean and log-scale per pixel: a probability of the data, so its bits/dim is a real
    bound for 8-bit images (``vaelab.distributions.DiscretizedLogisticHead``)."""

    params_per_channel = 2

    def __init__(self, channels: int):
        super().__init__(channels)
        self.head = DiscretizedLogisticHead()


PIXEL_LIKELIHOODS: dict[str, type[PixelLikelihood]] = {
    "bernoulli": BernoulliPixels,
    "gaussian": GaussianPixels,
    "discretized_logistic": DiscretizedLogisticPixels,
}
"""``model.likelihood`` -> its class, built with the number of channels."""


def _codebook(cfg: VQVAEConfig) -> dict:
    return dict(num_codes=cfg.codebook_size, dim=cfg.code_dim, beta=cfg.beta, kmeans_iters=cfg.kmeans_iters,
                restart_after=cfg.restart_after, restart_below=cfg.restart_below)


QUANTIZERS: dict[str, Callable[[VQVAEConfig], CodebookQuantizer]] = {
    "ema": lambda cfg: VectorQuantizerEMA(**_codebook(cfg), decay=cfg.ema_decay),
    "vq": lambda cfg: VectorQuantizer(**_codebook(cfg)),
}
"""``model.quantizer`` -> the quantizer built from the config."""


# ----------------------------------------------------------------------------- networks
def _widths(cfg: VQVAEConfig) -> list[int]:
    """Channels after each stride-2 convolution of the encoder: hidden // 2 ..., then hidden."""
    return [cfg.hidden // 2] * (cfg.downsample - 1) + [cfg.hidden]


def encoder(channels: int, cfg: VQVAEConfig) -> nn.Sequential:
    """x (B, channels, H, W), H and W multiples of 2^downsample -> z_e (B, D, H / 2^d, W / 2^d)."""
    layers: list[nn.Module] = []
    c = channels
    for w in _widths(cfg):
        layers += [nn.Conv2d(c, w, 4, stride=2, padding=1), nn.ReLU()]
        c = w
    layers += [nn.Conv2d(c, cfg.hidden, 3, padding=1),
               ResidualStack(cfg.hidden, cfg.res_channels, cfg.res_blocks),
               nn.Conv2d(cfg.hidden, cfg.code_dim, 1)]
    return nn.Sequential(*layers)


def decoder(out_channels: int, cfg: VQVAEConfig) -> nn.Sequential:
    """z_q (B, D, H', W') -> (B, out_channels, 2^d H', 2^d W'), the encoder's mirror image."""
    layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, cfg.hidden, 3, padding=1),
                               ResidualStack(cfg.hidden, cfg.res_channels, cfg.res_blocks)]
    widths = list(reversed(_widths(cfg)))  # hidden, hidden // 2, ...
    for i, w in enumerate(widths):
        last = i == len(widths) - 1
        nxt = out_channels if last else widths[i + 1]
        layers.append(nn.ConvTranspose2d(w, nxt, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- the model
@final
@register_model("vqvae")
class VQVAE(Model, DiscreteCodeModel, Reconstructing):
    """The image VQ-VAE (module docstring). A batch is x (B, C, H, W); codes are (B, H', W') long,
    H' = ceil(H / 2^downsample), W' likewise. No ``Sampling``: the uniform prior over codes draws
    noise; samples come from a prior fitted to the codes afterwards."""

    Config = VQVAEConfig
    supports_bf16 = True
    data_kinds = frozenset({"images"})

    def __init__(self, config: VQVAEConfig, spec: DataSpec):
        super().__init__(config, spec)
        config.validate("model")
        if len(spec.shape) != 3:
            raise VaelabError(f"the VQ-VAE takes images (C, H, W), but the data's examples have shape "
                              f"{tuple(spec.shape)}; give image data (vectors cannot be convolved)")
        c, h, w = spec.shape
        m = 2**config.downsample
        self.code_shape = (-(-h // m), -(-w // m))
        self.likelihood = PIXEL_LIKELIHOODS[config.likelihood](c)
        self.encoder = encoder(c, config)
        self.quantizer = QUANTIZERS[config.quantizer](config)
        self.decoder = decoder(self.likelihood.params_per_channel * c, config)

    # ------------------------------------------------------------------ the pieces
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def n_code_positions(self) -> int:
        """H' W', the codes per image."""
        return self.code_shape[0] * self.code_shape[1]

    def encode_vectors(self, x: Tensor) -> Tensor:
        """z_e(x): x (B, C, H, W) -> (B, D, H', W'), x zero-padded at the bottom and right to H', W'
        times 2^downsample first."""
        m = 2**self.config.downsample
        h, w = x.shape[-2:]
        return self.encoder(F.pad(x, (0, self.code_shape[1] * m - w, 0, self.code_shape[0] * m - h)))

    def decoder_output(self, z_q: Tensor) -> Tensor:
        """The likelihood's parameters: z_q (B, D, H', W') -> (B, P * C, H, W), cropped to the data's size."""
        h, w = self.spec.shape[1:]
        return self.decoder(z_q)[..., :h, :w].float()  # float32 under bf16 autocast too: the likelihood

    def decode(self, z_q: Tensor) -> Distribution:
        """p(x|z_q): z_q (B, D, H', W') -> batch (B,), event (C, H, W)."""
        return self.likelihood.distribution(self.decoder_output(z_q))

    def decode_mean(self, z_q: Tensor) -> Tensor:
        """E[x|z_q]: z_q (B, D, H', W') -> (B, C, H, W)."""
        return self.likelihood.mean(self.decoder_output(z_q))

    def quantize(self, x: Tensor) -> Quantized:
        """The quantizer's output for images x (B, C, H, W); in training mode this updates the
        codebook's state (EMA statistics, k-means initialisation, restarts). The quantizer runs in
        float32 even under bf16 autocast: nearest codes, EMA sums and the losses need its precision."""
        z_e = self.encode_vectors(x).float()
        with torch.autocast(z_e.device.type, enabled=False):
            return self.quantizer(z_e)

    @torch.no_grad()
    def encode_codes(self, x: Tensor) -> Tensor:
        """Nearest codes of x (B, C, H, W): (B, H', W') long. Changes no state in either mode."""
        z_e = self.encode_vectors(x)
        z = z_e.movedim(1, -1).reshape(-1, self.config.code_dim)
        return nearest_code(z, self.quantizer.codebook).view(z_e.shape[0], *z_e.shape[2:])

    @torch.no_grad()
    def decode_codes(self, codes: Tensor) -> Tensor:
        """E[x|z_q] of code maps (B, H', W') long: (B, C, H, W)."""
        return self.decode_mean(self.quantizer.lookup(codes))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x | z_q(x)]: (B, C, H, W), the decoded nearest codes."""
        return self.decode_codes(self.encode_codes(x))

    # ------------------------------------------------------------------ objective
    def loss(self, batch: Tensor) -> LossOutput:
        """Eq. 3 (module docstring) on x (B, C, H, W); per-example terms (B,), quantizer metrics of
        the batch as extras."""
        q = self.quantize(batch)
        log_px = self.likelihood.log_prob(self.decoder_output(q.z_q), batch)  # (B,)
        # KL(one-hot q(z|x) || uniform p(z)) = H'W' log K (Section 3.1)
        kl = log_px.new_full(log_px.shape, self.n_code_positions * math.log(self.config.codebook_size))
        return LossOutput(loss=q.loss - log_px.mean(), elbo=log_px - kl, reconstruction=log_px, kl=kl,
                          commitment=q.commitment, codebook=q.codebook, extras=q.metrics())

    def check_data(self, examples: Tensor) -> None:
        self.likelihood.check_data(examples)

    @torch.no_grad()
    def code_usage(self, batches: Iterable[Tensor]) -> CodeUsage:
        """Code counts over every batch of images (an iterable of (B, C, H, W)), summed over the
        processes when ``torch.distributed`` is initialised."""
        usage = CodeUsage(self.codebook_size, self.device)
        for x in batches:
            usage.update(self.encode_codes(x))
        usage.all_reduce()
        return usage

    def validation_metrics(self, batches: Iterable[Tensor]) -> dict[str, float]:
        """Perplexity and usage of the codebook over the whole validation set (a batch's figures,
        logged per step, understate them)."""
        usage = self.code_usage(batches)
        return {"codebook_perplexity": float(usage.perplexity()), "codebook_usage": float(usage.usage())}

    @torch.no_grad()
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        """Reconstructions of 16 inputs and the code frequencies, most used first, over all the inputs."""
        if not inputs.batches:
            return [self._usage_section(CodeUsage(self.codebook_size), 0)]
        x = torch.cat(list(inputs.batches))
        pairs = f"{min(len(x), 16)} inputs (upper row of each pair), their reconstructions below."
        return [
            ReconstructionsSection(name="reconstructions", title="Reconstructions", caption=pairs,
                                   original=x[:16].cpu().numpy(),
                                   reconstruction=self.reconstruct(x[:16]).cpu().numpy()),
            self._usage_section(self.code_usage(inputs.batches), len(x)),
        ]

    def _usage_section(self, usage: CodeUsage, n: int) -> LinesSection:
        counts = usage.counts.cpu().double()
        freq = (counts / counts.sum().clamp_min(1)).sort(descending=True).values.numpy()
        k = self.codebook_size
        caption = (f"How often each of the K = {k} codes is used over the {n} examples' "
                   f"{n * self.n_code_positions} code positions, most used first: perplexity "
                   f"{float(usage.perplexity()):.1f}, {int((counts > 0).sum())} of {k} codes used.")
        return LinesSection(name="codebook_usage", title="Codebook usage", caption=caption,
                            x=np.arange(1, k + 1), y=freq[None], labels=["frequency"],
                            xlabel="code rank", ylabel="fraction of code positions")
