"""Paired comparison of two evaluated runs on the same examples.

Two models evaluated on the same test split give per-example negative log-likelihoods a_i and b_i
(``eval_examples.npz``, written by every ``vaelab eval``). Their difference of means is best judged
by the per-example differences d_i = a_i - b_i: the standard error of mean(d) removes the variation
between examples that both models share (long sentences cost both more), which is most of it, so a
gap of a fraction of a nat can be clear while the two unpaired standard errors overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaelab.errors import VaelabError

__all__ = ["PerExample", "PairedDifference", "read_per_example", "paired_difference"]

PER_EXAMPLE_FILE = "eval_examples.npz"


@dataclass(frozen=True)
class PerExample:
    """One run's per-example figures: ``nll`` (N,) nats, ``count`` (N,) units (tokens, dims),
    ``kind`` ("estimate", "bound" or "exact") and the ``split`` they come from."""

    nll: np.ndarray
    count: np.ndarray
    kind: str
    split: str


def read_per_example(run_dir: str | Path) -> PerExample:
    """A run's ``eval_examples.npz``, or a one-line error saying how to make it."""
    path = Path(run_dir) / PER_EXAMPLE_FILE
    if not path.is_file():
        raise VaelabError(f"{run_dir} has no {PER_EXAMPLE_FILE}; run `vaelab eval {run_dir}` first")
    try:
        with np.load(path, allow_pickle=False) as f:
            nll, count = (np.asarray(f[key], dtype=np.float64) for key in ("nll", "count"))
            return PerExample(nll, count, str(f["kind"]), str(f["split"]))
    except (OSError, ValueError, KeyError) as exc:
        raise VaelabError(f"{path} is unreadable ({exc}); run `vaelab eval {run_dir}` again") from None


@dataclass(frozen=True)
class PairedDifference:
    """mean(a - b) over N paired examples, its standard error, and each side's mean."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    stderr: float

    @property
    def z(self) -> float:
        """The difference in standard errors (inf when every pair differs by the same amount)."""
        if self.stderr > 0:
            return self.diff / self.stderr
        return 0.0 if self.diff == 0 else math.copysign(math.inf, self.diff)


def paired_difference(a: PerExample, b: PerExample) -> PairedDifference:
    """The paired difference of two runs' per-example NLLs; refused in one line when they were not
    evaluated on the same examples (another split, another number of examples, or other lengths)."""
    if a.split != b.split:
        raise VaelabError(f"the runs were evaluated on different splits ({a.split} and {b.split}); "
                          "evaluate both on the same one")
    if a.nll.shape != b.nll.shape or not np.array_equal(a.count, b.count):
        raise VaelabError(f"the runs were evaluated on different examples ({a.nll.size} and {b.nll.size}, "
                          "or in another order); evaluate both with the same data, split and eval.batch_size")
    d = a.nll - b.nll
    n = d.size
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return PairedDifference(n, float(a.nll.mean()), float(b.nll.mean()), float(d.mean()), se)
