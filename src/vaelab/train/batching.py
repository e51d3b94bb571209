"""In-memory batching by index slices, deterministic per (seed, epoch, batch).

A dataset that fits in memory is one tensor; an epoch is a seeded permutation of its rows, and a
batch is one ``index_select``. Every batch's randomness (the permutation, and a per-batch
transform such as dynamic binarisation) is a pure function of (seed, epoch, batch index), so a run
resumed in the middle of an epoch sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

__all__ = ["TensorBatches", "dynamic_binarize", "batch_seed"]

Transform = Callable[[Tensor, torch.Generator], Tensor]


def batch_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one batch, mixing the three integers (SplitMix64 finaliser)."""
    mask = 2**64 - 1
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 1) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & (2**63 - 1)


def dynamic_binarize(x: Tensor, generator: torch.Generator) -> Tensor:
    """x ~ Bernoulli(p = grey level), one bulk draw for the whole batch.

    The comparison u < p is written in place into the uniforms (no bool tensor and no bool-to-float
    conversion pass, which on CPU costs ten times the comparison itself).
    """
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype).lt_(x)


class TensorBatches:
    """Batches of rows of ``data`` (N, ...) on ``device``.

    shuffle: a fresh permutation every epoch (seeded by ``seed`` and the epoch).
    transform: ``f(batch, generator) -> batch`` applied to every batch with its own generator.
    rank, world: for data-parallel runs each process takes every ``world``-th row of the epoch's
        permutation, so the processes see disjoint shards of equal size.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        transform: Transform | None = None,
        device: torch.device | str | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        if data.shape[0] == 0:
            raise ValueError("cannot batch an empty tensor")
        self.data = data.to(device) if device is not None else data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.transform = transform
        self.rank, self.world = rank, world
        per_rank = data.shape[0] // world if world > 1 else data.shape[0]
        self.n_rows = per_rank
        n = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
        self.n_batches = max(1, n)

    def __len__(self) -> int:
        return self.n_batches

    def _order(self, epoch: int) -> Tensor:
        n = self.data.shape[0]
        if self.shuffle:
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, -1))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world > 1:
            order = order[self.rank :: self.world][: self.n_rows]
        return order.to(self.data.device)

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[Tensor]:
        """Batches ``start, start+1, ...`` of epoch ``epoch``."""
        order = self._order(epoch)
        gen_device = self.data.device if self.data.device.type != "cpu" else "cpu"
        for b in range(start, self.n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if idx.numel() == 0:
                return
            batch = self.data.index_select(0, idx)
            if self.transform is not None:
                g = torch.Generator(device=gen_device).manual_seed(batch_seed(self.seed, epoch, b))
                batch = self.transform(batch, g)
            yield batch

    def __iter__(self) -> Iterator[Tensor]:
        return self.epoch(0)
