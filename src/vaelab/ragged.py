"""Ragged storage: N items of varying lengths stored end to end in one tensor, the part that token
sequences (:class:`vaelab.tokens.Sequences`) and audio clips (:class:`vaelab.waves.Waveforms`) share.
Torch alone, like both of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["Ragged", "offsets_of"]


def offsets_of(lengths: Tensor) -> Tensor:
    """(N + 1,) int64 offsets 0, l_0, l_0 + l_1, ... of N lengths."""
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return offsets


@dataclass(frozen=True)
class Ragged:
    """Items of varying lengths: item i is ``flat[offsets[i]:offsets[i + 1]]``.

    flat: (sum of lengths,); offsets: (N + 1,) int64, starting at 0 and non-decreasing.
    ``unit`` names what ``flat`` holds, for error messages.
    """

    unit: ClassVar[str] = "values"
    flat: Tensor
    offsets: Tensor

    def __post_init__(self) -> None:
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or int(self.offsets[0]) != 0:
            raise ValueError("offsets must be a 1-D tensor starting at 0")
        if int(self.offsets[-1]) != self.flat.numel() or self.flat.ndim != 1:
            raise ValueError(
                f"offsets end at {int(self.offsets[-1])} but flat holds {self.flat.numel()} {self.unit}"
            )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> Tensor:
        """(N,) int64: the length of every item."""
        return self.offsets[1:] - self.offsets[:-1]

    def __getitem__(self, i: int) -> Tensor:
        return self.flat[int(self.offsets[i]) : int(self.offsets[i + 1])]
