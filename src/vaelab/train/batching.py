"""In-memory batching by index slices, deterministic per (seed, epoch, batch).

A dataset that fits in memory is one tensor; an epoch is a seeded permutation of its rows, and a
batch is one ``index_select``. Every batch's randomness (the permutation, and a per-batch
transform such as dynamic binarisation) is a pure function of (seed, epoch, batch index) - and, for
the transform, of the process's rank - so a run resumed in the middle of an epoch sees exactly the
batches an uninterrupted run would.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from vaelab.errors import VaelabError

__all__ = [
    "TensorBatches", "RepeatedBatches", "DynamicBinarize", "dynamic_binarize", "batch_seed", "grey_levels",
    "shard_sizes",
]

Transform = Callable[[Tensor, int], Tensor]
"""``f(batch, seed) -> batch``: a per-batch transform; ``seed`` (63 bits) is the batch's own seed, a
pure function of (seed, epoch, batch index, rank). A transform may also have ``prepare(data) -> data``,
which ``TensorBatches`` calls once on the whole dataset (e.g. to store it more compactly)."""


def batch_seed(seed: int, epoch: int, index: int, rank: int = 0) -> int:
    """A 63-bit seed for one batch of one process, mixing the four integers (SplitMix64 finaliser).

    ``rank`` is the process's rank in a data-parallel run; rank 0 gets the seed a single-process run
    gets, so a one-process run's numbers do not depend on whether it could have been distributed."""
    mask = 2**64 - 1
    z = seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB
    z = (z + rank * 0xD6E8FEB86659FD93 + 1) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & (2**63 - 1)


