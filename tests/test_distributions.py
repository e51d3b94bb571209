"""The fused fast paths in vaelab.distributions against torch.distributions' reference objects.

Each fast path (the Bernoulli log-likelihood, the diagonal Gaussian's sampler and density, the
standard normal prior's density, and their registered closed-form KL) must give the reference
numbers and the reference gradients; the KL is also checked against Monte Carlo.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.distributions import (
    BernoulliHead,
    DiagonalGaussian,
    FactorisedBernoulli,
    StandardNormal,
    bernoulli,
    bernoulli_log_prob,
    diag_gaussian,
    standard_normal,
)
from vaelab.errors import VaelabError

DT = torch.float64


def _logits_and_data(shape_s, shape_x, seed=0, binary=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape_s, *shape_x, generator=g, dtype=DT) * 8  # saturated values included
    x = torch.rand(*shape_x, generator=g, dtype=DT)
    return logits, ((x < 0.3).to(DT) if binary else x)


@pytest.mark.parametrize("event_dims, shape_x", [(1, (5, 784)), (3, (4, 1, 6, 6))])
@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_log_prob_matches_independent_bernoulli(event_dims, shape_x, binary):
    logits, x = _logits_and_data((7,), shape_x, binary=binary)  # x broadcasts over 7 samples
    ref = Independent(Bernoulli(logits=logits, validate_args=False), event_dims).log_prob(x)
    fast = bernoulli_log_prob(logits, x, event_dims)
    assert fast.shape == ref.shape == (7, shape_x[0])
    assert torch.allclose(fast, ref, rtol=1e-12, atol=1e-9)
    # float32, the training precision: the same to 1e-5 relative
    l32, x32 = logits.float(), x.float()
    ref32 = Independent(Bernoulli(logits=l32, validate_args=False), event_dims).log_prob(x32)
    assert torch.allclose(bernoulli_log_prob(l32, x32, event_dims), ref32, rtol=1e-5, atol=1e-3)


def test_bernoulli_log_prob_gradient_matches_the_reference():
    logits, x = _logits_and_data((3,), (4, 50), seed=1)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    weights = torch.randn(3, 4, dtype=DT)
    (bernoulli_log_prob(a, x) * weights).sum().backward()
    (Independent(Bernoulli(logits=b), 1).log_prob(x) * weights).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    # d/dl [x l - softplus(l)] = x - sigmoid(l)
    assert torch.allclose(a.grad, (x - torch.sigmoid(logits)) * weights[..., None], atol=1e-12)


def test_factorised_bernoulli_is_an_independent_bernoulli():
    logits, x = _logits_and_data((2,), (3, 1, 4, 4), seed=2)
    d = bernoulli(logits, 3)
    assert isinstance(d, FactorisedBernoulli) and isinstance(d, Independent)
    assert d.batch_shape == (2, 3) and d.event_shape == (1, 4, 4)
    assert torch.allclose(d.mean, torch.sigmoid(logits))
    e = d.expand((5, 2, 3))
    assert isinstance(e, FactorisedBernoulli) and e.batch_shape == (5, 2, 3)
    ref = Independent(Bernoulli(logits=logits), 3).log_prob(x)
    assert torch.allclose(e.log_prob(x), ref.expand(5, 2, 3), atol=1e-9)


def test_factorised_bernoulli_samples_have_the_right_shape_values_and_frequencies():
    """Monte Carlo: 20,000 draws per pixel; each frequency within 5 standard errors of sigmoid(l)."""
    torch.manual_seed(0)
    logits = torch.tensor([[-6.0, -1.0, 0.0], [0.5, 2.0, 30.0]], dtype=DT)
    d = bernoulli(logits, 1)
    assert d.sample().shape == (2, 3)
    draws = d.sample((20_000,))
    assert draws.shape == (20_000, 2, 3) and draws.dtype == DT
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(logits)
    se = torch.sqrt(p * (1 - p) / 20_000).clamp(min=1e-4)
    assert ((draws.mean(0) - p).abs() <= 5 * se).all()
    assert not draws[:, 1, 2].eq(0).any()  # p = 1 - 1e-13: always 1 here
    assert not d.sample().requires_grad


def _gaussian(seed=0, batch=(6,), dim=4):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(*batch, dim, generator=g, dtype=DT)
    logvar = torch.randn(*batch, dim, generator=g, dtype=DT)
    return mu, logvar, Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def test_diagonal_gaussian_density_and_sampler_match_independent_normal():
    mu, logvar, ref = _gaussian()
    q = diag_gaussian(mu, logvar)
    assert isinstance(q, DiagonalGaussian) and q.batch_shape == (6,) and q.event_shape == (4,)
    torch.manual_seed(0)
    z = q.rsample((3,))
    torch.manual_seed(0)
    z_ref = ref.rsample((3,))
    assert torch.allclose(z, z_ref, atol=1e-12)  # the same draws, reparameterised the same way
    assert torch.allclose(q.log_prob(z), ref.log_prob(z), atol=1e-12)
    e = q.expand((2, 6))
    assert isinstance(e, DiagonalGaussian) and e.logvar.shape == (2, 6, 4)
    assert torch.allclose(e.log_prob(z[:2]), ref.expand((2, 6)).log_prob(z[:2]), atol=1e-12)


def test_diagonal_gaussian_rsample_gradients_match_the_reference():
    mu, logvar, _ = _gaussian(seed=1)
    grads = []

    def reference(m, lv):
        return Independent(Normal(m, torch.exp(0.5 * lv)), 1)

    for build in (diag_gaussian, reference):
        m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        torch.manual_seed(3)
        (build(m, lv).rsample((5,)) ** 2).sum().backward()
        grads.append((m.grad, lv.grad))
    assert torch.allclose(grads[0][0], grads[1][0]) and torch.allclose(grads[0][1], grads[1][1])


def test_standard_normal_density():
    p = standard_normal(4, dtype=DT)
    assert isinstance(p, StandardNormal) and p.batch_shape == () and p.event_shape == (4,)
    ref = Independent(Normal(torch.zeros(4, dtype=DT), torch.ones(4, dtype=DT)), 1)
    z = torch.randn(3, 5, 4, dtype=DT)
    assert torch.allclose(p.log_prob(z), ref.log_prob(z), atol=1e-12)
    assert p.log_prob(torch.zeros(4, dtype=DT)).item() == pytest.approx(-2 * math.log(2 * math.pi))
    e = p.expand((3,))
    assert isinstance(e, StandardNormal)
    assert torch.allclose(e.log_prob(z[0, 0]), ref.expand((3,)).log_prob(z[0, 0]), atol=1e-12)


def test_registered_kl_matches_the_registry_closed_form_and_its_gradient():
    mu, logvar, ref = _gaussian(seed=2)
    prior_ref = Independent(Normal(torch.zeros(4, dtype=DT), torch.ones(4, dtype=DT)), 1)
    m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    fast = kl_divergence(diag_gaussian(m, lv), standard_normal(4, dtype=DT))
    m2, lv2 = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    slow = kl_divergence(Independent(Normal(m2, torch.exp(0.5 * lv2)), 1), prior_ref)
    assert torch.allclose(fast, slow, atol=1e-12)
    fast.sum().backward()
    slow.sum().backward()
    assert torch.allclose(m.grad, m2.grad, atol=1e-12) and torch.allclose(lv.grad, lv2.grad, atol=1e-12)
    # a prior expanded to a batch broadcasts like the registry's pairs do
    assert kl_divergence(diag_gaussian(mu, logvar), standard_normal(4, dtype=DT).expand((6,))).shape == (6,)


def test_registered_kl_against_monte_carlo():
    mu, logvar, _ = _gaussian(seed=3, batch=(3,))
    q, p = diag_gaussian(mu, logvar), standard_normal(4, dtype=DT)
    torch.manual_seed(4)
    z = q.sample((200_000,))
    mc = q.log_prob(z) - p.log_prob(z)
    se = mc.std(0) / math.sqrt(z.shape[0])
    assert ((mc.mean(0) - kl_divergence(q, p)).abs() < 4 * se).all()


def test_registered_kl_refuses_mismatched_event_shapes():
    mu, logvar, _ = _gaussian()
    with pytest.raises(ValueError, match="event shapes"):
        kl_divergence(diag_gaussian(mu, logvar), standard_normal(3, dtype=DT))


@pytest.mark.parametrize(
    "value", [0.5, 1 / 255, 1 + 1e-6, -1e-7, 2.0, float("nan")], ids=["half", "grey", ">1", "<0", "2", "nan"]
)
def test_bernoulli_head_refuses_data_that_is_not_exactly_binary(value):
    x = torch.randint(0, 2, (50, 1, 4, 4)).float()
    BernoulliHead().check_data(x)  # exactly 0/1: accepted
    x[37, 0, 2, 1] = value  # one non-binary value, past the first chunk
    fix = r"set data\.binarize to dynamic/fixed/threshold, or use model\.likelihood = gaussian"
    with pytest.raises(VaelabError, match=r"needs binary data .*" + fix) as exc:
        BernoulliHead().check_data(x, chunk=64)
    assert "\n" not in str(exc.value)


def test_gaussian_sigmoid_head_is_a_normal_with_a_sigmoid_mean():
    """log p(x|z) of the head against torch's Normal(sigmoid(m), exp(logvar / 2)), summed over the
    event dims, with the log-variance bound of GaussianHead (min_logvar + softplus(raw - min_logvar));
    its value and gradients must agree to float64 precision, and E[x|z] is sigmoid(m) in (0, 1)."""
    from vaelab.distributions import LIKELIHOODS, GaussianSigmoidHead, likelihood_head

    head = likelihood_head("gaussian_sigmoid")
    assert isinstance(head, GaussianSigmoidHead) and LIKELIHOODS["gaussian_sigmoid"] is GaussianSigmoidHead
    g = torch.Generator().manual_seed(3)
    params = (torch.randn(7, 5, 2, 3, 4, generator=g, dtype=DT) * 3).requires_grad_()  # (S, B, P, *event)
    x = torch.rand(5, 3, 4, generator=g, dtype=DT)
    got = head.log_prob(params, x, (3, 4))
    m, raw = params.unbind(2)
    logvar = head.min_logvar + torch.nn.functional.softplus(raw - head.min_logvar)
    ref = Independent(Normal(torch.sigmoid(m), torch.exp(0.5 * logvar)), 2).log_prob(x)
    assert got.shape == (7, 5)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-10)
    (ga,) = torch.autograd.grad(got.sum(), params)
    (gb,) = torch.autograd.grad(ref.sum(), params)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-10)
    mean = head.mean(params.detach(), 2)
    torch.testing.assert_close(mean, torch.sigmoid(m.detach()))
    assert mean.min() > 0 and mean.max() < 1


@pytest.mark.parametrize("value", [1 + 1e-6, -1e-7, 255.0, float("nan")], ids=[">1", "<0", "255", "nan"])
def test_gaussian_sigmoid_head_refuses_values_outside_the_unit_interval(value):
    from vaelab.distributions import GaussianSigmoidHead

    x = torch.rand(50, 1, 4, 4)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # the ends of [0, 1] are accepted
    GaussianSigmoidHead().check_data(x)
    x[37, 0, 2, 1] = value
    fix = r"models values in \[0, 1\].*use model\.likelihood = gaussian"
    with pytest.raises(VaelabError, match=fix) as exc:
        GaussianSigmoidHead().check_data(x, chunk=64)
    assert "\n" not in str(exc.value)
