"""Vector quantisation of encoder outputs (VQ-VAE, van den Oord et al. 2017), written once for every
model with a discrete code.

Shapes: an encoder output ``z_e`` is (B, D, *spatial) with the code dimension D at dim 1, e.g.
(B, D, H, W) for images or (B, D, T) for audio (no spatial dims, (B, D), is allowed). Each of its
N = B * prod(spatial) vectors is replaced by the nearest of K codebook vectors (the codebook is (K, D));
``codes`` are the indices, (B, *spatial) long.

Two quantizers, sharing the nearest-code search, k-means initialisation, dead-code restarts and
the usage metrics (:class:`CodebookQuantizer`):

* :class:`VectorQuantizer` learns the codebook by gradient: codebook loss ||sg[z_e] - e||^2 plus
  commitment loss beta ||z_e - sg[e]||^2 (eq. 3).
* :class:`VectorQuantizerEMA` keeps the codebook as exponential moving averages of the assignment
  counts and of the summed encoder outputs (Appendix A.1, eqs. 6-8), with Laplace smoothing of the
  counts; its loss is the commitment term only.

Loss scale, as everywhere in vaelab: each term is summed over the latent's elements (D and the
spatial dims) per example, and ``loss`` is the batch mean, so it adds to a reconstruction term in nats
per example the way eq. 3 adds them.

State changes only in training mode (``module.training``): the EMA statistics, the k-means
initialisation, the idle-step counts and the restarts. When ``torch.distributed`` is initialised
they are reduced (sums) or broadcast (rank 0's random choices) over the default process group, so
every rank holds the same codebook; eval mode runs no collective.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Quantized",
    "CodebookQuantizer",
    "VectorQuantizer",
    "VectorQuantizerEMA",
    "CodeUsage",
    "squared_distances",
    "nearest_code",
    "kmeans_plus_plus",
    "code_counts",
    "perplexity",
    "usage_fraction",
]


# ----------------------------------------------------------------------------- pure functions
def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """||z_n - e_k||^2 for every pair: z (N, D), codebook (K, D) -> (N, K).

    Expanded as ||z||^2 - 2 z.e + ||e||^2, one matmul instead of an (N, K, D) difference."""
    z_sq = z.pow(2).sum(1, keepdim=True)  # (N, 1)
    e_sq = codebook.pow(2).sum(1)  # (K,)
    return torch.addmm(z_sq + e_sq, z, codebook.t(), alpha=-2.0)


def nearest_code(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook vector: z (N, D), codebook (K, D) -> (N,) long (first on ties)."""
    return squared_distances(z, codebook).argmin(1)


def kmeans_plus_plus(x: Tensor, k: int) -> Tensor:
    """k seeds for Lloyd's algorithm (Arthur & Vassilvitskii 2007): x (N, D) -> (k, D).

    Each seed is a row of x drawn with probability proportional to its squared distance to the
    nearest seed so far; once every row is a seed (N < k) the rest are drawn uniformly. Uses the
    default random generator of x's device."""
    n = x.shape[0]
    first = torch.randint(n, (1,), device=x.device)
    seeds = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        weights = d2 + (d2.sum() == 0).to(d2.dtype)  # all rows taken: uniform, without a host sync
        i = torch.multinomial(weights, 1)
        seeds.append(x[i])
        d2 = torch.minimum(d2, (x - x[i]).pow(2).sum(1))
    return torch.cat(seeds)


def code_counts(codes: Tensor, num_codes: int) -> Tensor:
    """How often each code occurs: codes (any shape) long -> (num_codes,) long."""
    return torch.bincount(codes.reshape(-1), minlength=num_codes)


