"""``vaelab data download``: fetch a dataset's canonical sources, check them, write them atomically.

Each file is streamed into a temporary file next to its destination while its sha256 is computed;
a wrong size or checksum discards it and the next URL is tried. Files built from a source (see
:class:`~vaelab.data.registry.Source`) are built into a second temporary file. Only a checked file
is moved into place, with ``os.replace``, so the data root never holds a half-written file under
a real name. When no host can be reached the error says so in one line, with the manual route.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from vaelab.checksums import sha256_file
from vaelab.errors import VaelabError

from .registry import DataFile, Dataset, Source, data_root, file_status, get_dataset

__all__ = ["download", "download_dataset"]

_CHUNK = 1 << 20


class _Failed(Exception):
    """One URL failed; ``unreachable`` when no connection could be made at all."""

    def __init__(self, url: str, why: str, unreachable: bool) -> None:
        super().__init__(why)
        self.url, self.why, self.unreachable = url, why, unreachable


def _fetch(url: str, folder: Path, name: str, size: int, sha256: str, timeout: float, progress: bool) -> Path:
    """Stream ``url`` into a temporary file in ``folder``; return it once size and sha256 match."""
    request = urllib.request.Request(url, headers={"User-Agent": "vaelab-data-download"})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _Failed(url, f"HTTP {exc.code} {exc.reason}", False) from None
    except urllib.error.URLError as exc:
        raise _Failed(url, f"{exc.reason}", True) from None
    except OSError as exc:  # TimeoutError, ConnectionError, ...
        raise _Failed(url, f"{type(exc).__name__}: {exc}", True) from None
    with resp:
        return _copy_checked(resp, url, folder, name, size, sha256, progress)


def _copy_checked(
    stream: BinaryIO, origin: str, folder: Path, name: str, size: int, sha256: str, progress: bool
) -> Path:
    """Copy ``stream`` into a temporary file in ``folder`` while hashing; keep it only if it checks."""
    from tqdm import tqdm

    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest, got = hashlib.sha256(), 0
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tqdm(total=size, unit="B", unit_scale=True, desc=name, disable=not progress, leave=False) as bar,
        ):
            while chunk := stream.read(_CHUNK):
                got += len(chunk)
                if got > size:
                    raise _Failed(origin, f"more than the expected {size:,} bytes", False)
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if got != size:
            raise _Failed(origin, f"got {got:,} of {size:,} bytes", False)
        if digest.hexdigest() != sha256:
            raise _Failed(origin, f"sha256 {digest.hexdigest()[:12]}..., expected {sha256[:12]}...", False)
        return tmp
    except _Failed:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:  # timeouts and resets while reading (URLError is an OSError too)
        tmp.unlink(missing_ok=True)
        raise _Failed(origin, f"download interrupted ({type(exc).__name__}: {exc})", False) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _source_name(source: Source) -> str:
    """The file name a source has when fetched by hand (the last part of its URL)."""
    return Path(urlparse(source.urls[0]).path).name


def _from_local(ds: Dataset, source: Source, from_dir: Path, folder: Path, name: str) -> Path:
    path = from_dir / _source_name(source)
    if not path.is_file():
        raise VaelabError(
            f"{_source_name(source)} not found in {from_dir}; fetch {source.urls[0]} into it, "
            f"or drop --from to download {ds.name}"
        )
    try:
        with open(path, "rb") as fh:
            return _copy_checked(fh, str(path), folder, name, source.size, source.sha256, False)
    except _Failed as exc:
        raise VaelabError(
            f"{path} does not match the canonical {_source_name(source)} ({exc.why}); fetch it again "
            f"from {source.urls[0]}"
        ) from None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _hosts(urls: tuple[str, ...]) -> str:
    return ", ".join(dict.fromkeys(urlparse(u).netloc for u in urls))


def _fetch_one(
    ds: Dataset, f: DataFile, folder: Path, timeout: float, progress: bool, from_dir: Path | None
) -> None:
    source = f.source or Source(f.urls, f.size, f.sha256, build=lambda a, b: None)
    if not source.urls:
        raise VaelabError(
            f"dataset {ds.name!r}: no download source is known for {f.name}; copy it into {folder}"
        )
    failures: list[_Failed] = []
    fetched: Path | None = None
    if from_dir is not None:
        fetched = _from_local(ds, source, from_dir, folder, f.name)
    for url in source.urls if fetched is None else ():
        try:
            fetched = _fetch(url, folder, f.name, source.size, source.sha256, timeout, progress)
            break
        except _Failed as exc:
            failures.append(exc)
    if fetched is None:
        manual = (
            f"fetch {source.urls[0]} where you are online and run `vaelab data download {ds.name} "
            f"--from DIR` with the file in DIR, or set VAELAB_DATA to a folder that holds "
            f"{ds.folder}/{f.name}"
        )
        if all(x.unreachable for x in failures):
            raise VaelabError(
                f"cannot download {ds.name}: no connection to {_hosts(source.urls)} ({failures[-1].why}); "
                f"offline or host unreachable - {manual}"
            )
        tried = "; ".join(f"{x.url}: {x.why}" for x in failures)
        raise VaelabError(f"cannot download {ds.name} file {f.name} ({tried}); {manual}")

    dest = folder / f.name
    built: Path | None = None
    try:
        if f.source is not None:
            fd, built_name = tempfile.mkstemp(dir=folder, prefix=f".{f.name}.", suffix=".build")
            os.close(fd)
            built = Path(built_name)
            try:
                f.source.build(fetched, built)
            except (OSError, ValueError, EOFError) as exc:
                raise VaelabError(f"cannot build {f.name} from {fetched.name} ({exc}); report this") from None
            if not f.gunzip:  # gunzip files were verified through their uncompressed source
                digest = sha256_file(built)
                if digest != f.sha256:
                    raise VaelabError(
                        f"{f.name} rebuilt from its source has sha256 {digest[:12]}..., expected "
                        f"{f.sha256[:12]}...; the build differs on this machine, report it"
                    )
            fetched.unlink()
            fetched, built = built, None
        os.chmod(fetched, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(fetched, dest)
        fetched = None
    finally:
        for leftover in (fetched, built):
            if leftover is not None:
                leftover.unlink(missing_ok=True)


def download_dataset(
    ds: Dataset,
    root: Path | None = None,
    *,
    timeout: float = 60.0,
    progress: bool | None = None,
    from_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Fetch every missing or corrupt file of ``ds`` into ``root`` (default :func:`data_root`).

    Files already present with the right checksum are kept. ``from_dir``: take the canonical
    source files from this folder (fetched by hand, under the names their URLs end in) instead
    of the network; they are checked and built the same way. Returns the paths of all its files.
    """
    if not ds.files:
        raise VaelabError(f"dataset {ds.name!r} needs no download ({ds.note or 'no files'})")
    root = Path(root).expanduser().absolute() if root is not None else data_root()
    folder = root / ds.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaelabError(
            f"cannot create {folder} ({exc.strerror or exc}); download somewhere writable with --root DIR "
            "and set VAELAB_DATA=DIR"
        ) from None
    if not os.access(folder, os.W_OK):
        raise VaelabError(
            f"{folder} is not writable; download somewhere writable with --root DIR and set VAELAB_DATA=DIR"
        )
    if progress is None:
        progress = sys.stderr.isatty()
    paths = []
    for f in ds.files:
        status = file_status(ds, f, root)
        if status.state == "present":
            log(f"{ds.name}: {f.name} already present and verified")
        else:
            log(f"{ds.name}: fetching {f.name} ({status.state})")
            _fetch_one(ds, f, folder, timeout, progress, Path(from_dir) if from_dir is not None else None)
            after = file_status(ds, f, root)
            if after.state != "present":
                raise VaelabError(
                    f"{ds.name}: {f.name} was written but does not verify ({after.detail}); report it"
                )
            log(f"{ds.name}: {f.name} downloaded and verified")
        paths.append(folder / f.name)
    return paths


def download(name: str, root: Path | None = None, **kwargs) -> list[Path]:
    """``vaelab data download NAME``: :func:`download_dataset` for a registered name."""
    return download_dataset(get_dataset(name), root, **kwargs)
