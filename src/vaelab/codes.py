"""The batch a prior over discrete codes receives: code maps with their class labels.

Stands on torch alone, so ``data/`` builds it, ``train/`` batches it and ``models/`` read it without
knowing each other (as :mod:`vaelab.tokens` does for text and :mod:`vaelab.waves` for audio).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CodeBatch"]


@dataclass(frozen=True)
class CodeBatch:
    """B code maps, e.g. the codes a VQ-VAE gives B images.

    codes: (B, H, W) int64 in [0, K).
    labels: (B,) int64 class labels, or None when the data have none.
    """

    codes: Tensor
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        if self.codes.dtype != torch.long:
            raise ValueError(f"codes must be int64, got {self.codes.dtype}")
        if self.labels is not None and self.labels.shape != self.codes.shape[:1]:
            raise ValueError(f"labels must have shape ({self.codes.shape[0]},), "
                             f"got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def split(self, size: int) -> tuple[CodeBatch, ...]:
        """Consecutive pieces of at most ``size`` maps (as ``Tensor.split`` along the batch)."""
        codes = self.codes.split(size)
        labels = self.labels.split(size) if self.labels is not None else (None,) * len(codes)
        return tuple(CodeBatch(c, y) for c, y in zip(codes, labels))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CodeBatch:
        labels = None if self.labels is None else self.labels.to(device, non_blocking=non_blocking)
        return CodeBatch(self.codes.to(device, non_blocking=non_blocking), labels)
