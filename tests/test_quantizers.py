"""Vector quantizers (vaelab.quantizers) against their definitions: brute-force nearest codes, the
straight-through and stop-gradient routing of eq. 3, the EMA update of App. A.1 computed by hand,
k-means initialisation, dead-code restarts, usage metrics, and a two-process gloo run whose ranks end
with the codebook of one process holding the global batch."""

from __future__ import annotations

import ast
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vaelab.quantizers import (
    CodeUsage,
    Quantized,
    VectorQuantizer,
    VectorQuantizerEMA,
    kmeans_plus_plus,
    nearest_code,
    perplexity,
    usage_fraction,
)

QUANTIZERS = [VectorQuantizer, VectorQuantizerEMA]
IDS = ["gradient", "ema"]


def _set_codebook(q, codebook: torch.Tensor) -> None:
    with torch.no_grad():
        q.codebook.copy_(codebook)
        if isinstance(q, VectorQuantizerEMA):  # as if each code had been assigned itself once
            q.ema_sums.copy_(codebook)
            q.ema_counts.fill_(1.0)


def _state(q) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in q.state_dict().items()}


def _clusters(centres: torch.Tensor, per: int, noise: float, seed: int) -> torch.Tensor:
    """Rows around each centre (k, D) -> (k * per, D), shuffled."""
    g = torch.Generator().manual_seed(seed)
    x = centres.repeat_interleave(per, 0)
    x = x + noise * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x[torch.randperm(len(x), generator=g)]


@pytest.mark.parametrize("cls", QUANTIZERS, ids=IDS)
@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 7), (2, 3, 4, 5)], ids=["vectors", "audio", "images"])
def test_codes_are_the_brute_force_nearest_codes(cls, shape):
    torch.manual_seed(0)
    q = cls(num_codes=11, dim=3).double().eval()
    z_e = torch.randn(shape, dtype=torch.float64)
    out = q(z_e)
    assert out.codes.shape == (shape[0], *shape[2:]) and out.codes.dtype == torch.long
    vectors, codebook = z_e.movedim(1, -1).reshape(-1, 3), q.codebook.detach()
    expected = []
    for z in vectors:  # the definition: loop over the codes, keep the first closest
        best, best_d = -1, math.inf
        for k in range(q.num_codes):
            d = float(((z - codebook[k]) ** 2).sum())
            if d < best_d:
                best, best_d = k, d
        expected.append(best)
    assert out.codes.reshape(-1).tolist() == expected
    assert nearest_code(vectors, codebook).tolist() == expected


@pytest.mark.parametrize("cls", QUANTIZERS, ids=IDS)
def test_straight_through_gradient_reaches_the_encoder_unchanged(cls):
    torch.manual_seed(1)
    q = cls(num_codes=5, dim=2).double()
    z_e = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad((w * q(z_e).z_q).sum(), z_e)
    assert torch.equal(g, w)


def test_codebook_loss_moves_only_the_codebook_and_commitment_only_the_encoder():
    torch.manual_seed(2)
    beta, B = 0.3, 3
    q = VectorQuantizer(num_codes=4, dim=2, beta=beta).double()
    z_e = torch.randn(B, 2, 5, dtype=torch.float64, requires_grad=True)
    out = q(z_e)
    e = q.lookup(out.codes)
    # the terms' values: per example sums over the latent (eq. 3), the loss their batch mean
    sq = ((z_e - e) ** 2).flatten(1).sum(1).detach()
    assert torch.allclose(out.codebook, sq) and torch.allclose(out.commitment, beta * sq)
    assert torch.allclose(out.loss, (1 + beta) * sq.mean())

    # codebook term: d/de_k mean_b sum_t ||z - e_k||^2 = (2/B) sum over its vectors of (e_k - z)
    g_z, g_e = torch.autograd.grad(out.codebook.mean(), [z_e, q.codebook], allow_unused=True,
                                   retain_graph=True)
    assert g_z is None
    expected = torch.zeros_like(q.codebook)
    vectors, codes = z_e.detach().movedim(1, -1).reshape(-1, 2), out.codes.reshape(-1)
    for z, k in zip(vectors, codes):
        expected[k] += 2 / B * (q.codebook[k].detach() - z)
    assert torch.allclose(g_e, expected)

    # commitment term: d/dz beta ||z - e||^2 / B = 2 beta (z - e) / B, nothing to the codebook
    g_z, g_e = torch.autograd.grad(out.commitment.mean(), [z_e, q.codebook], allow_unused=True)
    assert g_e is None
    assert torch.allclose(g_z, 2 * beta * (z_e - e).detach() / B)


