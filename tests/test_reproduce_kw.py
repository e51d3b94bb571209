"""Kingma & Welling (2014) reproductions end to end at the smallest budgets (real MNIST and Frey Face).

The full budgets and their results are in REPRODUCTIONS.md; here each command must train its children
through the pipeline, resume or reuse them when run again, and write the figure's sections."""

import json

import numpy as np
import pytest

from vaelab.cli import main
from vaelab.reproduce.fig3 import AIS_SETTINGS, curve_points, verdict
from vaelab.sections import read_sections


def _sections(out):
    return {s.name: s for s in read_sections(out)}


@pytest.mark.datasets("mnist", "frey")
def test_fig4_manifolds_and_fig5_samples(tmp_path, data_root):
    out = tmp_path / "fig4"
    assert main(["reproduce", "kingma2014-fig4", "--budget", "2e-5", "--out", str(out), "--quiet"]) == 0
    s = _sections(out)
    assert s["manifold-mnist"].images.shape == (20, 20, 1, 28, 28)
    assert s["manifold-frey"].images.shape == (20, 20, 1, 28, 20)
    assert [r[0] for r in s["fig4-numbers"].rows] == ["MNIST", "Frey Face"]
    child = out / "runs" / "fig4-mnist"
    cfg = json.loads((child / "config.json").read_text())
    assert cfg["train"]["optimizer"] == "adagrad" and cfg["model"]["init_std"] == 0.1
    assert cfg["train"]["weight_decay"] == pytest.approx(1 / 54_000)
    before = (child / "eval.json").stat().st_mtime_ns
    assert main(["reproduce", "kingma2014-fig4", "--budget", "2e-5", "--out", str(out), "--quiet"]) == 0
    assert (child / "eval.json").stat().st_mtime_ns == before  # a finished child is reused, not retrained

    out = tmp_path / "fig5"
    cmd = ["reproduce", "kingma2014-fig5", "--budget", "1e-5", "--out", str(out), "--quiet"]
    assert main(cmd + ["--part", "fig5-z20", "--part", "fig5-z2"]) == 0  # two of the four, no figure yet
    assert {p.name for p in (out / "runs").iterdir()} == {"fig5-z2", "fig5-z20"}
    assert not (out / "report.html").exists()
    assert main(cmd + ["--part", "fig5-z5", "--part", "fig5-z10"]) == 0  # the last two: drawn
    s = _sections(out)
    for d in (2, 5, 10, 20):
        assert s[f"samples-z{d}"].images.shape == (100, 1, 28, 28)
    assert [r[0] for r in s["fig5-numbers"].rows] == [2, 5, 10, 20]


@pytest.mark.datasets("mnist", "frey")
def test_fig2_bound_curves_for_aevb_and_wake_sleep(tmp_path, data_root):
    out = tmp_path / "fig2"
    cmd = ["reproduce", "kingma2014-fig2", "--budget", "2e-5", "--out", str(out), "--quiet"]
    assert main(cmd + ["--part", "fig2-frey-z2-wake_sleep"]) == 0
    assert [p.name for p in (out / "runs").iterdir()] == ["fig2-frey-z2-wake_sleep"]
    assert main(cmd) == 0
    s = _sections(out)
    assert list(s)[:4] == ["fig2-mnist-z3", "fig2-mnist-z5", "fig2-frey-z2", "fig2-frey-z5"]
    curves = s["fig2-mnist-z3"]
    assert any(lab.startswith("AEVB") for lab in curves.labels)
    assert any(lab.startswith("wake-sleep") for lab in curves.labels)
    assert curves.logx and np.isfinite(curves.y[~np.isnan(curves.y)]).all()
    methods = {r[2] for r in s["fig2-numbers"].rows}
    assert methods == {"AEVB", "wake-sleep"}


def test_curve_points_are_half_decades_ending_at_the_budget():
    assert curve_points(1_000_000) == [316, 1000, 3162, 10000, 31623, 100000, 316228, 1000000]
    # the MCEM curve (10x fewer steps) shares its points with the others where they overlap
    assert set(curve_points(100_000)) <= set(curve_points(1_000_000)) | {32, 100, 316}
    assert curve_points(3) == [1, 3]


def test_verdict_compares_at_the_same_number_of_samples():
    def row(samples, v, se=0.1):
        return {"samples": samples, "train": v, "test": v, "train_stderr": se, "test_stderr": se}

    curves = {(50_000, "AEVB"): [row(1e6, -130), row(1e7, -120)],
              (50_000, "MCEM"): [row(1e6, -125), row(1e7, -125)],
              (50_000, "wake-sleep"): [row(1e7, -119.9)]}
    lines = verdict(curves)
    assert any("MCEM = +5.00" in line and "ahead by more than 2 s.e." in line for line in lines)
    assert any("wake-sleep = -0.10" in line and "not ahead" in line for line in lines)


@pytest.mark.datasets("mnist")
def test_fig3_marginal_likelihood_curves(tmp_path, data_root):
    out = tmp_path / "fig3"
    cmd = ["reproduce", "kingma2014-fig3", "--budget", "1e-5", "--out", str(out), "--quiet"]
    # one child first (--part), then the rest: the first is reused, not trained or measured again
    assert main(cmd + ["--part", "fig3-n1000-vae"]) == 0
    assert not (out / "report.html").exists()
    first = (out / "runs" / "fig3-n1000-vae" / "ais.jsonl").read_text()
    assert not (out / "runs" / "fig3-n50000-vae" / "done").exists()
    assert main(cmd) == 0
    assert (out / "runs" / "fig3-n1000-vae" / "ais.jsonl").read_text() == first
    s = _sections(out)
    table = s["fig3-table"].rows
    assert {r[1] for r in table} == {"AEVB", "wake-sleep", "MCEM"}
    assert {r[0] for r in table} == {"1,000", "50,000"}
    lines = (out / "runs" / "fig3-n1000-vae" / "ais.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == curve_points(10)  # 10^8 samples x 1e-5 / M = 10 steps
    assert all(np.isfinite(r["test"]) and r["test"] < 0 for r in rows)
    assert AIS_SETTINGS["n_steps"] >= 100
