"""Token sequences: ragged storage (:class:`Sequences`) and the padded batch a model receives
(:class:`TokenBatch`).

Both stand on torch alone, so ``data/`` builds them, ``train/`` batches them and ``models/``
read them without knowing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from vaelab.ragged import Ragged, offsets_of

__all__ = ["Sequences", "TokenBatch"]


@dataclass(frozen=True)
class Sequences(Ragged):
    """N sequences of token ids of varying lengths, stored end to end.

    flat: (sum of lengths,) int64, the ids of sequence i at ``flat[offsets[i]:offsets[i + 1]]``.
    offsets: (N + 1,) int64, starting at 0 and non-decreasing. ``lengths``: tokens per sequence.
    """

    unit: ClassVar[str] = "ids"

    @classmethod
    def from_lists(cls, seqs: list[list[int]]) -> Sequences:
        """From Python lists of ids (one list per sequence)."""
        offsets = offsets_of(torch.tensor([len(s) for s in seqs], dtype=torch.int64))
        flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int64)
        return cls(flat, offsets)

    def subset(self, index: Tensor) -> Sequences:
        """The sequences ``index`` (a 1-D int64 tensor), in that order."""
        return Sequences.from_lists([self[int(i)].tolist() for i in index])

    def to(self, device: torch.device | str) -> Sequences:
        return Sequences(self.flat.to(device), self.offsets.to(device))

    def pad(self, index: Tensor, pad_id: int) -> TokenBatch:
        """The sequences ``index`` (B,) padded into a :class:`TokenBatch` of width T = the longest
        of them, on this storage's device: one gather, no Python loop."""
        device = self.flat.device
        index = index.to(device)
        starts = self.offsets[index]
        lengths = self.offsets[index + 1] - starts
        steps = torch.arange(int(lengths.max()) if len(index) else 0, device=device)
        mask = steps < lengths[:, None]  # (B, T)
        # positions past a sequence's end read a neighbour (clamped at the last id), then are padded:
        # no boolean indexing, so no device-to-host sync on a GPU beyond the width
        positions = (starts[:, None] + steps).clamp_(max=self.flat.numel() - 1)
        tokens = self.flat[positions].masked_fill_(~mask, pad_id)
        return TokenBatch(tokens, lengths, mask)


@dataclass(frozen=True)
class TokenBatch:
    """B token sequences padded to a common width T (the longest of them).

    tokens: (B, T) int64 ids; positions t >= lengths[i] hold the pad id.
    lengths: (B,) int64, the tokens of each sequence (for text: its words and ``<eos>``).
    mask: (B, T) bool, True at the positions t < lengths[i] (the real tokens).
    """

    tokens: Tensor
    lengths: Tensor
    mask: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def split(self, size: int) -> tuple[TokenBatch, ...]:
        """Consecutive pieces of at most ``size`` sequences (as ``Tensor.split`` along the batch),
        each as wide as its own longest sequence."""
        out = []
        for start in range(0, len(self), size):
            lengths = self.lengths[start : start + size]
            width = int(lengths.max()) if len(lengths) else 0
            rows = slice(start, start + size)
            out.append(TokenBatch(self.tokens[rows, :width], lengths, self.mask[rows, :width]))
        return tuple(out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenBatch:
        return TokenBatch(
            self.tokens.to(device, non_blocking=non_blocking),
            self.lengths.to(device, non_blocking=non_blocking),
            self.mask.to(device, non_blocking=non_blocking),
        )
