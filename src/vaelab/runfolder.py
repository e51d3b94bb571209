"""The run folder's schema version (``run.json``) and the link to a parent run. No torch, no model.

A run folder written by this vaelab holds ``run.json``::

    {"format": "vaelab-run", "version": 2, "vaelab_version": "0.1.0"}

Versions:

* 1: no ``run.json`` (vaelab 0.1.0 before run folders were versioned): ``config.json``,
  ``checkpoints/``, ``figures/*.npz`` drawn by the report under fixed names, ``eval.json``. Read as it is:
  it loads, evaluates and reports (the report reads its figures through a compatibility path).
* 2: ``run.json``; the report's sections in ``sections.json`` (``vaelab.sections``); a run that
  builds on another names it in its config (``[parent] run``, ``sha256``).

A folder claiming a version newer than :data:`RUN_VERSION`, or a ``run.json`` that is not one, is
refused in one line naming the version and what to do.

Every command writes the shared files the same way: :func:`start_run_folder` (``config.json``,
the full typed config; ``command.txt``, appended; ``run.json``), :func:`write_metrics`
(``metrics.jsonl``), :func:`write_json`.

Training holds ``.lock`` in the folder (:func:`run_lock`: this host and process id), so a second
process training into the same folder is refused in one line instead of interleaving checkpoints; a
lock left by a process that no longer runs on this host is taken over.

Parent runs: a run that builds on another (a prior over a VQ-VAE's codes) names the parent's folder
in ``parent.run``; when it starts, the sha256 of the parent checkpoint's weights
(:func:`checkpoint_sha256`) is recorded in ``parent.sha256``, and every load checks it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vaelab._version import __version__
from vaelab.checksums import sha256_file
from vaelab.errors import VaelabError

__all__ = [
    "RUN_FILE",
    "RUN_VERSION",
    "write_run_file",
    "run_version",
    "parent_checkpoint",
    "checkpoint_sha256",
    "check_parent",
    "command_line",
    "start_run_folder",
    "write_metrics",
    "write_json",
]

RUN_FILE = "run.json"
RUN_VERSION = 2
_FORMAT = "vaelab-run"


def write_run_file(run_dir: str | Path) -> Path:
    """Write ``run_dir/run.json`` (this vaelab's run folder version) atomically."""
    path = Path(run_dir) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RUN_FILE}.tmp-{os.getpid()}")
    doc = {"format": _FORMAT, "version": RUN_VERSION, "vaelab_version": __version__}
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_version(run_dir: str | Path) -> int:
    """The schema version of a run folder: 1 without ``run.json``, else the one it names.

    Raises:
        VaelabError: ``run.json`` unreadable, not a vaelab run file, or newer than this vaelab reads.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        return 1
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VaelabError(
            f"{path} is unreadable ({exc}); restore it, or delete it to read the folder as a version 1 run"
        ) from None
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(version, int):
        raise VaelabError(
            f"{path} is not a vaelab run file (no format {_FORMAT!r} with an integer version); "
            "restore it, or delete it to read the folder as a version 1 run"
        )
    if version > RUN_VERSION:
        raise VaelabError(
            f"run folder {path.parent} has version {version} "
            f"(written by vaelab {doc.get('vaelab_version', '?')}); "
            f"this vaelab {__version__} reads versions 1-{RUN_VERSION}: upgrade vaelab to use it"
        )
    if version < 1:
        raise VaelabError(
            f"{path} names version {version}, which no vaelab wrote; restore the file, or "
            "delete it to read the folder as a version 1 run"
        )
    return version


def parent_checkpoint(parent_run: str | Path) -> Path:
    """The weights file of the checkpoint a child builds on: ``checkpoints/best`` when present, else
    the one ``checkpoints/latest`` names (as ``load_run_model`` picks)."""
    run = Path(parent_run)
    ckdir = run / "checkpoints"
    best = ckdir / "best" / "model.safetensors"
    if best.is_file():
        return best
    latest = ckdir / "latest"
    name = latest.read_text(encoding="utf-8").strip() if latest.is_file() else ""
    if name and (ckdir / name / "model.safetensors").is_file():
        return ckdir / name / "model.safetensors"
    raise VaelabError(f"parent run {run} has no checkpoint; train it first (vaelab train CONFIG --out {run})")


def checkpoint_sha256(parent_run: str | Path) -> str:
    """sha256 (hex) of the parent run's checkpoint weights (:func:`parent_checkpoint`)."""
    return sha256_file(parent_checkpoint(parent_run))


