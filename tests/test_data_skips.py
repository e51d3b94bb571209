"""The rule of tests/conftest.py for tests that read data files, run on a small test file of its own:
no VAELAB_DATA and no files -> skipped, naming `vaelab data download NAME`; VAELAB_DATA set and a file
missing -> an error; a test that reads the data root without naming its datasets -> an error."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text(encoding="utf-8")
TESTS = """
import pytest

@pytest.mark.datasets("frey")
def test_marked(data_root):
    assert (data_root / "freyface" / "frey_rawface.mat").is_file()

def test_unmarked(data_root):
    pass
"""


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # an empty user cache
    return pytester


def test_without_vaelab_data_a_missing_dataset_skips_with_the_download_command(inner, monkeypatch):
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    result = inner.runpytest_inprocess("-rs")
    result.assert_outcomes(skipped=1, errors=1)
    result.stdout.fnmatch_lines(["*needs the frey data, not in *: run `vaelab data download frey` (or set*"])
    result.stdout.fnmatch_lines(["*must name the datasets it reads: @pytest.mark.datasets(NAME)*"])


def test_with_vaelab_data_set_a_missing_file_fails(inner, monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "data"))
    result = inner.runpytest_inprocess()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*VAELAB_DATA is set but *frey_rawface.mat is missing; run `vaelab data download frey`*"]
    )


def test_present_files_run_the_test(inner, monkeypatch, tmp_path):
    (tmp_path / "data" / "freyface").mkdir(parents=True)
    (tmp_path / "data" / "freyface" / "frey_rawface.mat").write_bytes(b"")  # only presence is checked here
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "data"))
    inner.runpytest_inprocess("-k", "marked and not unmarked").assert_outcomes(passed=1)
