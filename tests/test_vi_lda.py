"""LDA by mean-field VI: the vectorised updates against a per-document NumPy oracle, the ELBO against
Blei et al.'s eq. 15 written out with explicit phi, the held-out bound against the exact likelihood of
tiny documents, planted-topic recovery, and the corpus loaders."""

from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln, logsumexp, psi

from vaelab.data.ap import load_ap
from vaelab.errors import VaelabError
from vaelab.vi import lda as lda_module
from vaelab.vi.corpus import (
    AP_SHAPE,
    from_token_lists,
    load_ldac,
    load_text,
    split_tokens,
)
from vaelab.vi.lda import (
    BatchLDA,
    LDAConfig,
    LDAModel,
    OnlineLDA,
    OnlineLDAConfig,
    completion_perplexity,
    dirichlet_newton,
    perword_bound,
    sample_corpus,
    symmetric_dirichlet_newton,
    unigram_perplexity,
)

# small sparse products: one intra-op thread avoids OpenMP hand-offs (slow on a shared 2-core box)
pytestmark = pytest.mark.usefixtures("single_thread")


def _block_topics(rng, k=5, block=10, noise=0.1):
    """Topics that each put 90% of their mass on their own block of terms: identifiable, well separated."""
    v = k * block
    beta = np.zeros((k, v))
    for i in range(k):
        beta[i, i * block : (i + 1) * block] = (1 - noise) * rng.dirichlet(np.ones(block))
        beta[i] += noise * rng.dirichlet(np.ones(v))
    return beta


def _matched_tv(true, est):
    """Total-variation distance of each true topic to its Hungarian-matched estimate: (K,)."""
    tv = 0.5 * np.abs(true[:, None, :] - est[None, :, :]).sum(-1)
    r, c = linear_sum_assignment(tv)
    return tv[r, c]


# ---------------------------------------------------------------------------------------------------
# a slow, obvious oracle: one document at a time, phi stored explicitly (Blei et al. 2003, Fig. 6)


def _oracle_e_step(counts, elog_beta, alpha, max_iter=5000):
    gammas = []
    for row in counts:
        ids, n = row.indices, row.data.astype(float)
        gamma = alpha + n.sum() / len(alpha)
        for _ in range(max_iter):
            log_phi = elog_beta[:, ids].T + (psi(gamma) - psi(gamma.sum()))  # (W, K), eq. 16
            phi = np.exp(log_phi - logsumexp(log_phi, axis=1, keepdims=True))
            gamma, old = alpha + (n[:, None] * phi).sum(0), gamma  # eq. 17
            if np.abs(gamma - old).max() < 1e-13:
                break
        gammas.append(gamma)
    return np.array(gammas)


def _oracle_elbo(counts, gamma, lam, alpha, eta):
    """Blei et al. 2003 eq. 15 (plus the q(beta) terms of sec. 5.4), phi explicit and at its optimum."""
    elog_beta = psi(lam) - psi(lam.sum(1, keepdims=True))
    total = 0.0
    for d, row in enumerate(counts):
        ids, n = row.indices, row.data.astype(float)
        elog_theta = psi(gamma[d]) - psi(gamma[d].sum())
        log_phi = elog_beta[:, ids].T + elog_theta
        phi = np.exp(log_phi - logsumexp(log_phi, axis=1, keepdims=True))
        total += (
            gammaln(alpha.sum()) - gammaln(alpha).sum() + ((alpha - 1) * elog_theta).sum()
        )  # E log p(theta)
        total += (n[:, None] * phi * elog_theta).sum()  # E log p(z | theta)
        total += (n[:, None] * phi * elog_beta[:, ids].T).sum()  # E log p(w | z, beta)
        total -= gammaln(gamma[d].sum()) - gammaln(gamma[d]).sum() + ((gamma[d] - 1) * elog_theta).sum()
        total -= (n[:, None] * phi * np.log(phi)).sum()  # entropy of q(z)
    v = lam.shape[1]
    for k in range(lam.shape[0]):
        total += gammaln(v * eta) - v * gammaln(eta) + ((eta - 1) * elog_beta[k]).sum()
        total -= gammaln(lam[k].sum()) - gammaln(lam[k]).sum() + ((lam[k] - 1) * elog_beta[k]).sum()
    return total


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(7)
    beta = rng.dirichlet(np.full(12, 0.3), size=3)
    counts, _ = sample_corpus(beta, 0.4, 15, (3, 20), rng)
    lam = 0.5 + rng.gamma(2.0, 3.0, size=(3, 12))
    return counts, lam, np.array([0.3, 0.5, 0.2]), 0.1


