"""Latent Dirichlet allocation by mean-field variational inference.

Model (Blei, Ng & Jordan 2003, "smoothed" LDA of sec. 5.4): topics beta_k ~ Dir(eta) over V terms,
proportions theta_d ~ Dir(alpha) over K topics, z_dn ~ Cat(theta_d), w_dn ~ Cat(beta_{z_dn}).
Mean field: q(beta_k) = Dir(lambda_k), q(theta_d) = Dir(gamma_d), q(z_dn) = Cat(phi_dn).

Two fitters share one vectorised E-step:

* :class:`BatchLDA` - batch variational EM, which with q(beta) is plain CAVI: E-step (gamma, phi for all
  documents, restarted every pass as in Blei et al. Fig. 6 unless that would lower the ELBO) and
  lambda as one block, then alpha (and eta) by Newton's method; run by
  :func:`vaelab.vi.cavi.cavi`, so the ELBO is recorded after every pass and checked never to decrease.
* :class:`OnlineLDA` - online variational Bayes (Hoffman, Blei & Bach 2010, Alg. 2): minibatches,
  lambda <- (1 - rho_t) lambda + rho_t lambda_hat with rho_t = (tau0 + t)^-kappa, alpha (and eta) moved
  by a rho_t-damped Newton step.

The E-step works on a whole minibatch at once. phi is never stored: for fixed gamma and lambda its
optimum is phi_dwk ∝ exp(E[log theta_dk] + E[log beta_kw]) (Blei et al. eq. 16), so with
``et = exp E[log theta]`` (B, K) and ``eb = exp E[log beta]`` (K, V) the normaliser of every nonzero
(d, w) is ``(et @ eb)[d, w]``, a sampled dense-dense product over the sparsity pattern of the counts,
and the gamma update (Blei et al. eq. 17) is ``alpha + et * ((n / norm) @ eb.T)``, a sparse-dense
product. Both run in torch on CSR tensors; documents that have converged (mean |change in gamma| <
``e_step_tol``, as in Hoffman's and scikit-learn's code) are dropped from the working set.

Evaluation - both numbers are per word, in nats, on held-out documents, and take any topic-word matrix
beta (K, V) and alpha, so other libraries' topics are scored on the same yardstick:

* **per-word bound** (:func:`perword_bound`): for each held-out document, fit gamma (phi at its optimum)
  with beta fixed, and sum the document's ELBO,
  L_d = sum_w n_dw log sum_k exp(E[log theta_dk]) beta_kw + E[log p(theta_d | alpha)] - E[log q(theta_d)]
  <= log p(w_d | alpha, beta); report sum_d L_d / sum_d N_d and its perplexity exp(-that).
* **document-completion perplexity** (:func:`completion_perplexity`): split every held-out document's
  tokens into two halves (:func:`vaelab.vi.corpus.split_tokens`: a seeded random half, since a bag of
  words has no order); fit gamma on the first half, set theta_hat = gamma / sum(gamma) = E_q[theta],
  and score the second half: exp(-sum_d sum_{w in half 2} log sum_k theta_hat_dk beta_kw / N_half2)
  (Hoffman, Blei, Wang & Paisley 2013, sec. 4.1; Wallach et al. 2009). Documents with fewer than two
  tokens are skipped.

:func:`unigram_perplexity` scores the same second halves with a Laplace-smoothed unigram model of the
training counts: the floor every topic model must beat.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from scipy.special import gammaln, polygamma, psi
from torch import Tensor

from vaelab.errors import VaelabError
from vaelab.threads import torch_threads
from vaelab.vi.cavi import CaviTrace, cavi
from vaelab.vi.corpus import Corpus, split_tokens

__all__ = [
    "LDAConfig",
    "OnlineLDAConfig",
    "LDAModel",
    "LDAFit",
    "BatchLDA",
    "OnlineLDA",
    "e_step",
    "perword_bound",
    "completion_perplexity",
    "unigram_perplexity",
    "HeldOutScore",
    "dirichlet_newton",
    "symmetric_dirichlet_newton",
    "sample_corpus",
]

_DT = torch.float64
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_TINY = 1e-300


# ----------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class LDAConfig:
    """Settings of batch variational EM (and the shared part of online VB).

    ``alpha``/``eta`` default to 1/K, the convention of gensim and scikit-learn.
    ``tol`` stops batch EM on the relative change of the ELBO (0: run exactly ``passes`` passes).
    ``n_threads``: torch intra-op threads while fitting (None: leave torch's setting alone).
    ``dtype``: arithmetic of the sparse products (E-step, topic statistics, the ELBO's words term),
    "float64" or "float32" (about 3x faster on CPU); gamma, lambda and alpha are kept in float64 and
    every sum in the ELBO is accumulated in float64.
    """

    n_topics: int = 20
    passes: int = 20
    alpha: float | None = None
    eta: float | None = None
    estimate_alpha: bool = True
    estimate_eta: bool = False
    tol: float = 1e-5
    e_step_max_iter: int = 100
    e_step_tol: float = 1e-3
    seed: int = 0
    n_threads: int | None = None
    dtype: str = "float64"

    def __post_init__(self):
        if self.dtype not in _DTYPES:
            raise VaelabError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.n_topics < 1:
            raise VaelabError(f"n_topics must be >= 1, got {self.n_topics}")
        if self.passes < 1:
            raise VaelabError(f"passes must be >= 1, got {self.passes}")
        for name in ("alpha", "eta"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise VaelabError(f"{name} must be > 0, got {v}")


@dataclass(frozen=True)
class OnlineLDAConfig(LDAConfig):
    """Online VB (Hoffman et al. 2010): minibatch size and the step size rho_t = (tau0 + t)^-kappa.

    kappa in (0.5, 1] guarantees convergence (Robbins-Monro); tau0 >= 0 down-weights early updates.
    ``shuffle`` permutes the documents once (seeded) before the first pass. The defaults (10 passes,
    minibatches of 128, tau0 = 10) are those measured in BENCHMARKS.md: on AP with K = 20 they reach
    a lower held-out perplexity than 256 / tau0 = 64 on each of four seeds.
    """

    passes: int = 10
    batch_size: int = 128
    tau0: float = 10.0
    kappa: float = 0.7
    shuffle: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 1:
            raise VaelabError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.5 < self.kappa <= 1.0:
            raise VaelabError(f"kappa must be in (0.5, 1], got {self.kappa}")
        if self.tau0 < 0:
            raise VaelabError(f"tau0 must be >= 0, got {self.tau0}")


# ----------------------------------------------------------------------------------------------------
# sparse documents


_CSR_WARNED = False


def _csr_tensor(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    global _CSR_WARNED
    if not _CSR_WARNED:  # torch warns once per process that CSR support is "beta"; keep it out of logs
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            out = torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)
        _CSR_WARNED = True
        return out
    return torch.sparse_csr_tensor(crow, col, values, size=shape, check_invariants=False)


class _Docs:
    """A batch of documents as CSR torch tensors: ``crow`` (B+1,), ``col`` (nnz,), counts ``val`` (nnz,)."""

    def __init__(self, crow: Tensor, col: Tensor, val: Tensor, n_terms: int, rows: Tensor | None = None):
        self.crow, self.col, self.val = crow, col, val
        self.n_docs = crow.numel() - 1
        self.n_terms = n_terms
        self.lengths = crow[1:] - crow[:-1]
        # document index of every nonzero (nnz,)
        self.rows = torch.repeat_interleave(torch.arange(self.n_docs), self.lengths) if rows is None else rows
        self.pattern = _csr_tensor(crow, col, val, (self.n_docs, n_terms))
        self._transpose: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def from_scipy(cls, counts: sp.csr_matrix, dtype: torch.dtype = _DT) -> _Docs:
        counts = sp.csr_matrix(counts)
        counts.sort_indices()
        return cls(
            torch.from_numpy(counts.indptr.astype(np.int64)),
            torch.from_numpy(counts.indices.astype(np.int64)),
            torch.from_numpy(counts.data).to(dtype),
            counts.shape[1],
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.val.dtype

    def to(self, dtype: torch.dtype) -> _Docs:
        return (
            self
            if dtype == self.dtype
            else _Docs(self.crow, self.col, self.val.to(dtype), self.n_terms, self.rows)
        )

    def with_values(self, values: Tensor) -> Tensor:
        return _csr_tensor(self.crow, self.col, values, (self.n_docs, self.n_terms))

    def transposed_with_values(self, values: Tensor) -> Tensor:
        """The (V, B) CSR transpose carrying ``values`` (given in this batch's nonzero order)."""
        if self._transpose is None:
            perm = torch.argsort(self.col, stable=True)
            crow_t = torch.zeros(self.n_terms + 1, dtype=torch.int64)
            crow_t[1:] = torch.cumsum(torch.bincount(self.col, minlength=self.n_terms), 0)
            self._transpose = (crow_t, self.rows[perm], perm)
        crow_t, col_t, perm = self._transpose
        return _csr_tensor(crow_t, col_t, values[perm], (self.n_terms, self.n_docs))

    def keep(self, mask: Tensor) -> _Docs:
        """The documents where ``mask`` (B,) is True."""
        kept = mask.nonzero().squeeze(1)
        nz = mask.index_select(0, self.rows).nonzero().squeeze(1)
        crow = torch.zeros(kept.numel() + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(self.lengths.index_select(0, kept), 0)
        new_index = torch.cumsum(mask, 0) - 1
        rows = new_index.index_select(0, self.rows.index_select(0, nz))
        return _Docs(crow, self.col.index_select(0, nz), self.val.index_select(0, nz), self.n_terms, rows)

    def doc_sum(self, values: Tensor) -> Tensor:
        """Per-document sums of per-nonzero ``values`` (nnz,) -> (B,)."""
        return torch.zeros(self.n_docs, dtype=values.dtype).index_add_(0, self.rows, values)


def _digamma_float32(x: Tensor) -> Tensor:
    """psi(x) for float32 x > 0: psi(x) = psi(x + 6) - sum_{i<6} 1 / (x + i), then the asymptotic series
    psi(y) = log y - 1/(2y) - 1/(12y^2) + 1/(120y^4) - 1/(252y^6) at y = x + 6 (error < 1e-9 there).

    Absolute error ~1e-5 at x = 0.05 (float32 rounding of -20), about 3x faster than torch.digamma, whose
    CPU kernel steps x up one at a time to 10 - slow for the small gamma_dk that sparse documents have.
    """
    acc = x.reciprocal()
    for i in range(1, 6):
        acc.add_((x + i).reciprocal_())
    y = x + 6.0
    inv = y.reciprocal()
    inv2 = inv.square()
    series = inv2 * (-1.0 / 12 + inv2 * (1.0 / 120 - inv2 * (1.0 / 252)))
    return torch.log(y).sub_(inv.mul_(0.5)).add_(series).sub_(acc)


def _digamma(x: Tensor) -> Tensor:
    # below ~8k elements the dozen small ops of the series cost more than torch's loop
    return _digamma_float32(x) if x.dtype == torch.float32 and x.numel() >= 8192 else torch.digamma(x)


def _exp_dirichlet_expectation(param: Tensor) -> Tensor:
    """exp E[log x] under Dir(param) along the last dim: exp(psi(param) - psi(sum param))."""
    return torch.exp(_dirichlet_expectation(param))


def _dirichlet_expectation(param: Tensor) -> Tensor:
    """E[log x] under Dir(param) along the last dim: psi(param) - psi(sum param)."""
    return _digamma(param) - _digamma(param.sum(-1, keepdim=True))


def _phinorm(docs: _Docs, exp_elog_theta: Tensor, exp_elog_beta_t: Tensor) -> Tensor:
    """sum_k exp(E log theta_dk + E log beta_kw) at every nonzero (d, w): (nnz,).

    ``exp_elog_beta_t`` is (V, K) contiguous; sampled_addmm gets its transposed view, which it reads
    without the (K, V) copy it makes for a contiguous (K, V) operand (a fixed ~0.2 ms per call).
    """
    out = torch.sparse.sampled_addmm(docs.pattern, exp_elog_theta, exp_elog_beta_t.T, beta=0.0)
    return out.values().clamp_min(torch.finfo(out.dtype).tiny)


def e_step(
    docs: _Docs,
    exp_elog_beta: Tensor,
    alpha: Tensor,
    gamma: Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> tuple[Tensor, int]:
    """Fit gamma (B, K) for every document of ``docs`` with the topics fixed (Blei et al. eqs. 16-17).

    Args:
        docs: B documents. exp_elog_beta: (K, V) exp E[log beta] (or beta itself for point topics).
        alpha: (K,). gamma: (B, K) starting values (not modified).
    Returns:
        (gamma, iterations): the fitted (B, K) float64 and the number of sweeps the slowest document
        took. Arithmetic runs in ``docs.dtype`` (float32 is about 3x faster than float64 on CPU).
    Each sweep is a coordinate-ascent step (phi given gamma, then gamma given phi), so the bound rises
    monotonically whatever ``max_iter`` and ``tol`` are.
    """
    dt = docs.dtype
    gamma = gamma.to(dt, copy=True)
    alpha = alpha.to(dt)
    exp_elog_beta = exp_elog_beta.to(dt)
    exp_elog_beta_t = exp_elog_beta.T.contiguous()
    active = torch.arange(docs.n_docs)
    sub, g = docs, gamma
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007
        et = _digamma(g).sub_(_digamma(g.sum(1, keepdim=True))).exp_()  # exp E[log theta]
        ratio = torch.div(sub.val, _phinorm(sub, et, exp_elog_beta_t))  # n_dw / sum_k phi-unnormalised
        g_new = (sub.with_values(ratio) @ exp_elog_beta_t).mul_(et).add_(alpha)  # eq. 17, phi from eq. 16
        done = torch.sub(g_new, g).abs_().mean(1) < tol
        g = g_new
        n_done = int(done.sum())
        if n_done == done.numel():
            break
        # Converged documents leave the working set once they are a fifth of it: compacting costs about
        # as much as one sweep, and a converged document's extra sweeps only raise its bound further.
        if n_done and n_done * 5 >= done.numel():
            gamma[active[done]] = g[done]
            keep = ~done
            active, g, sub = active[keep], g[keep], sub.keep(keep)
    gamma[active] = g
    return gamma.to(_DT), it


@dataclass
class _SuffStats:
    topic_word: Tensor  # (K, V) sum_d n_dw phi_dwk, in the E-step's dtype
    word_bound: Tensor  # (B,) sum_w n_dw log sum_k exp(E log theta_dk + E log beta_kw)


def _suff_stats(docs: _Docs, gamma: Tensor, exp_elog_beta: Tensor, *, topic_word: bool = True) -> _SuffStats:
    """phi at its optimum for (gamma, beta), summed into topic-word counts, and the words term of the ELBO.

    ``topic_word=False`` skips the (K, V) statistics when only the bound is wanted. Arithmetic runs
    in ``docs.dtype``; the topic statistics stay in it, the per-document bound is float64.
    """
    exp_elog_beta = exp_elog_beta.to(docs.dtype)
    et = _exp_dirichlet_expectation(gamma.to(docs.dtype))
    norm = _phinorm(docs, et, exp_elog_beta.T.contiguous())
    stats = torch.empty(0, dtype=docs.dtype)
    if topic_word:
        # sum_d n_dw phi_dwk = eb_kw * sum_d et_dk n_dw / norm_dw (Hoffman et al. 2010, Alg. 2 "sstats")
        stats = torch.mul(exp_elog_beta, (docs.transposed_with_values(docs.val / norm) @ et).T).contiguous()
    return _SuffStats(stats, docs.doc_sum((docs.val * torch.log(norm)).to(_DT)))


def _theta_terms(gamma: Tensor, alpha: Tensor) -> Tensor:
    """E[log p(theta_d | alpha)] - E[log q(theta_d | gamma)] for every document: (B,)."""
    elog = _dirichlet_expectation(gamma)
    return (
        torch.lgamma(alpha.sum())
        - torch.lgamma(alpha).sum()
        + ((alpha - gamma) * elog).sum(1)
        + torch.lgamma(gamma).sum(1)
        - torch.lgamma(gamma.sum(1))
    )


def _beta_terms(lam: Tensor, eta: float, elog: Tensor | None = None) -> Tensor:
    """sum_k E[log p(beta_k | eta)] - E[log q(beta_k | lambda_k)], a scalar (``elog``: E[log beta])."""
    v = lam.shape[1]
    elog = _dirichlet_expectation(lam) if elog is None else elog
    per_topic = (
        math.lgamma(v * eta)
        - v * math.lgamma(eta)
        + ((eta - lam) * elog).sum(1)
        + torch.lgamma(lam).sum(1)
        - torch.lgamma(lam.sum(1))
    )
    return per_topic.sum()


# ----------------------------------------------------------------------------------------------------
# hyperparameters by Newton's method


def dirichlet_newton(
    alpha: np.ndarray, suff: np.ndarray, n: float, *, max_iter: int = 50, tol: float = 1e-10
):
    """Maximise f(a) = n [log G(sum a) - sum log G(a_k)] + sum_k (a_k - 1) suff_k over a > 0 (K,).

    Newton's method with the diagonal-plus-constant Hessian inverted in O(K) (Blei et al. 2003,
    App. A.4.2; Minka 2000), halving the step until a stays positive and f does not decrease.
    ``suff_k = sum_d E[log theta_dk]`` over the n documents. Returns the new (K,) array.
    """
    a = np.asarray(alpha, dtype=np.float64).copy()

    def f(x):
        return n * (gammaln(x.sum()) - gammaln(x).sum()) + ((x - 1.0) * suff).sum()

    fa = f(a)
    for _ in range(max_iter):
        g = n * (psi(a.sum()) - psi(a)) + suff
        h = -n * polygamma(1, a)  # diagonal of the Hessian
        z = n * polygamma(1, a.sum())  # its constant part
        c = (g / h).sum() / (1.0 / z + (1.0 / h).sum())
        step = (g - c) / h  # H^-1 g (A.4.2)
        t = 1.0
        while t > 1e-10:
            cand = a - t * step
            if np.all(cand > 0) and (fc := f(cand)) >= fa:
                break
            t *= 0.5
        else:
            break
        converged = np.abs(cand - a).max() <= tol * max(1.0, np.abs(a).max())
        a, fa = cand, fc
        if converged:
            break
    return a


def symmetric_dirichlet_newton(eta: float, suff: float, dim: int, n: float, *, max_iter: int = 50, tol=1e-10):
    """Maximise f(e) = n [log G(dim e) - dim log G(e)] + (e - 1) suff over a scalar e > 0.

    The topic-prior update: n = K topics, dim = V terms, suff = sum_kw E[log beta_kw]. f is concave.
    """

    def f(x):
        return n * (gammaln(dim * x) - dim * gammaln(x)) + (x - 1.0) * suff

    e, fe = float(eta), f(eta)
    for _ in range(max_iter):
        g = n * dim * (psi(dim * e) - psi(e)) + suff
        h = n * (dim * dim * polygamma(1, dim * e) - dim * polygamma(1, e))
        step = g / h
        t = 1.0
        while t > 1e-10:
            cand = e - t * step
            if cand > 0 and (fc := f(cand)) >= fe:
                break
            t *= 0.5
        else:
            break
        converged = abs(cand - e) <= tol * max(1.0, e)
        e, fe = float(cand), fc
        if converged:
            break
    return e


# ----------------------------------------------------------------------------------------------------
# the fitted model


def _as_csr(counts) -> sp.csr_matrix:
    if isinstance(counts, Corpus):
        counts = counts.counts
    return sp.csr_matrix(counts)


class LDAModel:
    """A fitted LDA: q(beta_k) = Dir(lambda_k) and the hyperparameters.

    Attributes:
        lam: (K, V) variational Dirichlet parameters of the topics.
        alpha: (K,) document-topic prior. eta: scalar topic-word prior.
        vocab: (V,) terms.
    """

    FORMAT = "vaelab-lda"
    VERSION = 1

    def __init__(
        self, lam: np.ndarray, alpha: np.ndarray, eta: float, vocab: Sequence[str], config: dict | None = None
    ):
        lam = np.ascontiguousarray(lam, dtype=np.float64)
        alpha = np.ascontiguousarray(alpha, dtype=np.float64).reshape(-1)
        if lam.ndim != 2 or alpha.shape != (lam.shape[0],) or len(vocab) != lam.shape[1]:
            raise ValueError(f"shapes disagree: lambda {lam.shape}, alpha {alpha.shape}, vocab {len(vocab)}")
        self.lam, self.alpha, self.eta = lam, alpha, float(eta)
        self.vocab = tuple(vocab)
        self.config = dict(config or {})

    @property
    def n_topics(self) -> int:
        return self.lam.shape[0]

    def topic_word(self) -> np.ndarray:
        """E_q[beta]: (K, V), rows sum to 1."""
        return self.lam / self.lam.sum(1, keepdims=True)

    def top_words(self, n: int = 10) -> list[list[str]]:
        """The n most probable terms of every topic under E_q[beta], most probable first."""
        order = np.argsort(-self.lam, axis=1, kind="stable")[:, :n]
        return [[self.vocab[i] for i in row] for row in order]

    def infer(self, counts, *, max_iter: int = 100, tol: float = 1e-3) -> np.ndarray:
        """Variational gamma (D, K) of new documents (D, V), q(beta) fixed (E[log beta] as in training)."""
        x = _as_csr(counts)
        docs = _Docs.from_scipy(x)
        eb = _exp_dirichlet_expectation(torch.from_numpy(self.lam))
        alpha = torch.from_numpy(self.alpha)
        gamma0 = _initial_gamma(x, alpha)
        gamma, _ = e_step(docs, eb, alpha, gamma0, max_iter=max_iter, tol=tol)
        return gamma.numpy()

    def transform(self, counts, **kw) -> np.ndarray:
        """Per-document topic proportions E_q[theta_d] = gamma_d / sum(gamma_d): (D, K)."""
        gamma = self.infer(counts, **kw)
        return gamma / gamma.sum(1, keepdims=True)

    def elbo(self, counts) -> float:
        """The full ELBO of ``counts`` (D, V) as the training corpus, nats (gamma fitted first)."""
        x = _as_csr(counts)
        docs = _Docs.from_scipy(x)
        lam = torch.from_numpy(self.lam)
        alpha = torch.from_numpy(self.alpha)
        gamma = torch.from_numpy(self.infer(x))
        ss = _suff_stats(docs, gamma, _exp_dirichlet_expectation(lam), topic_word=False)
        return float(ss.word_bound.sum() + _theta_terms(gamma, alpha).sum() + _beta_terms(lam, self.eta))

    def perword_bound(self, counts, **kw) -> HeldOutScore:
        """Held-out per-word bound with beta = E_q[beta] (see :func:`perword_bound`)."""
        return perword_bound(counts, self.topic_word(), self.alpha, **kw)

    def completion_perplexity(self, counts, *, seed: int = 0, **kw) -> HeldOutScore:
        """Document-completion perplexity with beta = E_q[beta] (see :func:`completion_perplexity`)."""
        return completion_perplexity(counts, self.topic_word(), self.alpha, seed=seed, **kw)

    # -- persistence: arrays in safetensors, everything else in JSON; never pickle

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/lda.safetensors`` (lambda, alpha, eta) and ``folder/lda.json``; returns folder."""
        from safetensors.numpy import save_file

        from vaelab._version import __version__

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(
            {"lambda": self.lam, "alpha": self.alpha, "eta": np.array([self.eta])},
            str(folder / "lda.safetensors"),
        )
        meta = {
            "format": self.FORMAT,
            "version": self.VERSION,
            "vaelab_version": __version__,
            "n_topics": self.n_topics,
            "n_terms": len(self.vocab),
            "config": self.config,
            "vocab": list(self.vocab),
        }
        (folder / "lda.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> LDAModel:
        """Read a model written by :meth:`save`."""
        from safetensors.numpy import load_file

        folder = Path(folder)
        meta_path, arr_path = folder / "lda.json", folder / "lda.safetensors"
        for p in (meta_path, arr_path):
            if not p.is_file():
                raise VaelabError(f"LDA model file not found: {p} (pass the folder written by LDAModel.save)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise VaelabError(f"{meta_path} is not valid JSON ({exc.msg}); save the model again") from None
        if meta.get("format") != cls.FORMAT or meta.get("version") != cls.VERSION:
            raise VaelabError(
                f"{meta_path} is not a {cls.FORMAT} v{cls.VERSION} file (format={meta.get('format')!r}, "
                f"version={meta.get('version')!r})"
            )
        arrays = load_file(str(arr_path))
        lam = arrays["lambda"]
        if lam.shape != (meta["n_topics"], meta["n_terms"]) or len(meta["vocab"]) != meta["n_terms"]:
            raise VaelabError(
                f"{arr_path} holds lambda of shape {lam.shape}, {meta_path} says "
                f"({meta['n_topics']}, {meta['n_terms']}); the files do not belong together"
            )
        return cls(lam, arrays["alpha"], float(arrays["eta"][0]), meta["vocab"], meta.get("config"))


@dataclass
class LDAFit:
    """A fitted model and how the fit went.

    ``elbo_per_word``: batch - the exact training ELBO / training tokens after every pass (index 0: at
    initialisation); online - a running estimate per pass (documents' bound terms accumulated over the
    pass's minibatches, each with the lambda of its time, plus the topic term at the end of the pass).
    """

    model: LDAModel
    elbo_per_word: list[float]
    seconds: float
    passes: int
    n_docs: int
    converged: bool = False
    alpha_history: list[list[float]] = field(default_factory=list)

    @property
    def docs_per_second(self) -> float:
        return self.n_docs * self.passes / max(self.seconds, 1e-12)


def _initial_gamma(counts: sp.csr_matrix, alpha: Tensor) -> Tensor:
    """gamma_dk = alpha_k + N_d / K: the deterministic start of Blei et al. 2003 (Fig. 6)."""
    n_d = torch.from_numpy(np.asarray(counts.sum(1), dtype=np.float64).reshape(-1, 1))
    return alpha + n_d / alpha.shape[0]


def _random_gamma(rng: np.random.Generator, shape: tuple[int, ...]) -> Tensor:
    # Hoffman et al.'s onlineldavb start (also gensim's and scikit-learn's): Gamma(100, 1/100)
    return torch.from_numpy(rng.gamma(100.0, 0.01, shape))


def _check_counts(x: sp.csr_matrix, k: int) -> None:
    if x.shape[0] == 0 or x.nnz == 0:
        raise VaelabError("the corpus has no tokens; LDA needs at least one document with words")
    if x.data.min() < 0:
        raise VaelabError("document-term counts must be non-negative")
    if k > 1 and x.shape[1] < 2:
        raise VaelabError(f"a vocabulary of {x.shape[1]} term cannot support {k} topics")


@dataclass
class _BatchState:
    gamma: Tensor  # (D, K)
    lam: Tensor  # (K, V)
    alpha: Tensor  # (K,)
    eta: float
    elog_beta: Tensor = field(default_factory=lambda: torch.empty(0))  # E[log beta] of lam (K, V)
    # words term of every document's bound at the (gamma, lam) held in words_at; updates replace these
    # tensors rather than modify them, so identity tells whether the cache is current
    words: Tensor | None = None
    words_at: tuple[Tensor, ...] = ()

    def set_topics(self, lam: Tensor) -> None:
        self.lam = lam.contiguous()
        self.elog_beta = _dirichlet_expectation(self.lam)


class BatchLDA:
    """Batch variational EM for LDA = CAVI over (gamma, phi) for every document, lambda, alpha, eta."""

    def __init__(self, config: LDAConfig | None = None):
        self.config = config or LDAConfig()

    def fit(
        self,
        corpus: Corpus | sp.csr_matrix,
        vocab: Sequence[str] | None = None,
        *,
        check_every_update: bool = False,
        callback: Callable[[int, float], None] | None = None,
    ) -> LDAFit:
        """Fit to counts (D, V). Returns an :class:`LDAFit`; raises ElboDecreaseError on a decrease.

        ``callback(pass, elbo_per_word)`` is called after every pass.
        """
        cfg = self.config
        x = _as_csr(corpus)
        vocab = corpus.vocab if isinstance(corpus, Corpus) else vocab
        if vocab is None:
            vocab = tuple(str(i) for i in range(x.shape[1]))
        k = cfg.n_topics
        _check_counts(x, k)
        rng = np.random.default_rng(cfg.seed)
        n_tokens = float(x.sum())
        with torch_threads(cfg.n_threads):
            t0 = time.perf_counter()
            work = _Docs.from_scipy(x, _DTYPES[cfg.dtype])  # the E-step's and the ELBO's arithmetic
            state = _BatchState(
                gamma=_random_gamma(rng, (x.shape[0], k)),
                lam=torch.empty(0),
                alpha=torch.full((k,), cfg.alpha if cfg.alpha is not None else 1.0 / k, dtype=_DT),
                eta=cfg.eta if cfg.eta is not None else 1.0 / k,
            )
            state.set_topics(_random_gamma(rng, (k, x.shape[1])))
            alphas: list[list[float]] = []

            def words(s: _BatchState) -> Tensor:
                """sum_w n_dw log sum_k exp(E log theta_dk + E log beta_kw) per document, cached."""
                if (
                    s.words is None
                    or len(s.words_at) != 2
                    or s.words_at[0] is not s.gamma
                    or s.words_at[1] is not s.lam
                ):
                    s.words = _suff_stats(work, s.gamma, s.elog_beta.exp(), topic_word=False).word_bound
                    s.words_at = (s.gamma, s.lam)
                return s.words

            def elbo(s: _BatchState) -> float:
                return float(
                    words(s).sum()
                    + _theta_terms(s.gamma, s.alpha).sum()
                    + _beta_terms(s.lam, s.eta, s.elog_beta)
                )

            def with_topics(s: _BatchState, gamma: Tensor, ss: _SuffStats) -> _BatchState:
                out = _BatchState(gamma, s.lam, s.alpha, s.eta)
                out.set_topics(ss.topic_word.to(_DT) + s.eta)  # lambda = eta + sum n phi (Hoffman eq. 7)
                return out

            def update_documents_and_topics(s: _BatchState) -> _BatchState:
                # E-step then lambda, as one block. Every pass restarts gamma (Blei et al. Fig. 6; Hoffman
                # et al. Alg. 2): starting from the last pass's gamma traps documents, because with
                # alpha < 1 a topic whose gamma_dk is near zero gets exp E[log theta_dk] ~ 0 and the
                # multiplicative update (eq. 17) cannot revive it. The restart is kept when the ELBO after
                # the lambda update is not lower than before the block (on AP: every pass). Otherwise
                # each document keeps the better of its restarted and its previous gamma - an ascent
                # step for fixed lambda - and lambda is refitted, so the block never lowers the ELBO.
                # (Choosing per document on every pass is greedier and ends worse: on AP, K = 20, 20
                # passes, -8.187 nats per word against -8.178 for plain restarts.)
                before = elbo(s)
                eb = s.elog_beta.exp()
                fresh, _ = e_step(
                    work,
                    eb,
                    s.alpha,
                    _random_gamma(rng, tuple(s.gamma.shape)),
                    max_iter=cfg.e_step_max_iter,
                    tol=cfg.e_step_tol,
                )
                ss = _suff_stats(work, fresh, eb)
                restarted = with_topics(s, fresh, ss)
                if elbo(restarted) >= before:
                    return restarted
                worse = ss.word_bound + _theta_terms(fresh, s.alpha) < words(s) + _theta_terms(
                    s.gamma, s.alpha
                )
                sub = work.keep(worse)
                back, ahead = _suff_stats(sub, s.gamma[worse], eb), _suff_stats(sub, fresh[worse], eb)
                ss.topic_word += back.topic_word - ahead.topic_word
                fresh[worse] = s.gamma[worse]
                return with_topics(s, fresh, ss)

            def update_alpha(s: _BatchState) -> _BatchState:
                suff = _dirichlet_expectation(s.gamma).sum(0).numpy()
                s.alpha = torch.from_numpy(dirichlet_newton(s.alpha.numpy(), suff, float(x.shape[0])))
                alphas.append(s.alpha.tolist())
                return s

            def update_eta(s: _BatchState) -> _BatchState:
                s.eta = symmetric_dirichlet_newton(s.eta, float(s.elog_beta.sum()), s.lam.shape[1], float(k))
                return s

            updates = [update_documents_and_topics]
            if cfg.estimate_alpha:
                updates.append(update_alpha)
            if cfg.estimate_eta:
                updates.append(update_eta)
            trace: CaviTrace = cavi(
                state,
                updates,
                elbo,
                tol=cfg.tol,
                max_sweeps=cfg.passes,
                # float32 updates are exact maximisers only to ~1e-7 relative
                round_off=1e-9 if cfg.dtype == "float64" else 1e-6,
                check_every_update=check_every_update,
                callback=None if callback is None else (lambda i, _s, e: callback(i, e / n_tokens)),
            )
            seconds = time.perf_counter() - t0
        s = trace.state
        model = LDAModel(s.lam.numpy(), s.alpha.numpy(), s.eta, vocab, {"fitter": "batch", **asdict(cfg)})
        return LDAFit(
            model,
            [e / n_tokens for e in trace.elbo],
            seconds,
            trace.n_sweeps,
            x.shape[0],
            trace.converged,
            alphas,
        )


class OnlineLDA:
    """Online variational Bayes for LDA (Hoffman, Blei & Bach 2010, Alg. 2)."""

    def __init__(self, config: OnlineLDAConfig | None = None):
        self.config = config or OnlineLDAConfig()

    def fit(
        self,
        corpus: Corpus | sp.csr_matrix,
        vocab: Sequence[str] | None = None,
        *,
        callback: Callable[[int, float], None] | None = None,
    ) -> LDAFit:
        """Run ``passes`` passes over the counts (D, V) in minibatches of ``batch_size`` documents.

        ``callback(pass, estimated elbo_per_word)`` is called after every pass.
        """
        cfg = self.config
        x = _as_csr(corpus)
        vocab = corpus.vocab if isinstance(corpus, Corpus) else vocab
        if vocab is None:
            vocab = tuple(str(i) for i in range(x.shape[1]))
        k, (n_docs, n_terms) = cfg.n_topics, x.shape
        _check_counts(x, k)
        rng = np.random.default_rng(cfg.seed)
        n_tokens = float(x.sum())
        with torch_threads(cfg.n_threads):
            t0 = time.perf_counter()
            order = rng.permutation(n_docs) if cfg.shuffle else np.arange(n_docs)
            xs = sp.csr_matrix(x[order])
            batches = [
                _Docs.from_scipy(xs[i : i + cfg.batch_size], _DTYPES[cfg.dtype])
                for i in range(0, n_docs, cfg.batch_size)
            ]
            lam = _random_gamma(rng, (k, n_terms))
            alpha = torch.full((k,), cfg.alpha if cfg.alpha is not None else 1.0 / k, dtype=_DT)
            eta = cfg.eta if cfg.eta is not None else 1.0 / k
            updates = 0
            trace: list[float] = []
            alphas: list[list[float]] = []
            for pass_ in range(1, cfg.passes + 1):
                doc_bound = 0.0
                for docs in batches:
                    eb = _exp_dirichlet_expectation(lam.to(_DTYPES[cfg.dtype]))
                    gamma0 = _random_gamma(rng, (docs.n_docs, k))  # Alg. 2 restarts gamma for every minibatch
                    gamma, _ = e_step(
                        docs, eb, alpha, gamma0, max_iter=cfg.e_step_max_iter, tol=cfg.e_step_tol
                    )
                    ss = _suff_stats(docs, gamma, eb)
                    doc_bound += float(ss.word_bound.sum() + _theta_terms(gamma, alpha).sum())
                    rho = (cfg.tau0 + updates) ** (-cfg.kappa)  # Hoffman et al. 2010, eq. 8 / Alg. 2
                    # lambda <- (1 - rho) lambda + rho (eta + D/|S| sstats), in place
                    lam.mul_(1.0 - rho).add_(rho * eta).add_(ss.topic_word, alpha=rho * n_docs / docs.n_docs)
                    if cfg.estimate_alpha:
                        suff = _dirichlet_expectation(gamma).sum(0).numpy()
                        target = dirichlet_newton(alpha.numpy(), suff, float(docs.n_docs), max_iter=1)
                        alpha = torch.from_numpy(alpha.numpy() + rho * (target - alpha.numpy()))
                        alphas.append(alpha.tolist())
                    if cfg.estimate_eta:
                        suff_eta = float(_dirichlet_expectation(lam).sum())
                        target_eta = symmetric_dirichlet_newton(eta, suff_eta, n_terms, float(k), max_iter=1)
                        eta = eta + rho * (target_eta - eta)
                    updates += 1
                trace.append((doc_bound + float(_beta_terms(lam, eta))) / n_tokens)
                if callback is not None:
                    callback(pass_, trace[-1])
            seconds = time.perf_counter() - t0
        model = LDAModel(lam.numpy(), alpha.numpy(), eta, vocab, {"fitter": "online", **asdict(cfg)})
        return LDAFit(model, trace, seconds, cfg.passes, n_docs, False, alphas)


# ----------------------------------------------------------------------------------------------------
# held-out evaluation: one yardstick for any (beta, alpha)


@dataclass(frozen=True)
class HeldOutScore:
    """A held-out score. ``log_lik_per_word`` in nats; ``perplexity = exp(-log_lik_per_word)``."""

    log_lik_per_word: float
    n_docs: int
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_lik_per_word)


def _point_topics(topics, alpha) -> tuple[Tensor, Tensor]:
    beta = np.asarray(topics, dtype=np.float64)
    alpha = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (beta.shape[0],)).copy()
    if beta.ndim != 2 or np.any(beta < 0):
        raise ValueError("topics must be a non-negative (K, V) matrix")
    beta = beta / beta.sum(1, keepdims=True)
    return torch.from_numpy(np.maximum(beta, _TINY)), torch.from_numpy(alpha)


def _fit_point_gamma(x: sp.csr_matrix, beta: Tensor, alpha: Tensor, max_iter: int, tol: float):
    docs = _Docs.from_scipy(x)
    gamma, _ = e_step(docs, beta, alpha, _initial_gamma(x, alpha), max_iter=max_iter, tol=tol)
    return docs, gamma


def perword_bound(counts, topics, alpha, *, max_iter: int = 500, tol: float = 1e-5) -> HeldOutScore:
    """Held-out per-word variational bound for point topics beta (K, V) and alpha (K,) or scalar.

    For each document d of ``counts`` (D, V), gamma_d is fitted with beta fixed and
    L_d = sum_w n_dw log sum_k exp(E[log theta_dk]) beta_kw + E[log p(theta_d|alpha)] - E[log q(theta_d)],
    a lower bound on log p(w_d | alpha, beta). Returns sum_d L_d / sum_d N_d (nats per word).
    """
    x = _as_csr(counts)
    beta, a = _point_topics(topics, alpha)
    docs, gamma = _fit_point_gamma(x, beta, a, max_iter, tol)
    words = _suff_stats(docs, gamma, beta, topic_word=False).word_bound
    total = float(words.sum() + _theta_terms(gamma, a).sum())
    n = int(x.sum())
    return HeldOutScore(total / n, x.shape[0], n)


def completion_perplexity(
    counts, topics, alpha, *, seed: int = 0, max_iter: int = 500, tol: float = 1e-5
) -> HeldOutScore:
    """Document completion: fit theta on a seeded random half of each document's tokens, score the rest.

    theta_hat_d = E_q[theta_d] = gamma_d / sum(gamma_d) with gamma fitted to the observed half
    (beta fixed); the score is sum over the other half's tokens of log sum_k theta_hat_dk beta_kw,
    per token. Documents with fewer than two tokens are skipped. ``seed`` fixes the split, so two
    models scored with the same seed are scored on the same tokens.
    """
    x = _as_csr(counts)
    keep = np.asarray(x.sum(1)).ravel() >= 2
    observed, held = split_tokens(x[keep], seed)
    beta, a = _point_topics(topics, alpha)
    _, gamma = _fit_point_gamma(observed, beta, a, max_iter, tol)
    theta = gamma / gamma.sum(1, keepdim=True)
    held_docs = _Docs.from_scipy(held)
    prob = _phinorm(held_docs, theta, beta.T.contiguous())  # sum_k theta_dk beta_kw at held-out (d, w)
    n = int(held.sum())
    return HeldOutScore(float((held_docs.val * torch.log(prob)).sum()) / n, int(keep.sum()), n)


def unigram_perplexity(train_counts, counts, *, seed: int = 0) -> HeldOutScore:
    """The unigram floor on the same second halves as :func:`completion_perplexity` (same ``seed``).

    p(w) = (c_w + 1) / (N + V) from the training counts (Laplace smoothing, so unseen terms score).
    """
    train = _as_csr(train_counts)
    x = _as_csr(counts)
    c = np.asarray(train.sum(0), dtype=np.float64).ravel()
    logp = np.log((c + 1.0) / (c.sum() + c.size))
    keep = np.asarray(x.sum(1)).ravel() >= 2
    _, held = split_tokens(x[keep], seed)
    n = int(held.sum())
    return HeldOutScore(float(held.data @ logp[held.indices]) / n, int(keep.sum()), n)


def sample_corpus(
    topics: np.ndarray, alpha, n_docs: int, doc_length: int | tuple[int, int], rng: np.random.Generator
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Draw documents from the LDA generative model: theta_d ~ Dir(alpha), w_dn ~ sum_k theta_dk beta_k.

    Args:
        topics: (K, V) rows summing to 1. alpha: (K,) or scalar.
        doc_length: a fixed length or an inclusive (low, high) range drawn uniformly per document.
    Returns:
        (counts (n_docs, V) int64 CSR, theta (n_docs, K)).
    """
    beta = np.asarray(topics, dtype=np.float64)
    k, v = beta.shape
    theta = rng.dirichlet(np.broadcast_to(np.asarray(alpha, dtype=np.float64), (k,)), size=n_docs)
    if isinstance(doc_length, int):
        lengths = np.full(n_docs, doc_length)
    else:
        lengths = rng.integers(doc_length[0], doc_length[1] + 1, size=n_docs)
    word_probs = theta @ beta  # (D, V): z marginalised out
    rows = [rng.multinomial(n, p / p.sum()) for n, p in zip(lengths, word_probs)]
    counts = sp.csr_matrix(np.asarray(rows, dtype=np.int64))
    counts.sort_indices()
    return counts, theta
