"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set): needs no files.

1797 images of 8x8 grey levels 0-16 (scaled by 1/16) with labels 0-9. There is no official split:
:func:`~vaelab.data.base.finish` carves a test set of 20% with a fixed seed, then the validation set
from the rest (``data.valid_size``, ``data.split_seed``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaelab.config import DataConfig

from .base import ImageSplits
from .registry import Dataset, register_dataset

__all__ = ["DIGITS"]


def load_digits(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> ImageSplits:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), values 0..16
    return ImageSplits(
        train=images, train_labels=np.asarray(bunch.target, dtype=np.int64), test_fraction=0.2,
        max_value=16.0, n_classes=10, class_names=[str(d) for d in range(10)],
    )  # fmt: skip


DIGITS = register_dataset(
    Dataset(
        name="digits",
        description="scikit-learn's bundled 8x8 digits (1797 images, grey 0-16, labels); test = fixed 20%",
        folder="",
        files=(),
        loader=load_digits,
        note="bundled with scikit-learn",
    )
)
