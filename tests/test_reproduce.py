"""The reproduction framework: registry, budgets, the run folder and report it writes, errors."""

import json

import numpy as np
import pytest

from vaelab import reproduce
from vaelab.cli import main
from vaelab.sections import TableSection, read_sections


@pytest.fixture
def toy(monkeypatch):
    seen = {}

    def run(ctx):
        seen["ctx"] = ctx
        child = ctx.child("inner")
        child.mkdir()
        return [TableSection(name="table", title="Toy", caption="n scaled by the budget.",
                             header=["n"], rows=[[ctx.scaled(1000)]])]

    rep = reproduce.Reproduction("toy", "A toy", "1000 things", run)
    monkeypatch.setitem(reproduce.REPRODUCTIONS, "toy", rep)
    return seen


def test_reproduce_writes_a_run_folder_and_report(toy, tmp_path, capsys):
    out = tmp_path / "toy"
    argv = ["reproduce", "toy", "--budget", "0.01", "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    assert (out / "report.html").is_file() and (out / "runs" / "inner").is_dir()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["reproduction"] == "toy" and cfg["budget"] == 0.01
    table = {s.name: s for s in read_sections(out)}["table"]
    assert np.asarray(table.rows).ravel().tolist() == [10]  # 1000 * 0.01
    assert toy["ctx"].scaled(1, minimum=3) == 3
    assert main(["reproduce", "--list"]) == 0
    assert "toy" in capsys.readouterr().out


def test_reproduce_errors_are_one_line(toy, tmp_path, capsys):
    assert main(["reproduce", "nonesuch", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown reproduction 'nonesuch'" in err and "toy" in err and "Traceback" not in err
    assert main(["reproduce", "toy", "--budget", "2", "--out", str(tmp_path / "y")]) == 2
    assert "--budget must be a fraction" in capsys.readouterr().err
