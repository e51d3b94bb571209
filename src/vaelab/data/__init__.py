"""Datasets held in memory as tensors: a registry of loaders, verified files, clear errors.

``load_dataset(cfg)`` is the entry point: ``cfg.name`` is a registered dataset (``mnist``,
``binarized_mnist``, ``frey``, ``digits``, ``cifar10``, ``ptb``, ``fsdd``, ``ring``; see ``vaelab data list``)
or the user's own data, ``folder:PATH`` (images), ``npy:PATH`` (an array file), ``text:PATH`` (sentences),
``wav:PATH`` (audio) or ``codes:PATH`` (discrete code maps, ``vaelab vq extract-codes``). Files are read
from :func:`data_root` and checked against their sha256 before parsing. Images become a
:class:`DataBundle`, text a :class:`SequenceBundle`, audio a :class:`WaveformBundle`, code maps a
:class:`CodeBundle`.
"""

from __future__ import annotations

from pathlib import Path

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from . import ap, audio, cifar10, codes, digits, folder, frey, fsdd, mnist, npy, ptb, ring, text  # noqa: F401  (registers them)
from .audio import WaveformBundle, WaveSplits
from .base import BINARIZE_MODES, TEST_SPLIT_SEED, Bundle, DataBundle, ImageSplits, Splits, binarize, finish
from .codes import CodeBundle, write_codes
from .download import download, download_dataset
from .registry import (
    DATASETS,
    PREFIXES,
    DataFile,
    Dataset,
    FileStatus,
    Source,
    data_root,
    data_root_source,
    dataset_names,
    file_status,
    get_dataset,
    read_file,
    register_dataset,
    register_prefix,
)
from .text import SequenceBundle, TextSplits, Vocabulary

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "PREFIXES",
    "TEST_SPLIT_SEED",
    "Bundle",
    "CodeBundle",
    "DataBundle",
    "DataFile",
    "Dataset",
    "FileStatus",
    "ImageSplits",
    "SequenceBundle",
    "Source",
    "Splits",
    "TextSplits",
    "Vocabulary",
    "WaveSplits",
    "WaveformBundle",
    "binarize",
    "data_root",
    "data_root_source",
    "dataset_names",
    "download",
    "download_dataset",
    "file_status",
    "finish",
    "get_dataset",
    "load_dataset",
    "read_file",
    "register_dataset",
    "register_prefix",
    "write_codes",
]


def load_dataset(cfg: DataConfig, root: str | Path | None = None, verify: bool = True) -> Bundle:
    """Load ``cfg.name`` into memory, split, limited and binarized as ``cfg`` says.

    root: the data root (default :func:`data_root`: ``$VAELAB_DATA`` or the per-user cache).
    verify: check each file's sha256 (once per process); the parsers check formats regardless.
    Returns a :class:`DataBundle` of float32 (N, C, H, W) tensors in [0, 1] for images, a
    :class:`SequenceBundle` of token ids for text, a :class:`WaveformBundle` of float32 clips for
    audio (whatever the loader's ``Splits.finish`` makes).
    """
    cfg.validate("data")
    prefix, sep, path = cfg.name.partition(":")
    if sep and prefix in PREFIXES:
        if not path:
            raise VaelabError(
                f"data.name {cfg.name!r} needs a path after '{prefix}:', e.g. {prefix}:/data/faces"
            )
        splits = PREFIXES[prefix](path, cfg)
    else:
        ds = get_dataset(cfg.name)
        splits = ds.loader(
            ds, Path(root).expanduser().absolute() if root is not None else data_root(), cfg, verify
        )
    return splits.finish(cfg.name, cfg)
