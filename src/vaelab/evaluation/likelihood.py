"""Importance-sampled log-likelihood: log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q.

The estimate is consistent in K and its expectation is a lower bound on log p(x) (Burda et al.
2016, Theorem 1) that rises with K. Samples are drawn in chunks so memory stays bounded whatever
K is; a running logsumexp combines the chunks exactly.

Reported per example (nats), with the dataset mean, its standard error (over examples, not over
the Monte Carlo noise of one example) and the effective sample size of the importance weights,
ESS = (sum w)^2 / sum w^2, between 1 and K: a small ESS flags an unreliable estimate.

The rule (:func:`is_reliable`): the estimate is marked unreliable when the mean ESS over the
examples is below min(10, K/2). Why these numbers:

* An absolute count, not a share of K. Kong's approximation gives a relative variance of the
  estimate of p(x) near 1/ESS, so a single example's log p(x) carries about 1/sqrt(ESS) nats of noise:
  above 0.3 nats below 10 samples, where also the ESS itself, computed from the same few dominant
  weights, overstates how many samples count, and the estimate's downward bias (Jensen) is large and
  unseen in the standard error. A share of K would condemn good models: the MNIST preset's
  50-latent VAE has a mean ESS of about 49 of K = 5000 (1 %), and its estimate agreed with an
  independent implementation to 0.01 nats (BENCHMARKS.md); the user's model the rule is for had 4.
* K/2 when K is below 20: ESS near K means nearly equal weights, a proposal close to the
  posterior, so a small K that is well used (ESS 4 of K = 5) is not flagged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from vaelab.tokens import TokenBatch

__all__ = [
    "LogLikelihoodEstimate",
    "LikelihoodResult",
    "importance_sampled_log_likelihood",
    "streaming_log_likelihood",
    "is_reliable",
    "ESS_FLOOR",
]

ESS_FLOOR = 10.0
"""Below this mean effective sample size (or K/2, when smaller) an IS estimate is marked unreliable."""


def is_reliable(ess_mean: float, k: int) -> bool:
    """Whether an IS estimate with K samples and this mean ESS over examples is to be trusted:
    ``ess_mean >= min(ESS_FLOOR, K / 2)`` (the rule and its reasons: this module's docstring)."""
    return ess_mean >= min(ESS_FLOOR, k / 2)


@dataclass
class LogLikelihoodEstimate:
    """Per-example estimates of log p(x), ``log_px`` (N,) nats, and the two summaries every estimator
    reports: their mean and its standard error over the examples."""

    log_px: Tensor

    @property
    def mean(self) -> float:
        return self.log_px.double().mean().item()

    @property
    def stderr(self) -> float:
        """Standard error of the mean over the examples."""
        n = self.log_px.numel()
        return self.log_px.double().std().item() / math.sqrt(n) if n > 1 else float("nan")


@dataclass
class LikelihoodResult(LogLikelihoodEstimate):
    """Importance-sampled estimates and their summaries.

    log_px: (N,) nats; ess: (N,) effective sample sizes; k: samples per example; n_dims: D.
    """

    ess: Tensor
    k: int
    n_dims: int
    seconds: float = 0.0
    nested: dict[int, Tensor] = field(default_factory=dict)  # {K' < K: log_px (N,) from K' samples}

    @property
    def bits_per_dim(self) -> float:
        """-log2 p(x) / D (for discrete data; for densities it is a differential entropy rate)."""
        return -self.mean / (self.n_dims * math.log(2))

    @property
    def ess_mean(self) -> float:
        return self.ess.double().mean().item()

    @property
    def reliable(self) -> bool:
        return is_reliable(self.ess_mean, self.k)

    @property
    def warning(self) -> str | None:
        """One line saying why the estimate is not to be trusted, or None when it is."""
        if self.reliable:
            return None
        return (
            f"unreliable IS estimate: mean effective sample size {self.ess_mean:.1f} of K={self.k} is below "
            f"{min(ESS_FLOOR, self.k / 2):g}, so a few samples carry each estimate: q(z|x) is far from the "
            "posterior, log p(x) is likely underestimated and its ± understates the error"
        )

    def as_dict(self) -> dict:
        """The summaries for eval.json; ``is_reliable`` and ``is_warning`` (None when reliable) state
        the verdict of :func:`is_reliable`. The per-unit figure (bits/dim for images, perplexity per
        token for text, ...) is not here: it depends on the data kind (``vaelab.evaluation.units``)."""
        return {
            "log_px": self.mean,
            "log_px_stderr": self.stderr,
            "is_samples": self.k,
            "n_examples": self.log_px.numel(),
            "ess_mean": self.ess_mean,
            "ess_min": self.ess.min().item(),
            "is_reliable": self.reliable,
            "is_warning": self.warning,
            "seconds": self.seconds,
            **{key: value for m, v in sorted(self.nested.items())
               for key, value in ((f"log_px_k{m}", v.double().mean().item()),
                                  (f"log_px_k{m}_stderr", LogLikelihoodEstimate(v).stderr))},
        }


@torch.no_grad()
def streaming_log_likelihood(
    log_weight_fn, x: Tensor | TokenBatch, k: int, chunk: int, nested: tuple[int, ...] = ()
) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[int, Tensor]]:
    """log p(x) and ESS from ``log_weight_fn(x, s) -> (s, B)`` called in chunks of s <= chunk samples.

    x: a batch of B examples (a tensor (B, ...) or a :class:`~vaelab.tokens.TokenBatch`).
    Returns (log_px (B,), ess (B,)). Memory is that of one chunk.

    ``nested``: smaller sample counts k' < k whose estimates (the log-mean-exp of the *first* k' of
    the same k weights) are also returned, as a third value {k': log_px (B,)}: one pass gives the
    estimates at K = 50, 100 and 200, to show whether the K = 200 figure has converged.
    """
    marks = sorted({m for m in nested if 0 < m < k})
    lse = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    lse2 = lse.clone()
    at: dict[int, Tensor] = {}
    done = 0
    while done < k:
        nxt = next((m for m in marks if m > done), k)  # chunks end at each nested count
        s = min(chunk, nxt - done)
        lw = log_weight_fn(x, s).double()  # (s, B)
        lse = torch.logaddexp(lse, torch.logsumexp(lw, 0))
        lse2 = torch.logaddexp(lse2, torch.logsumexp(2 * lw, 0))
        done += s
        if done in marks:
            at[done] = lse - math.log(done)
    if nested:
        return lse - math.log(k), torch.exp(2 * lse - lse2), at
    return lse - math.log(k), torch.exp(2 * lse - lse2)


