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


@pytest.fixture
def parted(monkeypatch):
    """A reproduction of two children, a and b, each finished by writing its ``done`` file."""

    def run(ctx):
        for name in ("a", "b"):
            child = ctx.child(name)
            if (child / "done").is_file():
                continue
            if not ctx.selected(name):
                ctx.skip(name)
                continue
            child.mkdir(exist_ok=True)
            (child / "done").write_text("finished")
        if ctx.missing:
            return []
        return [TableSection(name="table", title="Parts", caption="both children.", header=["n"], rows=[[2]])]

    rep = reproduce.Reproduction("parted", "Two parts", "two children", run, parts=lambda ctx: ["a", "b"])
    monkeypatch.setitem(reproduce.REPRODUCTIONS, "parted", rep)


def test_parts_train_in_separate_calls_and_the_last_draws_the_figure(parted, toy, tmp_path, capsys):
    out = tmp_path / "p"
    base = ["reproduce", "parted", "--budget", "0.5", "--out", str(out), "--quiet"]
    assert main(base + ["--list-parts"]) == 0
    assert capsys.readouterr().out.split() == ["a", "b"]
    assert main(base + ["--part", "a"]) == 0
    said = capsys.readouterr().out
    assert "trained: a" in said and "still to train (b)" in said
    assert (out / "runs" / "a" / "done").is_file() and not (out / "runs" / "b").exists()
    assert not (out / "report.html").exists()
    assert main(base + ["--part", "b"]) == 0
    assert (out / "report.html").is_file() and "report:" in capsys.readouterr().out
    # mistakes are one line each
    assert main(base + ["--part", "c"]) == 2
    assert "unknown part 'c' of parted; its parts: a, b" in capsys.readouterr().err
    assert main(["reproduce", "toy", "--out", str(tmp_path / "t"), "--part", "a"]) == 2
    assert "has no parts; run it without --part" in capsys.readouterr().err
    # one folder, one budget: children of two budgets would mix
    assert main(["reproduce", "parted", "--budget", "0.25", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds parted at budget 0.5" in err and "pass another --out" in err and "Traceback" not in err
