"""Smoke tests of `vaelab kl`, `vaelab lda` and `vaelab ising`, run in-process."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vaelab.cli import main
from vaelab.sections import read_sections
from vaelab.vi.lda import LDAModel, sample_corpus

# small sparse products: one intra-op thread avoids OpenMP hand-offs (slow on a shared 2-core box)
pytestmark = pytest.mark.usefixtures("single_thread")


def _headings(page: str) -> list[str]:
    return re.findall(r"<h2[^>]*>(.*?)</h2>", page)


def _run_folder_ok(run, kinds):
    """The shared files, the report's sections as data (of these kinds), and a page drawn from them."""
    for name in ("config.json", "command.txt", "metrics.jsonl", "run.json", "sections.json", "report.html"):
        assert (run / name).is_file(), name
    json.loads((run / "config.json").read_text())
    assert [s.kind for s in read_sections(run)] == kinds
    assert not (run / "report.json").exists() and not (run / "figures").exists()  # figures are data
    page = (run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "Could not" not in page
    # a command's own sections, no training summary, curves or evaluation note of a model's run
    assert not {"Summary", "Training curves", "Evaluation"} & set(_headings(page))
    # `vaelab report` draws the same page again from the folder alone
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    again = (run / "report.html").read_text()
    assert _headings(again) == _headings(page) and again.count("<img") == page.count("<img")


def test_vi_report_is_drawn_from_its_sections_and_survives_a_lost_one(tmp_path, capsys):
    run = tmp_path / "kl"
    assert main(["kl", "--out", str(run)]) == 0
    manifest = json.loads((run / "sections.json").read_text())
    assert [e["name"] for e in manifest["sections"]] == ["example1", "example2", "example3", "example3_fits"]
    (run / manifest["sections"][-1]["arrays"]).unlink()
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Could not read section" in page and "example3_fits" in page
    assert "Example 2: argmin over candidates" in page and "data:image/png" not in page


def test_report_of_a_vi_folder_from_before_sections_is_refused_and_left_alone(tmp_path, capsys):
    run = tmp_path / "old"  # as `vaelab kl` wrote it before folders had run.json and sections
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "kl", "rho": 0.9, "scales": [1, 1], "seed": 0}))
    (run / "command.txt").write_text("vaelab kl --out old\n")
    (run / "report.html").write_text("<!DOCTYPE html><p>old page</p>")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "written by `vaelab kl`" in err[0] and "run that command again" in err[0]
    assert (run / "report.html").read_text() == "<!DOCTYPE html><p>old page</p>"