def test_vectorised_e_step_and_elbo_match_the_per_document_oracle(tiny):
    counts, lam, alpha, eta = tiny
    model = LDAModel(lam, alpha, eta, [f"w{i}" for i in range(12)])
    gamma = model.infer(counts, max_iter=5000, tol=1e-12)
    elog_beta = psi(lam) - psi(lam.sum(1, keepdims=True))
    np.testing.assert_allclose(gamma, _oracle_e_step(counts, elog_beta, alpha), rtol=1e-8, atol=1e-8)
    # model.elbo refits gamma with its default tolerance (1e-3 mean change): compare at that gamma
    want = _oracle_elbo(counts, model.infer(counts), lam, alpha, eta)
    assert model.elbo(counts) == pytest.approx(want, rel=1e-10)


def test_heldout_bound_is_below_the_exact_likelihood_of_tiny_documents():
    rng = np.random.default_rng(3)
    k, v = 3, 6
    beta = rng.dirichlet(np.ones(v), size=k)
    alpha = np.array([0.5, 0.8, 0.3])
    counts, _ = sample_corpus(beta, alpha, 6, 5, rng)
    exact = 0.0  # log p(w_1..w_N | alpha, beta) by summing over all K^N topic assignments
    for row in counts:
        words = np.repeat(row.indices, row.data)
        terms = []
        for z in itertools.product(range(k), repeat=len(words)):
            m = np.bincount(z, minlength=k)
            log_dir = (
                gammaln(alpha.sum())
                - gammaln(alpha.sum() + len(z))
                + (gammaln(alpha + m) - gammaln(alpha)).sum()
            )
            terms.append(log_dir + np.log(beta[list(z), words]).sum())
        exact += logsumexp(terms)
    n = int(counts.sum())
    bound = perword_bound(counts, beta, alpha)
    assert bound.n_tokens == n
    assert bound.log_lik_per_word <= exact / n + 1e-12
    assert 0 < exact / n - bound.log_lik_per_word < 0.3


def test_batch_elbo_never_decreases_with_hyperparameter_updates(tiny):
    counts, *_ = tiny
    for dtype in ("float64", "float32"):
        cfg = LDAConfig(
            n_topics=3, passes=25, tol=0.0, estimate_alpha=True, estimate_eta=True, dtype=dtype, seed=1
        )
        fit = BatchLDA(cfg).fit(counts, check_every_update=True)  # raises ElboDecreaseError on any decrease
        e = np.array(fit.elbo_per_word)
        assert len(e) == 26
        assert np.all(np.diff(e) >= -1e-9 * np.abs(e).max())
        assert e[-1] > e[1] > e[0]


def test_batch_restart_falls_back_when_it_would_lower_the_elbo(tiny, monkeypatch):
    # Make every second E-step return its random restart unchanged: far worse than the converged
    # gammas of the pass before, so those passes must fall back to them, or the CAVI check raises.
    counts, *_ = tiny
    real, calls = lda_module.e_step, []

    def lazy_e_step(docs, exp_elog_beta, alpha, gamma, **kw):
        calls.append(1)
        return (gamma.clone(), 0) if len(calls) % 2 == 0 else real(docs, exp_elog_beta, alpha, gamma, **kw)

    monkeypatch.setattr(lda_module, "e_step", lazy_e_step)
    fit = BatchLDA(LDAConfig(n_topics=3, passes=6, tol=0.0, seed=3)).fit(counts, check_every_update=True)
    assert len(calls) == 6
    assert np.all(np.diff(fit.elbo_per_word) >= -1e-12)


def test_batch_lda_recovers_planted_topics():
    # seed 0; 200 documents of 40-80 tokens from 5 topics over 50 terms, alpha = 0.5.
    # Tolerance: every true topic's Hungarian-matched estimate is within total variation 0.1.
    rng = np.random.default_rng(0)
    beta = _block_topics(rng)
    counts, _ = sample_corpus(beta, 0.5, 200, (40, 80), rng)
    fit = BatchLDA(LDAConfig(n_topics=5, passes=150, tol=1e-6, e_step_max_iter=50, seed=0)).fit(counts)
    assert fit.converged
    tv = _matched_tv(beta, fit.model.topic_word())
    assert tv.max() < 0.1, tv
    assert np.all(np.abs(fit.model.alpha - 0.5) < 0.3)


