import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")
    config.addinivalue_line(
        "markers", "datasets(*names): needs the files of these registered datasets (see data_root)"
    )


def _vaelab_data() -> str:
    return os.environ.get("VAELAB_DATA", "").strip()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture: a test marked ``datasets(NAME, ...)`` runs only when those files are there.

    With VAELAB_DATA set (CI sets it) a missing file fails the test; without it (a fresh clone, no data
    folder) the test is skipped with one line naming the command that fetches the data. A test that
    asks for ``data_root`` without saying which datasets it reads fails, so no test skips silently."""
    marker = item.get_closest_marker("datasets")
    if marker is None:
        if "data_root" in getattr(item, "fixturenames", ()):
            pytest.fail("a test using data_root must name the datasets it reads: @pytest.mark.datasets(NAME)")
        return
    from vaelab.data import file_status, get_dataset

    root = _root()
    for name in marker.args:
        ds = get_dataset(name)
        status = [file_status(ds, f, root, verify=False) for f in ds.files]
        missing = [st.path for st in status if st.state == "missing"]
        if not missing:
            continue
        fix = f"run `vaelab data download {name}`"
        if _vaelab_data():
            pytest.fail(f"VAELAB_DATA is set but {missing[0]} is missing; {fix} or correct VAELAB_DATA",
                        pytrace=False)
        pytest.skip(f"needs the {name} data, not in {root}: {fix} (or set VAELAB_DATA)")


def _root() -> Path:
    from vaelab.data import data_root

    return data_root()


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data root the loaders read (``$VAELAB_DATA``, else the user cache). Tests that use it are
    marked ``@pytest.mark.datasets(NAME, ...)``: see ``pytest_runtest_setup`` for missing files."""
    env = _vaelab_data()
    if env:
        assert Path(env).is_dir(), f"VAELAB_DATA={env} is not a folder"
    return _root()


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread, restoring the previous count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_thread_per_module():
    """One intra-op thread for a whole module (its module-scoped fixtures included), restoring the
    previous count afterwards: for modules of tiny models, where more threads only add contention.
    Used as ``pytestmark = pytest.mark.usefixtures("one_thread_per_module")``."""
    from vaelab.threads import torch_threads

    with torch_threads(1):
        yield


def load_benchmark(name: str):
    """The module of benchmarks/NAME.py (scripts, not a package), imported from its file."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark_script():
    """``benchmark_script(name)``: the module of benchmarks/NAME.py."""
    return load_benchmark