def test_ema_update_matches_the_hand_computed_step_and_eval_changes_nothing():
    decay, eps = 0.5, 0.1
    q = VectorQuantizerEMA(num_codes=2, dim=2, decay=decay, eps=eps, beta=0.25).double()
    _set_codebook(q, torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64))
    # (B=1, D=2, T=3): vectors (1, 0), (0, 1) -> code 0; (9, 10) -> code 1
    z_e = torch.tensor([[[1.0, 0.0, 9.0], [0.0, 1.0, 10.0]]], dtype=torch.float64)

    before = _state(q)
    q.eval()
    out = q(z_e)
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())
    assert out.codes.tolist() == [[0, 0, 1]] and out.codebook is None
    assert torch.allclose(out.loss, torch.tensor(0.25 * (1 + 1 + 1), dtype=torch.float64))

    q.train()
    q(z_e)
    # N = 0.5 * 1 + 0.5 * (2, 1) = (1.5, 1.0); m0 = 0.5 * (0, 0) + 0.5 * (1, 1) = (0.5, 0.5);
    # m1 = 0.5 * (10, 10) + 0.5 * (9, 10) = (9.5, 10); sum N = 2.5, N^ = (N + 0.1) / 2.7 * 2.5
    assert torch.allclose(q.ema_counts, torch.tensor([1.5, 1.0], dtype=torch.float64))
    assert torch.allclose(q.ema_sums, torch.tensor([[0.5, 0.5], [9.5, 10.0]], dtype=torch.float64))
    n0, n1 = 1.6 / 2.7 * 2.5, 1.1 / 2.7 * 2.5
    expected = torch.tensor([[0.5 / n0, 0.5 / n0], [9.5 / n1, 10.0 / n1]], dtype=torch.float64)
    assert torch.allclose(q.codebook, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("cls", QUANTIZERS, ids=IDS)
def test_eval_mode_changes_no_state(cls):
    torch.manual_seed(3)
    q = cls(num_codes=8, dim=2, kmeans_iters=2, restart_after=1).double().eval()
    q.idle_steps.fill_(5)  # every code due for a restart, and no k-means yet: neither happens in eval
    before = _state(q)
    for _ in range(3):
        q(torch.randn(4, 2, 3, dtype=torch.float64))
    assert all(torch.equal(before[k], v) for k, v in q.state_dict().items())


@pytest.mark.parametrize("cls", QUANTIZERS, ids=IDS)
def test_lookup_of_the_codes_reproduces_z_q_exactly(cls):
    torch.manual_seed(4)
    q = cls(num_codes=6, dim=3)
    z_e = torch.randn(2, 3, 4, 5, requires_grad=True)
    out = q.eval()(z_e)
    assert out.z_q.shape == z_e.shape
    assert torch.equal(q.lookup(out.codes), out.z_q.detach())
    stored = out.codes.clone()  # decoded later, e.g. from a prior's samples
    assert torch.equal(q.lookup(stored), q(z_e.detach()).z_q)


@pytest.mark.parametrize("cls", QUANTIZERS, ids=IDS)
def test_dead_codes_are_counted_then_restarted_until_every_code_is_used(cls):
    torch.manual_seed(5)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]], dtype=torch.float64)
    x = _clusters(centres, 16, 0.5, seed=5)  # (64, 2)
    z_e = x.reshape(8, 8, 2).transpose(1, 2)  # (B=8, D=2, T=8)
    q = cls(num_codes=8, dim=2, restart_after=2, dead_after=1).double()
    _set_codebook(q, torch.cat([centres, torch.full((4, 2), 100.0, dtype=torch.float64)]))

    first = q(z_e)  # codes 4..7 idle one step: dead (dead_after=1), not yet restarted
    assert first.usage == 0.5 and first.dead_codes == 4
    assert q.idle_steps.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    second = q(z_e)  # idle two steps: restarted from rows of this batch
    assert second.usage == 0.5 and second.dead_codes == 4
    assert q.idle_steps.tolist() == [0] * 8
    revived = q.codebook.detach()[4:]
    assert all(any(torch.equal(r, row) for row in x) for r in revived)
    after = q.eval()(z_e)
    assert after.usage == 1.0 and after.dead_codes == 0


