"""The lecture's reproductions (vaelab.reproduce.lecture) and the ring dataset they stand on.

The ring is x = g(z) = z/10 + z/||z||, z ~ N(0, I_2): the angle of x is uniform and 10 (||x|| - 1) is
the radius of a 2-D standard normal, a Rayleigh variable (CDF 1 - exp(-r^2/2)). Each split is a fixed
draw, so the statistical checks below are deterministic; their thresholds are what an honest draw
passes with probability 1 - 1e-3 or more (KS p-values above 1e-3, means within 4 standard errors).
"""

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from vaelab.cli import main
from vaelab.config import DataConfig
from vaelab.data import load_dataset
from vaelab.data.ring import RING_SIZES, ring_log_prob, ring_map, ring_radius_moments
from vaelab.errors import VaelabError
from vaelab.sections import ImageFileSection, LinesSection, MetricsSection, TableSection, read_sections

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def ring():
    return load_dataset(DataConfig(name="ring", binarize="none"))


def test_ring_splits_are_fixed_draws_of_the_documented_sizes(ring):
    sizes = {s: len(ring.split(s)[0]) for s in ("train", "valid", "test")}
    assert sizes == RING_SIZES
    assert ring.spec.shape == (1, 1, 2) and ring.spec.values == "continuous" and ring.spec.n_classes == 8
    again = load_dataset(DataConfig(name="ring", binarize="none", split_seed=7))  # split_seed moves nothing
    for s in ("train", "valid", "test"):
        assert np.array_equal(ring.split(s)[0].numpy(), again.split(s)[0].numpy())
    train, test = ring.train.flatten(1).numpy(), ring.test.flatten(1).numpy()
    assert not {tuple(p) for p in test} & {tuple(p) for p in train}  # no point in both: separate draws
    assert len(load_dataset(DataConfig(name="ring", binarize="none", limit=50)).train) == 50


def test_ring_is_g_of_a_standard_normal(ring):
    x = ring.train.flatten(1).double().numpy()
    rho = np.linalg.norm(x, axis=1)
    assert rho.min() > 1.0  # g sends every z outside the unit circle
    # 10 (||x|| - 1) is Rayleigh and the angle uniform: Kolmogorov-Smirnov against both laws
    assert stats.kstest(10 * (rho - 1), lambda r: 1 - np.exp(-r**2 / 2)).pvalue > 1e-3
    assert stats.kstest(np.arctan2(x[:, 1], x[:, 0]), stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3
    mean, sd = ring_radius_moments()
    assert abs(rho.mean() - mean) < 4 * sd / math.sqrt(len(rho))
    assert abs(rho.std() / sd - 1) < 4 * math.sqrt(0.5 / len(rho)) * 1.5  # sd's s.e. (1.5: not normal)
    # a wrong map (the radius pushed out by z/5 instead of z/10) fails the mean by 60 standard errors
    wrong = np.linalg.norm(ring_map(np.random.default_rng(0).standard_normal((10_000, 2)) * 2), axis=1)
    assert abs(wrong.mean() - mean) > 60 * sd / math.sqrt(len(rho))
    labels = ring.train_labels.numpy()  # octants of the angle
    angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * math.pi)
    assert np.array_equal(labels, np.floor(angle / (math.pi / 4)).astype(int))


def test_ring_log_prob_is_a_normalised_density_of_the_data():
    # the change-of-variables density integrates to 1 (midpoint rule on a 0.002 grid; the density
    # vanishes beyond radius 1.6, where r = 6 and exp(-18) ~ 1e-8)
    h = 0.002
    grid = np.arange(-1.6 + h / 2, 1.6, h)
    xx, yy = np.meshgrid(grid, grid)
    mass = np.exp(ring_log_prob(np.stack([xx, yy], -1))).sum() * h * h
    assert abs(mass - 1) < 2e-3
    # and it is the density of the data: E log p = -entropy; the entropy of the ring is that of
    # N(0, I) (log 2 pi e) plus E log |det dg/dz| = E log((1/10)(1 + r/10) / r)
    rng = np.random.default_rng(1)
    z = rng.standard_normal((200_000, 2))
    r = np.linalg.norm(z, axis=1)
    entropy = math.log(2 * math.pi * math.e) + np.mean(np.log(0.1 * (1 + r / 10) / r))
    assert abs(np.mean(ring_log_prob(ring_map(z))) + entropy) < 1e-2
    assert ring_log_prob(np.array([[0.5, 0.0]]))[0] == -np.inf


