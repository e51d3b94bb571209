"""A generic coordinate-ascent variational inference (CAVI) loop.

CAVI maximises the ELBO over a mean-field family q(z) = prod_j q_j(z_j) by setting each factor, in
turn, to its optimum given the others, q_j* ∝ exp E_{-j}[log p(x, z)] (Blei, Kucukelbir & McAuliffe
2017, eq. 18; Bishop 2006, eq. 10.9). Every such step is an exact maximisation over one block, so the
ELBO can never go down: a decrease larger than floating-point round-off means an update is wrong, and
:func:`cavi` raises :class:`ElboDecreaseError` instead of silently returning a worse answer.

The loop knows nothing about any model. A model supplies its state (any object), a list of update
functions ``state -> state`` (one per factor or block of factors; each may mutate and return the state
it is given) and ``elbo(state) -> float``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["cavi", "CaviTrace", "ElboDecreaseError"]

S = TypeVar("S")


class ElboDecreaseError(RuntimeError):
    """The ELBO went down during coordinate ascent: a bug in an update, not a user error."""


@dataclass
class CaviTrace(Generic[S]):
    """What :func:`cavi` returns.

    Attributes:
        state: the final state.
        elbo: ELBO at initialisation (``elbo[0]``) and after each completed sweep (``elbo[i]``, i >= 1).
        converged: whether the relative-tolerance test stopped the loop (else ``max_sweeps`` did).
    """

    state: S
    elbo: list[float] = field(default_factory=list)
    converged: bool = False

    @property
    def n_sweeps(self) -> int:
        return len(self.elbo) - 1


def _check_increase(old: float, new: float, round_off: float, where: str) -> None:
    if not math.isfinite(new):
        raise ElboDecreaseError(f"ELBO became {new} {where}")
    slack = round_off * max(1.0, abs(old))
    if new < old - slack:
        raise ElboDecreaseError(
            f"ELBO decreased from {old!r} to {new!r} (by {old - new:.3g} > round-off {slack:.3g}) {where}"
        )


def cavi(
    state: S,
    updates: Sequence[Callable[[S], S]],
    elbo: Callable[[S], float],
    *,
    tol: float = 1e-8,
    max_sweeps: int = 1000,
    round_off: float = 1e-9,
    check_every_update: bool = False,
    callback: Callable[[int, S, float], None] | None = None,
) -> CaviTrace[S]:
    """Run coordinate ascent: apply ``updates`` in order (one sweep), record the ELBO, repeat.

    Args:
        state: initial variational parameters (any object the updates understand).
        updates: one function per factor (or conditionally independent block of factors); each returns
            the new state, the optimum of its factor given all others.
        elbo: the evidence lower bound of a state, a Python float.
        tol: stop when ``|elbo_new - elbo_old| <= tol * max(1, |elbo_new|)`` after a sweep. ``tol=0``
            runs exactly ``max_sweeps`` sweeps (useful for timing at a fixed number of passes).
        max_sweeps: the most sweeps to run.
        round_off: a decrease of more than ``round_off * max(1, |elbo|)`` raises. The default suits
            float64 sums of up to millions of terms.
        check_every_update: also evaluate the ELBO after every single update and check it did not
            decrease (slower; pins a faulty update down to the factor).
        callback: called as ``callback(sweep, state, elbo)`` after each sweep.
    Returns:
        a :class:`CaviTrace` with the final state and the ELBO history.
    Raises:
        ElboDecreaseError: if the ELBO decreases by more than round-off, or becomes non-finite.
    """
    if not updates:
        raise ValueError("cavi needs at least one update")
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    current = float(elbo(state))
    trace: CaviTrace[S] = CaviTrace(state=state, elbo=[current])
    for sweep in range(1, max_sweeps + 1):
        for j, update in enumerate(updates):
            state = update(state)
            if check_every_update:
                after = float(elbo(state))
                _check_increase(current, after, round_off, f"in update {j} of sweep {sweep}")
                current = after
        new = float(elbo(state))
        _check_increase(trace.elbo[-1], new, round_off, f"over sweep {sweep}")
        trace.elbo.append(new)
        trace.state = state
        current = new
        if callback is not None:
            callback(sweep, state, new)
        if tol > 0 and abs(new - trace.elbo[-2]) <= tol * max(1.0, abs(new)):
            trace.converged = True
            break
    trace.state = state
    return trace
