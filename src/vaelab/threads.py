"""Torch's intra-op thread count, set for a block and restored after (a process-wide setting).

A leaf below ``train/`` and ``vi/``: both run their loops inside ``torch_threads``, so a library
call never leaves the caller's process with a different thread count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None or 0: unchanged), restoring the setting after.

    Small sparse products gain little from threads, and on a machine whose other cores are busy an
    OpenMP team waiting for a descheduled thread can make every op ten times slower; one thread is
    then the fast choice.
    """
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
