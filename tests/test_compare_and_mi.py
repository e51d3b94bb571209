"""Mutual information under the aggregate posterior, nested IS estimates, per-example evaluation
files and the paired comparison of two runs (``vaelab compare``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.config import config_from_dict
from vaelab.errors import VaelabError
from vaelab.evaluation import mutual_information
from vaelab.evaluation.likelihood import streaming_log_likelihood
from vaelab.evaluation.paired import PerExample, paired_difference, read_per_example
from vaelab.experiment import evaluate_run, train_run

CPU = torch.device("cpu")
DT = torch.float64


# ----------------------------------------------------------------------------- mutual information
@pytest.mark.parametrize("d, a, s", [(1, 1.0, 1.0), (2, 1.0, 0.5), (3, 2.0, 1.0)])
def test_mutual_information_of_a_gaussian_channel_matches_its_closed_form(d, a, s):
    """Means mu_n ~ N(0, a^2 I) and posteriors N(mu_n, s^2 I): the aggregate posterior is close to
    N(0, (a^2 + s^2) I), so I = d/2 log(1 + a^2/s^2). With N = 4000 examples (seed 0) the estimate
    is within 0.05 nats (its Monte Carlo s.e. is about sqrt(d / 2N) < 0.02; the finite mixture adds
    a small bias)."""
    torch.manual_seed(0)
    n = 4000
    loc = torch.randn(n, d, dtype=DT) * a
    logvar = torch.full((n, d), 2 * math.log(s), dtype=DT)
    got = mutual_information(loc, logvar, generator=torch.Generator().manual_seed(1), chunk=333)
    assert got == pytest.approx(0.5 * d * math.log(1 + a * a / (s * s)), abs=0.05)


def test_mutual_information_is_zero_for_identical_posteriors_and_log_n_for_separate_ones():
    n = 3000
    gen = torch.Generator().manual_seed(2)
    same = mutual_information(torch.zeros(n, 2, dtype=DT), torch.zeros(n, 2, dtype=DT), generator=gen)
    assert abs(same) < 4 * math.sqrt(2 / 2 / n)  # 4 Monte Carlo s.e. of the log-density's mean
    far = torch.arange(n, dtype=DT)[:, None] * 50.0  # posteriors 50 s.d. apart: no overlap
    # I = log N + (closed-form E log q(z|x) - its one-sample Monte Carlo mean): s.e. sqrt(1/2N)
    got = mutual_information(far, torch.zeros(n, 1, dtype=DT), generator=gen)
    assert got == pytest.approx(math.log(n), abs=4 * math.sqrt(0.5 / n))


# ------------------------------------------------------------------------------------- nested IS
def test_nested_estimates_are_the_log_mean_exp_of_the_first_k_weights():
    torch.manual_seed(5)
    lw = torch.randn(200, 4, dtype=DT) * 3
    pos = [0]

    def fixed_weights(x, s):  # the same 200 log-weights, s at a time
        out = lw[pos[0]: pos[0] + s]
        pos[0] += s
        return out

    x = torch.zeros(4, 1)
    for chunk in (200, 30, 7):
        pos[0] = 0
        lp, _, at = streaming_log_likelihood(fixed_weights, x, 200, chunk, (50, 100))
        assert set(at) == {50, 100}
        for m in (50, 100):
            assert torch.allclose(at[m], torch.logsumexp(lw[:m], 0) - math.log(m), atol=1e-10)
        assert torch.allclose(lp, torch.logsumexp(lw, 0) - math.log(200), atol=1e-10)


# ------------------------------------------------------------------------------------ paired diff
def test_paired_difference_and_its_standard_error():
    rng = np.random.default_rng(0)
    count = rng.integers(5, 30, 500).astype(float)
    a = count * 4.0 + rng.normal(0, 1, 500)
    b = a + 0.3 + rng.normal(0, 0.1, 500)  # b is worse by 0.3 nats, with little paired noise
    d = paired_difference(PerExample(a, count, "exact", "test"), PerExample(b, count, "estimate", "test"))
    assert d.diff == pytest.approx((a - b).mean())
    assert d.stderr == pytest.approx((a - b).std(ddof=1) / math.sqrt(500))
    assert d.z < -20  # the unpaired s.e. (about 0.2 nats here) would hide what pairing shows
    with pytest.raises(VaelabError, match="different examples"):
        paired_difference(PerExample(a, count, "exact", "test"),
                          PerExample(b[:-1], count[:-1], "exact", "test"))
    with pytest.raises(VaelabError, match="different splits"):
        paired_difference(PerExample(a, count, "exact", "test"), PerExample(b, count, "exact", "valid"))


CORPUS = ["the cat sat on the mat", "the dog ate the bone", "the cat ate", "the dog sat on a cat"]


def test_two_text_runs_are_compared_example_by_example(tmp_path, capsys):
    """A language model and a sentence VAE trained on one tiny corpus are evaluated (the VAE with
    nested IS estimates and its mutual information), write eval_examples.npz, and ``vaelab compare``
    prints their paired difference; a run never evaluated is a one-line error."""
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 10) + "\n", encoding="utf-8")
    runs = {}
    for family in ("lstm_lm", "sentence_vae"):
        model = {"name": family, "embedding_dim": 8, "hidden_size": 16, "max_decode_length": 10}
        if family == "sentence_vae":
            model |= {"latent_dim": 2, "kl_warmup_steps": 20}
        cfg = config_from_dict({"model": model, "data": {"name": f"text:{text}", "valid_size": 4},
                                "train": {"epochs": 4, "batch_size": 8, "lr": 1e-2, "threads": 1},
                                "eval": {"is_samples": 8, "is_nested": [2, 4], "n_samples": 2}})
        runs[family] = tmp_path / family
        train_run(cfg, runs[family], device=CPU, progress=False)
    lm = evaluate_run(runs["lstm_lm"], CPU)
    vae = evaluate_run(runs["sentence_vae"], CPU)
    assert {"log_px_k2", "log_px_k4", "log_px_k4_stderr", "mutual_information"} <= set(vae)
    # in [0, log N] up to Monte Carlo error; with 4 examples and one sample each its s.e. is ~0.5 nats
    assert -2.0 < vae["mutual_information"] < math.log(vae["n_examples"]) + 2.0
    a, b = read_per_example(runs["lstm_lm"]), read_per_example(runs["sentence_vae"])
    assert (a.kind, b.kind) == ("exact", "estimate")
    assert -a.nll.mean() == pytest.approx(lm["log_px"]) and -b.nll.mean() == pytest.approx(vae["log_px"])
    capsys.readouterr()
    assert main(["compare", str(runs["lstm_lm"]), str(runs["sentence_vae"])]) == 0
    out = capsys.readouterr().out
    assert f"A - B: {a.nll.mean() - b.nll.mean():+.3f}" in out and "paired s.e." in out
    assert main(["compare", str(runs["lstm_lm"]), str(tmp_path)]) == 2
    assert "run `vaelab eval" in capsys.readouterr().err
    # from the command line: nested counts must lie below K; the config's are kept when they fit
    assert main(["eval", str(runs["sentence_vae"]), "--is-samples", "6", "--is-nested", "6"]) == 2
    assert "each must be between 1 and 5" in capsys.readouterr().err
    assert main(["eval", str(runs["sentence_vae"]), "--is-samples", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "at K=2 " in out and "at K=4" not in out
