"""Batches of variable-length waveforms: fixed-length random crops for training, whole clips for
evaluation; deterministic per (seed, epoch, batch index, rank).

An epoch's plan, a pure function of (seed, epoch, rank, world), is made before its first batch:

1. a seeded permutation of the N clips (file order without ``shuffle``);
2. for data-parallel runs, rank r takes every ``world``-th of them, N // world each, so the ranks
   hold disjoint shards of equal size;
3. the shard is cut into batches of ``batch_size`` in that order.

With ``crop = C > 0`` each row of a batch is a crop of C samples: a clip of L >= C samples starts at
s ~ Uniform{0, ..., L - C} (every start equally likely), drawn from a generator seeded by
:func:`~vaelab.train.batching.batch_seed` (seed, epoch, batch index, rank); a clip shorter than C is
taken whole from its start, zero-padded to C, and its mask marks the L real samples. With
``crop = 0`` a batch holds whole clips zero-padded to the longest of them, with a mask (evaluation:
every sample is scored once). Batch ``b`` of epoch ``e`` is thus the same however the epoch is
reached: a run resumed at batch k sees exactly the batches k, k+1, ... an uninterrupted run would.
Label sets given with the clips (``labels``, e.g. FSDD's ``digit`` and ``speaker``) travel in every
batch (``WaveBatch.labels``): each row, a crop or a whole clip, carries its clip's values.
The batcher exposes what the trainer uses of :class:`~vaelab.train.batching.TensorBatches`:
``epoch(e, start)`` and ``len``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import torch
from torch import Tensor

from vaelab.train.batching import batch_seed, shard_sizes
from vaelab.waves import WaveBatch, Waveforms

__all__ = ["WaveformBatches", "random_starts"]


def random_starts(lengths: Tensor, crop: int, generator: torch.Generator) -> Tensor:
    """(B,) int64 crop starts: s_b ~ Uniform{0, ..., max(lengths[b] - crop, 0)}, for (B,) ``lengths``
    on the CPU."""
    room = (lengths - crop).clamp(min=0) + 1  # number of possible starts
    u = torch.rand(lengths.shape, generator=generator, dtype=torch.float64)
    return torch.minimum((u * room).long(), room - 1)


class WaveformBatches:
    """Padded batches (:class:`~vaelab.waves.WaveBatch`) of ``waveforms`` on ``device``.

    batch_size: clips per batch (the last batch of an epoch may be smaller unless ``drop_last``).
    crop: samples per row, each a random crop (training); 0: whole clips padded to the longest of
        the batch (evaluation). Batches are (B, crop) or (B, longest).
    shuffle: a fresh permutation of the clips every epoch.
    rank, world: this process's shard for data-parallel training.
    labels: label sets of the clips, set name -> (N,) int64; every batch carries its rows' values.
    """

    def __init__(
        self,
        waveforms: Waveforms,
        batch_size: int,
        *,
        crop: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
        rank: int = 0,
        world: int = 1,
        labels: Mapping[str, Tensor] | None = None,
    ):
        if len(waveforms) == 0:
            raise ValueError("cannot batch an empty set of waveforms")
        if batch_size < 1 or crop < 0 or not 0 <= rank < world:
            raise ValueError(f"bad batching: batch_size {batch_size}, crop {crop}, rank {rank} of {world}")
        self.waveforms = waveforms.to(device) if device is not None else waveforms
        for name, values in (labels or {}).items():
            if values.shape != (len(waveforms),):
                raise ValueError(f"label set {name!r} has shape {tuple(values.shape)} for "
                                 f"{len(waveforms)} clips; give one value per clip")
        where = self.waveforms.flat.device
        self.labels = {k: v.to(where, torch.int64) for k, v in (labels or {}).items()}
        self._lengths = waveforms.lengths.cpu()
        self.batch_size = batch_size
        self.crop = crop
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank, self.world = rank, world
        self.n_rows, self.n_batches = shard_sizes(len(waveforms), batch_size, world, drop_last, "clips")
        self._plan_key: tuple | None = None
        self._plan: list[Tensor] = []

    def __len__(self) -> int:
        return self.n_batches

    def plan(self, epoch: int) -> list[Tensor]:
        """The index tensors (into ``waveforms``) of every batch of ``epoch`` on this rank, in order."""
        key = (epoch, self.seed, self.shuffle, self.rank, self.world)
        if self._plan_key != key:  # an epoch taken in pieces is planned once
            n = len(self._lengths)
            if self.shuffle:
                g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, -1))
                order = torch.randperm(n, generator=g)
            else:
                order = torch.arange(n)
            batches = list(order[self.rank :: self.world][: self.n_rows].split(self.batch_size))
            self._plan, self._plan_key = batches[: self.n_batches], key
        return self._plan

    def batch(self, epoch: int, b: int) -> WaveBatch:
        """Batch ``b`` of ``epoch``: crops of its clips, or the whole clips padded."""
        index = self.plan(epoch)[b]
        if not self.crop:
            batch = self.waveforms.pad(index)
        else:
            g = torch.Generator().manual_seed(batch_seed(self.seed, epoch, b, self.rank))
            batch = self.waveforms.window(index, random_starts(self._lengths[index], self.crop, g), self.crop)
        if not self.labels:
            return batch
        rows = index.to(batch.device)
        return replace(batch, labels={k: v[rows] for k, v in self.labels.items()})

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[WaveBatch]:
        """Batches ``start, start+1, ...`` of epoch ``epoch``."""
        for b in range(start, len(self.plan(epoch))):
            yield self.batch(epoch, b)

    def __iter__(self) -> Iterator[WaveBatch]:
        return self.epoch(0)
