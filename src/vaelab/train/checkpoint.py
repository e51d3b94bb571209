"""Checkpoints: weights as safetensors, everything else as JSON. Never pickle, never half-written.

A checkpoint is a folder ``checkpoints/step_00001234/`` holding

* ``model.safetensors``   the model's state_dict,
* ``trainer.safetensors`` optimizer tensors and RNG states (absent in weights-only exports),
* ``state.json``          format, version, step, the run config, the data spec and the optimizer's
                          non-tensor state.

It is written into a temporary sibling folder, every file fsync'd, and renamed into place in one
``os.replace``; ``checkpoints/latest`` names the newest one and is replaced atomically too. So a
crash at any instant leaves either the old checkpoint or the new one, never a torn one. A write that
fails (disk full, permission denied) is undone - the temporary folder removed, a checkpoint of the
same name that was being replaced put back, ``latest`` untouched - and raised as one
:class:`CheckpointWriteError` naming the folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from vaelab._version import __version__
from vaelab.errors import VaelabError

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointWriteError",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "list_checkpoints",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
]

FORMAT = "vaelab-checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointWriteError(VaelabError):
    """A checkpoint could not be written; the checkpoints written before are as they were."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict
    model_state: dict[str, Tensor]
    trainer_state: dict[str, Tensor] | None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_synced(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer state_dict into named tensors and JSON (for safetensors + state.json)."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = json.loads(json.dumps(state_dict["param_groups"], default=list))
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, Tensor], info: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in info.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = info["param_groups"]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: str | Path,
    model_state: dict[str, Tensor],
    meta: dict[str, Any],
    trainer_state: dict[str, Tensor] | None = None,
    *,
    update_latest: bool = True,
) -> Path:
    """Atomically write a checkpoint folder ``directory`` (e.g. runs/x/checkpoints/step_00000100).

    Raises :class:`CheckpointWriteError` (one line, naming the folder) when the write fails; the
    folder's other checkpoints and its ``latest`` pointer are then as they were before the call."""
    final = Path(directory)
    try:
        return _save_checkpoint(final, model_state, meta, trainer_state, update_latest)
    except (OSError, SafetensorError) as exc:  # safetensors reports its own I/O errors as the latter
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc).split("\n")[0][:160]
        raise CheckpointWriteError(
            f"could not write checkpoint {final.name} in {final.parent} ({why}); the checkpoints "
            "written before are unchanged; free disk space or fix the folder's permissions and resume"
        ) from None


def _save_checkpoint(
    final: Path,
    model_state: dict[str, Tensor],
    meta: dict[str, Any],
    trainer_state: dict[str, Tensor] | None,
    update_latest: bool,
) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    moved_old = placed = False
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_checkpoint_files(tmp, model_state, meta, trainer_state)
        if final.exists():
            os.replace(final, old)
            moved_old = True
        os.replace(tmp, final)
        placed = True
        _fsync_dir(final.parent)
        if update_latest:
            _write_text_atomic(final.parent / "latest", final.name + "\n")
    except BaseException:
        # undo: the half-written folder goes, and a checkpoint being replaced comes back
        shutil.rmtree(final if placed else tmp, ignore_errors=True)
        if moved_old:
            os.replace(old, final)
        raise
    if moved_old:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint_files(
    tmp: Path, model_state: dict[str, Tensor], meta: dict[str, Any], trainer_state: dict[str, Tensor] | None
) -> None:
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION)}
    weights = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    _write_file_synced(tmp / "model.safetensors", lambda p: save_file(weights, str(p), metadata=header))
    if trainer_state is not None:
        ts = {k: v.detach().contiguous().cpu() for k, v in trainer_state.items()}
        _write_file_synced(tmp / "trainer.safetensors", lambda p: save_file(ts, str(p), metadata=header))
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "vaelab_version": __version__, **meta}
    _write_file_synced(tmp / "state.json", lambda p: p.write_text(json.dumps(full_meta, indent=2), "utf-8"))
    _fsync_dir(tmp)


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete step folders, oldest first."""
    d = Path(checkpoints_dir)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _refuse_non_checkpoint_file(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        raise VaelabError(
            f"{path} is a pickled PyTorch file (torch.save); vaelab never unpickles checkpoints because "
            "that can run arbitrary code - pass a vaelab run folder or checkpoint folder instead"
        )
    raise VaelabError(f"{path} is a file, not a vaelab checkpoint; pass a run folder such as runs/NAME")


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, its checkpoints/ folder, ``best`` or a step folder -> the checkpoint folder."""
    p = Path(path)
    if not p.exists():
        raise VaelabError(f"{p} does not exist; pass a run folder written by vaelab train (e.g. runs/NAME)")
    if p.is_file():
        if p.name in ("model.safetensors", "state.json"):
            return resolve_checkpoint(p.parent)
        _refuse_non_checkpoint_file(p)
    if (p / "state.json").is_file():
        return p
    ckdir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    latest = ckdir / "latest"
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        if name and (ckdir / name / "state.json").is_file():
            return ckdir / name
    complete = list_checkpoints(ckdir)
    if complete:
        return complete[-1]
    raise VaelabError(f"no checkpoint found in {p}; train first (vaelab train CONFIG --out {p})")


def load_checkpoint(
    path: str | Path, *, with_trainer_state: bool = False, map_location: str = "cpu"
) -> Checkpoint:
    """Read a checkpoint folder (or run folder). Only safetensors and JSON are ever parsed."""
    folder = resolve_checkpoint(path)
    try:
        meta = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VaelabError(
            f"checkpoint {folder} is corrupt (state.json unreadable: {exc}); "
            "use an earlier checkpoint or retrain"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise VaelabError(f"{folder} is not a vaelab checkpoint (state.json has no format '{FORMAT}')")
    version = meta.get("format_version", 1)  # the first checkpoints carried no version: 1
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise VaelabError(
            f"checkpoint {folder} has format version {version!r} (written by vaelab "
            f"{meta.get('vaelab_version', '?')}); this vaelab reads versions up to {FORMAT_VERSION}: "
            "upgrade vaelab to load it"
        )

    def read(name: str) -> dict[str, Tensor]:
        f = folder / name
        if not f.is_file():
            raise VaelabError(
                f"checkpoint {folder} is incomplete: {name} is missing; use an earlier checkpoint"
            )
        try:
            return load_file(str(f), device=map_location)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise VaelabError(
                f"checkpoint file {f} is corrupt ({str(exc).splitlines()[0][:120]}); "
                "use an earlier checkpoint or retrain"
            ) from None

    model_state = read("model.safetensors")
    trainer_state = read("trainer.safetensors") if with_trainer_state else None
    return Checkpoint(folder, meta, model_state, trainer_state)


def load_model_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load weights, refusing (one line) a checkpoint whose tensors don't fit ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ckpt.model_state))
    unexpected = sorted(set(ckpt.model_state) - set(expected))
    if missing or unexpected:
        name = ckpt.meta.get("model", {}).get("name", "?")
        raise VaelabError(
            f"checkpoint {ckpt.path} holds a different model ({name}; e.g. "
            f"{(missing or unexpected)[0]!r} does not match); pass the checkpoint of this model"
        )
    for k, v in expected.items():
        if v.shape != ckpt.model_state[k].shape:
            raise VaelabError(
                f"checkpoint {ckpt.path} does not fit this model: {k} has shape "
                f"{tuple(ckpt.model_state[k].shape)}, expected {tuple(v.shape)}; use the run's own "
                "model settings (drop the --set that changed them) or this model's checkpoint"
            )
    model.load_state_dict(ckpt.model_state)


__all__.append("load_model_weights")
