"""A NumPy array file as a dataset: ``data.name = "npy:PATH"``.

PATH is a ``.npy`` file, or an ``.npz`` with a single array or an array ``x`` (and optionally
integer labels ``y`` of shape (N,)). It is read with ``allow_pickle=False``: a pickled object array
is refused, never unpickled. Accepted shapes (N examples):

- (N, H, W): grey images;
- (N, C, H, W) or (N, H, W, C) with C in {1, 3}: channels first is tried first, so (N, 3, 3, 3)
  counts as channels first;
- (N, D): flat vectors, returned as (N, 1, 1, D).

Values: uint8 is divided by 255; bool and integer arrays holding only 0 and 1 are taken as they are;
floating point must already lie in [0, 1]. A test set of 10% is carved with a fixed seed, then the
validation set from the rest (``data.valid_size``, ``data.split_seed``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import ImageSplits
from .registry import register_prefix

__all__ = ["load_npy", "as_images"]

TEST_FRACTION = 0.1
_ACCEPTED = "(N, H, W), (N, C, H, W) or (N, H, W, C) with C = 1 or 3, or (N, D)"


def as_images(x: np.ndarray, label: str) -> tuple[np.ndarray, float]:
    """Check and reshape an array to (N, C, H, W); returns it with the value that maps to 1.0."""
    if x.ndim == 2:
        x = x[:, None, None, :]
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] in (1, 3):
        pass
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise VaelabError(
            f"{label} holds an array of shape {tuple(x.shape)}; accepted shapes are {_ACCEPTED}"
        )
    if x.shape[0] == 0 or 0 in x.shape:
        raise VaelabError(f"{label} holds no examples (shape {tuple(x.shape)}); save at least one")

    if x.dtype == np.uint8:
        return x, 255.0
    if x.dtype == np.bool_:
        return x.astype(np.uint8), 1.0
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 1:
            raise VaelabError(
                f"{label} holds {x.dtype} values from {lo} to {hi}; save uint8 grey levels (0-255), "
                "0/1 values, or floats rescaled to [0, 1]"
            )
        return x.astype(np.uint8), 1.0
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise VaelabError(f"{label} holds NaN or infinite values; remove or replace them")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise VaelabError(
                f"{label} holds values from {lo:g} to {hi:g}; rescale them to [0, 1] "
                "(e.g. x / 255 for 8-bit images) before saving"
            )
        return x, 1.0
    raise VaelabError(f"{label} holds dtype {x.dtype}; save a numeric array (uint8 or float in [0, 1])")


_PICKLED = (
    "holds pickled Python objects, which vaelab refuses to unpickle; "
    "save a numeric array instead (np.save(path, x.astype(np.float32)))"
)


def _read(p: Path) -> tuple[np.ndarray, np.ndarray | None]:
    label = f"npy file {p}"
    with open(p, "rb") as fh:
        magic = fh.read(6)
    # .npy starts with b"\x93NUMPY", .npz (a zip) with b"PK\x03\x04"; np.load would take
    # anything else for a pickle.
    if not (magic.startswith(b"\x93NUMPY") or magic.startswith(b"PK\x03\x04")):
        if magic[:1] == b"\x80":  # pickle protocol 2 and later
            raise VaelabError(f"{label} {_PICKLED}")
        raise VaelabError(f"{label} is not a .npy or .npz file (it starts {magic!r}); save it with np.save")
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded, None
        with loaded as z:
            keys = list(z.files)
            if len(keys) == 1:
                return z[keys[0]], None
            if "x" not in keys:
                raise VaelabError(
                    f"{label} holds arrays {', '.join(keys)}; name the data array x (np.savez(path, x=...))"
                )
            return z["x"], (z["y"] if "y" in keys else None)
    except VaelabError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise VaelabError(f"{label} {_PICKLED}") from None
        raise VaelabError(f"{label} is not a valid .npy/.npz file ({exc}); save it with np.save") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise VaelabError(
            f"{label} is not a valid .npy/.npz file ({type(exc).__name__}: {exc}); save it with np.save"
        ) from None


def load_npy(path: str, cfg: DataConfig) -> ImageSplits:
    """``.npy`` / ``.npz`` at ``path`` -> images (N, C, H, W); see the module docstring."""
    p = Path(path).expanduser().absolute()
    if not p.is_file():
        raise VaelabError(f"data.name npy:{path}: file {p} not found; give the path of a .npy or .npz file")
    x, y = _read(p)
    x, max_value = as_images(x, f"npy file {p}")
    labels, n_classes = None, 0
    if y is not None:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise VaelabError(
                f"npy file {p}: labels y must be non-negative integers of shape ({len(x)},), got {y.dtype} "
                f"{tuple(y.shape)}; fix or drop y"
            )
        labels, n_classes = y.astype(np.int64), int(y.max()) + 1
    return ImageSplits(train=x, train_labels=labels, test_fraction=TEST_FRACTION, max_value=max_value,
                       n_classes=n_classes)  # fmt: skip


register_prefix("npy", load_npy)
