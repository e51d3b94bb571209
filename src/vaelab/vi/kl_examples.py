"""How KL(q || p) behaves as an objective, on discrete distributions (Examples 1 and 2 of the lecture).

Example 1: the per-outcome contributions q_i log(q_i / p_i). A contribution is large where q puts
mass that p does not (q = .9, p = .1 gives 1.98 nats) and can be negative where q puts less mass
than p (q = .1, p = .9 gives -0.22); only the sum over outcomes is >= 0.

Example 2: minimising KL(q || p) over a set of candidate q's picks the one closest to p; q = p gives
KL = 0, the global minimum (Gibbs' inequality).

All numbers are in nats and come from :mod:`vaelab.divergences`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from vaelab.divergences import kl_categorical, kl_terms

__all__ = [
    "EXAMPLE1_PAIRS",
    "EXAMPLE2_P",
    "ContributionRow",
    "contribution_table",
    "KLArgmin",
    "kl_argmin",
    "example2_candidates",
]

EXAMPLE1_PAIRS: tuple[tuple[float, float], ...] = ((0.9, 0.9), (0.9, 0.1), (0.1, 0.9), (0.1, 0.1))
EXAMPLE2_P: tuple[float, ...] = (0.7, 0.2, 0.1)


@dataclass(frozen=True)
class ContributionRow:
    q: float
    p: float
    term: float  # q log(q / p), nats


def contribution_table(pairs: Sequence[tuple[float, float]] = EXAMPLE1_PAIRS) -> list[ContributionRow]:
    """One row per (q_i, p_i) pair with its contribution q_i log(q_i / p_i) to KL(q || p), in nats."""
    q = torch.tensor([a for a, _ in pairs], dtype=torch.float64)
    p = torch.tensor([b for _, b in pairs], dtype=torch.float64)
    terms = kl_terms(q, p)
    return [ContributionRow(float(a), float(b), float(t)) for a, b, t in zip(q, p, terms)]


@dataclass(frozen=True)
class KLArgmin:
    best: str  # name of the candidate with the smallest KL(q || p)
    kl: dict[str, float]  # KL(q || p) in nats for every candidate, in the order given


def kl_argmin(p: Sequence[float], candidates: Mapping[str, Sequence[float]]) -> KLArgmin:
    """The candidate q minimising KL(q || p). ``p`` and every candidate are probability vectors (K,)."""
    if not candidates:
        raise ValueError("kl_argmin needs at least one candidate")
    pt = torch.as_tensor(p, dtype=torch.float64)
    kls: dict[str, float] = {}
    for name, q in candidates.items():
        qt = torch.as_tensor(q, dtype=torch.float64)
        if qt.shape != pt.shape:
            raise ValueError(f"candidate {name!r} has shape {tuple(qt.shape)}, p has {tuple(pt.shape)}")
        kls[name] = float(kl_categorical(qt, pt))
    best = min(kls, key=kls.__getitem__)
    return KLArgmin(best=best, kl=kls)


def example2_candidates(p: Sequence[float] = EXAMPLE2_P) -> dict[str, tuple[float, ...]]:
    """Example 2's candidates: q1 uniform, q2 = p, plus two more for contrast (a sharpened and a
    mode-swapped version of p) so the table is not a two-horse race."""
    k = len(p)
    sharp = torch.as_tensor(p, dtype=torch.float64) ** 3
    sharp = sharp / sharp.sum()
    return {
        "q1 (uniform)": tuple([1.0 / k] * k),
        "q2 (= p)": tuple(float(v) for v in p),
        "q3 (p cubed, renormalised)": tuple(float(v) for v in sharp),
        "q4 (p reversed)": tuple(float(v) for v in reversed(p)),
    }
