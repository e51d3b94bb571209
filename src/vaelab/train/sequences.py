"""Batches of variable-length token sequences, bucketed by length, deterministic per
(seed, epoch, batch index, rank).

An epoch's plan, a pure function of (seed, epoch, rank, world), is made before its first batch:

1. a seeded permutation of the N sequences (file order without ``shuffle``);
2. for data-parallel runs, rank r takes every ``world``-th of them, N // world each, so the ranks
   hold disjoint shards of equal size (the N mod world left over differ from epoch to epoch);
3. bucketing: the shard is cut into chunks of ``bucket_batches`` batches; each chunk is sorted by
   length (stably) and cut into batches, so a batch holds sequences of similar lengths and little
   padding, while which sequences meet in a chunk is still random;
4. with ``shuffle`` the batches are put in a seeded random order, so lengths do not rise and fall
   through the epoch.

Batch ``b`` of epoch ``e`` is thus the same however the epoch is reached: a run resumed at batch k
sees exactly the batches k, k+1, ... that an uninterrupted run would. The batcher exposes what the
trainer uses of :class:`~vaelab.train.batching.TensorBatches`: ``epoch(e, start)`` and ``len``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from vaelab.tokens import Sequences, TokenBatch
from vaelab.train.batching import batch_seed, shard_sizes

__all__ = ["SequenceBatches"]


class SequenceBatches:
    """Padded batches (:class:`~vaelab.tokens.TokenBatch`) of ``sequences`` on ``device``.

    batch_size: sequences per batch (the last batch of an epoch may be smaller unless ``drop_last``).
    pad_id: the id written after the end of each sequence.
    shuffle: a fresh permutation of the sequences and of the batches every epoch.
    bucket_batches: batches per length-sorted chunk (0: no bucketing, batches in plan order).
    rank, world: this process's shard for data-parallel training.
    """

    def __init__(
        self,
        sequences: Sequences,
        batch_size: int,
        *,
        pad_id: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        bucket_batches: int = 50,
        device: torch.device | str | None = None,
        rank: int = 0,
        world: int = 1,
    ):
        if len(sequences) == 0:
            raise ValueError("cannot batch an empty set of sequences")
        if batch_size < 1 or bucket_batches < 0 or not 0 <= rank < world:
            raise ValueError(f"bad batching: batch_size {batch_size}, bucket_batches {bucket_batches}, "
                             f"rank {rank} of {world}")
        self.sequences = sequences.to(device) if device is not None else sequences
        self._lengths = sequences.lengths.cpu()
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.rank, self.world = rank, world
        self.n_rows, self.n_batches = shard_sizes(len(sequences), batch_size, world, drop_last, "sequences")
        self._plan_key: tuple | None = None
        self._plan: list[Tensor] = []

    def __len__(self) -> int:
        return self.n_batches

    def plan(self, epoch: int) -> list[Tensor]:
        """The index tensors (into ``sequences``) of every batch of ``epoch`` on this rank, in order."""
        key = (epoch, self.seed, self.shuffle, self.rank, self.world, self.bucket_batches)
        if self._plan_key != key:  # an epoch taken in pieces is planned once
            self._plan = self._make_plan(epoch)
            self._plan_key = key
        return self._plan

    def _make_plan(self, epoch: int) -> list[Tensor]:
        n = len(self._lengths)
        if self.shuffle:
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, -1))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        order = order[self.rank :: self.world][: self.n_rows]
        bs = self.batch_size
        if self.bucket_batches:
            chunk = bs * self.bucket_batches
            parts = []
            for c in order.split(chunk):
                # stable sort, so equal lengths keep their random order and the plan is deterministic
                parts.append(c[torch.sort(self._lengths[c], stable=True).indices])
            order = torch.cat(parts)
        batches = list(order.split(bs))
        if self.drop_last and len(batches) > self.n_batches:
            batches = batches[: self.n_batches]
        if self.shuffle and len(batches) > 1:
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, -2 - self.rank))
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[TokenBatch]:
        """Batches ``start, start+1, ...`` of epoch ``epoch``."""
        for index in self.plan(epoch)[start:]:
            yield self.sequences.pad(index, self.pad_id)

    def __iter__(self) -> Iterator[TokenBatch]:
        return self.epoch(0)

    def padding_fraction(self, epoch: int = 0) -> float:
        """Pad positions / all positions over the epoch's batches (how much bucketing saves)."""
        real = padded = 0
        for index in self.plan(epoch):
            lengths = self._lengths[index]
            real += int(lengths.sum())
            padded += int(lengths.max()) * len(index)
        return 1 - real / padded if padded else 0.0