def test_ring_refuses_binarization():
    with pytest.raises(VaelabError, match="data.binarize = none"):
        load_dataset(DataConfig(name="ring"))


def test_vaelab_train_takes_the_ring(tmp_path):
    out = tmp_path / "run"
    argv = ["train", str(CONFIGS / "smoke_vae_frey.toml"), "--out", str(out), "--device", "cpu", "--quiet",
            "--set", "data.name=ring", "--set", "data.limit=200", "--set", "train.epochs=1",
            "--set", "model.latent_dim=2", "--set", "eval.is_samples=5", "--set", "eval.max_examples=50",
            "--set", "train.threads=1"]
    assert main(argv) == 0
    assert (out / "report.html").is_file()


def test_vae_ring_runs_end_to_end(tmp_path):
    out = tmp_path / "ring"
    argv = ["reproduce", "vae-ring", "--budget", "0.001", "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    sections = {s.name: s for s in read_sections(out)}
    assert isinstance(sections["ring"], ImageFileSection) and sections["ring"].image.startswith(b"\x89PNG")
    table = sections["ring_radius"]
    assert isinstance(table, TableSection)
    rows = {r[0]: r for r in table.rows}
    mean, sd = ring_radius_moments()
    data = rows["data (test split)"]
    assert data[1] == 1000 and abs(data[2] - mean) < 4 * sd / math.sqrt(1000) and data[4] > 0.97
    for name in ("VAE samples x ~ p(x|z)", "VAE decoder means E[x|z]"):
        assert rows[name][1] == 1000 and 0 < rows[name][2] < 5 and 0 <= rows[name][4] <= 1
    like = sections["ring_likelihood"]
    assert isinstance(like, MetricsSection)
    # the test points' true mean log-density (about -0.59 nats); a one-epoch VAE is below it
    assert -0.75 < like.values["true_log_px"] < -0.45 and like.values["log_px"] < like.values["true_log_px"]
    assert (out / "runs" / "vae-ring" / "report.html").is_file()


@pytest.mark.datasets("mnist")
def test_vae_gradient_variance_runs_end_to_end(tmp_path, data_root):
    out = tmp_path / "grad"
    argv = ["reproduce", "vae-gradient-variance", "--budget", "0.01", "--out", str(out), "--device", "cpu",
            "--quiet"]
    assert main(argv) == 0
    sections = {s.name: s for s in read_sections(out)}
    plot = sections["gradient_variance_plot"]
    assert isinstance(plot, LinesSection) and plot.logx and plot.logy and plot.y.shape == (4, 7)
    rows = sections["gradient_variance"].rows
    var = {}
    for estimator, s, v, _, _ in rows:
        var.setdefault(estimator, {})[s] = v
    path, score, loo = (var[k] for k in sorted(var, key=lambda k: ("pathwise" not in k, "leave" in k)))
    assert loo[1] == "—" and set(path) == {1, 2, 5, 10, 20, 50, 100}
    # the pathwise estimator's variance falls as 1/S: over a hundredfold in S it falls by 100, which
    # R = 10 repetitions measure to within a factor of 3 either way
    assert 30 < path[1] / path[100] < 300
    # the ordering the lecture is about, by orders of magnitude on a trained VAE
    for s in (2, 10, 100):
        assert 10 * path[s] < loo[s] and 10 * loo[s] < score[s]