def test_online_lda_recovers_planted_topics():
    # seed 0; 1000 documents, alpha = 0.2, minibatches of 200, tau0 = 1, kappa = 0.7, 5 passes.
    # Tolerance: matched total variation < 0.2 (online VB after 5 passes is less converged than batch).
    rng = np.random.default_rng(0)
    beta = _block_topics(rng)
    counts, _ = sample_corpus(beta, 0.2, 1000, (40, 80), rng)
    cfg = OnlineLDAConfig(
        n_topics=5, passes=5, batch_size=200, tau0=1.0, kappa=0.7, e_step_max_iter=50, seed=0
    )
    fit = OnlineLDA(cfg).fit(counts)
    tv = _matched_tv(beta, fit.model.topic_word())
    assert tv.max() < 0.2, tv
    assert len(fit.elbo_per_word) == 5 and fit.elbo_per_word[-1] > fit.elbo_per_word[0]


def test_completion_perplexity_ranks_models_and_beats_unigram():
    rng = np.random.default_rng(11)
    beta = _block_topics(rng)
    train, _ = sample_corpus(beta, 0.2, 300, (40, 80), rng)
    test, _ = sample_corpus(beta, 0.2, 100, (40, 80), rng)
    alpha = np.full(5, 0.2)
    true = completion_perplexity(test, beta, alpha, seed=3)
    flat = completion_perplexity(test, np.ones_like(beta), alpha, seed=3)
    uni = unigram_perplexity(train, test, seed=3)
    assert true.n_tokens == uni.n_tokens  # the same second halves are scored
    assert true.perplexity < 0.6 * uni.perplexity < flat.perplexity
    assert flat.perplexity == pytest.approx(beta.shape[1], rel=1e-9)  # uniform topics: perplexity = V
    bound = perword_bound(test, beta, alpha)
    assert bound.perplexity > true.perplexity * 0.5 and math.isfinite(bound.perplexity)


def test_dirichlet_newton_recovers_the_mle():
    rng = np.random.default_rng(0)
    a_true = np.array([0.3, 1.0, 2.5])
    theta = rng.dirichlet(a_true, size=20000)
    a = dirichlet_newton(np.ones(3), np.log(theta).sum(0), len(theta))
    np.testing.assert_allclose(a, a_true, rtol=0.05)
    betas = rng.dirichlet(np.full(30, 0.07), size=200)
    eta = symmetric_dirichlet_newton(1.0, float(np.log(np.maximum(betas, 1e-300)).sum()), 30, 200)
    assert eta == pytest.approx(0.07, rel=0.05)


