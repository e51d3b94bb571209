import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_configure(config):
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def data_root() -> Path:
    """The real datasets. In CI VAELAB_DATA is set, and a missing file must fail, not skip."""
    root = os.environ.get("VAELAB_DATA")
    if not root:
        pytest.skip("VAELAB_DATA is not set (CI sets it to ../shared/data)")
    return Path(root)


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread, restoring the previous count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