def grey_levels(x: Tensor, chunk: int = 1 << 22) -> Tensor | None:
    """``x`` as uint8 levels k when every value is exactly the float k / 255 (k = 0..255), else None.

    Images read from 8-bit files (MNIST, PNG folders, CIFAR-10) are such levels; holding them as
    uint8 takes a quarter of the memory and lets :func:`dynamic_binarize` draw exact Bernoulli(k/255)
    variables from random bytes. Checked in chunks, so the check needs little extra memory.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return None
    flat = x.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.uint8, device=x.device)
    for i in range(0, flat.numel(), chunk):
        part = flat[i : i + chunk]
        k = torch.round(part * 255)
        if not bool(((k >= 0) & (k <= 255)).all()):
            return None
        out[i : i + chunk] = k.to(torch.uint8)
        if not torch.equal(k.div_(255), part):
            return None
    return out.view(x.shape)


class DynamicBinarize:
    """x ~ Bernoulli(p = grey level), a fresh draw for every batch (the dynamic binarization of
    MNIST). ``dynamic_binarize`` is the instance to pass as ``TensorBatches(transform=...)``.

    Data of exact 8-bit levels k/255 are held as uint8 (``prepare``) and binarised exactly: with u
    uniform on {0, ..., 254}, P(u < k) = k/255. On the CPU u comes from raw PCG64 bytes (NumPy; a
    byte of 255 is replaced by a spare one), about ten times cheaper than float uniforms; on CUDA u
    comes from ``torch.randint``.
    Other data in [0, 1] are compared with float uniforms: x = (u < p), u ~ U(0, 1), one bulk draw.
    Every draw is seeded by the batch's seed alone, so a batch is a pure function of it.
    """

    def __init__(self):
        self._last: tuple[weakref.ref, int, Tensor | None] | None = None

    def prepare(self, data: Tensor) -> Tensor:
        """The levels of ``data`` as uint8 when it holds exact 8-bit levels, else ``data``. The last
        conversion is remembered while that tensor lives unchanged (and no longer), so batchers built
        again over the same data - a resumed run, a sweep in one process - do not convert it again."""
        last = self._last
        if last is not None and last[0]() is data and last[1] == data._version:
            levels = last[2]
        else:
            levels = grey_levels(data)
            # the memory goes with the source tensor: when it is collected the levels are forgotten
            self._last = (weakref.ref(data, self._forget), data._version, levels)
        return data if levels is None else levels

    def _forget(self, ref: weakref.ref) -> None:
        if self._last is not None and self._last[0] is ref:
            self._last = None

    def __call__(self, batch: Tensor, seed: int) -> Tensor:
        if batch.dtype == torch.uint8:
            return _binarize_levels(batch, seed)
        g = torch.Generator(device=batch.device).manual_seed(seed)
        # the comparison is written in place into the uniforms (no bool tensor and no bool-to-float
        # pass, which on CPU costs ten times the comparison itself)
        return torch.rand(batch.shape, generator=g, device=batch.device, dtype=batch.dtype).lt_(batch)


def _binarize_levels(levels: Tensor, seed: int) -> Tensor:
    """Exact Bernoulli(k / 255) draws for uint8 levels k, as {0, 1} values of the default dtype.

    On the CPU: u is the first n bytes of PCG64(seed)'s raw words, and each u of 255 is replaced by
    the next byte other than 255 of the words that follow, so u is uniform on 0..254; x = u < k."""
    out = torch.empty(levels.shape, dtype=torch.get_default_dtype(), device=levels.device)
    if levels.device.type != "cpu":
        g = torch.Generator(device=levels.device).manual_seed(seed)
        u = torch.randint(0, 255, levels.shape, generator=g, device=levels.device, dtype=torch.uint8)
        return torch.lt(u, levels, out=out)
    bits = np.random.PCG64(seed)
    n = levels.numel()
    n_words = -(-n // 8)
    raw = bits.random_raw(n_words + _spare_words(n)).view(np.uint8)
    u = raw[:n].copy()
    redo = np.flatnonzero(u == 255)
    spare = raw[n_words * 8 :]
    spare = spare[spare != 255]
    while spare.size < redo.size:
        more = bits.random_raw(-(-(redo.size - spare.size) // 8) + 8).view(np.uint8)
        spare = np.concatenate([spare, more[more != 255]])
    u[redo] = spare[: redo.size]
    return torch.lt(torch.from_numpy(u).view(levels.shape), levels, out=out)


def _spare_words(n: int) -> int:
    """Words drawn beyond the n bytes for the replacements of 255: about n/256 bytes are needed;
    n/128 + 512 is dozens of standard deviations more (when short, more are drawn)."""
    return n // 1024 + 64


dynamic_binarize = DynamicBinarize()


def shard_sizes(n_items: int, batch_size: int, world: int, drop_last: bool, what: str) -> tuple[int, int]:
    """(rows each of ``world`` processes takes, batches in its epoch) for ``n_items`` examples: every
    rank takes the same number of rows (the remainder is left out), and an epoch has at least one
    batch. A one-line error when there are fewer ``what`` than processes."""
    rows = n_items // world
    if rows == 0:
        raise VaelabError(f"{n_items} {what} cannot be shared among {world} processes; "
                          "use fewer processes or more data")
    n = rows // batch_size if drop_last else -(-rows // batch_size)
    return rows, max(1, n)


class TensorBatches:
    """Batches of rows of ``data`` (N, ...) on ``device``.

    shuffle: a fresh permutation every epoch (seeded by ``seed`` and the epoch).
    transform: ``f(batch, seed) -> batch`` applied to every batch with the batch's own seed; its
        ``prepare(data)``, if it has one, is applied once to the whole dataset first.
    rank, world: for data-parallel runs each process takes every ``world``-th row of the epoch's
        permutation (the same permutation on every process), so the processes see disjoint shards
        of equal size; the transform's seed also mixes in the rank, so each process draws its own
        random numbers (``batch_seed(seed, epoch, batch, rank)``).
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
        if transform is not None and hasattr(transform, "prepare"):
            data = transform.prepare(data)
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
        key = (epoch, self.seed, self.shuffle, self.rank, self.world)
        cached = getattr(self, "_last_order", None)
        if cached is not None and cached[0] == key:  # an epoch taken in pieces: permute it once
            return cached[1]
        order = self._permutation(epoch)
        self._last_order = (key, order)
        return order

    def _permutation(self, epoch: int) -> Tensor:
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
        for b in range(start, self.n_batches):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if idx.numel() == 0:
                return
            batch = self.data.index_select(0, idx)
            if self.transform is not None:
                batch = self.transform(batch, batch_seed(self.seed, epoch, b, self.rank))
            yield batch

    def __iter__(self) -> Iterator[Tensor]:
        return self.epoch(0)


class RepeatedBatches:
    """Every batch of ``inner`` ``repeats`` times in a row: ``repeats`` consecutive training steps on
    each batch (a model's ``steps_per_batch``, e.g. Monte Carlo EM's weight updates per sample).

    An epoch is ``repeats * len(inner)`` steps; ``epoch(e, start)`` starts at step ``start`` of it, in
    the middle of a batch's repetitions too, so a resumed run sees exactly the steps an
    uninterrupted one would.
    """

    def __init__(self, inner, repeats: int):
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.inner = inner
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.inner) * self.repeats

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[Tensor]:
        """Steps ``start, start+1, ...`` of epoch ``epoch``: batch ``s // repeats`` of ``inner`` at step s."""
        first, done = divmod(start, self.repeats)
        for batch in self.inner.epoch(epoch, first):
            for _ in range(self.repeats - done):
                yield batch
            done = 0

    def __iter__(self) -> Iterator[Tensor]:
        return self.epoch(0)