def perplexity(counts: Tensor) -> Tensor:
    """Codebook perplexity exp(H(p)), p = counts / sum(counts): counts (K,) -> () float.

    1 when one code takes every vector, K when all are used equally (0 log 0 = 0)."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum())


def usage_fraction(counts: Tensor) -> Tensor:
    """Fraction of the K codes used at least once: counts (K,) -> () float."""
    return (counts > 0).float().mean()


# ----------------------------------------------------------------------------- collectives
def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _collective_device(device: torch.device) -> torch.device:
    # as vaelab.train.loop.collective_device (this module stands below train/): nccl reduces CUDA
    # tensors only, gloo and the others CPU tensors
    return device if dist.get_backend() == dist.Backend.NCCL else torch.device("cpu")


def _all_reduce_sum(*tensors: Tensor) -> list[Tensor]:
    """The sums over all processes of tensors of one dtype, in one collective (as given when not
    distributed)."""
    if not _distributed():
        return list(tensors)
    where = tensors[0].device
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(_collective_device(where))
    dist.all_reduce(flat)
    flat = flat.to(where)
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _from_rank0(tensor: Tensor) -> Tensor:
    """Rank 0's ``tensor`` on every process (the others pass a tensor of the same shape and dtype)."""
    if not _distributed():
        return tensor
    where = tensor.device
    buf = tensor.to(_collective_device(where))
    dist.broadcast(buf, src=0)
    return buf.to(where)


def _is_rank0() -> bool:
    return not _distributed() or dist.get_rank() == 0


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Quantized:
    """What a quantizer returns for encoder outputs z_e (B, D, *spatial).

    z_q: (B, D, *spatial) the codebook vectors e of ``codes``, with the straight-through gradient of
        z_e (d z_q / d z_e = identity); its values are exactly ``lookup(codes)``.
    codes: (B, *spatial) long, in [0, K).
    loss: () the quantizer's part of the training loss, the batch mean of ``commitment`` (+
        ``codebook``), to add to a reconstruction term in nats per example.
    commitment: (B,) beta ||z_e - sg[e]||^2 per example (gradient to the encoder only).
    codebook: (B,) ||sg[z_e] - e||^2 per example (gradient to the codebook only); None for the EMA
        quantizer, which learns no codebook by gradient.
    perplexity: () exp(H) of this batch's code usage (this process's batch).
    usage: () fraction of the K codes this batch used.
    dead_codes: () long, codes no vector of any process took in the last ``dead_after`` training
        steps (counted before this step's restarts).
    """

    z_q: Tensor
    codes: Tensor
    loss: Tensor
    commitment: Tensor
    codebook: Tensor | None
    perplexity: Tensor
    usage: Tensor
    dead_codes: Tensor

    def metrics(self) -> dict[str, Tensor]:
        """The codebook metrics by name, 0-dim and detached (for ``LossOutput.extras``)."""
        return {"perplexity": self.perplexity, "usage": self.usage, "dead_codes": self.dead_codes}


class CodeUsage:
    """Code usage accumulated over many batches (an epoch): one batch sees few vectors, so its
    perplexity and usage understate the codebook's.

    ``update(codes)`` adds a batch's codes (any shape, long); ``all_reduce()`` sums the counts over
    the processes when ``torch.distributed`` is initialised; ``counts`` (K,) long, ``perplexity()``
    and ``usage()`` as :func:`perplexity` and :func:`usage_fraction` of them.
    """

    def __init__(self, num_codes: int, device: torch.device | str | None = None):
        self.num_codes = num_codes
        self.counts = torch.zeros(num_codes, dtype=torch.long, device=device)

    def update(self, codes: Tensor) -> None:
        self.counts += code_counts(codes.to(self.counts.device), self.num_codes)

    def all_reduce(self) -> None:
        (self.counts,) = _all_reduce_sum(self.counts)

    def perplexity(self) -> Tensor:
        return perplexity(self.counts)

    def usage(self) -> Tensor:
        return usage_fraction(self.counts)