def check_parent(child: str | Path, parent_run: str, recorded: str) -> None:
    """Refuse (one line) a child whose parent's checkpoint is not the one it was started on, or
    whose recorded hash ``recorded`` is empty (nothing to check against)."""
    if not Path(parent_run).is_dir():
        raise VaelabError(
            f"run {child} builds on {parent_run}, which is not there; restore the parent run "
            "folder (or run from the folder its path is relative to)"
        )
    if not recorded:
        raise VaelabError(
            f"run {child} builds on {parent_run} but recorded no checkpoint hash of it (parent.sha256 "
            f"is empty), so its parent cannot be checked; retrain {child} on the parent"
        )
    now = checkpoint_sha256(parent_run)
    if now != recorded:
        raise VaelabError(
            f"run {child} was started on parent {parent_run} with checkpoint sha256 {recorded[:12]}, but the "
            f"parent's checkpoint is now {now[:12]}; restore that parent checkpoint or retrain {child}"
        )


def command_line(argv: Iterable[str] | None = None) -> str:
    """``vaelab ARGS...`` as a shell would take it back (``argv`` default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in ["vaelab", *args])


def start_run_folder(
    run_dir: str | Path, config: Any, command: str | None = None, *, version_file: bool = True
) -> Path:
    """Create ``run_dir``; write ``config.json`` (the dataclass or mapping ``config`` in full),
    ``command.txt`` (appended) and, with ``version_file``, ``run.json`` (a resumed version 1 folder
    keeps none until it is evaluated). An unwritable folder is a one-line VaelabError."""
    run = Path(run_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
        payload = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        (run / "config.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        with open(run / "command.txt", "a", encoding="utf-8") as fh:
            fh.write((command or command_line()) + "\n")
        if version_file:
            write_run_file(run)
    except OSError as exc:
        raise VaelabError(
            f"cannot write the run folder {run}: {exc.strerror or exc}; pass a writable --out"
        ) from None
    return run


def write_metrics(run_dir: str | Path, rows: Iterable[dict]) -> Path:
    """``run_dir/metrics.jsonl``: one JSON object per row (replaces the file)."""
    path = Path(run_dir) / "metrics.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def write_json(run_dir: str | Path, name: str, data: Any) -> Path:
    """``run_dir/name`` as indented JSON."""
    path = Path(run_dir) / name
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def _lock_holder_alive(path: Path) -> str | None:
    """``host pid`` of the lock at ``path`` while that process may still run, else None (stale)."""
    try:
        host, pid_text = path.read_text(encoding="utf-8").split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None  # half-written or unreadable: its writer died between open and write
    if host != socket.gethostname():
        return f"{host} {pid}"  # another machine's process: cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # exists, owned by another user
    return f"{host} {pid}"


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while training: a second process training into the folder gets a
    one-line VaelabError; a stale lock (its process gone) is replaced."""
    run = Path(run_dir)
    path = run / ".lock"
    mine = f"{socket.gethostname()} {os.getpid()}\n"
    for _ in range(3):
        try:
            run.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder_alive(path)
            if holder is not None:
                raise VaelabError(
                    f"run folder {run} is being trained by process {holder.split()[1]} on "
                    f"{holder.split()[0]}; wait for it, pass another --out, or delete {path} if that "
                    "process is gone") from None
            path.unlink(missing_ok=True)
            continue
        except OSError as exc:
            raise VaelabError(
                f"cannot write the run folder {run}: {exc.strerror or exc}; pass a writable --out"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(mine)
        break
    else:
        raise VaelabError(f"cannot take the lock {path}; delete it if no process trains into {run}")
    try:
        yield
    finally:
        try:
            if path.read_text(encoding="utf-8") == mine:
                path.unlink()
        except OSError:
            pass