def test_split_tokens_halves():
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(0.7, size=(20, 30)))
    obs, held = split_tokens(counts, seed=4)
    assert (obs + held != counts).nnz == 0
    n = np.asarray(counts.sum(1)).ravel()
    np.testing.assert_array_equal(np.asarray(obs.sum(1)).ravel(), n // 2)
    obs2, _ = split_tokens(counts, seed=4)
    assert (obs2 != obs).nnz == 0
    obs3, _ = split_tokens(counts, seed=5)
    assert (obs3 != obs).nnz > 0


def test_save_load_round_trip(tmp_path, tiny):
    counts, *_ = tiny
    fit = BatchLDA(LDAConfig(n_topics=3, passes=5, seed=2)).fit(counts, [f"w{i}" for i in range(12)])
    fit.model.save(tmp_path / "m")
    back = LDAModel.load(tmp_path / "m")
    np.testing.assert_array_equal(back.lam, fit.model.lam)
    np.testing.assert_array_equal(back.alpha, fit.model.alpha)
    assert back.eta == fit.model.eta and back.vocab == fit.model.vocab
    assert back.top_words(3) == fit.model.top_words(3)
    np.testing.assert_array_equal(back.transform(counts), fit.model.transform(counts))
    assert not list(tmp_path.glob("m/*.pkl")) and {p.name for p in (tmp_path / "m").iterdir()} == {
        "lda.json",
        "lda.safetensors",
    }
    # a Fortran-ordered lambda (e.g. a transposed view) must be written in the shape it claims
    LDAModel(np.asfortranarray(back.lam), back.alpha, back.eta, back.vocab).save(tmp_path / "f")
    np.testing.assert_array_equal(LDAModel.load(tmp_path / "f").lam, fit.model.lam)
    (tmp_path / "m" / "lda.json").write_text("{not json")
    with pytest.raises(VaelabError, match="not valid JSON"):
        LDAModel.load(tmp_path / "m")
    with pytest.raises(VaelabError, match="not found"):
        LDAModel.load(tmp_path / "nothing")


# ---------------------------------------------------------------------------------------------------
# corpus input

# without VAELAB_DATA and the files these skip, naming `vaelab data download ap`; with VAELAB_DATA set
# (CI) a missing file fails them (tests/conftest.py)
needs_ap = pytest.mark.datasets("ap")


@needs_ap
def test_ap_loader_shapes_and_checksum():
    c = load_ap()
    assert (c.n_docs, c.n_terms, c.n_tokens) == (AP_SHAPE["docs"], AP_SHAPE["vocab"], AP_SHAPE["tokens"])
    assert c.counts.nnz == 302031  # distinct (document, term) pairs
    lengths = np.diff(c.counts.indptr)
    assert lengths.min() == 2 and lengths.max() == 409  # distinct terms per document (data README)
    train, test = c.train_test_split(0.1, seed=0)
    assert (train.n_docs, test.n_docs) == (2021, 225) and train.n_tokens + test.n_tokens == c.n_tokens


@needs_ap
def test_ap_loader_rejects_a_corrupt_file(tmp_path, data_root):
    AP = data_root / "ap"
    (tmp_path / "ap").mkdir()
    shutil.copy(AP / "vocab.txt", tmp_path / "ap" / "vocab.txt")
    data = bytearray((AP / "ap.dat").read_bytes())
    data[100] = ord("9") if data[100] != ord("9") else ord("8")
    (tmp_path / "ap" / "ap.dat").write_bytes(bytes(data))
    with pytest.raises(VaelabError, match=r"ap\.dat is corrupt or a different version"):
        load_ap(tmp_path)


def test_missing_files_name_the_path(tmp_path):
    with pytest.raises(VaelabError, match=r"AP corpus file not found: .*ap\.dat.*VAELAB_DATA"):
        load_ap(tmp_path)
    with pytest.raises(VaelabError, match="lda-c corpus file not found"):
        load_ldac(tmp_path / "x.dat")
    (tmp_path / "x.dat").write_text("1 0:1\n")
    with pytest.raises(VaelabError, match=r"vocabulary file not found: .*vocab\.txt"):
        load_ldac(tmp_path / "x.dat")


@pytest.mark.parametrize(
    "line,message",
    [
        ("3 0:1 2:2\n", r"x\.dat:2: line says 3 terms but lists 2"),
        ("2 0:1 a:2\n", r"x\.dat:2: malformed lda-c line"),
        ("1 7:1\n", r"x\.dat:2: term id 7 is outside the vocabulary of 3 terms"),
        ("1 0:0\n", r"x\.dat:2: counts must be positive"),
    ],
)
def test_malformed_ldac_lines_are_reported_with_line_numbers(tmp_path, line, message):
    (tmp_path / "vocab.txt").write_text("a\nb\nc\n")
    (tmp_path / "x.dat").write_text("2 0:1 1:3\n" + line)
    with pytest.raises(VaelabError, match=message):
        load_ldac(tmp_path / "x.dat")


def test_ldac_round_trip_and_token_lists(tmp_path):
    (tmp_path / "vocab.txt").write_text("apple\nbanana\ncherry\n")
    (tmp_path / "x.dat").write_text("2 2:1 0:3\n1 1:2\n")
    c = load_ldac(tmp_path / "x.dat")
    np.testing.assert_array_equal(c.counts.toarray(), [[3, 0, 1], [0, 2, 0]])
    t = from_token_lists([["b", "a", "b"], ["c", "b"], ["a"]])
    assert t.vocab == ("b", "a", "c")  # by frequency, then alphabetically
    np.testing.assert_array_equal(t.counts.toarray(), [[2, 1, 0], [1, 0, 1], [0, 1, 0]])
    fixed = from_token_lists([["b", "zzz"]], vocab=["a", "b"])
    np.testing.assert_array_equal(fixed.counts.toarray(), [[0, 1]])
    p = Path(tmp_path / "docs.txt")
    p.write_text("The cat sat.\n\nthe DOG sat, the end\n")
    txt = load_text(p, min_count=2)
    assert txt.n_docs == 2 and txt.vocab == ("the", "sat")  # "cat", "dog", "end" occur once: dropped
    np.testing.assert_array_equal(txt.counts.toarray(), [[1, 1], [2, 1]])
