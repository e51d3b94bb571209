"""Turns of two contenders in one process, for the throughput benchmarks (bench_text.py,
bench_vqvae.py): each advances a slice of steps in turn, the order reversed every turn, so a burst of
load on a shared machine hits both alike; the fair comparison is the ratio within a turn."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator


def interleave(runs: dict[str, Iterator[int]], units: Callable[[str, int], float]
               ) -> tuple[dict[str, list[float]], list[float]]:
    """Advance the two generators of ``runs`` (name -> a generator yielding the steps it took in a
    turn) in turns until one is exhausted. ``units(name, n)`` is the work of ``name``'s next n steps
    (images, tokens). Returns each one's rate per turn (units/s) and, from the second turn on (the
    first holds the warm-up), the first contender's rate over the second's in the same turn."""
    first, second = runs
    rates: dict[str, list[float]] = {name: [] for name in runs}
    ratios: list[float] = []
    order = list(runs)
    turn = 0
    while True:
        turn_rates = {}
        for name in order:
            t0 = time.perf_counter()
            n = next(runs[name], 0)
            dt = time.perf_counter() - t0
            if n:
                turn_rates[name] = units(name, n) / dt
                rates[name].append(turn_rates[name])
        if len(turn_rates) < 2:
            return rates, ratios
        if turn > 0:
            ratios.append(turn_rates[first] / turn_rates[second])
        order.reverse()
        turn += 1


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartiles (both the value itself for a single value)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def speed_lines(ratios: list[float], breakdown: list[tuple[str, float]], profile_steps: int) -> list[str]:
    """The markdown of a throughput comparison's result: the median per-turn ratio with its quartiles,
    then the share of a vaelab step's time by part (``breakdown``: (part, percent) rows)."""
    lo, hi = quartiles(ratios)
    return [
        f"**vaelab / plain: {statistics.median(ratios):.2f}x** (median of per-turn ratios; "
        f"quartiles {lo:.2f}-{hi:.2f}).",
        "",
        f"Where a vaelab step's time goes (torch.profiler, self CPU time, {profile_steps} steps):",
        "",
        "| part | share |",
        "|---|---|",
        *(f"| {c} | {p:.1f}% |" for c, p in breakdown),
        "",
    ]
