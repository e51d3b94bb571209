"""What every image loader returns, and the one place where splits, limits and binarization happen.

A loader parses its files into :class:`ImageSplits` (NumPy arrays exactly as the files hold them,
channels first). :func:`finish` then, the same way for every dataset:

1. carves a test set when the dataset has no official one (``test_fraction`` of the examples,
   drawn with the fixed seed :data:`TEST_SPLIT_SEED`, so the test set never moves when
   ``data.split_seed`` changes and results stay comparable);
2. carves a validation set from the training set when the dataset has no official one
   (``data.valid_size``: a fraction < 1 or a count >= 1, drawn with ``data.split_seed``);
3. keeps the first ``data.limit`` training examples (quick runs);
4. converts to float32 tensors (N, C, H, W) in [0, 1] and applies ``data.binarize``.

Binarization (``data.binarize``):

- ``dynamic``: the grey levels are returned unchanged with ``spec.values == "binary"``; the batcher
  draws x ~ Bernoulli(pixel) afresh for every batch (Salakhutdinov & Murray 2008's protocol).
  Evaluate on a fixed draw: ``binarize(bundle.test, "fixed", seed)``.
- ``fixed``: one draw x ~ Bernoulli(pixel) per split, made once at load time with a
  ``torch.Generator`` seeded from ``(split_seed, split)``; the test set is thus binarized once
  with a fixed seed and is the same in every run with the same ``split_seed``.
- ``threshold``: x > 0.5.
- ``none``: grey levels, ``spec.values == "continuous"``.

Datasets that are binary as stored (Larochelle & Murray's binarized MNIST) are ``binary`` whatever
the setting, and are never redrawn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.errors import VaelabError
from vaelab.spec import DataSpec

__all__ = [
    "Bundle",
    "Splits",
    "DataBundle",
    "ImageSplits",
    "binarize",
    "finish",
    "split_count",
    "BINARIZE_MODES",
    "TEST_SPLIT_SEED",
]

BINARIZE_MODES = ("dynamic", "fixed", "threshold", "none")
TEST_SPLIT_SEED = 0
"""Seed of the permutation that carves a test set out of datasets without an official one."""

_SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}


class Bundle(ABC):
    """A dataset held in memory: ``spec`` and ``name`` (attributes), its splits by name.
    :class:`DataBundle` holds images, :class:`vaelab.data.text.SequenceBundle` token sequences."""

    spec: DataSpec
    name: str

    @abstractmethod
    def split(self, which: str) -> tuple:
        """``(examples, labels)`` of ``"train"``, ``"valid"`` or ``"test"``; either is None when
        the split is empty or has no labels."""

    @abstractmethod
    def summary(self) -> str:
        """One line: name, kind, shape and split sizes, e.g. for logs."""


class Splits(ABC):
    """What a dataset's loader returns: its examples as parsed from the files, before splitting."""

    @abstractmethod
    def finish(self, name: str, cfg: DataConfig) -> Bundle:
        """Carve the missing splits, apply ``cfg``, and hold the result in memory."""


