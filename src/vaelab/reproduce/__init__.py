"""Reproductions of published figures and tables, one command each: ``vaelab reproduce NAME``.

A reproduction is a function ``fn(ctx) -> list[Section]`` registered with :func:`reproduction`. It
trains what it needs through the ordinary pipeline (each trained model is a child run folder under
``ctx.out``, made by :meth:`Context.child`), measures, and returns the report sections of the figure
(images, curves, a table with the numbers to put beside the paper's). :func:`run_reproduction`
writes the run folder: ``config.json`` (name, budget, seed), ``command.txt``, ``run.json``, the
sections, and ``report.html``.

Budgets: ``budget`` is the fraction of the documented full budget, in (0, 1]. A reproduction scales
its counts (training samples, test examples, AIS distributions) with :meth:`Context.scaled`, so
``--budget 1e-4`` runs in seconds (the tests) and ``--budget 1`` is the run its docs time.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaelab.errors import VaelabError
from vaelab.runfolder import start_run_folder
from vaelab.sections import Section
from vaelab.threads import torch_threads

__all__ = ["Context", "Reproduction", "REPRODUCTIONS", "reproduction", "reproduction_names", "get",
           "run_reproduction"]

# Modules whose import registers reproductions.
_MODULES = ("vaelab.reproduce.kingma2014", "vaelab.reproduce.lecture")


@dataclass
class Context:
    """What a reproduction runs with.

    out: its run folder (exists). budget: fraction of the full budget, in (0, 1]. device, seed:
    for everything it trains and samples. progress: show progress bars. threads: torch intra-op
    threads while it runs (0: PyTorch's default); two reproductions of small networks side by side
    with one thread each use two cores better than one with two.
    """

    out: Path
    budget: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: bool = False
    threads: int = 0

    def scaled(self, full: float, minimum: int = 1) -> int:
        """``full`` scaled by the budget, rounded, at least ``minimum``."""
        return max(minimum, int(round(full * self.budget)))

    def measured(self, full: float, minimum: int = 1) -> int:
        """A measurement's size (examples evaluated, samples per estimate): ``full`` from a budget of
        0.01 up, so a run at a fraction of the training budget is measured as precisely as the full
        one; scaled below that (quick looks and tests)."""
        return int(full) if self.budget >= 0.01 else self.scaled(full, minimum)

    def scaled_log(self, full: float, minimum: int = 1) -> int:
        """``full`` scaled by the budget on a log scale (for counts whose cost is not linear, e.g.
        dataset sizes shown on a log axis): budget 1 gives ``full``, smaller budgets shrink it by
        ``budget ** 0.5``."""
        return max(minimum, int(round(full * math.sqrt(self.budget))))

    def child(self, name: str) -> Path:
        """The folder of a run this reproduction makes (``out/runs/name``)."""
        path = self.out / "runs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


@dataclass(frozen=True)
class Reproduction:
    name: str
    title: str  # one line: which figure of which paper
    full_budget: str  # the full budget in words, with its measured wall time here
    run: Callable[[Context], list[Section]]


REPRODUCTIONS: dict[str, Reproduction] = {}


def reproduction(name: str, title: str, full_budget: str):
    """Decorator registering ``fn(ctx) -> list[Section]`` as reproduction ``name``."""

    def register(fn: Callable[[Context], list[Section]]):
        if name in REPRODUCTIONS:
            raise RuntimeError(f"reproduction {name!r} registered twice")
        REPRODUCTIONS[name] = Reproduction(name, title, full_budget, fn)
        return fn

    return register


def _load() -> None:
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def reproduction_names() -> list[str]:
    _load()
    return sorted(REPRODUCTIONS)


def get(name: str) -> Reproduction:
    _load()
    try:
        return REPRODUCTIONS[name]
    except KeyError:
        raise VaelabError(
            f"unknown reproduction {name!r}; available: {', '.join(sorted(REPRODUCTIONS))}"
        ) from None


def run_reproduction(
    name: str,
    out: str | Path,
    *,
    budget: float = 1.0,
    device: torch.device | None = None,
    seed: int = 0,
    progress: bool = False,
    threads: int = 0,
    command: str | None = None,
) -> Path:
    """Run reproduction ``name`` into the folder ``out``; returns the report's path."""
    from vaelab.report.build import build_report
    from vaelab.sections import write_sections

    rep = get(name)
    if not (0.0 < budget <= 1.0):
        raise VaelabError(f"--budget must be a fraction of the full budget in (0, 1], got {budget}")
    if threads < 0:
        raise VaelabError(f"--threads must be >= 0 (0: PyTorch's default), got {threads}")
    run = start_run_folder(out, {"reproduction": name, "title": rep.title, "budget": budget, "seed": seed},
                           command)
    ctx = Context(out=run, budget=budget, device=device or torch.device("cpu"), seed=seed, progress=progress,
                  threads=threads)
    with torch_threads(threads):
        sections = rep.run(ctx)
    write_sections(run, sections)
    return build_report(run)