# ----------------------------------------------------------------------------- quantizers
class CodebookQuantizer(nn.Module, ABC):
    """The parts both quantizers share. Subclasses hold ``codebook`` (K, D), a parameter or a buffer.

    Args:
        num_codes: K, the codebook size.
        dim: D, the size of each code vector (z_e's dim 1).
        beta: weight of the commitment loss (0.25 in the paper).
        kmeans_iters: 0 keeps the random initial codebook; n > 0 replaces it, at the first training
            forward, by k-means of that batch's encoder outputs: k-means++ seeds and n Lloyd
            iterations. Done once: the ``initialized`` buffer (saved in the state dict) records it.
        restart_after: a code no vector took in this many consecutive training steps is re-seeded
            with a random encoder output of the current batch; 0 never restarts.
        dead_after: idle training steps after which a code counts as dead in ``dead_codes``.
        restart_below: a code whose moving average of use falls below this many vectors a step is
            re-seeded the same way, rare codes as well as unused ones (0: off). The average is an
            exponential one with ``usage_decay`` (about the last 1 / (1 - decay) steps); it starts,
            and a re-seeded code restarts, at the step's mean use per code, so a code gets the time
            an average code's use takes to decay below the threshold to prove itself.

    Buffers: ``initialized`` () bool; ``idle_steps`` (K,) long, consecutive training steps each
    code went unused (by every process together); with ``restart_below``, ``usage_ema`` (K,), the
    moving average of each code's use per step (negative until the first training step).
    """

    codebook: Tensor

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, kmeans_iters: int = 0,
                 restart_after: int = 0, dead_after: int = 100, restart_below: float = 0.0,
                 usage_decay: float = 0.99):
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"a codebook needs num_codes >= 1 and dim >= 1, got {num_codes} and {dim}")
        for name, value in (("kmeans_iters", kmeans_iters), ("restart_after", restart_after)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0 turns it off), got {value}")
        if dead_after < 1:
            raise ValueError(f"dead_after must be >= 1 training step, got {dead_after}")
        if not restart_below >= 0:
            raise ValueError(f"restart_below must be >= 0 vectors a step (0 turns it off), "
                             f"got {restart_below}")
        if not 0.0 <= usage_decay < 1.0:
            raise ValueError(f"usage_decay must be in [0, 1), got {usage_decay}")
        self.num_codes = num_codes
        self.dim = dim
        self.beta = beta
        self.kmeans_iters = kmeans_iters
        self.restart_after = restart_after
        self.dead_after = dead_after
        self.restart_below = float(restart_below)
        self.usage_decay = usage_decay
        self.register_buffer("initialized", torch.tensor(kmeans_iters == 0))
        self.register_buffer("idle_steps", torch.zeros(num_codes, dtype=torch.long))
        # only with the rule (a None buffer is not saved: checkpoints without it keep their keys)
        self.usage_ema: Tensor | None
        self.register_buffer("usage_ema", torch.full((num_codes,), -1.0) if self.restart_below > 0 else None)

    # --- what the two variants do differently
    @abstractmethod
    def _codebook_loss(self, z_e: Tensor, e: Tensor) -> Tensor | None:
        """Per-example codebook loss (B,) of z_e and its codes' vectors e (B, D, *spatial), or None."""

    @abstractmethod
    def _learn(self, z: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
        """One training step's codebook update from this process's vectors z (N, D), their codes (N,)
        and counts (K,) long; returns the counts summed over all processes (K,)."""

    @abstractmethod
    def _set_codes(self, index: Tensor, vectors: Tensor) -> None:
        """Make codes ``index`` (M,) the ``vectors`` (M, D), as if freshly initialised."""

    # --- shared
    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, "
                f"kmeans_iters={self.kmeans_iters}, restart_after={self.restart_after}, "
                f"restart_below={self.restart_below:g}")

    def lookup(self, codes: Tensor) -> Tensor:
        """Codebook vectors of stored codes: codes (B, *spatial) long -> (B, D, *spatial).

        With the same codebook (eval mode, or before a training step changes it) the values equal
        the ``z_q`` that ``forward`` returned for these codes, exactly."""
        return F.embedding(codes, self.codebook.detach()).movedim(-1, 1)

    def forward(self, z_e: Tensor) -> Quantized:
        """Quantise encoder outputs z_e (B, D, *spatial); in training mode also update the codebook
        state (k-means initialisation once, EMA statistics, idle counts, restarts)."""
        if z_e.dim() < 2 or z_e.shape[1] != self.dim:
            raise ValueError(f"expected encoder outputs (B, {self.dim}, *spatial), got {tuple(z_e.shape)}")
        if z_e.dtype != self.codebook.dtype:
            raise ValueError(f"encoder outputs are {z_e.dtype} but the codebook is {self.codebook.dtype}; "
                             "convert one of the two (e.g. quantizer.to(dtype))")
        z = z_e.detach().movedim(1, -1).reshape(-1, self.dim)  # (N, D)
        if self.training and not bool(self.initialized):
            self._kmeans_init(z)
        with torch.no_grad():
            codes = nearest_code(z, self.codebook)  # (N,)
        counts = code_counts(codes, self.num_codes)
        codes = codes.view(z_e.shape[0], *z_e.shape[2:])
        e = F.embedding(codes, self.codebook).movedim(-1, 1)  # (B, D, *spatial), the codebook's graph
        # straight-through estimator (eq. 3's sg): the value is e exactly and d z_q / d z_e = I;
        # written e + (z_e - sg[z_e]) rather than z_e + sg[e - z_e] so that lookup(codes) == z_q
        z_q = e.detach() + (z_e - z_e.detach())
        commitment = self.beta * (z_e - e.detach()).pow(2).flatten(1).sum(1)  # eq. 3, third term
        codebook = self._codebook_loss(z_e, e)
        loss = (commitment if codebook is None else commitment + codebook).mean()
        if self.training:
            with torch.no_grad():
                total = self._learn(z, codes.reshape(-1), counts)
                self.idle_steps.copy_(torch.where(total > 0, 0, self.idle_steps + 1))
                if self.usage_ema is not None:
                    mean_use = total.sum().to(self.usage_ema.dtype) / self.num_codes
                    # the first step (still negative): every code starts at the mean use
                    self.usage_ema.copy_(torch.where(self.usage_ema < 0, mean_use, self.usage_ema))
                    self.usage_ema.lerp_(total.to(self.usage_ema.dtype), 1.0 - self.usage_decay)
        dead = (self.idle_steps >= self.dead_after).sum()
        if self.training and (self.restart_after > 0 or self.usage_ema is not None):
            self._restart_idle(z)
        return Quantized(z_q=z_q, codes=codes, loss=loss, commitment=commitment, codebook=codebook,
                         perplexity=perplexity(counts), usage=usage_fraction(counts), dead_codes=dead)

    @torch.no_grad()
    def _kmeans_init(self, z: Tensor) -> None:
        """Codebook <- k-means of the vectors z (N, D) of every process: rank 0's k-means++ seeds,
        then Lloyd iterations whose cluster counts and sums are summed over processes (so the
        result is that of one process holding every rank's batch, from the same seeds). A cluster
        left empty keeps its seed."""
        k = self.num_codes
        centres = kmeans_plus_plus(z, k) if _is_rank0() else z.new_empty(k, self.dim)
        centres = _from_rank0(centres)
        for _ in range(self.kmeans_iters):
            codes = nearest_code(z, centres)
            counts = code_counts(codes, k).to(z.dtype)
            sums = z.new_zeros(k, self.dim).index_add_(0, codes, z)
            counts, sums = _all_reduce_sum(counts, sums)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        self._set_codes(torch.arange(k, device=z.device), centres)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _restart_idle(self, z: Tensor) -> None:
        """Re-seed codes idle for ``restart_after`` steps, or used less than ``restart_below``
        vectors a step on average, with random rows of rank 0's z (N, D)."""
        due = torch.zeros_like(self.idle_steps, dtype=torch.bool)
        if self.restart_after > 0:
            due |= self.idle_steps >= self.restart_after
        if self.usage_ema is not None:
            due |= self.usage_ema < self.restart_below
        idle = due.nonzero().squeeze(1)
        m = idle.numel()  # the same on every rank: idle_steps and usage_ema count the summed usage
        if m == 0:
            return
        if _is_rank0():
            n, dev = z.shape[0], z.device
            rows = torch.randperm(n, device=dev)[:m] if m <= n else torch.randint(n, (m,), device=dev)
            vectors = z[rows]
        else:
            vectors = z.new_empty(m, self.dim)
        self._set_codes(idle, _from_rank0(vectors))
        self.idle_steps[idle] = 0
        if self.usage_ema is not None:  # a fresh code starts at the mean use, as at the first step
            self.usage_ema[idle] = self.usage_ema.mean()