@pytest.mark.parametrize("cls", QUANTIZERS, ids=IDS)
def test_rare_codes_are_restarted_when_their_average_use_falls_below_the_threshold(cls):
    """Two clusters of 30 vectors a step and one of 1: no code is ever idle, so restart_after never
    fires; with restart_below = 2 and usage_decay = 0.5 the rare code's average use starts at the
    mean, 61 / 3, and halves towards 1 each step (10.67, 5.83, 3.42, 2.21, 1.60): it is re-seeded at
    step 5 exactly, with a row of that batch, and starts again at the mean use; the two common codes
    never are. Without the rule nothing is restarted and the state dict has no usage_ema."""
    centres = torch.tensor([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]], dtype=torch.float64)

    def batch(step):
        common = _clusters(centres[:2], 30, 0.3, seed=step)
        rare = centres[2:] + 0.3 * torch.randn(1, 2, generator=torch.Generator().manual_seed(100 + step),
                                               dtype=torch.float64)
        return torch.cat([common, rare]).T.unsqueeze(0)  # (1, D=2, T=61)

    q = cls(num_codes=3, dim=2, restart_after=1000, restart_below=2.0, usage_decay=0.5).double()
    _set_codebook(q, centres)
    torch.manual_seed(0)
    for step in range(1, 5):
        q(batch(step))
        assert torch.equal(q.codebook.detach()[2].round(), centres[2]), step  # still the rare cluster's
    assert q.usage_ema[2].item() == pytest.approx(2.2083, abs=1e-3)
    z5 = batch(5)
    q(z5)
    moved = q.codebook.detach()[2]
    assert not torch.equal(moved.round(), centres[2])
    assert any(torch.equal(moved, row) for row in z5[0].T)
    assert q.usage_ema[2].item() == pytest.approx(61 / 3)  # the mean use per code (the averages sum to 61)
    assert q.usage_ema[:2].min() > 20  # the common codes: far above the threshold

    off = cls(num_codes=3, dim=2, restart_after=1000).double()
    _set_codebook(off, centres)
    for step in range(1, 21):
        off(batch(step))
    assert torch.equal(off.codebook.detach()[2].round(), centres[2]) and "usage_ema" not in off.state_dict()


def test_kmeans_initialisation_runs_once_survives_resume_and_beats_random_init():
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]], dtype=torch.float64)
    x = _clusters(centres, 25, 0.1, seed=6)
    z_e = x.reshape(10, 10, 2).transpose(1, 2)  # (B=10, D=2, T=10)

    def error(q) -> float:
        q.eval()
        return float(((q(z_e).z_q - z_e) ** 2).sum(1).mean())

    torch.manual_seed(6)
    random_init = VectorQuantizer(num_codes=4, dim=2).double()
    torch.manual_seed(6)
    q = VectorQuantizer(num_codes=4, dim=2, kmeans_iters=5).double()
    assert not q.initialized and torch.equal(q.codebook, random_init.codebook)
    q.train()(z_e)
    assert q.initialized
    assert error(q) < 0.05 < 10 * error(q) < error(random_init)  # noise variance 2 * 0.1^2 = 0.02
    init = q.codebook.detach().clone()
    # Lloyd's fixed point: every code is the mean of its cluster's rows (not merely a seed row)
    truth = nearest_code(x, centres)
    means = torch.stack([x[truth == k].mean(0) for k in range(4)])
    assert torch.allclose(init[nearest_code(means, init)], means, rtol=0, atol=1e-12)

    # a later training batch (shifted clusters) does not initialise again
    q.train()(z_e + 3.0)
    assert torch.equal(q.codebook, init)
    # nor does a resumed quantizer: the flag travels in the state dict
    state = q.state_dict()
    assert state["initialized"].item() is True
    torch.manual_seed(7)
    resumed = VectorQuantizer(num_codes=4, dim=2, kmeans_iters=5).double()
    resumed.load_state_dict(state)
    resumed.train()(z_e + 3.0)
    assert torch.equal(resumed.codebook, init)


def test_kmeans_plus_plus_seeds_one_row_per_separated_cluster():
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]], dtype=torch.float64)
    x = _clusters(centres, 10, 0.01, seed=8)
    torch.manual_seed(8)
    seeds = kmeans_plus_plus(x, 3)
    assert sorted(nearest_code(seeds, centres).tolist()) == [0, 1, 2]
    assert all(any(torch.equal(s, row) for row in x) for s in seeds)
    torch.manual_seed(8)
    assert kmeans_plus_plus(x[:2], 4).shape == (4, 2)  # fewer rows than seeds: rows repeat