@dataclass
class DataBundle(Bundle):
    """A dataset held in memory, ready to be sliced into batches by index.

    train / valid / test: float32 tensors (N, C, H, W) with values in [0, 1]; ``valid`` and ``test``
        are None when that split is empty. With ``spec.values == "binary"`` the values are either
        already in {0, 1} (``fixed``, ``threshold``, binarized MNIST) or grey levels that the
        batcher turns into Bernoulli draws (``dynamic``).
    train_labels / valid_labels / test_labels: int64 tensors (N,), or None without labels.
    spec: the event shape (C, H, W), ``kind == "images"``, the values (``binary`` /
        ``continuous``) and ``n_classes``.
    name: the dataset's name as given in ``data.name``.
    class_names: one name per label value (may be empty).
    dynamic: True when the batcher must draw x ~ Bernoulli(pixel) for every batch
        (``data.binarize = "dynamic"`` on grey-level data).
    split_seed: ``data.split_seed``, which also seeds the fixed binarization draws.
    """

    train: torch.Tensor
    valid: torch.Tensor | None
    test: torch.Tensor | None
    spec: DataSpec
    name: str
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)
    dynamic: bool = False
    split_seed: int = 0

    def split(self, which: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(images, labels)`` of ``"train"``, ``"valid"`` or ``"test"``."""
        if which not in _SPLIT_INDEX:
            raise ValueError(f"split must be train, valid or test, got {which!r}")
        return getattr(self, which), getattr(self, f"{which}_labels")

    def eval_images(self, which: str = "test") -> torch.Tensor | None:
        """The images to evaluate log p(x) on: with dynamic binarization, one fixed Bernoulli draw
        (the same draw ``data.binarize = "fixed"`` makes, seeded by ``split_seed``); otherwise the
        split as it is. So a dynamically trained model is tested on a test set binarized once."""
        x = getattr(self, which) if which in _SPLIT_INDEX else None
        if x is None or not self.dynamic:
            return x
        return binarize(x, "fixed", self.split_seed, which)

    def summary(self) -> str:
        """One line: name, shape, kind and split sizes, e.g. for logs."""
        sizes = ", ".join(
            f"{s} {0 if x is None else len(x)}" for s in _SPLIT_INDEX for x in [getattr(self, s)]
        )
        return f"{self.name}: {self.spec.values} {tuple(self.spec.shape)}, {sizes}"


@dataclass
class ImageSplits(Splits):
    """Images as parsed from the files, before :func:`finish`.

    Arrays are (N, C, H, W), either integers from 0 to ``max_value`` (divided by ``max_value`` in
    :func:`finish`: 255 for 8-bit images) or floating point already in [0, 1]. ``valid`` /
    ``test`` are None when the dataset has no official split; ``test_fraction`` > 0 then asks
    :func:`finish` to carve a test set of that fraction.
    ``binary``: values are in {0, 1} as stored (binarization settings do not apply).
    """

    train: np.ndarray
    train_labels: np.ndarray | None = None
    valid: np.ndarray | None = None
    valid_labels: np.ndarray | None = None
    test: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_fraction: float = 0.0
    binary: bool = False
    max_value: float = 255.0
    n_classes: int = 0
    class_names: list[str] = field(default_factory=list)

    def finish(self, name: str, cfg: DataConfig) -> DataBundle:
        return finish(name, self, cfg)


def split_count(size: float, n: int, what: str) -> int:
    """Examples in a split of ``size`` (a fraction < 1 of ``n``, or a count >= 1)."""
    count = int(round(size * n)) if size < 1 else int(size)
    if count >= n and count > 0:
        raise VaelabError(
            f"{what}={size:g} leaves no training examples out of {n}; use a smaller fraction or count"
        )
    return count


def _carve(
    x: np.ndarray, y: np.ndarray | None, count: int, seed: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Split off ``count`` examples chosen by a seeded permutation; both parts keep file order."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).numpy()
    held, kept = np.sort(perm[:count]), np.sort(perm[count:])
    return x[kept], None if y is None else y[kept], x[held], None if y is None else y[held]


def _split_generator(seed: int, split: str) -> torch.Generator:
    # Independent streams per split, so e.g. data.limit or valid_size never changes the test draw.
    state = np.random.SeedSequence([seed, _SPLIT_INDEX[split]]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def binarize(x: torch.Tensor, mode: str, seed: int = 0, split: str = "test") -> torch.Tensor:
    """Binarize grey levels x in [0, 1] (any shape) as ``data.binarize`` says.

    ``fixed`` draws x ~ Bernoulli(x) from a generator seeded by ``(seed, split)`` (the same draw
    :func:`finish` makes); ``threshold`` is x > 0.5; ``dynamic`` and ``none`` return x unchanged
    (the dynamic draw belongs to the batcher). Returns a float32 tensor of x's shape.
    """
    if mode == "fixed":
        return torch.bernoulli(x, generator=_split_generator(seed, split))
    if mode == "threshold":
        return (x > 0.5).to(torch.float32)
    if mode in ("dynamic", "none"):
        return x
    raise VaelabError(f"data.binarize must be one of {', '.join(BINARIZE_MODES)}; got {mode!r}")


def _to_tensor(x: np.ndarray, max_value: float) -> torch.Tensor:
    if np.issubdtype(x.dtype, np.integer):
        # One copy (astype), then in place: 0..max_value onto [0, 1].
        out = torch.from_numpy(x.astype(np.float32, order="C"))
        return out.div_(max_value) if max_value != 1 else out
    return torch.from_numpy(np.array(x, dtype=np.float32, copy=True, order="C"))


def _labels(y: np.ndarray | None) -> torch.Tensor | None:
    return None if y is None else torch.from_numpy(np.array(y, dtype=np.int64, copy=True))


def finish(name: str, s: ImageSplits, cfg: DataConfig) -> DataBundle:
    """Carve test and validation sets, apply ``limit`` and ``binarize``; see the module docstring."""
    if s.train.ndim != 4 or len(s.train) == 0:
        raise VaelabError(f"dataset {name!r} has no training images; check its files")
    train, train_y = s.train, s.train_labels
    test, test_y = s.test, s.test_labels
    if test is None and s.test_fraction > 0:
        n_test = int(round(s.test_fraction * len(train)))
        if 0 < n_test < len(train):
            train, train_y, test, test_y = _carve(train, train_y, n_test, TEST_SPLIT_SEED)
    valid, valid_y = s.valid, s.valid_labels
    if valid is None:
        n_valid = split_count(cfg.valid_size, len(train), "data.valid_size")
        if n_valid > 0:
            train, train_y, valid, valid_y = _carve(train, train_y, n_valid, cfg.split_seed)
    if cfg.limit:
        train = train[: cfg.limit]
        train_y = None if train_y is None else train_y[: cfg.limit]

    mode = cfg.binarize
    if mode not in BINARIZE_MODES:
        raise VaelabError(f"data.binarize must be one of {', '.join(BINARIZE_MODES)}; got {mode!r}")
    out: dict[str, torch.Tensor | None] = {}
    for split, x in (("train", train), ("valid", valid), ("test", test)):
        if x is None or len(x) == 0:
            out[split] = None
            continue
        t = _to_tensor(x, s.max_value)
        out[split] = t if s.binary else binarize(t, mode, cfg.split_seed, split)
    values = "binary" if s.binary or mode != "none" else "continuous"
    n_classes = s.n_classes or (len(s.class_names) if s.class_names else 0)
    assert out["train"] is not None
    return DataBundle(
        train=out["train"],
        valid=out["valid"],
        test=out["test"],
        spec=DataSpec(
            shape=tuple(int(d) for d in train.shape[1:]), kind="images", values=values, n_classes=n_classes
        ),
        name=name,
        train_labels=_labels(train_y),
        valid_labels=_labels(valid_y) if out["valid"] is not None else None,
        test_labels=_labels(test_y) if out["test"] is not None else None,
        class_names=list(s.class_names),
        dynamic=mode == "dynamic" and not s.binary,
        split_seed=cfg.split_seed,
    )
