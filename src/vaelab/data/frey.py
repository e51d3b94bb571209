"""Frey Face: 1965 grey 28x20 frames of Brendan Frey's face (Frey et al., CVPR 1998).

Kingma & Welling (2014) model it with a Gaussian decoder, so use ``data.binarize = "none"``.
The file ``frey_rawface.mat`` (MATLAB 5) holds one uint8 variable ``ff`` of shape (560, 1965):
each column is one frame, 28 rows x 20 columns in row-major order, in video order.

There is no official split: :func:`~vaelab.data.base.finish` carves a test set of 10% with a fixed
seed (the same frames in every run), then the validation set from the rest (``data.valid_size``,
``data.split_seed``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import ImageSplits
from .registry import DataFile, Dataset, read_file, register_dataset

__all__ = ["parse_frey", "FREY"]

FREY_FILE = DataFile(
    "frey_rawface.mat",
    1_100_584,
    "265a83a23adb081755cd3de375509828e690324d1d60f076b8ecebc840d59c64",
    ("https://cs.nyu.edu/~roweis/data/frey_rawface.mat",),
)


def parse_frey(data: bytes, label: str) -> np.ndarray:
    """``frey_rawface.mat`` bytes -> uint8 frames (N, 1, 28, 20); malformed content -> VaelabError."""
    from scipy.io import loadmat

    try:
        mat = loadmat(io.BytesIO(data))
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError, ... on bad input
        raise VaelabError(
            f"{label} is not a readable MATLAB file ({type(exc).__name__}: {exc}); "
            "replace it with the original"
        ) from None
    ff = mat.get("ff")
    if not isinstance(ff, np.ndarray) or ff.ndim != 2 or ff.shape[0] != 28 * 20:
        got = getattr(ff, "shape", None) if ff is not None else "no variable ff"
        raise VaelabError(
            f"{label} should hold a variable ff of shape (560, N) (28x20 frames), got {got}; "
            "replace it with the original"
        )
    if ff.dtype != np.uint8:
        raise VaelabError(f"{label}: ff has dtype {ff.dtype}, expected uint8 grey levels; replace it")
    # Columns are frames; each frame is 28 rows x 20 columns, row-major (README of shared/data).
    return np.ascontiguousarray(ff.T).reshape(-1, 1, 28, 20)


def load_frey(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> ImageSplits:
    frames = parse_frey(read_file(ds, FREY_FILE.name, root, verify), FREY_FILE.name)
    return ImageSplits(train=frames, test_fraction=0.1)


FREY = register_dataset(
    Dataset(
        name="frey",
        description="Frey Face (Frey et al. 1998): 1965 grey 28x20 video frames; test = fixed 10%",
        folder="freyface",
        files=(FREY_FILE,),
        loader=load_frey,
    )
)