@pytest.mark.parametrize("cls", QUANTIZERS, ids=IDS)
def test_perplexity_and_usage_of_known_assignments(cls):
    q = cls(num_codes=4, dim=1).double().eval()
    _set_codebook(q, torch.tensor([[0.0], [10.0], [20.0], [30.0]], dtype=torch.float64))

    def run(values) -> Quantized:
        return q(torch.tensor(values, dtype=torch.float64).reshape(1, 1, -1))

    two = run([0.0, 0.1, 10.0, 9.9])  # counts (2, 2, 0, 0)
    assert two.codes.tolist() == [[0, 0, 1, 1]]
    assert math.isclose(two.perplexity, 2.0, rel_tol=1e-6) and two.usage == 0.5
    uneven = run([0.0, 1.0, -1.0, 30.0])  # counts (3, 0, 0, 1)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(uneven.perplexity, math.exp(h), rel_tol=1e-6) and uneven.usage == 0.5
    every = run([0.0, 10.0, 20.0, 30.0])
    assert math.isclose(every.perplexity, 4.0, rel_tol=1e-6) and every.usage == 1.0
    assert set(every.metrics()) == {"perplexity", "usage", "dead_codes"}


def test_usage_over_an_epoch_accumulates_the_batches():
    epoch = CodeUsage(num_codes=8)
    for codes in (torch.tensor([[0, 0]]), torch.tensor([[1, 1]]), torch.tensor([[2, 3], [2, 3]])):
        epoch.update(codes)
    # every batch alone uses 1 or 2 codes; the epoch used 4 of 8, with counts (2, 2, 2, 2, 0, ...)
    assert epoch.counts.tolist() == [2, 2, 2, 2, 0, 0, 0, 0]
    assert math.isclose(epoch.perplexity(), 4.0, rel_tol=1e-6) and epoch.usage() == 0.5
    assert math.isclose(perplexity(torch.tensor([5, 0, 0])), 1.0) and usage_fraction(torch.zeros(3)) == 0
    epoch.all_reduce()  # not distributed: unchanged
    assert epoch.counts.sum() == 8


def test_quantizers_module_stands_on_the_maths_floor():
    src = Path(__file__).resolve().parents[1] / "src" / "vaelab" / "quantizers.py"
    names = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    assert not [n for n in names if n.startswith((".", "vaelab"))]


def test_wrong_input_shapes_and_dtypes_are_refused():
    q = VectorQuantizer(num_codes=4, dim=3)
    with pytest.raises(ValueError, match=r"\(B, 3, \*spatial\)"):
        q(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match="float64"):
        q(torch.zeros(2, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------- two processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch() -> torch.Tensor:
    return torch.randn(8, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(11))


def _ema_quantizer() -> VectorQuantizerEMA:
    torch.manual_seed(0)  # the same initial codebook on every rank and in the single process
    return VectorQuantizerEMA(num_codes=6, dim=3, decay=0.9, eps=1e-3).double()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        q = _ema_quantizer()
        q(_global_batch()[4 * rank: 4 * rank + 4])  # this rank's half of the global batch
        results = {f"ema.{k}": v for k, v in q.state_dict().items()}
        # random choices (k-means++ seeds, restart rows) differ between ranks unless rank 0's are sent
        for cls in QUANTIZERS:
            torch.manual_seed(0)
            r = cls(num_codes=16, dim=3, kmeans_iters=2, restart_after=1).double()
            torch.manual_seed(100 + rank)
            for step in range(2):
                r(torch.randn(2, 3, 5, dtype=torch.float64) + step)
            results.update({f"{cls.__name__}.{k}": v for k, v in r.state_dict().items()})
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_ranks_hold_the_codebook_of_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    alone = _ema_quantizer()
    alone(_global_batch())
    for k, v in alone.state_dict().items():
        assert torch.allclose(r0[f"ema.{k}"], v, rtol=1e-12, atol=1e-12), k
    assert not torch.equal(alone.codebook, _ema_quantizer().codebook)  # the step did change it
    # the restarts happened (16 codes, 10 vectors a rank) and were the same on both ranks
    assert r0["VectorQuantizerEMA.initialized"] and (r0["VectorQuantizerEMA.idle_steps"] == 0).all()
