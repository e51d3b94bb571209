"""Gated PixelCNN over discrete code maps (van den Oord et al. 2016, "Conditional Image Generation
with PixelCNN Decoders"): the network a VQ-VAE's autoregressive prior is built on.

p(c) = prod_i p(c_i | c_<i [, y]) over an integer map c (B, H, W) with values in [0, K), in raster
order (row by row, left to right). Each layer has two stacks (Section 2.2 of the paper):

* the vertical stack sees every position in the rows above (and, inside the stack, the current row),
  through a (k//2 + 1, k) convolution padded at the top and sides;
* the horizontal stack sees the positions to the left in the current row, through a (1, k//2 + 1)
  convolution padded on the left (mask B, centre included), or a (1, k//2) one shifted right by one
  (mask A, centre excluded: the first layer, whose input is the code itself);
* the vertical stack's pre-activation, shifted down one row, is added to the horizontal one, so
  the horizontal stack at (i, j) sees rows < i in full and (i, < j): no blind spot, which a stack
  of masked 3x3 convolutions has above and to the right of each position.

Each masked convolution is written as the smaller convolution over its mask's nonzero part, placed
by padding: the same function as a k x k kernel times a mask, without multiplying by zeros.

Every gate is tanh(a) * sigmoid(b) (eq. 2); with class conditioning, a learned per-class bias
V^T y is added to both halves in every layer (eq. 4). The horizontal stack is residual after the
first layer, and each layer's gated output also feeds a skip connection summed into the output
head (ReLU, 1x1, ReLU, 1x1 -> K logits per position). The head reads only the skips, so the last
layer has no residual convolution (its horizontal output would go nowhere: a parameter without
gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GatedPixelCNN", "GatedLayer", "gate"]


def gate(x: Tensor, dim: int = 1) -> Tensor:
    """tanh(a) * sigmoid(b) for x = [a, b] split in halves along ``dim`` (the channels): e.g.
    (B, 2C, H, W) -> (B, C, H, W), or (B, T, 2C) -> (B, T, C) with dim=-1 (van den Oord et al. 2016,
    eq. 2)."""
    a, b = x.chunk(2, dim=dim)
    return torch.tanh(a) * torch.sigmoid(b)


def _shift_down(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W) moved down one row, zeros in row 0: position (i, j) then holds
    what was at (i - 1, j)."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1, :]


class GatedLayer(nn.Module):
    """One gated layer: vertical stack (B, C, H, W) and horizontal stack (B, C, H, W) in, the same
    shapes out, plus this layer's skip output (B, C, H, W).

    ``mask_a``: the horizontal convolution excludes the current position (the first layer, whose
    horizontal input is the embedded code itself); it also has no residual connection, since adding
    its input back would show each position its own code. ``n_classes`` > 0 adds a learned bias per
    class to the vertical and horizontal pre-activations. ``last``: the network's last layer, whose
    stacks feed nothing but its skip output: it has no residual convolution and returns h as given.
    """

    def __init__(self, channels: int, kernel: int, mask_a: bool, n_classes: int = 0, last: bool = False):
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and at least 3, got {kernel}")
        c, half = channels, kernel // 2
        self.channels, self.half, self.mask_a = channels, half, mask_a
        # vertical: output (i, j) reads rows i - half .. i, columns j - half .. j + half
        self.vertical = nn.Conv2d(c, 2 * c, (half + 1, kernel))
        # horizontal: columns j - half .. j (mask B) or j - half .. j - 1 (mask A)
        self.horizontal = nn.Conv2d(c, 2 * c, (1, half if mask_a else half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * c, 2 * c, 1)
        self.residual = None if last else nn.Conv2d(c, c, 1)
        self.skip = nn.Conv2d(c, c, 1)
        self.condition = nn.Embedding(n_classes, 4 * c) if n_classes > 0 else None

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """v, h: (B, C, H, W); labels: (B,) long when the layer is class-conditional, else None.
        Returns (v', h', skip), each (B, C, H, W)."""
        half = self.half
        v_pre = self.vertical(F.pad(v, (half, half, half, 0)))
        if self.mask_a:
            # pad `half` on the left, convolve with width `half`: output j reads j - half .. j - 1
            h_pre = self.horizontal(F.pad(h, (half, 0)))[..., :-1]
        else:
            h_pre = self.horizontal(F.pad(h, (half, 0)))
        # the vertical stack at row i has seen row i (right of j too): pass it on from row i - 1 only
        h_pre = h_pre + self.vertical_to_horizontal(_shift_down(v_pre))
        if self.condition is not None:
            if labels is None:
                raise ValueError("this layer is class-conditional: pass labels (B,)")
            bias_v, bias_h = self.condition(labels)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + bias_v, h_pre + bias_h  # V^T y in both gates (eq. 4)
        gated = gate(h_pre)
        if self.residual is None:
            h_out = h
        else:
            h_out = self.residual(gated) if self.mask_a else h + self.residual(gated)
        return gate(v_pre), h_out, self.skip(gated)


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN over integer code maps: codes (B, H, W) in [0, n_codes) -> logits
    (B, n_codes, H, W), where the logits at (i, j) depend only on the codes before (i, j) in raster
    order (and on the class label, when ``n_classes`` > 0).

    Args:
        n_codes: K, the number of code values.
        channels: C, the width of both stacks.
        layers: number of gated layers (the first is mask A). With r = layers * (kernel // 2), a
            position sees r positions to its left in its own row and, in the r + 1 rows above it,
            r columns to either side; a map larger than that is covered only partly.
        n_classes: number of class labels for conditioning (0: unconditional).
        kernel: odd size k of the masked k x k convolutions.
    """

    def __init__(self, n_codes: int, channels: int = 64, layers: int = 12, n_classes: int = 0,
                 kernel: int = 3):
        super().__init__()
        if n_codes < 2 or channels < 1 or layers < 1 or n_classes < 0:
            raise ValueError(f"need n_codes >= 2, channels >= 1, layers >= 1, n_classes >= 0; got "
                             f"{n_codes}, {channels}, {layers}, {n_classes}")
        self.n_codes, self.n_classes = n_codes, n_classes
        self.embedding = nn.Embedding(n_codes, channels)
        self.layers = nn.ModuleList(
            GatedLayer(channels, kernel, mask_a=(i == 0), n_classes=n_classes, last=(i == layers - 1))
            for i in range(layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, n_codes, 1)
        )

    def _check_labels(self, labels: Tensor | None, batch: int) -> None:
        if self.n_classes and labels is None:
            raise ValueError(
                f"this PixelCNN is class-conditional (n_classes={self.n_classes}): pass labels (B,)"
            )
        if not self.n_classes and labels is not None:
            raise ValueError("this PixelCNN is unconditional (n_classes=0): labels must be None")
        if labels is not None and labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")

    def forward_embedded(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits from embedded codes: x (B, C, H, W) float -> (B, K, H, W). ``forward`` is
        ``forward_embedded(embedding(codes))``; this entry takes any (e.g. soft) embedding."""
        self._check_labels(labels, x.shape[0])
        v = h = x
        skips = torch.zeros_like(x)
        for layer in self.layers:
            v, h, skip = layer(v, h, labels)
            skips = skips + skip
        return self.head(skips)

    def forward(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """codes (B, H, W) long in [0, K); labels (B,) long or None -> logits (B, K, H, W)."""
        return self.forward_embedded(self.embedding(codes).permute(0, 3, 1, 2), labels)

    def log_prob(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(codes [| labels]) = sum_i log p(c_i | c_<i [, y]): codes (B, H, W) -> (B,) nats."""
        logp = torch.log_softmax(self(codes, labels), dim=1)
        return logp.gather(1, codes.unsqueeze(1)).flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int], labels: Tensor | None = None,
               temperature: float = 1.0) -> Tensor:
        """n code maps (n, H, W) long, drawn one position at a time in raster order from
        softmax(logits / temperature); labels (n,) long for a class-conditional network.

        The logits of row i depend on rows <= i only, so each step runs the network on rows 0..i.
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self._check_labels(labels, n)
        height, width = shape
        codes = torch.zeros(n, height, width, dtype=torch.long, device=self.embedding.weight.device)
        for i in range(height):
            for j in range(width):
                logits = self(codes[:, : i + 1], labels)[:, :, i, j]
                probs = torch.softmax(logits.float() / temperature, dim=1)
                codes[:, i, j] = torch.multinomial(probs, 1).squeeze(1)
        return codes
