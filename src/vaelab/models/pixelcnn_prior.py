"""A PixelCNN prior over the discrete codes of a VQ-VAE (van den Oord, Vinyals & Kavukcuoglu 2017,
Sections 3.1, 4.1 and 4.2): the second stage, trained on the codes a parent VQ-VAE run extracts.

The VQ-VAE is trained with a uniform prior over its K^(H'W') code maps; afterwards an autoregressive
prior p(c | y) = prod_i p(c_i | c_<i, y) is fitted to the codes of the training images (y their class
label, or nothing), with the gated PixelCNN of ``vaelab.pixelcnn`` (van den Oord et al. 2016). Samples
of the prior, decoded by the VQ-VAE, are the model's images (``vaelab vq sample``); and with the
prior in place of the uniform one the VQ-VAE's bound on -log p(x) becomes
-log p(x | z_q(x)) - log p(z_q(x)) instead of -log p(x | z_q(x)) + H'W' log K (``vaelab vq eval``).

Data: kind ``codes`` (``codes:PATH``, written by ``vaelab vq extract-codes``), examples (H', W') with
values in [0, K), K = ``spec.extra["codebook_size"]``; batches are :class:`~vaelab.codes.CodeBatch`.
The loss is the exact -log p(c | y) per map in nats (``exact_likelihood``), so the evaluation reports
exact bits per code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, final

import numpy as np
import torch
from torch import Tensor

from vaelab.codes import CodeBatch
from vaelab.errors import VaelabError
from vaelab.models.base import (
    AutoregressivePrior,
    LossOutput,
    Model,
    ModelConfig,
    ReportInputs,
    register_model,
)
from vaelab.pixelcnn import GatedPixelCNN
from vaelab.sections import HeatmapSection, Section
from vaelab.spec import DataSpec

__all__ = ["PixelCNNPriorConfig", "PixelCNNPrior"]


@dataclass
class PixelCNNPriorConfig(ModelConfig):
    """Settings of the PixelCNN prior.

    channels: width C of the gated PixelCNN's stacks. layers: gated layers (the first is mask A).
    kernel: odd size k of its masked k x k convolutions.
    class_conditional: condition every layer on the example's class label (eq. 4 of van den Oord et
        al. 2016); the data must carry labels, and n_classes is taken from them.
    The number of code values K comes from the data (``spec.extra["codebook_size"]``).
    """

    name: str = "pixelcnn_prior"
    channels: int = 64
    layers: int = 12
    kernel: int = 3
    class_conditional: bool = False

    def validate(self, prefix: str) -> None:
        for key in ("channels", "layers"):
            if getattr(self, key) < 1:
                raise VaelabError(f"{prefix}.{key} must be a positive integer, got {getattr(self, key)}")
        if self.kernel < 3 or self.kernel % 2 == 0:
            raise VaelabError(f"{prefix}.kernel must be odd and at least 3, got {self.kernel}")


@final
@register_model("pixelcnn_prior")
class PixelCNNPrior(Model, AutoregressivePrior):
    """p(c [| y]) over code maps c (B, H', W') long in [0, K), raster order; y (B,) long class labels
    when ``class_conditional``. A batch is a :class:`~vaelab.codes.CodeBatch`."""

    Config = PixelCNNPriorConfig
    supports_bf16 = True
    data_kinds = frozenset({"codes"})
    exact_likelihood: ClassVar[bool] = True

    def __init__(self, config: PixelCNNPriorConfig, spec: DataSpec):
        super().__init__(config, spec)
        config.validate("model")
        if len(spec.shape) != 2:
            raise VaelabError(f"the PixelCNN prior takes 2-D code maps (H', W'), but the data's codes have "
                              f"shape {tuple(spec.shape)}; give the codes of an image VQ-VAE")
        k = spec.extra.get("codebook_size")
        if not isinstance(k, int) or k < 2:
            raise VaelabError(f"the codes' spec names no codebook_size >= 2 (got {k!r}); read them with "
                              "codes:PATH from `vaelab vq extract-codes`")
        if config.class_conditional and spec.n_classes < 1:
            raise VaelabError("model.class_conditional is true but the data have no class labels; set "
                              "model.class_conditional = false or extract codes of a labelled dataset")
        self.code_shape: tuple[int, int] = (int(spec.shape[0]), int(spec.shape[1]))
        self._n_classes = spec.n_classes if config.class_conditional else 0
        self.network = GatedPixelCNN(k, config.channels, config.layers, self._n_classes, config.kernel)

    @property
    def n_codes(self) -> int:
        """K, the number of code values."""
        return self.network.n_codes

    @property
    def n_classes(self) -> int:
        return self._n_classes

    def condition_of(self, batch: CodeBatch) -> Tensor | None:
        """The labels the prior conditions on: ``batch.labels`` (B,) when class-conditional, else None."""
        if not self._n_classes:
            return None
        if batch.labels is None:
            raise VaelabError("this prior is class-conditional but the batch has no labels; "
                              "give labelled codes")
        return batch.labels

    def position_log_prob(self, codes: Tensor, condition: Tensor | None = None) -> Tensor:
        """log p(c_i | c_<i [, y]) at every position: codes (B, H', W') long -> (B, H', W') nats."""
        logits = self.network(codes, condition).float()  # float32 under bf16 autocast too
        logp = torch.log_softmax(logits, dim=1)  # (B, K, H', W')
        return logp.gather(1, codes.unsqueeze(1)).squeeze(1)

    def log_prob(self, codes: Tensor, condition: Tensor | None = None) -> Tensor:
        """log p(c [| y]) = sum_i log p(c_i | c_<i [, y]): codes (B, H', W') -> (B,) nats."""
        return self.position_log_prob(codes, condition).flatten(1).sum(1)

    def sample(self, n: int, condition: Tensor | None = None, temperature: float = 1.0) -> Tensor:
        """n code maps (n, H', W') long in raster order from softmax(logits / temperature); condition:
        (n,) long labels for a class-conditional prior, None otherwise."""
        return self.network.sample(n, self.code_shape, condition, temperature)

    def loss(self, batch: CodeBatch) -> LossOutput:
        """-log p(c [| y]) per map, exact, in nats: the loss is its batch mean, ``elbo`` the per-map
        log p (B,) (an exact log-likelihood, not a bound)."""
        log_p = self.log_prob(batch.codes, self.condition_of(batch))
        return LossOutput(loss=-log_p.mean(), elbo=log_p)

    @torch.no_grad()
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        """Bits of each code position given those before it, averaged over the held-out maps (a
        heatmap (H', W')): where the prior is sure and where it is not."""
        h, w = self.code_shape
        total, n = torch.zeros(h, w, dtype=torch.float64), 0
        for batch in inputs.batches:
            total += -self.position_log_prob(batch.codes, self.condition_of(batch)).double().sum(0).cpu()
            n += len(batch)
        bits = (total / max(n, 1) / math.log(2)).numpy()
        uniform = math.log2(self.n_codes)
        caption = (f"-log2 p(c_i | c_<i{', y' if self._n_classes else ''}) at each of the {h} x {w} code "
                   f"positions, averaged over {n} held-out code maps; a uniform prior over the K = "
                   f"{self.n_codes} codes costs {uniform:.2f} bits at every position. Mean "
                   f"{float(bits.mean()) if n else float('nan'):.3f} bits per code.")
        return [HeatmapSection(name="bits_per_position", title="Bits per code position", caption=caption,
                               values=np.asarray(bits, dtype=np.float64), xlabel="code column",
                               ylabel="code row", colorbar="bits")]
