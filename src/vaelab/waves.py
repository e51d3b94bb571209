"""Waveforms: ragged storage of mono clips (:class:`Waveforms`) and the padded batch a model
receives (:class:`WaveBatch`).

Both stand on torch alone, so ``data/`` builds them, ``train/`` batches them and ``models/`` read
them without knowing each other (as :mod:`vaelab.tokens` does for text).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from vaelab.ragged import Ragged, offsets_of

__all__ = ["Waveforms", "WaveBatch", "MU_LAW_LEVELS", "mu_law_encode", "mu_law_decode", "spectral_distance"]

MU_LAW_LEVELS = 256
"""Levels of 8-bit mu-law audio (mu = 255)."""


def mu_law_encode(x: Tensor, levels: int = MU_LAW_LEVELS) -> Tensor:
    """Mu-law levels of samples: x (...) float in [-1, 1] (clipped) -> (...) int64 in [0, levels).

    y = sign(x) ln(1 + mu |x|) / ln(1 + mu), mu = levels - 1 (the continuous companding curve of
    ITU-T G.711; WaveNet, van den Oord et al. 2016, eq. 2), then k = round((y + 1) / 2 * mu)."""
    mu = levels - 1
    x = x.clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return torch.round((y + 1) / 2 * mu).long()


def mu_law_decode(k: Tensor, levels: int = MU_LAW_LEVELS) -> Tensor:
    """The sample each mu-law level stands for: k (...) integer in [0, levels) -> (...) float32 in
    [-1, 1], the inverse of :func:`mu_law_encode`'s curve at y = 2k / mu - 1."""
    mu = levels - 1
    y = 2 * k.to(torch.float32) / mu - 1
    return torch.sign(y) * torch.expm1(y.abs() * math.log1p(mu)) / mu


def spectral_distance(x: Tensor, y: Tensor, lengths: Tensor, ffts: tuple[int, ...] = (128, 256, 512),
                      floor: float = 1e-3) -> Tensor:
    """Multi-resolution log-spectral distance of two batches of clips: x, y (B, T) samples, lengths
    (B,) real samples per row -> (B,) float32, differentiable in x and y.

    For each FFT size n (Hann window, hop n / 4, frames centred, the clip zero-padded by n / 2 at both
    ends): the mean over frequency bins of |log(|X| + floor) - log(|Y| + floor)|, averaged over the
    frames whose centre lies inside the clip (t < length); then the mean over the sizes. Samples past
    a row's length should be 0 in both x and y: the result then depends on the real samples alone,
    whatever padding the batch adds. Short-time magnitudes ignore the phase, so two waveforms that
    sound alike are close even where they differ sample by sample."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"spectral_distance needs two (B, T) batches of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    x, y = x.float(), y.float()
    total = torch.zeros(x.shape[0], device=x.device)
    for n in ffts:
        hop = n // 4
        window = torch.hann_window(n, device=x.device)
        mag_x, mag_y = (torch.stft(v, n, hop, n, window, center=True, pad_mode="constant",
                                   return_complex=True).abs() for v in (x, y))
        d = (torch.log(mag_x + floor) - torch.log(mag_y + floor)).abs().mean(1)  # (B, frames)
        keep = (torch.arange(d.shape[-1], device=x.device) * hop < lengths[:, None]).to(d.dtype)
        total = total + (d * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)
    return total / len(ffts)


@dataclass(frozen=True)
class Waveforms(Ragged):
    """N mono clips of varying lengths, stored end to end.

    flat: (sum of lengths,) float32 samples in [-1, 1]; clip i is ``flat[offsets[i]:offsets[i + 1]]``.
    offsets: (N + 1,) int64, starting at 0 and non-decreasing. ``lengths``: samples per clip.
    """

    unit: ClassVar[str] = "samples"

    @classmethod
    def from_clips(cls, clips: list[Tensor]) -> Waveforms:
        """From 1-D clips (any float dtype; stored as float32)."""
        offsets = offsets_of(torch.tensor([len(c) for c in clips], dtype=torch.int64))
        flat = torch.cat([c.reshape(-1).to(torch.float32) for c in clips]) if clips else torch.zeros(0)
        return cls(flat, offsets)

    def subset(self, index: Tensor) -> Waveforms:
        """The clips ``index`` (a 1-D int64 tensor), in that order."""
        return Waveforms.from_clips([self[int(i)] for i in index])

    def to(self, device: torch.device | str) -> Waveforms:
        return Waveforms(self.flat.to(device), self.offsets.to(device))

    def window(self, index: Tensor, starts: Tensor, width: int) -> WaveBatch:
        """Samples ``starts[b] .. starts[b] + width`` of clip ``index[b]``, as a :class:`WaveBatch`
        (B, width) on this storage's device; positions past a clip's end are 0 and masked out.

        index, starts: (B,) int64, ``0 <= starts[b] <= length of clip index[b]``. One gather, no loop.
        """
        device = self.flat.device
        index, starts = index.to(device), starts.to(device)
        first = self.offsets[index] + starts
        lengths = (self.offsets[index + 1] - first).clamp_(min=0, max=width)
        steps = torch.arange(width, device=device)
        mask = steps < lengths[:, None]  # (B, width)
        # positions past a clip's end read a neighbour (clamped to the storage), then are zeroed
        positions = (first[:, None] + steps).clamp_(max=max(self.flat.numel() - 1, 0))
        audio = self.flat[positions].masked_fill_(~mask, 0.0)
        return WaveBatch(audio, lengths, mask)

    def pad(self, index: Tensor) -> WaveBatch:
        """The whole clips ``index`` (B,) padded with zeros to the longest of them (for evaluation)."""
        lengths = self.lengths[index.to(self.offsets.device)]
        width = int(lengths.max()) if len(index) else 0
        return self.window(index, torch.zeros_like(index), width)


@dataclass(frozen=True)
class WaveBatch:
    """B mono clips (or crops of them) padded to a common width T.

    audio: (B, T) float32 samples in [-1, 1]; positions t >= lengths[b] hold 0.
    lengths: (B,) int64, the real samples of each row.
    mask: (B, T) bool, True at the positions t < lengths[b] (the real samples).
    labels: label set name -> (B,) int64, the value of each row's clip (a crop carries its clip's),
        e.g. ``{"digit": ..., "speaker": ...}``; empty when the data have no labels.
    """

    audio: Tensor
    lengths: Tensor
    mask: Tensor
    labels: dict[str, Tensor] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name, values in self.labels.items():
            if values.shape != self.lengths.shape:
                raise ValueError(f"label set {name!r} has shape {tuple(values.shape)}, the batch "
                                 f"{tuple(self.lengths.shape)}; give one value per row")

    def __len__(self) -> int:
        return self.audio.shape[0]

    @property
    def device(self) -> torch.device:
        return self.audio.device

    def split(self, size: int) -> tuple[WaveBatch, ...]:
        """Consecutive pieces of at most ``size`` rows (as ``Tensor.split`` along the batch); the
        width is kept, so fixed-length crops stay fixed-length."""
        labels = {k: v.split(size) for k, v in self.labels.items()}
        return tuple(
            WaveBatch(a, n, m, {k: v[i] for k, v in labels.items()})
            for i, (a, n, m) in enumerate(
                zip(self.audio.split(size), self.lengths.split(size), self.mask.split(size))
            )
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> WaveBatch:
        return WaveBatch(
            self.audio.to(device, non_blocking=non_blocking),
            self.lengths.to(device, non_blocking=non_blocking),
            self.mask.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.labels.items()},
        )
