"""Plugins: what packages add to vaelab through entry points, found when a name is looked up.

A package adds a model family (or a dataset) without touching vaelab by declaring an entry point
in its own ``pyproject.toml``::

    [project.entry-points."vaelab.models"]
    mymodel = "mypackage.model:MyModel"   # a vaelab.models.Model subclass

    [project.entry-points."vaelab.datasets"]
    mycorpus = "mypackage.data:CORPUS"    # a vaelab.data.Dataset

vaelab's own families are declared the same way in its ``pyproject.toml``. Nothing is imported
until a name is needed: a registry asks :func:`load` for a name it does not hold yet, and
:func:`load_all` when it lists its names. A plugin that fails to import, or points at the wrong kind
of object, raises a one-line :class:`~vaelab.errors.VaelabError` naming the plugin, its package and
the fix.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from vaelab.errors import VaelabError

__all__ = ["MODELS_GROUP", "DATASETS_GROUP", "declared", "load", "load_all", "describe"]

MODELS_GROUP = "vaelab.models"
DATASETS_GROUP = "vaelab.datasets"


def declared(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name, as installed (no plugin is imported).

    When two installed packages declare one name the first found wins here; loading it then checks
    that the other is the same object (see :func:`load`)."""
    out: dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        out.setdefault(ep.name, ep)
    return out


def _package(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.module.split(".")[0]
    return f"{dist.metadata['Name']} {dist.version}"


def describe(ep: EntryPoint) -> str:
    """``plugin 'NAME' (GROUP = "VALUE" of package PKG VERSION)``: how errors name a plugin."""
    return f"plugin {ep.name!r} ({ep.group} = {ep.value!r} of package {_package(ep)})"


def _load(ep: EntryPoint, kind: type, what: str) -> object:
    package = _package(ep).split(" ")[0]
    try:
        obj = ep.load()
    except Exception as exc:  # any import-time failure of someone else's code is reported the same way
        first = (str(exc).strip().splitlines() or [""])[0]
        raise VaelabError(
            f"{describe(ep)} failed to load: {type(exc).__name__}: {first}; "
            f"fix or reinstall {package}, or uninstall it (pip uninstall {package})"
        ) from exc
    ok = isinstance(obj, type) and issubclass(obj, kind) if what == "class" else isinstance(obj, kind)
    if not ok:
        shown = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise VaelabError(
            f"{describe(ep)} points at {shown}, not a {kind.__module__}.{kind.__qualname__} "
            f"{'subclass' if what == 'class' else 'instance'}; "
            f"fix the entry point in {package}'s pyproject.toml"
        )
    return obj


def load(group: str, name: str, kind: type, what: str = "class") -> object | None:
    """The object the entry point ``name`` of ``group`` names, imported now; None when none is declared.

    kind / what: the object must be a subclass of ``kind`` (``what="class"``) or an instance of it
    (``what="instance"``)."""
    ep = declared(group).get(name)
    return None if ep is None else _load(ep, kind, what)


def load_all(group: str, kind: type, what: str = "class", skip: frozenset[str] | set[str] = frozenset()
             ) -> dict[str, object]:
    """Every entry point of ``group`` not named in ``skip``, imported now, by name."""
    return {name: _load(ep, kind, what) for name, ep in declared(group).items() if name not in skip}
