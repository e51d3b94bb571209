"""A folder of images as a dataset: ``data.name = "folder:PATH"``.

Every ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif`` (first frame) and ``.webp`` file under PATH,
recursively, in sorted path order; names starting with ``.`` are skipped. When every image lies in
a sub-folder of PATH and there are at least two such sub-folders, the top-level sub-folder names
are the class names (sorted) and give the labels; otherwise there are no labels.

Images are read with Pillow and converted to grey (``data.channels = 1``) or RGB (3); with the
default 0, to grey when every file is grey and to RGB otherwise. Alpha is dropped; 16-bit grey is
reduced to 8 bits. They are resized to ``data.image_size = [H, W]`` (Lanczos); without it every image
must have the size of the first. A test set of 10% is carved with a fixed seed, then the
validation set from the rest (``data.valid_size``, ``data.split_seed``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import ImageSplits
from .registry import register_prefix

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["IMAGE_SUFFIXES", "load_folder", "list_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
TEST_FRACTION = 0.1
_GREY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}  # integer modes with values up to 65535


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are skipped."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def _unreadable(path: Path, exc: BaseException) -> VaelabError:
    return VaelabError(f"cannot read image {path} ({type(exc).__name__}: {exc}); remove or replace that file")


def _is_grey(img: PILImage) -> bool:
    if img.mode == "P":
        pal = img.getpalette() or []
        return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
    return img.mode in _GREY_MODES


def _to_8bit(img: PILImage) -> PILImage:
    """Pillow image in any mode -> mode ``L``, ``RGB`` or ``RGBA`` holding 8-bit values."""
    from PIL import Image

    if img.mode in _WIDE_MODES:
        # 16-bit grey: 0..65535 onto 0..255 (x / 257 maps 65535 to 255 exactly).
        arr = np.asarray(img, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img) * 255.0), 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        return img.convert("RGBA")  # the documented route for palettes with transparency
    return img


def load_folder(path: str, cfg: DataConfig) -> ImageSplits:
    """Images under folder ``path`` -> uint8 (N, C, H, W) with labels from sub-folders (see module doc)."""
    from PIL import Image

    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise VaelabError(f"data.name folder:{path}: {root} is not a folder; give a folder of images")
    files = list_images(root)
    if not files:
        raise VaelabError(
            f"folder {root} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}, searched "
            "recursively); put image files in it (one sub-folder per class for labels) or fix data.name"
        )

    # Pass 1, headers only: modes (for channels = 0) and sizes.
    modes, sizes = [], []
    for p in files:
        try:
            with Image.open(p) as img:
                modes.append(_is_grey(img))
                sizes.append(img.size)  # (W, H)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _unreadable(p, exc) from None
    channels = cfg.channels or (1 if all(modes) else 3)
    if cfg.image_size:
        h, w = cfg.image_size
    else:
        w, h = sizes[0]
        for p, (wi, hi) in zip(files, sizes):
            if (wi, hi) != (w, h):
                raise VaelabError(
                    f"images in {root} differ in size: {files[0].name} is {h}x{w} (HxW) but "
                    f"{p.relative_to(root)} is {hi}x{wi}; resize them all with --set data.image_size=[H,W]"
                )

    # Pass 2: decode, convert, resize into one uint8 array (N, H, W, C).
    out = np.empty((len(files), h, w, channels), np.uint8)
    target = "L" if channels == 1 else "RGB"
    from tqdm import tqdm

    quiet = len(files) < 1000 or not sys.stderr.isatty()
    for i, p in enumerate(tqdm(files, desc=f"reading {root.name}", unit="img", disable=quiet)):
        try:
            with Image.open(p) as img:
                img.load()
                im = _to_8bit(img).convert(target)
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.LANCZOS)
                out[i] = np.asarray(im).reshape(h, w, channels)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _unreadable(p, exc) from None

    parts = [p.relative_to(root).parts for p in files]
    classes = sorted({q[0] for q in parts if len(q) > 1})
    labels, class_names = None, []
    if len(classes) >= 2 and all(len(q) > 1 for q in parts):
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[q[0]] for q in parts], np.int64)
        class_names = classes
    return ImageSplits(
        train=np.ascontiguousarray(out.transpose(0, 3, 1, 2)), train_labels=labels,
        test_fraction=TEST_FRACTION, n_classes=len(class_names), class_names=class_names,
    )  # fmt: skip


register_prefix("folder", load_folder)