@torch.no_grad()
def importance_sampled_log_likelihood(
    model,
    batches: Iterable[Tensor | TokenBatch],
    k: int = 5000,
    *,
    max_elements: int = 1 << 20,
    progress: bool = False,
    nested: tuple[int, ...] = (),
) -> LikelihoodResult:
    """Estimate log p(x) for every example in ``batches`` with K importance samples each.

    ``model`` provides ``log_importance_weights(x, s) -> (s, B)`` and ``spec.n_dims``. A batch is a
    tensor (B, ...) or a :class:`~vaelab.tokens.TokenBatch` (for which ``spec.n_dims``, the longest
    sequence, bounds the tokens per example); both split along the batch with ``split``.

    Chunking, which sets the speed: one call of ``log_importance_weights`` sees ``b`` images and
    ``s`` samples with ``s * b * D`` about ``max_elements`` (default 2^20: 4 MB of decoder output).
    A chunk that size keeps the decoder's output in cache for the elementwise passes that follow its
    matmul (a chunk of tens of MB makes every pass a trip to main memory, and the evaluation runs at
    a fifth of the machine's matmul rate instead of most of it), yet holds hundreds of rows, so the
    matmuls stay efficient and the per-call overhead is small. ``b`` is kept small enough that
    ``s >= min(K, 128)``: the model encodes its ``b`` images once per call, so this keeps the
    encoder's share of the work below about 1%.

    ``nested``: smaller K' < K also estimated from the first K' of the same samples
    (:func:`streaming_log_likelihood`), in ``result.nested`` {K': log_px (N,)}.
    """
    model.eval()
    n_dims = model.spec.n_dims
    batches = list(batches)
    t0 = time.perf_counter()
    out_lp, out_ess = [], []
    marks = tuple(sorted({m for m in nested if 0 < m < k}))
    out_at: dict[int, list[Tensor]] = {m: [] for m in marks}
    iterator = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc=f"IS log p(x), K={k}", unit="batch")
    per_call = max(1, max_elements // max(1, n_dims))  # samples x images per call
    images = max(1, per_call // min(k, 128))
    for x in iterator:
        for xs in x.split(images):
            s = max(1, min(k, per_call // len(xs)))
            s = -(-k // -(-k // s))  # equal chunks: ceil(k / number of chunks)
            if marks:
                lp, ess, at = streaming_log_likelihood(model.log_importance_weights, xs, k, s, marks)
                for m in marks:
                    out_at[m].append(at[m].cpu())
            else:
                lp, ess = streaming_log_likelihood(model.log_importance_weights, xs, k, s)
            out_lp.append(lp.cpu())
            out_ess.append(ess.cpu())
    return LikelihoodResult(torch.cat(out_lp), torch.cat(out_ess), k, n_dims, time.perf_counter() - t0,
                            {m: torch.cat(v) for m, v in out_at.items()})
