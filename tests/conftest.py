import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real datasets. In CI VAELAB_DATA is set, and a missing file must fail, not skip."""
    env = os.environ.get("VAELAB_DATA")
    if not env:
        pytest.skip("VAELAB_DATA is not set: the real-data tests need it (CI sets it to ../shared/data)")
    path = Path(env)
    assert path.is_dir(), f"VAELAB_DATA={env} is not a folder"
    return path


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread, restoring the previous count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
