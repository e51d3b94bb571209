"""Plugins: model families and datasets added by other packages through entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

from vaelab import plugins
from vaelab.data import registry as data_registry
from vaelab.errors import VaelabError
from vaelab.models import base as model_base
from vaelab.models import model_class, model_names

ROOT = Path(__file__).resolve().parents[1]


def write_distribution(site: Path, package: str, entry_points: dict[str, dict[str, str]],
                       modules: dict[str, str], version: str = "0.1") -> None:
    """Install a package by hand into ``site``: its modules and a ``*.dist-info`` with METADATA and
    entry_points.txt, which is what ``pip install --target site`` leaves (read by importlib.metadata)."""
    for rel, source in modules.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{package}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
    lines = []
    for group, table in entry_points.items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in table.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on sys.path for hand-installed packages; the registries and modules are restored."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(model_base, "MODELS", dict(model_base.MODELS))
    monkeypatch.setattr(data_registry, "DATASETS", dict(data_registry.DATASETS))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("plug"):
            del sys.modules[name]


GOOD_MODEL = """
    from vaelab.models import LossOutput, Model

    class Tiny(Model):
        def loss(self, batch):
            return LossOutput(loss=batch.sum())
"""


def test_plugin_family_is_loaded_when_its_name_is_looked_up(site):
    write_distribution(site, "plugtiny", {"vaelab.models": {"tiny": "plugtiny.model:Tiny"}},
                       {"plugtiny/__init__.py": "", "plugtiny/model.py": GOOD_MODEL})
    assert "tiny" not in model_base.MODELS and "plugtiny.model" not in sys.modules  # nothing imported yet
    cls = model_class("tiny")
    assert cls.__module__ == "plugtiny.model" and cls.name == "tiny" and model_base.MODELS["tiny"] is cls
    assert "tiny" in model_names() and "vae" in model_names()


def test_listing_loads_every_plugin(site):
    write_distribution(site, "plugtiny", {"vaelab.models": {"tiny": "plugtiny.model:Tiny"}},
                       {"plugtiny/__init__.py": "", "plugtiny/model.py": GOOD_MODEL})
    assert "tiny" in model_names() and model_base.MODELS["tiny"].__module__ == "plugtiny.model"


def test_broken_plugin_is_one_line_naming_plugin_and_package(site):
    write_distribution(site, "plugbroken", {"vaelab.models": {"broken": "plugbroken.model:Gone"}},
                       {"plugbroken/__init__.py": "", "plugbroken/model.py": "import no_such_module_xyz\n"},
                       version="2.3")
    with pytest.raises(VaelabError) as err:
        model_class("broken")
    msg = str(err.value)
    assert "\n" not in msg
    assert "plugin 'broken'" in msg and "plugbroken 2.3" in msg
    assert "No module named 'no_such_module_xyz'" in msg
    assert "pip uninstall plugbroken" in msg
    # a name that is not declared still lists the declared ones, without importing the broken one
    with pytest.raises(VaelabError, match="unknown model 'nope'; registered models: .*broken.*vae"):
        model_class("nope")


def test_plugin_pointing_at_a_non_model_is_refused(site):
    write_distribution(site, "plugwrong", {"vaelab.models": {"wrong": "plugwrong:NotAModel"}},
                       {"plugwrong/__init__.py": "class NotAModel:\n    pass\n"})
    with pytest.raises(VaelabError, match=r"plugin 'wrong' .* points at NotAModel, not a "
                       r"vaelab\.models\.base\.Model subclass; fix the entry point in plugwrong"):
        model_class("wrong")


def test_plugin_cannot_take_a_builtin_name(site):
    write_distribution(site, "plugclash", {"vaelab.models": {"vae": "plugclash.model:Tiny"}},
                       {"plugclash/__init__.py": "", "plugclash/model.py": GOOD_MODEL})
    assert model_class("vae").__module__ == "vaelab.models.vae"  # registered names win, nothing imported
    with pytest.raises(VaelabError, match="plugin 'vae' .* already registered by vaelab.models.vae"):
        model_base._register_plugin("vae", plugins.load("vaelab.models", "vae", model_base.Model))


def test_dataset_plugin(site):
    source = """
        from vaelab.data import Dataset

        def _load(ds, root, cfg, verify):
            raise NotImplementedError

        DATASET = Dataset(name="plugset", description="a plugin's dataset", folder="", files=(), loader=_load)
    """
    write_distribution(site, "plugset", {"vaelab.datasets": {"plugset": "plugset:DATASET"}},
                       {"plugset/__init__.py": source})
    assert data_registry.get_dataset("plugset").description == "a plugin's dataset"
    assert "plugset" in data_registry.dataset_names()


def test_pyproject_declares_every_builtin_family():
    """vaelab's own families go through the same entry point as a user's: each is declared."""
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["vaelab.models"]
    builtin = {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in model_base.MODELS.items()
               if cls.__module__.startswith("vaelab.")}
    assert table == builtin
