"""vector-quantize-pytorch's ``VectorQuantize`` behind vaelab's quantizer interface, so that the image
VQ-VAE can train with it in place of ``vaelab.quantizers.VectorQuantizerEMA`` (benchmarks/bench_vqvae.py
``peers``) without a change to vaelab.

The adapter maps vaelab's encoder outputs z_e (B, D, H, W) to the peer's (B, N, D) (N = H W) and back,
and returns a ``vaelab.quantizers.Quantized``. Loss scale: the peer's commitment loss is
``commitment_weight * mean((z_e - sg[e])^2)`` over every element of the batch; vaelab's is
``beta * sum((z_e - sg[e])^2)`` over each example's elements, averaged over the batch. The two differ by
the factor N D (elements per example), which the adapter applies, so that with ``commitment_weight =
beta`` the commitment term weighs against the reconstruction (nats per image) as vaelab's does.

``codebook`` is the peer's codebook (K, D), so vaelab's ``encode_codes`` (nearest code by Euclidean
distance) and ``lookup`` work unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vaelab.quantizers import Quantized, code_counts, perplexity, usage_fraction


class PeerQuantizer(nn.Module):
    """``vector_quantize_pytorch.VectorQuantize`` (EMA codebook) as a vaelab quantizer of z_e
    (B, D, *spatial)."""

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, decay: float = 0.99,
                 kmeans_init: bool = True, kmeans_iters: int = 10, threshold_ema_dead_code: float = 2,
                 rotation_trick: bool = False):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize

        self.num_codes, self.dim, self.beta = num_codes, dim, beta
        self.vq = VectorQuantize(dim=dim, codebook_size=num_codes, decay=decay, commitment_weight=beta,
                                 kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
                                 threshold_ema_dead_code=threshold_ema_dead_code,
                                 rotation_trick=rotation_trick)

    @property
    def codebook(self) -> Tensor:
        return self.vq.codebook

    def lookup(self, codes: Tensor) -> Tensor:
        """codes (B, *spatial) long -> (B, D, *spatial)."""
        return nn.functional.embedding(codes, self.codebook.detach()).movedim(-1, 1)

    def forward(self, z_e: Tensor) -> Quantized:
        b, spatial = z_e.shape[0], z_e.shape[2:]
        x = z_e.movedim(1, -1).reshape(b, -1, self.dim)  # (B, N, D)
        quantized, codes, loss = self.vq(x)
        per_example = x[0].numel()  # N D
        z_q = quantized.reshape(b, *spatial, self.dim).movedim(-1, 1)
        codes = codes.reshape(b, *spatial)
        with torch.no_grad():  # per-example commitment (B,), as vaelab reports it (not used for gradients)
            commitment = self.beta * (z_e - self.lookup(codes)).pow(2).flatten(1).sum(1)
            counts = code_counts(codes, self.num_codes)
        return Quantized(z_q=z_q, codes=codes, loss=loss.reshape(()) * per_example, commitment=commitment,
                         codebook=None, perplexity=perplexity(counts), usage=usage_fraction(counts),
                         dead_codes=z_e.new_zeros((), dtype=torch.long))
