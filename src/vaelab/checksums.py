"""sha256 of a file, read in blocks (a leaf: no torch, no other vaelab layer).

Used wherever vaelab checks a file's identity: downloaded data (``vaelab.data.download``), the
LDA corpus (``vaelab.vi.corpus``) and a parent run's checkpoint (``vaelab.runfolder``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["sha256_file"]

_BLOCK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """The sha256 (hex) of the file at ``path``, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()
