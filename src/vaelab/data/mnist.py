"""MNIST (LeCun et al. 1998) from the IDX files, and Larochelle & Murray's fixed binarization.

``mnist``: the official 60,000 training and 10,000 test images, grey levels / 255. The validation
set is carved from the training set (``data.valid_size``, ``data.split_seed``).

``binarized_mnist``: the fixed stochastic binarization of Salakhutdinov & Murray (ICML 2008) as
distributed by Larochelle & Murray (AISTATS 2011): 50,000 / 10,000 / 10,000 images with their
official validation split, values in {0, 1}, no labels. Its rows are not aligned with the IDX files,
and its test file is sorted by digit class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import ImageSplits
from .registry import DataFile, Dataset, Source, _gunzip, gzip_file, read_file, register_dataset

__all__ = ["parse_idx", "parse_amat", "MNIST", "BINARIZED_MNIST"]

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _mnist_file(name: str, size: int, sha256: str) -> DataFile:
    return DataFile(name, size, sha256, tuple(m + name for m in _MNIST_MIRRORS))


# Sizes and sha256 from shared/data/README.md; the files are byte-identical to LeCun's originals.
MNIST_FILES = (
    _mnist_file("train-images-idx3-ubyte.gz", 9_912_422,
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    _mnist_file("train-labels-idx1-ubyte.gz", 28_881,
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    _mnist_file("t10k-images-idx3-ubyte.gz", 1_648_877,
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    _mnist_file("t10k-labels-idx1-ubyte.gz", 4_542,
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
)  # fmt: skip


def parse_idx(data: bytes, label: str, ndim: int) -> np.ndarray:
    """Parse an uncompressed IDX file of unsigned bytes (LeCun's format) into a read-only array.

    Header, big-endian: two zero bytes, the type code 0x08 (uint8), the number of dimensions,
    then one uint32 per dimension; then prod(dims) bytes in row-major order. So images have
    magic 2051 = 0x00000803 and dims (n, rows, cols); labels have magic 2049 and dims (n,).
    Raises VaelabError naming ``label`` if anything disagrees, including the length.
    """
    if len(data) < 4:
        raise VaelabError(
            f"{label} is not an IDX file (only {len(data)} bytes); replace it with the original"
        )
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] != ndim:
        magic = int.from_bytes(data[:4], "big")
        want = 0x0800 + ndim
        raise VaelabError(
            f"{label} is not an IDX uint8 file with {ndim} dimension(s) (magic number {magic}, "
            f"expected {want}); replace it with the original"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise VaelabError(f"{label} ends inside its IDX header; replace it with the original")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise VaelabError(
            f"{label} holds {len(data) - header:,} data bytes but its header {dims} says "
            f"{expected - header:,}; the file is truncated or damaged, replace it with the original"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _idx(ds: Dataset, root: Path, name: str, ndim: int, verify: bool) -> np.ndarray:
    raw = read_file(ds, name, root, verify)
    try:
        data = _gunzip(raw, name)
    except ValueError as exc:
        raise VaelabError(f"{ds.name}: {exc}; delete it and run `vaelab data download {ds.name}`") from None
    return parse_idx(data, name, ndim)


def _mnist_pair(
    ds: Dataset, root: Path, images: str, labels: str, verify: bool
) -> tuple[np.ndarray, np.ndarray]:
    x = _idx(ds, root, images, 3, verify)
    y = _idx(ds, root, labels, 1, verify)
    if x.shape[1:] != (28, 28):
        raise VaelabError(f"{images} holds {x.shape[1]}x{x.shape[2]} images, expected 28x28; replace it")
    if len(x) != len(y):
        raise VaelabError(f"{images} has {len(x)} images but {labels} has {len(y)} labels; replace them")
    if len(y) and y.max() > 9:
        raise VaelabError(f"{labels} holds label {int(y.max())}, expected digits 0-9; replace it")
    return x[:, None], y  # (N, 1, 28, 28) uint8, (N,) uint8


def load_mnist(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> ImageSplits:
    train, train_y = _mnist_pair(ds, root, MNIST_FILES[0].name, MNIST_FILES[1].name, verify)
    test, test_y = _mnist_pair(ds, root, MNIST_FILES[2].name, MNIST_FILES[3].name, verify)
    return ImageSplits(
        train=train, train_labels=train_y, test=test, test_labels=test_y,
        n_classes=10, class_names=[str(d) for d in range(10)],
    )  # fmt: skip


MNIST = register_dataset(
    Dataset(
        name="mnist",
        description="MNIST handwritten digits (LeCun et al. 1998): 60k train / 10k test, 28x28 grey, labels",
        folder="mnist",
        files=MNIST_FILES,
        loader=load_mnist,
    )
)

# ----------------------------------------------------------------------------- binarized MNIST

_AMAT_LINE = 784 * 2  # 784 characters '0'/'1', each followed by ' ' (the last by '\n')
_LAROCHELLE = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"


def _amat_file(split: str, size: int, sha256: str, content_size: int, content_sha256: str) -> DataFile:
    # The canonical source is the uncompressed .amat; `download` gzips it. Python's zlib does not
    # reproduce GNU gzip's bytes (checked: 2,197,797 bytes vs the stored 2,196,952), so the file
    # is identified by the sha256 of its uncompressed content (``gunzip=True``).
    name = f"binarized_mnist_{split}.amat"
    source = Source((_LAROCHELLE + name,), content_size, content_sha256, gzip_file)
    return DataFile(name + ".gz", size, sha256, source=source, gunzip=True, content_size=content_size,
                    content_sha256=content_sha256)  # fmt: skip


BINARIZED_FILES = (
    _amat_file("train", 2_196_952, "af247bd6075cf9adc4715459dcd5f13eaa99a2c92d8d81379a05da94770b6c0e",
               78_400_000, "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
    _amat_file("valid", 439_620, "533b71bc0198f4d73c54ae5fe6c96fc08dc3cf1b3fae24c5521dbc0452507e38",
               15_680_000, "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
    _amat_file("test", 416_802, "32a3c54d03504632bf9f131b4a148c7567aa6fc87da017049b044bdc14c2a0f2",
               15_680_000, "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
)  # fmt: skip


def parse_amat(data: bytes, label: str) -> np.ndarray:
    """Parse Larochelle's binarized-MNIST ``.amat`` text into uint8 {0, 1} images (N, 1, 28, 28).

    Each line is 784 values ``0``/``1`` separated by single spaces and ending in ``\\n``: exactly
    1568 bytes, the 28x28 image in row-major order. Any other content raises VaelabError.
    """
    if len(data) == 0 or len(data) % _AMAT_LINE:
        raise VaelabError(
            f"{label} is not binarized-MNIST .amat text ({len(data):,} bytes is not a whole number of "
            f"{_AMAT_LINE}-byte lines); replace it with the original"
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, _AMAT_LINE)
    digits, seps = rows[:, 0::2], rows[:, 1::2]
    bits = digits - np.uint8(ord("0"))  # '0'/'1' -> 0/1; other characters wrap to values > 1
    if (bits > 1).any() or (seps[:, :-1] != ord(" ")).any() or (seps[:, -1] != ord("\n")).any():
        raise VaelabError(
            f"{label} is not binarized-MNIST .amat text (expected lines of 784 space-separated 0/1 values); "
            "replace it with the original"
        )
    return bits.reshape(-1, 1, 28, 28)


def load_binarized_mnist(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> ImageSplits:
    train, valid, test = (parse_amat(read_file(ds, f.name, root, verify), f.name) for f in ds.files)
    return ImageSplits(train=train, valid=valid, test=test, binary=True, max_value=1.0)


BINARIZED_MNIST = register_dataset(
    Dataset(
        name="binarized_mnist",
        description="MNIST binarized once (Larochelle & Murray 2011): 50k/10k/10k official splits, no labels",
        folder="binarized_mnist",
        files=BINARIZED_FILES,
        loader=load_binarized_mnist,
    )
)
