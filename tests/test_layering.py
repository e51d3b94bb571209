"""The import directions of DESIGN.md ("the floors of the house"), held against the source.

Every module under src/vaelab is parsed with ``ast``; every import, at module level and inside
functions, is resolved to the vaelab module it names (relative imports included). The rules:

* ``cli/`` is on top: nothing else imports ``vaelab.cli`` (``vaelab/__main__.py`` is the CLI's).
* ``reproduce/`` stands just below the CLI: no library layer imports it.
* Below the CLI, no module imports names from the package root (``from vaelab import __version__``
  runs the root's re-exports of every layer); importing a submodule through it is fine.
* ``train/`` imports no ``models``, ``data`` or ``experiment``, and does not reach them through the
  module-level imports of what it does import.
* ``models/``, ``vi/`` and ``evaluation/`` import no ``train``, ``data``, ``experiment`` or ``report``.
* ``data/`` imports no ``models``, ``train``, ``evaluation``, ``experiment`` or ``report``.
* ``report/`` imports neither torch nor ``models``, ``train``, ``evaluation``, ``data``,
  ``experiment``, at any level, and reaches no torch through the vaelab modules it imports.
* The leaf modules both sides stand on (``sections``, ``runfolder``, ``checksums``, ``schedules``,
  ``_version``, ``errors``, ``spec``, ``threads``) import no other layer.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "vaelab"

LEAVES = ("vaelab.sections", "vaelab.runfolder", "vaelab.schedules", "vaelab._version", "vaelab.errors",
          "vaelab.spec", "vaelab.checksums", "vaelab.threads")
LAYERS = ("vaelab.cli", "vaelab.models", "vaelab.train", "vaelab.data", "vaelab.vi", "vaelab.evaluation",
          "vaelab.report", "vaelab.experiment", "vaelab.config", "vaelab.estimators", "vaelab.divergences",
          "vaelab.distributions", "vaelab.nn", "vaelab.mcmc", "vaelab.reproduce", "vaelab.text_ops")

# importer package -> module prefixes it must not import (at any level)
_TOP = ("vaelab.cli", "vaelab.reproduce")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "vaelab.train": ("vaelab.models", "vaelab.data", "vaelab.experiment", *_TOP),
    "vaelab.models": ("vaelab.train", "vaelab.data", "vaelab.experiment", "vaelab.report", *_TOP),
    "vaelab.vi": ("vaelab.train", "vaelab.data", "vaelab.experiment", "vaelab.report", *_TOP),
    "vaelab.evaluation": ("vaelab.train", "vaelab.data", "vaelab.experiment", "vaelab.report", *_TOP),
    "vaelab.data": ("vaelab.models", "vaelab.train", "vaelab.evaluation", "vaelab.experiment",
                    "vaelab.report", *_TOP),
    "vaelab.report": ("torch", "vaelab.models", "vaelab.train", "vaelab.evaluation", "vaelab.data",
                      "vaelab.experiment", *_TOP),
    "vaelab.text_ops": _TOP,  # a layer beside experiment: models and the run loader below it
    **{leaf: ("torch", *LAYERS) for leaf in ("vaelab.sections", "vaelab.runfolder", "vaelab._version",
                                             "vaelab.checksums")},
    **{leaf: LAYERS for leaf in ("vaelab.schedules", "vaelab.errors", "vaelab.spec", "vaelab.threads")},
}
# importer package -> prefixes it must not reach through module-level imports, transitively
UNREACHABLE: dict[str, tuple[str, ...]] = {
    "vaelab.train": ("vaelab.models", "vaelab.data", "vaelab.experiment"),
    "vaelab.report": ("torch", "vaelab.models"),
}


@dataclass(frozen=True)
class Import:
    module: str  # the vaelab module (or third-party top-level name) imported
    line: int
    top_level: bool  # at module level (runs on import), not inside a function or class body
    root_names: tuple[str, ...] = ()  # names taken from the package root itself (`from vaelab import X`)


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _is_module(name: str) -> bool:
    p = SRC.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(source: str, name: str, is_package: bool) -> list[Import]:
    """Every import in ``source`` (the module ``name``), resolved to absolute module names."""
    tree = ast.parse(source)
    out: list[Import] = []
    package = name if is_package else name.rpartition(".")[0]

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend(Import(a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod == "vaelab":  # `from vaelab import x`: a submodule, or a name of the root
                    subs = [a.name for a in child.names if _is_module(f"vaelab.{a.name}")]
                    out.extend(Import(f"vaelab.{s}", child.lineno, top) for s in subs)
                    rest = tuple(a.name for a in child.names if a.name not in subs)
                    if rest:
                        out.append(Import("vaelab", child.lineno, top, rest))
                else:
                    out.append(Import(mod, child.lineno, top))
                    # `from vaelab.pkg import submodule`
                    out.extend(Import(f"{mod}.{a.name}", child.lineno, top) for a in child.names
                               if mod.startswith("vaelab") and _is_module(f"{mod}.{a.name}"))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # imports for annotations only never run
            else:
                inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, inner)

    visit(tree, True)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _package_of(name: str, table: dict[str, tuple[str, ...]]) -> str | None:
    return next((p for p in table if _under(name, p)), None)


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Every break of the rules in ``modules`` (name -> (source, is_package)), as readable lines."""
    found: list[str] = []
    graph = {n: imports_of(src, n, pkg) for n, (src, pkg) in modules.items()}
    for name, imps in graph.items():
        in_cli = _under(name, "vaelab.cli") or name == "vaelab.__main__"
        for imp in imps:
            if not in_cli and _under(imp.module, "vaelab.cli"):
                found.append(f"{name}:{imp.line} imports {imp.module}: nothing below the CLI imports it")
            if imp.root_names and not in_cli and name != "vaelab":
                found.append(f"{name}:{imp.line} imports {', '.join(imp.root_names)} from the package root; "
                             "import the module that defines it")
        pkg = _package_of(name, FORBIDDEN)
        if pkg is not None:
            for imp in imps:
                bad = next((f for f in FORBIDDEN[pkg] if _under(imp.module, f)), None)
                if bad and not (_under(imp.module, pkg)):
                    found.append(f"{name}:{imp.line} imports {imp.module}: {pkg} must not import {bad}")
        pkg = _package_of(name, UNREACHABLE)
        if pkg is not None:
            seen, stack = {name}, [(name, [name])]
            while stack:
                cur, path = stack.pop()
                for imp in graph.get(cur, []):
                    if not imp.top_level:
                        continue
                    bad = next((f for f in UNREACHABLE[pkg] if _under(imp.module, f)), None)
                    if bad and len(path) > 1:
                        found.append(f"{name} reaches {imp.module} through {' -> '.join(path)}: "
                                     f"{pkg} must not reach {bad}")
                    if imp.module in graph and imp.module not in seen and imp.module != "vaelab":
                        seen.add(imp.module)
                        stack.append((imp.module, [*path, imp.module]))
    return found


