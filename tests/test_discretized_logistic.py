"""The discretized logistic likelihood of 8-bit levels (Salimans et al. 2017) against its definition.

The 256 bin probabilities sum to 1 and equal the logistic CDF's differences computed with 60-digit
arithmetic (mpmath), out to parameters where float64 CDF differences cancel to nothing; gradients
stay finite at extreme parameters; a sharp distribution at the right level costs close to 0
bits/dim; samples lie on the grid with the stated frequencies; the mean is exact.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from vaelab.distributions import (
    LIKELIHOODS,
    DiscretizedLogistic,
    DiscretizedLogisticHead,
    discretized_logistic,
    discretized_logistic_mixture,
    likelihood_head,
)
from vaelab.errors import VaelabError

DT = torch.float64
LEVELS = torch.arange(256, dtype=DT) / 255
# means inside, on a bin edge, at the borders and far outside [0, 1]; scales from a point mass to flat
LOCS = [-50.0, -1.0, 0.0, 1 / 510, 0.3, 100 / 255 + 1 / 510, 0.5, 1.0, 1.2, 40.0]
LOG_SCALES = [-40.0, -12.0, -7.0, -4.0, -2.0, 0.0, 3.0, 12.0, 40.0]


def _grid():
    loc, log_scale = torch.meshgrid(torch.tensor(LOCS, dtype=DT), torch.tensor(LOG_SCALES, dtype=DT),
                                    indexing="ij")
    return loc.flatten(), log_scale.flatten()


def test_the_256_bins_sum_to_one():
    loc, log_scale = _grid()
    logp = DiscretizedLogistic(loc, log_scale).log_prob(LEVELS[:, None])  # (256, P)
    assert logp.shape == (256, len(loc)) and (logp <= 0).all()
    assert torch.allclose(torch.logsumexp(logp, 0), torch.zeros(len(loc), dtype=DT), atol=1e-12)
    # float32, the training precision
    logp32 = DiscretizedLogistic(loc.float(), log_scale.float()).log_prob(LEVELS[:, None].float())
    assert torch.allclose(torch.logsumexp(logp32, 0), torch.zeros(len(loc)), atol=1e-5)


def test_matches_the_logistic_cdf_in_60_digit_arithmetic():
    import mpmath  # installed with torch (through sympy)
    loc, log_scale = _grid()
    logp = DiscretizedLogistic(loc, log_scale).log_prob(LEVELS[:, None])
    with mpmath.workdps(60):  # a local precision, the global context untouched
        for p in range(len(loc)):
            mu, s = mpmath.mpf(loc[p].item()), mpmath.exp(mpmath.mpf(log_scale[p].item()))

            def mass(k, mu=mu, s=s):
                """F(u) - F(l) for bin k, edges (k +- 1/2)/255 rounded to float64 (at a scale of e^-40
                the rounding moves an edge by many scales), or the same as S(l) - S(u) with
                S = 1 - F = 1/(1 + e^{(t - mu)/s}) above the mean (60 digits cannot hold 1 - 1e-70)."""
                u = mpmath.inf if k == 255 else mpmath.mpf((2 * k + 1) / 510)
                l = -mpmath.inf if k == 0 else mpmath.mpf((2 * k - 1) / 510)
                if (k - mu * 255) < 0:
                    return 1 / (1 + mpmath.exp(-(u - mu) / s)) - 1 / (1 + mpmath.exp(-(l - mu) / s))
                return 1 / (1 + mpmath.exp((l - mu) / s)) - 1 / (1 + mpmath.exp((u - mu) / s))

            for k in range(256):
                ref = float(mpmath.log(mass(k)))
                got = logp[k, p].item()
                assert math.isclose(got, ref, rel_tol=1e-10, abs_tol=1e-10), (loc[p], log_scale[p], k)


def test_gradients_match_the_naive_form_and_stay_finite_at_extremes():
    # where the mass is not small, the naive log(F(u) - F(l)) is accurate, and so are its gradients
    g = torch.Generator().manual_seed(0)
    loc = (torch.rand(200, dtype=DT, generator=g) * 1.2 - 0.1).requires_grad_()
    log_scale = (torch.rand(200, dtype=DT, generator=g) * 4 - 5).requires_grad_()
    x = (loc.detach() + torch.randn(200, dtype=DT, generator=g) * 0.05).clamp(0, 1).mul(255).round() / 255
    logp = DiscretizedLogistic(loc, log_scale).log_prob(x)
    s = torch.exp(log_scale)
    upper = torch.where(x > 1 - 1e-6, torch.ones_like(x), torch.sigmoid((x + 1 / 510 - loc) / s))
    lower = torch.where(x < 1e-6, torch.zeros_like(x), torch.sigmoid((x - 1 / 510 - loc) / s))
    naive = torch.log(upper - lower)
    keep = naive.detach() > -8  # mass above 3e-4: the subtraction loses less than 1e-12 of it
    assert keep.sum() > 100
    grads = torch.autograd.grad(logp[keep].sum(), (loc, log_scale))
    naive_grads = torch.autograd.grad(naive[keep].sum(), (loc, log_scale))
    assert torch.allclose(logp[keep], naive[keep], rtol=1e-10, atol=1e-10)
    for a, b in zip(grads, naive_grads):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-8)
    # extreme parameters, float32 and float64: log p and its gradients are finite
    for dtype in (torch.float32, torch.float64):
        loc = torch.tensor([-1e4, -3.0, 0.0, 0.5, 1.0, 4.0, 1e4], dtype=dtype)
        log_scale = torch.tensor([-200.0, -60.0, -20.0, 0.0, 20.0, 80.0, 200.0], dtype=dtype)
        loc, log_scale = (t.requires_grad_() for t in torch.meshgrid(loc, log_scale, indexing="ij"))
        x = LEVELS[[0, 1, 128, 254, 255], None, None].to(dtype)
        logp = DiscretizedLogistic(loc, log_scale).log_prob(x)
        ga, gb = torch.autograd.grad(logp.sum(), (loc, log_scale))
        assert torch.isfinite(logp).all() and torch.isfinite(ga).all() and torch.isfinite(gb).all()


def test_a_sharp_distribution_at_the_right_level_costs_almost_no_bits():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 4, 4), generator=g).to(DT) / 255
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # the edge bins too
    dims = x[0].numel()
    bits = []
    for log_scale in [-4.0, -6.0, -8.0, -10.0, -14.0]:
        p = discretized_logistic(x, torch.full_like(x, log_scale), 3)
        assert p.batch_shape == (2,) and p.event_shape == (3, 4, 4)
        bits.append((-p.log_prob(x) / (dims * math.log(2))).max().item())
    assert all(a > b for a, b in zip(bits, bits[1:])) and bits[-1] < 1e-12
    # one level off, it is the neighbour bin that is sharp: many bits
    wrong = discretized_logistic(x, torch.full_like(x, -10.0), 3).log_prob((x + 1 / 255).clamp(max=1))
    assert (-wrong / (dims * math.log(2)) > 10).all()


def test_samples_lie_on_the_grid_with_the_bin_frequencies():
    torch.manual_seed(2)
    loc = torch.tensor([0.5, -0.01, 0.98], dtype=DT)
    log_scale = torch.log(torch.tensor([0.02, 0.01, 0.05], dtype=DT))
    d = DiscretizedLogistic(loc, log_scale)
    n = 100_000
    x = d.sample((n,))
    assert x.shape == (n, 3) and x.dtype == DT and not x.requires_grad
    k = x * 255
    assert (k == k.round()).all() and (x >= 0).all() and (x <= 1).all()
    probs = d.log_prob(LEVELS[:, None]).exp()  # (256, 3)
    for j in range(3):
        freq = torch.bincount(k[:, j].round().long(), minlength=256).to(DT) / n
        sd = (probs[:, j] * (1 - probs[:, j]) / n).sqrt()
        assert ((freq - probs[:, j]).abs() <= 5 * sd + 1e-4).all()


def test_mean_is_the_exact_expectation():
    loc, log_scale = _grid()
    d = DiscretizedLogistic(loc, log_scale)
    expected = (LEVELS[:, None] * d.log_prob(LEVELS[:, None]).exp()).sum(0)
    assert torch.allclose(d.mean, expected, atol=1e-12)


def test_mixture_is_normalised_and_weighs_its_components():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 2, 3, 5, dtype=DT, generator=g)
    loc = torch.rand(4, 2, 3, 5, dtype=DT, generator=g)
    log_scale = torch.randn(4, 2, 3, 5, dtype=DT, generator=g) - 3
    p = discretized_logistic_mixture(logits, loc, log_scale, 2)
    assert p.batch_shape == (4,) and p.event_shape == (2, 3)
    bins = p.base_dist.log_prob(LEVELS[:, None, None, None])  # (256, 4, 2, 3)
    assert torch.allclose(torch.logsumexp(bins, 0), torch.zeros(4, 2, 3, dtype=DT), atol=1e-12)
    x = torch.randint(0, 256, (4, 2, 3), generator=g).to(DT) / 255
    components = DiscretizedLogistic(loc, log_scale).log_prob(x[..., None])
    by_hand = torch.logsumexp(torch.log_softmax(logits, -1) + components, -1).sum((1, 2))
    assert torch.allclose(p.log_prob(x), by_hand, rtol=1e-12)
    s = p.sample((7,))
    assert s.shape == (7, 4, 2, 3) and (s * 255 == (s * 255).round()).all()


def test_head_decodes_params_into_an_image_likelihood():
    head = likelihood_head("discretized_logistic")
    assert isinstance(head, DiscretizedLogisticHead)
    assert LIKELIHOODS["discretized_logistic"] is DiscretizedLogisticHead
    g = torch.Generator().manual_seed(4)
    params = torch.randn(5, 2, 3, 4, 4, dtype=DT, generator=g)  # (B, params_per_dim, C, H, W)
    x = torch.randint(0, 256, (5, 3, 4, 4), generator=g).to(DT) / 255
    p = head(params, (3, 4, 4))
    assert p.batch_shape == (5,) and p.event_shape == (3, 4, 4)
    loc, raw = params.unbind(1)
    log_scale = -9.0 + F.softplus(raw + 9.0)
    assert torch.allclose(head.log_prob(params, x, (3, 4, 4)),
                          DiscretizedLogistic(loc, log_scale).log_prob(x).sum((1, 2, 3)), rtol=1e-12)
    assert torch.allclose(head.mean(params, 3), DiscretizedLogistic(loc, log_scale).mean)
    head.check_data(x)
    with pytest.raises(VaelabError, match="8-bit levels"):
        head.check_data(torch.tensor([0.0, 0.5, 1.0]))  # 0.5 = 127.5/255 lies between two levels
    with pytest.raises(VaelabError, match="8-bit levels"):
        head.check_data(torch.tensor([1.2]))
