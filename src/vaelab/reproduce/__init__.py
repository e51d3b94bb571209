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

Parts: a reproduction of several child runs may declare their names (``parts=`` of
:func:`reproduction`). ``--part NAME`` then trains only the named children (each a resumable run of
its own), so a figure whose full budget is longer than one sitting is trained in pieces, in parallel
processes or on several days, into one folder; a later call without ``--part`` (or with the last
parts) finds every child finished and draws the figure. A call that leaves children untrained writes
no report and says which are missing.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vaelab.errors import VaelabError
from vaelab.runfolder import start_run_folder
from vaelab.sections import Section
from vaelab.threads import torch_threads

__all__ = ["Context", "PartsMissing", "Reproduction", "REPRODUCTIONS", "reproduction", "reproduction_names",
           "get", "run_reproduction"]

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
    parts: frozenset[str] | None = None
    missing: list[str] = field(default_factory=list)

    def selected(self, name: str) -> bool:
        """Whether child ``name`` is to be trained in this call (every child, unless ``parts``)."""
        return self.parts is None or name in self.parts

    def skip(self, name: str) -> None:
        """Record child ``name`` as left untrained by this call (not among ``parts``, unfinished)."""
        if name not in self.missing:
            self.missing.append(name)

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
    parts: Callable[[Context], list[str]] | None = None  # its children's names, for --part

    def part_names(self, ctx: Context) -> list[str]:
        """The names ``--part`` takes at ``ctx``'s budget; a one-line error when it has none."""
        if self.parts is None:
            raise VaelabError(f"reproduction {self.name!r} has no parts; run it without --part")
        return self.parts(ctx)


REPRODUCTIONS: dict[str, Reproduction] = {}


def reproduction(
    name: str, title: str, full_budget: str, parts: Callable[[Context], list[str]] | None = None
):
    """Decorator registering ``fn(ctx) -> list[Section]`` as reproduction ``name``.

    ``parts(ctx)``: the names of the child runs ``fn`` trains at ``ctx``'s budget, cheaply (no
    training, no data). A reproduction with parts trains each child only when ``ctx.selected(name)``,
    calls ``ctx.skip(name)`` for an unfinished child it leaves, and returns no sections while
    ``ctx.missing`` is not empty."""

    def register(fn: Callable[[Context], list[Section]]):
        if name in REPRODUCTIONS:
            raise RuntimeError(f"reproduction {name!r} registered twice")
        REPRODUCTIONS[name] = Reproduction(name, title, full_budget, fn, parts)
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
    parts: Sequence[str] | None = None,
    command: str | None = None,
) -> Path:
    """Run reproduction ``name`` into the folder ``out``; returns the report's path. Raises
    :class:`PartsMissing` when ``parts`` left children untrained (``Context.missing``)."""
    from vaelab.report.build import build_report
    from vaelab.sections import write_sections

    rep = get(name)
    if not (0.0 < budget <= 1.0):
        raise VaelabError(f"--budget must be a fraction of the full budget in (0, 1], got {budget}")
    if threads < 0:
        raise VaelabError(f"--threads must be >= 0 (0: PyTorch's default), got {threads}")
    ctx = Context(out=Path(out), budget=budget, device=device or torch.device("cpu"), seed=seed,
                  progress=progress, threads=threads)
    if parts:
        known = rep.part_names(ctx)
        unknown = [p for p in parts if p not in known]
        if unknown:
            raise VaelabError(f"unknown part {unknown[0]!r} of {name}; its parts: {', '.join(known)}")
        ctx.parts = frozenset(parts)
    _check_same_settings(Path(out), name, budget, seed)
    run = start_run_folder(out, {"reproduction": name, "title": rep.title, "budget": budget, "seed": seed},
                           command)
    with torch_threads(threads):
        sections = rep.run(ctx)
    if ctx.missing:
        raise PartsMissing(ctx.missing)
    write_sections(run, sections)
    return build_report(run)


class PartsMissing(VaelabError):
    """``--part`` trained what it was asked to; these children are still to train."""

    def __init__(self, missing: Sequence[str]):
        self.missing = list(missing)
        super().__init__(
            f"not drawn yet: {len(self.missing)} part(s) still to train ({', '.join(self.missing)}); "
            "run the same command with --part for them, or without --part")


def _check_same_settings(out: Path, name: str, budget: float, seed: int) -> None:
    """A folder holds one reproduction at one budget and seed: its children would otherwise mix."""
    import json

    path = out / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(old, dict) or "reproduction" not in old:
        return
    for key, new in (("reproduction", name), ("budget", budget), ("seed", seed)):
        if old.get(key) != new:
            raise VaelabError(
                f"{out} holds {old.get('reproduction')} at budget {old.get('budget')} and seed "
                f"{old.get('seed')}, not {name} at budget {budget:g} and seed {seed}; pass another --out")