class VectorQuantizer(CodebookQuantizer):
    """VQ with a codebook learned by gradient (van den Oord et al. 2017, eq. 3):
    loss = ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2, straight-through gradient to z_e.

    ``codebook`` (K, D) is a parameter, initialised N(0, 1). Args as :class:`CodebookQuantizer`.
    forward: z_e (B, D, *spatial) -> :class:`Quantized` (``codebook`` term present).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, kmeans_iters: int = 0,
                 restart_after: int = 0, dead_after: int = 100, restart_below: float = 0.0,
                 usage_decay: float = 0.99):
        super().__init__(num_codes, dim, beta, kmeans_iters, restart_after, dead_after, restart_below,
                         usage_decay)
        self.codebook = nn.Parameter(torch.randn(num_codes, dim))

    def _codebook_loss(self, z_e: Tensor, e: Tensor) -> Tensor:
        return (z_e.detach() - e).pow(2).flatten(1).sum(1)  # eq. 3, second term

    def _learn(self, z: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
        return _all_reduce_sum(counts)[0]  # the optimizer moves the codebook; only usage is kept

    def _set_codes(self, index: Tensor, vectors: Tensor) -> None:
        self.codebook.index_copy_(0, index, vectors)


class VectorQuantizerEMA(CodebookQuantizer):
    """VQ with the codebook as exponential moving averages (van den Oord et al. 2017, App. A.1):

        N_i <- decay N_i + (1 - decay) n_i                     (eq. 6; n_i: vectors assigned to code i)
        m_i <- decay m_i + (1 - decay) sum_j z_{i,j}           (eq. 7)
        e_i <- m_i / N^_i,   N^_i = (N_i + eps) / (sum_k N_k + K eps) * sum_k N_k   (eq. 8, Laplace)

    n_i and the sums are over the vectors of every process. The loss is beta ||z_e - sg[e]||^2 only.
    Buffers (K, D) ``codebook`` (initialised N(0, 1)) and ``ema_sums`` m, (K,) ``ema_counts`` N; they
    start as if each code had been assigned itself once (N = 1, m = e), which a k-means
    initialisation or a restart also does for the codes it sets.

    Args as :class:`CodebookQuantizer`, and ``decay`` (the EMA's gamma, 0.99 in the paper) and ``eps``
    (Laplace smoothing of the counts, so that e_i stays finite when N_i decays to 0).
    forward: z_e (B, D, *spatial) -> :class:`Quantized` (``codebook`` None).
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, kmeans_iters: int = 0,
                 restart_after: int = 0, dead_after: int = 100, decay: float = 0.99, eps: float = 1e-5,
                 restart_below: float = 0.0, usage_decay: float = 0.99):
        super().__init__(num_codes, dim, beta, kmeans_iters, restart_after, dead_after, restart_below,
                         usage_decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.decay = decay
        self.eps = eps
        codebook = torch.randn(num_codes, dim)
        self.register_buffer("codebook", codebook)
        self.register_buffer("ema_counts", torch.ones(num_codes))
        self.register_buffer("ema_sums", codebook.clone())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, decay={self.decay}, eps={self.eps}"

    def _codebook_loss(self, z_e: Tensor, e: Tensor) -> None:
        return None

    def _learn(self, z: Tensor, codes: Tensor, counts: Tensor) -> Tensor:
        sums = z.new_zeros(self.num_codes, self.dim).index_add_(0, codes, z)
        counts, sums = _all_reduce_sum(counts.to(z.dtype), sums)
        self.ema_counts.lerp_(counts, 1.0 - self.decay)  # eq. 6
        self.ema_sums.lerp_(sums, 1.0 - self.decay)  # eq. 7
        n = self.ema_counts.sum()
        smoothed = (self.ema_counts + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace
        self.codebook.copy_(self.ema_sums / smoothed[:, None])  # eq. 8
        return counts

    def _set_codes(self, index: Tensor, vectors: Tensor) -> None:
        self.codebook.index_copy_(0, index, vectors)
        self.ema_sums.index_copy_(0, index, vectors)
        self.ema_counts.index_fill_(0, index, 1.0)

