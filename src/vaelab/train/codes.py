"""Batches of code maps with their labels (:class:`~vaelab.codes.CodeBatch`), deterministic per
(seed, epoch, batch index, rank).

The order of an epoch is exactly that of :class:`~vaelab.train.batching.TensorBatches` over the row
indices (the same seeded permutation, the same shards for data-parallel runs), so a run resumed in
the middle of an epoch sees the batches an uninterrupted one would. The batcher exposes what the
trainer uses: ``epoch(e, start)`` and ``len``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from vaelab.codes import CodeBatch
from vaelab.train.batching import TensorBatches

__all__ = ["CodeBatches"]


class CodeBatches:
    """Batches :class:`CodeBatch` (codes (B, H, W) long, labels (B,) long or None) of ``codes``
    (N, H, W) and ``labels`` (N,) or None, on ``device``.

    shuffle, seed, drop_last, rank, world: as :class:`~vaelab.train.batching.TensorBatches`.
    """

    def __init__(
        self,
        codes: Tensor,
        labels: Tensor | None,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        if labels is not None and labels.shape != codes.shape[:1]:
            raise ValueError(f"labels must have shape ({codes.shape[0]},), got {tuple(labels.shape)}")
        self.codes = codes.to(device) if device is not None else codes
        self.labels = labels.to(device) if labels is not None and device is not None else labels
        # the rows' order comes from a TensorBatches over their indices: one plan, one definition
        self.index = TensorBatches(torch.arange(codes.shape[0], device=self.codes.device), batch_size,
                                   shuffle=shuffle, drop_last=drop_last, seed=seed, rank=rank, world=world)

    def __len__(self) -> int:
        return len(self.index)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[CodeBatch]:
        """Batches ``start, start+1, ...`` of epoch ``epoch``."""
        for idx in self.index.epoch(epoch, start):
            labels = None if self.labels is None else self.labels.index_select(0, idx)
            yield CodeBatch(self.codes.index_select(0, idx), labels)

    def __iter__(self) -> Iterator[CodeBatch]:
        return self.epoch(0)
