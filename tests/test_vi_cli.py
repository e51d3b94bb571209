"""Smoke tests of `vaelab kl`, `vaelab lda` and `vaelab ising`, run in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vaelab.cli import main
from vaelab.vi.lda import LDAModel, sample_corpus

# small sparse products: one intra-op thread avoids OpenMP hand-offs (slow on a shared 2-core box)
pytestmark = pytest.mark.usefixtures("single_thread")


def _run_folder_ok(run):
    for name in ("config.json", "command.txt", "metrics.jsonl", "report.html"):
        assert (run / name).is_file(), name
    json.loads((run / "config.json").read_text())
    page = (run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    # `vaelab report` writes the same page again from the folder alone
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_text() == page


def test_report_of_a_vi_folder_without_its_page_source_is_refused_and_left_alone(tmp_path, capsys):
    run = tmp_path / "kl"
    assert main(["kl", "--out", str(run)]) == 0
    page = (run / "report.html").read_bytes()
    (run / "report.json").unlink()  # as a folder from an earlier version
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "written by `vaelab kl`" in err[-1]
    assert "run that command again" in err[-1]
    assert (run / "report.html").read_bytes() == page
    assert main(["kl", "--out", str(run)]) == 0  # its page source back; then a lost figure
    spec = json.loads((run / "report.json").read_text())
    figures = [f["file"] for sec in spec["sections"] for f in sec["figures"]]
    assert figures == ["figures/example3_fits.png"]  # the saved figure, referenced, not copied
    assert not (run / "figures" / "page").exists()
    (run / figures[0]).unlink()
    assert main(["report", str(run)]) == 2
    assert "cannot rebuild the report" in capsys.readouterr().err
    assert (run / "report.html").read_bytes() == page


def test_kl_command(tmp_path, capsys):
    assert main(["kl", "--out", str(tmp_path / "kl"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "+1.98" in out and "-0.22" in out  # Example 1
    assert "argmin: q2 (= p)" in out  # Example 2
    assert "0.1900" in out  # Example 3: conditional variance 1 - 0.9^2
    _run_folder_ok(tmp_path / "kl")
    assert (tmp_path / "kl" / "figures" / "example3_fits.png").stat().st_size > 1000
    assert main(["kl", "--rho", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "--rho must be strictly between -1 and 1" in capsys.readouterr().err


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
    _run_folder_ok(tmp_path / "is")
    assert main(["ising", "--sizes", "3by3", "--out", str(tmp_path / "bad")]) == 2
    assert "grid sizes look like 3x3,4x4" in capsys.readouterr().err


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
    _run_folder_ok(run)
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

    from vaelab.cli import build_parser, config_file_values

    parser = build_parser()
    presets = sorted(Path("configs/vi").glob("*.toml"))
    assert {p.stem.split("_")[0] for p in presets} == {"kl", "lda", "ising"}
    for p in presets:
        values = config_file_values(str(p), parser.subcommands[p.stem.split("_")[0]])
        assert values and "out" in values, p


def test_config_file_settings_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "is.toml"
    cfg.write_text('sizes = "2x2"\ncouplings = "0,0.5"\nstrip = "2x6"\nfield = 0\n'
                   f'out = "{tmp_path / "from-file"}"\n')
    # the file's settings, with --couplings from the command line winning
    assert main(["ising", "--config", str(cfg), "--couplings", "0.25"]) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("2x2")]
    assert [float(r[1]) for r in rows] == [0.25]
    command = (tmp_path / "from-file" / "command.txt").read_text()
    assert "--sizes 2x2" in command and "--couplings 0.25" in command and "--config" not in command
    assert json.loads((tmp_path / "from-file" / "config.json").read_text())["field"] == 0.0
    capsys.readouterr()
    assert main(["kl", "--config", str(tmp_path / "none.toml")]) == 2
    assert "not found; pass a TOML file such as configs/vi/kl.toml" in capsys.readouterr().err
    assert main(["ising", "--config", str(tmp_path)]) == 2
    assert "is a folder; pass a TOML file such as configs/vi/ising.toml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text,message",
    [
        ("topcs = 5\n", "unknown setting 'topcs' for `vaelab lda`; known settings: alpha, batch-size"),
        ('topics = "many"\n', "topics must be an integer, got 'many'"),
        ("topics = 2.5\n", "topics must be an integer, got 2.5"),
        ('mode = "sideways"\n', "mode must be one of batch, online, got 'sideways'"),
        ('fixed-alpha = "yes"\n', "fixed-alpha must be true or false"),
        ("[lda]\ntopics = 5\n", "unknown setting 'lda'"),
        ("topics = \n", "not valid TOML"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('corpus = "ap"\n' + text if not text.startswith("[") else text)
    assert main(["lda", "--config", str(cfg), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "x").exists()