def test_kl_command(tmp_path, capsys):
    assert main(["kl", "--out", str(tmp_path / "kl"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "+1.98" in out and "-0.22" in out  # Example 1
    assert "argmin: q2 (= p)" in out  # Example 2
    assert "0.1900" in out  # Example 3: conditional variance 1 - 0.9^2
    _run_folder_ok(tmp_path / "kl", ["table", "table", "table", "curves"])
    assert main(["kl", "--rho", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "error: rho must be strictly between -1 and 1, got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_ising_command(tmp_path, capsys):
    args = ["ising", "--sizes", "3x3,2x4", "--couplings", "0,0.5", "--strip", "2x12", "--seed", "0"]
    assert main([*args, "--out", str(tmp_path / "is")]) == 0
    out = capsys.readouterr().out
    lines = [ln.split() for ln in out.splitlines() if ln.startswith(("3x3", "2x4"))]
    assert len(lines) == 4
    for row in lines:
        log_z, bound, gap = float(row[2]), float(row[3]), float(row[4])
        assert bound <= log_z + 1e-9 and gap == pytest.approx(log_z - bound, abs=2e-4)
    assert float(lines[0][4]) == 0.0  # J = 0: the bound is exact
    _run_folder_ok(tmp_path / "is", ["table", "curves", "lines"])
    assert main(["ising", "--sizes", "3x3,3by3", "--out", str(tmp_path / "bad")]) == 2
    assert "error: sizes[1]: grid sizes look like 3x3 or 4x40" in capsys.readouterr().err


def _write_text_corpus(path, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{a}{b}" for a in "abc" for b in "pqrstuvwxy"]  # 3 planted topics of 10 words
    beta = np.full((3, 30), 0.002)
    for k in range(3):
        beta[k, 10 * k : 10 * (k + 1)] = 1.0
    beta /= beta.sum(1, keepdims=True)
    counts, _ = sample_corpus(beta, 0.2, 60, (20, 40), rng)
    lines = []
    for row in counts:
        toks = np.repeat(np.array(words)[row.indices], row.data)
        rng.shuffle(toks)
        lines.append(" ".join(toks))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("mode", ["batch", "online"])
def test_lda_command_on_a_text_file(tmp_path, capsys, mode):
    corpus = tmp_path / "docs.txt"
    _write_text_corpus(corpus)
    run = tmp_path / f"lda-{mode}"
    args = ["lda", str(corpus), "--topics", "3", "--mode", mode, "--passes", "4", "--batch-size", "20"]
    assert main([*args, "--seed", "0", "--quiet", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "topics (alpha_k, top words):" in out
    assert "held-out document completion" in out and "unigram on the same tokens" in out
    _run_folder_ok(run, ["table", "table", "lines", "heatmap"])
    model = LDAModel.load(run / "model")
    assert model.n_topics == 3 and len(model.vocab) == 30
    results = json.loads((run / "results.json").read_text())
    assert results["completion_perplexity"] < results["unigram_perplexity"]
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["pass"] for h in history[:-1]] == [1, 2, 3, 4]


def test_lda_command_errors(tmp_path, capsys, monkeypatch):
    assert main(["lda", str(tmp_path / "missing.dat"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path))
    assert main(["lda", "ap", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: AP corpus file not found") and err.count("\n") == 1


@pytest.mark.datasets("ap")
def test_lda_command_on_an_ap_subset(tmp_path, capsys):
    run = tmp_path / "ap"
    args = ["lda", "ap", "--topics", "5", "--passes", "2", "--max-docs", "300", "--quiet", "--out", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "corpus ap: 300 documents, 10473 terms" in out
    assert LDAModel.load(run / "model").lam.shape == (5, 10473)


def test_lda_command_same_seed_same_numbers(tmp_path, capsys):
    corpus = tmp_path / "docs.txt"
    _write_text_corpus(corpus, seed=1)
    results = []
    for name in ("a", "b"):
        args = ["lda", str(corpus), "--topics", "3", "--passes", "3", "--seed", "5", "--quiet"]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        res = json.loads((tmp_path / name / "results.json").read_text())
        results.append({k: v for k, v in res.items() if k not in ("seconds", "docs_per_second")})
    capsys.readouterr()
    assert results[0] == results[1]
    a, b = (LDAModel.load(tmp_path / n / "model") for n in ("a", "b"))
    np.testing.assert_array_equal(a.lam, b.lam)


def test_vi_presets_are_valid_settings_of_their_command():
    from pathlib import Path

    from vaelab.config import read_toml, settings_from_dict
    from vaelab.vi_runs import EXPERIMENTS

    presets = sorted(Path("configs/vi").glob("*.toml"))
    assert {p.stem.split("_")[0] for p in presets} == set(EXPERIMENTS)
    for p in presets:
        exp = EXPERIMENTS[p.stem.split("_")[0]]
        assert isinstance(settings_from_dict(exp.settings, read_toml(p)), exp.settings), p
        assert Path(exp.preset).is_file()


def test_lda_defaults_are_the_benchmarked_settings():
    """BENCHMARKS.md: online VB with minibatches of 128 and tau0 = 10, 10 passes; batch EM 20 passes."""
    from vaelab.config import settings_from_dict
    from vaelab.vi.lda import BatchLDA, OnlineLDA
    from vaelab.vi_runs import LDASettings

    online = settings_from_dict(LDASettings, {}, [("train.mode", "online")]).fitter()
    assert isinstance(online, OnlineLDA)
    assert (online.config.batch_size, online.config.tau0, online.config.kappa) == (128, 10.0, 0.7)
    assert online.config.passes == 10 and online.config.dtype == "float32" and online.config.n_threads == 1
    batch = settings_from_dict(LDASettings, {}).fitter()
    assert isinstance(batch, BatchLDA) and batch.config.passes == 20


def _settings(run):
    return json.loads((run / "config.json").read_text())


def test_set_overrides_reach_config_json_and_change_the_result(tmp_path, capsys):
    # kl: Example 3's conditional variance is 1 - rho^2
    assert main(["kl", "--set", "rho=0.5", "--out", str(tmp_path / "kl")]) == 0
    assert "0.7500" in capsys.readouterr().out
    assert _settings(tmp_path / "kl") == {"rho": 0.5, "scales": [1.0, 1.0], "seed": 0, "name": "kl"}
    # ising: the table has the couplings and grids set, the field shifts log Z at J = 0 (N log(2 cosh h))
    args = ["ising", "--set", 'sizes=["2x2"]', "--set", "couplings=[0.0]", "--set", "field=0.5",
            "--set", 'strip=""', "--out", str(tmp_path / "is")]
    assert main(args) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("2x2")]
    assert len(rows) == 1 and float(rows[0][2]) == pytest.approx(4 * np.log(2 * np.cosh(0.5)), abs=1e-4)
    cfg = _settings(tmp_path / "is")
    assert (cfg["sizes"], cfg["couplings"], cfg["field"], cfg["strip"]) == (["2x2"], [0.0], 0.5, "")


def test_lda_set_and_shorthands_are_the_same_settings(tmp_path, capsys):
    corpus = tmp_path / "docs.txt"
    _write_text_corpus(corpus)
    base = ["lda", str(corpus), "--quiet"]
    assert main([*base, "--topics", "3", "--passes", "2", "--out", str(tmp_path / "a")]) == 0
    sets = ["--set", "model.topics=3", "--set", "train.passes=2"]
    assert main([*base, *sets, "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a, b = _settings(tmp_path / "a"), _settings(tmp_path / "b")
    assert a == b and a["model"]["topics"] == 3 and a["train"]["passes"] == 2
    assert a["data"]["name"] == str(corpus) and a["train"]["batch_size"] == 128  # the full typed config
    assert LDAModel.load(tmp_path / "a" / "model").n_topics == 3
    # later wins, in command-line order; the override changes the fit
    args = [*base, "--topics", "3", "--set", "model.topics=4", "--passes", "2", "--out", str(tmp_path / "c")]
    assert main(args) == 0
    assert LDAModel.load(tmp_path / "c" / "model").n_topics == 4
    assert (tmp_path / "c" / "command.txt").read_text().startswith("vaelab lda ")
    assert "--set model.topics=4" in (tmp_path / "c" / "command.txt").read_text()


def test_config_file_and_a_runs_config_json(tmp_path, capsys):
    cfg = tmp_path / "is.toml"
    cfg.write_text('sizes = ["2x2"]\ncouplings = [0.0, 0.5]\nstrip = "2x6"\nfield = 0\n')
    # the file's settings, with --couplings from the command line winning
    assert main(["ising", "--config", str(cfg), "--couplings", "0.25", "--out", str(tmp_path / "a")]) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if ln.startswith("2x2")]
    assert [float(r[1]) for r in rows] == [0.25]
    saved = _settings(tmp_path / "a")
    assert saved["couplings"] == [0.25] and saved["strip"] == "2x6" and saved["field"] == 0.0
    # a run's config.json repeats it
    assert main(["ising", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")]) == 0
    assert _settings(tmp_path / "b") == saved
    capsys.readouterr()
    assert main(["kl", "--config", str(tmp_path / "none.toml")]) == 2
    assert "not found; pass a TOML file such as configs/vi/kl.toml" in capsys.readouterr().err
    assert main(["ising", "--config", str(tmp_path)]) == 2
    assert "is a folder; pass a TOML file such as configs/vi/ising.toml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command,extra,message",
    [
        ("lda", ["--set", "model.topcs=5"], "unknown config key model.topcs; known keys in [model]: alpha,"),
        ("lda", ["--set", "topics=5"], "unknown config key topics; known keys at the top level: data, eval"),
        ("lda", ["--set", 'model.topics="many"'], "model.topics must be an integer, got 'many'"),
        ("lda", ["--topics", "2.5"], "model.topics must be an integer, got 2.5"),
        ("lda", ["--mode", "sideways"], "train.mode must be one of 'batch', 'online'; got 'sideways'"),
        ("lda", ["--set", "train.kappa=0.3"], "train.kappa must be in (0.5, 1]"),
        ("lda", ["--set", "train=3"], "train must be a table of settings"),
        ("lda", ["--set", "train.tau0"], "--set needs key=value"),
        ("ising", ["--set", "fild=1"], "unknown config key fild; known keys at the top level: couplings,"),
        ("ising", ["--set", "couplings=0.5"], "couplings must be a list, got 0.5"),
        ("ising", ["--set", "sizes=[3]"], "sizes[0] must be a string, got 3"),
        ("ising", ["--sizes", "20x20"], "20x20 is too large for exact log Z"),
        ("kl", ["--set", "scales=[1, -1]"], "scales must be two positive numbers"),
        ("kl", ["--set", "rho=high"], "rho must be a number, got 'high'"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, command, extra, message):
    assert main([command, *extra, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "text,message",
    [
        ("[model]\ntopcs = 5\n", "unknown config key model.topcs; known keys in [model]"),
        ('[model]\ntopics = "many"\n', "model.topics must be an integer, got 'many'"),
        ('[train]\nmode = "sideways"\n', "train.mode must be one of 'batch', 'online'"),
        ('[model]\nestimate_alpha = "yes"\n', "model.estimate_alpha must be true or false"),
        ("topics = 5\n", "unknown config key topics"),
        ("[model]\ntopics = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["lda", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()
