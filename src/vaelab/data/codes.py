"""Discrete code maps as a dataset: ``data.name = "codes:PATH"``, the training data of a prior.

PATH is an ``.npz`` written by :func:`write_codes` (``vaelab vq extract-codes RUN`` writes one from a
VQ-VAE run: the codes of the run's own train, valid and test splits, as the run's data config makes
them). It holds, read with ``allow_pickle=False``:

- ``codes_<split>``: (N, H', W') integers in [0, K), for each split present (train is required);
- ``labels_<split>``: (N,) non-negative integer class labels, when the dataset has them;
- ``codebook_size``: K; ``n_classes``: the number of class labels (0 without labels);
- ``parent_run``, ``parent_sha256``: the run folder the codes came from and the sha256 of the
  checkpoint weights that encoded them, so a prior trained on them can be checked against its
  ``parent`` (``vaelab.experiment.prepare``).

The splits are taken as stored (``data.valid_size`` carves nothing); ``data.limit`` keeps the first N
training maps. The bundle's spec: kind ``codes``, shape (H', W'), ``n_classes``, and
``extra["codebook_size"] = K``.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaelab.config import DataConfig
from vaelab.errors import VaelabError
from vaelab.spec import DataSpec

from .base import Bundle, Splits
from .registry import register_prefix

__all__ = ["CodeBundle", "CodeSplits", "load_codes", "write_codes", "SPLITS"]

SPLITS = ("train", "valid", "test")


@dataclass
class CodeBundle(Bundle):
    """Code maps held in memory.

    train / valid / test: int64 tensors (N, H', W') in [0, codebook_size); valid / test None when empty.
    train_labels / valid_labels / test_labels: int64 (N,) or None.
    spec: kind ``codes``, shape (H', W'), ``n_classes``, ``extra["codebook_size"]``.
    parent_run / parent_sha256: where the codes came from ("" when the file names no run).
    """

    train: Tensor
    valid: Tensor | None
    test: Tensor | None
    spec: DataSpec
    name: str
    train_labels: Tensor | None = None
    valid_labels: Tensor | None = None
    test_labels: Tensor | None = None
    parent_run: str = ""
    parent_sha256: str = ""

    def split(self, which: str) -> tuple[Tensor | None, Tensor | None]:
        """``(codes, labels)`` of ``"train"``, ``"valid"`` or ``"test"``."""
        if which not in SPLITS:
            raise ValueError(f"split must be train, valid or test, got {which!r}")
        return getattr(self, which), getattr(self, f"{which}_labels")

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {0 if x is None else len(x)}" for s in SPLITS for x in [getattr(self, s)])
        k = self.spec.extra["codebook_size"]
        return f"{self.name}: codes {tuple(self.spec.shape)} of K = {k}, {sizes}"


@dataclass
class CodeSplits(Splits):
    """Code maps as read from the file: per split (N, H', W') integer arrays and (N,) labels or None."""

    codes: dict[str, np.ndarray]
    labels: dict[str, np.ndarray | None]
    codebook_size: int
    n_classes: int = 0
    parent_run: str = ""
    parent_sha256: str = ""

    def finish(self, name: str, cfg: DataConfig) -> CodeBundle:
        codes = {s: torch.from_numpy(c.astype(np.int64)) for s, c in self.codes.items() if len(c)}
        labels = {s: torch.from_numpy(y.astype(np.int64)) if y is not None else None
                  for s, y in self.labels.items()}
        train, train_y = codes["train"], labels.get("train")
        if cfg.limit:
            train = train[: cfg.limit]
            train_y = None if train_y is None else train_y[: cfg.limit]
        spec = DataSpec(shape=tuple(int(d) for d in train.shape[1:]), kind="codes", n_classes=self.n_classes,
                        extra={"codebook_size": self.codebook_size})
        return CodeBundle(
            train=train, valid=codes.get("valid"), test=codes.get("test"), spec=spec, name=name,
            train_labels=train_y,
            valid_labels=labels.get("valid") if "valid" in codes else None,
            test_labels=labels.get("test") if "test" in codes else None,
            parent_run=self.parent_run, parent_sha256=self.parent_sha256,
        )


def write_codes(
    path: str | Path,
    codes: dict[str, np.ndarray],
    labels: dict[str, np.ndarray | None],
    *,
    codebook_size: int,
    n_classes: int = 0,
    parent_run: str = "",
    parent_sha256: str = "",
) -> Path:
    """Write code maps (split -> (N, H', W') ints) and labels (split -> (N,) ints or None) to the
    ``.npz`` at ``path`` (atomically: a partial file is never left under that name)."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "codebook_size": np.array(codebook_size), "n_classes": np.array(n_classes),
        "parent_run": np.array(parent_run), "parent_sha256": np.array(parent_sha256),
    }
    dtype = np.int16 if codebook_size <= np.iinfo(np.int16).max else np.int32
    for split, c in codes.items():
        arrays[f"codes_{split}"] = np.asarray(c).astype(dtype)
        y = labels.get(split)
        if y is not None:
            arrays[f"labels_{split}"] = np.asarray(y).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)
    return path


def load_codes(path: str, cfg: DataConfig) -> CodeSplits:
    """The ``.npz`` at ``path`` -> :class:`CodeSplits`, checked (module docstring for the format)."""
    p = Path(path).expanduser().absolute()
    label = f"codes file {p}"
    if not p.is_file():
        raise VaelabError(f"data.name codes:{path}: file {p} not found; write it with "
                          "`vaelab vq extract-codes RUN --out PATH`")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise VaelabError(f"{label} is not a readable .npz ({exc}); write it again with "
                          "`vaelab vq extract-codes`") from None
    if "codes_train" not in arrays or "codebook_size" not in arrays:
        raise VaelabError(f"{label} holds no codes_train or codebook_size; write it with "
                          "`vaelab vq extract-codes`")
    k = int(arrays["codebook_size"])
    codes: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray | None] = {}
    for split in SPLITS:
        if f"codes_{split}" not in arrays:
            continue
        c = arrays[f"codes_{split}"]
        if c.ndim != 3 or not np.issubdtype(c.dtype, np.integer):
            raise VaelabError(f"{label}: codes_{split} must be integer maps (N, H', W'), got {c.dtype} "
                              f"{tuple(c.shape)}")
        if c.size and (c.min() < 0 or c.max() >= k):
            raise VaelabError(f"{label}: codes_{split} hold values from {c.min()} to {c.max()}, outside "
                              f"[0, {k}) for codebook_size {k}")
        if codes and c.shape[1:] != codes["train"].shape[1:]:
            raise VaelabError(f"{label}: codes_{split} are maps of {c.shape[1:]}, codes_train of "
                              f"{codes['train'].shape[1:]}")
        y = arrays.get(f"labels_{split}")
        if y is not None and (y.shape != (len(c),) or not np.issubdtype(y.dtype, np.integer)
                              or (len(y) and y.min() < 0)):
            raise VaelabError(f"{label}: labels_{split} must be non-negative integers of shape ({len(c)},), "
                              f"got {y.dtype} {tuple(y.shape)}")
        codes[split], labels[split] = c, y
    if not len(codes["train"]):
        raise VaelabError(f"{label} holds no training codes")
    has_labels = [y for y in labels.values() if y is not None]
    n_classes = int(arrays.get("n_classes", 0)) if has_labels else 0
    n_classes = max([n_classes] + [int(y.max()) + 1 for y in has_labels if len(y)])
    return CodeSplits(codes, labels, k, n_classes, str(arrays.get("parent_run", "")),
                      str(arrays.get("parent_sha256", "")))


register_prefix("codes", load_codes)
