"""The files every run folder has, written the same way by every command.

``runs/<name>/config.json`` (the full typed config), ``command.txt`` (the command line that made the
run, appended), ``metrics.jsonl`` (one JSON object per line). Torch-free: commands of any kind
(training, classical VI) write through it; the report reads what it wrote.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vaelab.errors import VaelabError

__all__ = ["command_line", "start_run_folder", "write_metrics", "write_json"]


def command_line(argv: Iterable[str] | None = None) -> str:
    """``vaelab ARGS...`` as a shell would take it back (``argv`` default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in ["vaelab", *args])


def start_run_folder(run_dir: str | Path, config: Any, command: str | None = None) -> Path:
    """Create ``run_dir`` and write ``config.json`` (the dataclass ``config`` in full) and ``command.txt``.

    An unwritable folder is a :class:`~vaelab.errors.VaelabError` that says so in one line.
    """
    run = Path(run_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
        payload = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
        (run / "config.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        with open(run / "command.txt", "a", encoding="utf-8") as fh:
            fh.write((command or command_line()) + "\n")
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