@functools.cache
def _source_tree() -> tuple[tuple[str, tuple[str, bool]], ...]:
    return tuple((module_name(p), (p.read_text(encoding="utf-8"), p.name == "__init__.py"))
                 for p in sorted(PKG.rglob("*.py")))


def _tree() -> dict[str, tuple[str, bool]]:
    return dict(_source_tree())


def test_the_source_holds_the_import_directions():
    modules = _tree()
    assert len(modules) > 30 and "vaelab.train.loop" in modules and "vaelab.report.build" in modules
    problems = violations(modules)
    assert not problems, "\n".join(problems)


def _with(name: str, source: str, is_package: bool = False) -> list[str]:
    modules = _tree()
    modules[name] = (source, is_package)
    return violations(modules)


@pytest.mark.parametrize(
    "name,source,message",
    [
        ("vaelab.models.toy", "from vaelab.train.schedules import learning_rate\n",
         "vaelab.models must not import vaelab.train"),
        ("vaelab.train.toy", "def f():\n    from vaelab.models import build_model\n",
         "vaelab.train must not import vaelab.models"),
        ("vaelab.train.toy", "from ..data import load_dataset\n", "vaelab.train must not import vaelab.data"),
        ("vaelab.train.toy", "from vaelab.experiment import train_run\n",
         "vaelab.train must not import vaelab.experiment"),
        ("vaelab.train.checkpoint", "from vaelab import __version__\n", "from the package root"),
        ("vaelab.report.toy", "def f():\n    import torch\n", "vaelab.report must not import torch"),
        ("vaelab.report.toy", "from torch import nn\n", "vaelab.report must not import torch"),
        ("vaelab.report.toy", "from vaelab.models.base import Model\n",
         "vaelab.report must not import vaelab.models"),
        ("vaelab.report.toy", "from vaelab import estimators\n", "reaches torch"),
        ("vaelab.data.toy", "from vaelab.train.loop import Trainer\n",
         "vaelab.data must not import vaelab.train"),
        ("vaelab.vi.toy", "from vaelab.data.ap import load_ap\n", "vaelab.vi must not import vaelab.data"),
        ("vaelab.evaluation.toy", "import vaelab.experiment\n",
         "vaelab.evaluation must not import vaelab.experiment"),
        ("vaelab.experiment_helpers", "from vaelab.cli import main\n", "nothing below the CLI imports it"),
        ("vaelab.sections", "import torch\n", "vaelab.sections must not import torch"),
        ("vaelab.train.toy", "from vaelab.evaluation import metrics\n", None),  # reaches no model: allowed
        ("vaelab.train.toy", "from vaelab.helper_that_builds import x\n", "reaches vaelab.models"),
    ],
)
def test_a_violation_fails(name, source, message):
    extra = {}
    if "helper_that_builds" in source:  # a module-level chain: train -> helper -> models
        extra["vaelab.helper_that_builds"] = ("from vaelab.models import build_model\nx = 1\n", False)
    modules = _tree()
    modules[name] = (source, False)
    modules.update(extra)
    problems = [p for p in violations(modules) if p.startswith(name)]
    if message is None:
        assert not problems, problems
    else:
        assert any(message in p for p in problems), problems


def test_annotation_only_imports_do_not_count():
    src = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vaelab.models import Model\n"
    assert not [p for p in _with("vaelab.train.toy", src) if p.startswith("vaelab.train.toy")]
