"""The bounds on a linear-Gaussian latent model, whose log p(x) and posterior are exact.

p(z) = N(0, I_2), p(x|z) = N(W z + b, s^2 I_4)  =>  p(x) = N(b, W W^T + s^2 I),
p(z|x) = N(S W^T (x - b) / s^2, S) with S = (I + W^T W / s^2)^-1.
W has orthogonal columns, so the exact posterior is diagonal and lies in the variational family.
"""

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from vaelab.distributions import diag_gaussian, standard_normal
from vaelab.estimators import elbo, elbo_diag_gaussian, iwae, log_importance_weights, logmeanexp
from vaelab.evaluation.likelihood import (
    importance_sampled_log_likelihood,
    is_reliable,
    streaming_log_likelihood,
)

DT = torch.float64
S2 = 0.25


def _model():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, -1.0]], dtype=DT)  # orthogonal columns
    b = torch.tensor([0.5, -0.3, 0.1, 0.0], dtype=DT)

    def decode(z):
        return Independent(Normal(z @ w.T + b, math.sqrt(S2)), 1)

    prior = Independent(Normal(torch.zeros(2, dtype=DT), torch.ones(2, dtype=DT)), 1)
    marginal = MultivariateNormal(b, w @ w.T + S2 * torch.eye(4, dtype=DT))
    post_cov = torch.linalg.inv(torch.eye(2, dtype=DT) + w.T @ w / S2)

    def posterior(x):
        mean = (x - b) @ w @ post_cov.T / S2
        return diag_gaussian(mean, torch.log(torch.diagonal(post_cov)).expand_as(mean))

    return decode, prior, marginal, posterior


X = torch.tensor([[1.0, 0.5, -0.2, 0.3], [0.0, -2.0, 0.4, 1.0], [2.0, 1.0, 1.5, -0.5]], dtype=DT)


def test_logmeanexp():
    x = torch.tensor([[0.0, 1000.0], [math.log(3.0), 1000.0]], dtype=DT)
    assert logmeanexp(x, 0).tolist() == pytest.approx([math.log(2.0), 1000.0])


def test_elbo_equals_log_px_at_the_exact_posterior():
    decode, prior, marginal, posterior = _model()
    torch.manual_seed(0)
    terms = elbo(X, posterior(X), decode, prior, n_samples=20000)
    exact = marginal.log_prob(X)
    assert torch.allclose(terms.bound, exact, atol=0.02)
    # with the exact posterior every importance weight equals p(x): zero variance
    lw = log_importance_weights(X, posterior(X), decode, prior, 50)
    assert torch.allclose(lw, exact.expand_as(lw), atol=1e-9)


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_elbo_is_below_log_px_for_a_wrong_posterior(analytic_kl):
    decode, prior, marginal, posterior = _model()
    exact_q = posterior(X)
    q = diag_gaussian(exact_q.mean + 0.4, torch.log(exact_q.variance) + 0.7)
    torch.manual_seed(1)
    terms = elbo(X, q, decode, prior, n_samples=40000, analytic_kl=analytic_kl)
    gap = marginal.log_prob(X) - terms.bound
    # the gap is KL(q || p(z|x)), computable exactly here
    post = MultivariateNormal(exact_q.mean, torch.diag_embed(exact_q.variance))
    kl_gap = torch.distributions.kl_divergence(MultivariateNormal(q.mean, torch.diag_embed(q.variance)), post)
    assert (gap > 0).all()
    assert torch.allclose(gap, kl_gap, atol=0.05)
    assert torch.allclose(terms.bound, terms.reconstruction - terms.kl)


def test_iwae_rises_with_k_towards_log_px():
    decode, prior, marginal, posterior = _model()
    exact_q = posterior(X)
    q = diag_gaussian(exact_q.mean + 0.5, torch.log(exact_q.variance) + 1.0)
    torch.manual_seed(2)
    reps = 4000
    xs = X.repeat(reps, 1)
    qs = diag_gaussian(q.mean.repeat(reps, 1), torch.log(q.variance).repeat(reps, 1))
    bounds = {}
    for k in (1, 5, 50):
        b = iwae(xs, qs, decode, prior, n_samples=k).bound.view(reps, -1)
        bounds[k] = (b.mean(0), b.std(0) / math.sqrt(reps))
    exact = marginal.log_prob(X)
    for lo, hi in ((1, 5), (5, 50)):
        diff = bounds[hi][0] - bounds[lo][0]
        assert (diff > 3 * (bounds[hi][1] + bounds[lo][1])).all(), (lo, hi, diff)
    assert (bounds[50][0] < exact + 3 * bounds[50][1]).all()
    # L_1 is the ELBO
    e = elbo(xs, qs, decode, prior, analytic_kl=False).bound.view(reps, -1).mean(0)
    assert torch.allclose(e, bounds[1][0], atol=5 * bounds[1][1].max().item())
    with pytest.raises(ValueError):
        iwae(X, q, decode, prior, kl_weight=0.5)


def test_kl_weight_scales_only_the_kl():
    decode, prior, _, posterior = _model()
    torch.manual_seed(3)
    t = elbo(X, posterior(X), decode, prior, kl_weight=0.3)
    assert torch.allclose(t.bound, t.reconstruction - 0.3 * t.kl)


class _LinearGaussianModel:
    """Just enough of a model for the likelihood evaluator."""

    class spec:
        n_dims = 4

    def __init__(self, q_shift: float):
        self.decode, self.prior, self.marginal, self.posterior = _model()
        self.shift = q_shift

    def eval(self):
        return self

    def log_importance_weights(self, x, k):
        q = self.posterior(x)
        q = diag_gaussian(q.mean + self.shift, torch.log(q.variance) + self.shift)
        return log_importance_weights(x, q, self.decode, self.prior, k)


def test_importance_sampled_log_likelihood_within_three_standard_errors():
    model = _LinearGaussianModel(q_shift=0.3)
    exact = model.marginal.log_prob(X)
    torch.manual_seed(4)
    runs = torch.stack(
        [importance_sampled_log_likelihood(model, [X[:2], X[2:]], k=2000).log_px for _ in range(20)]
    )
    se = runs.std(0) / math.sqrt(runs.shape[0])
    assert ((runs.mean(0) - exact).abs() < 3 * se + 1e-4).all()
    res = importance_sampled_log_likelihood(model, [X], k=300)
    assert res.log_px.shape == (3,) and (res.ess > 1).all() and (res.ess <= 300).all()
    assert res.bits_per_dim == pytest.approx(-res.mean / (4 * math.log(2)))
    # the per-unit figure depends on the data kind (evaluation.units), so eval.json's summaries omit it
    assert "bits_per_dim" not in res.as_dict()


def test_an_estimate_from_a_poor_proposal_is_flagged_unreliable():
    """q(z|x) shifted by 2 (mean) and e^2 (variance) from the exact posterior: a few samples carry each
    estimate, which then falls nats below the exact log p(x) - the flag must say so."""
    exact = _LinearGaussianModel(0.0).marginal.log_prob(X)
    torch.manual_seed(0)
    poor = importance_sampled_log_likelihood(_LinearGaussianModel(q_shift=2.0), [X], k=1000)
    assert poor.ess_mean < 10 and (exact - poor.log_px).mean() > 1.0
    d = poor.as_dict()
    assert d["is_reliable"] is False and not poor.reliable
    assert d["is_warning"] == poor.warning and d["is_warning"].startswith(
        f"unreliable IS estimate: mean effective sample size {poor.ess_mean:.1f} of K=1000 is below 10, ")
    good = importance_sampled_log_likelihood(_LinearGaussianModel(q_shift=0.3), [X], k=1000)
    assert good.ess_mean > 100 and good.reliable
    assert good.as_dict()["is_reliable"] is True and good.as_dict()["is_warning"] is None
    # a small K well used (equal weights at the exact posterior: ESS = K = 5) is not flagged
    assert importance_sampled_log_likelihood(_LinearGaussianModel(0.0), [X], k=5).reliable


def test_the_reliability_rule():
    """mean ESS >= min(10, K/2): an absolute floor of 10 samples, K/2 below K = 20."""
    assert not is_reliable(9.9, 5000) and is_reliable(10.0, 5000)
    assert is_reliable(49.0, 5000)  # the MNIST preset's mean ESS (BENCHMARKS.md): 1% of K, trusted
    assert not is_reliable(4.0, 5000)  # the 50-latent model
    assert is_reliable(2.5, 5) and not is_reliable(2.4, 5)


def test_chunking_does_not_change_the_estimate():
    torch.manual_seed(5)
    lw = torch.randn(1000, 3, dtype=DT) * 3
    pos = [0]

    def fixed_weights(x, s):  # hands out the same 1000 log-weights, s at a time
        out = lw[pos[0] : pos[0] + s]
        pos[0] += s
        return out

    exact = torch.logsumexp(lw, 0) - math.log(1000)
    ess = torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0))
    for chunk in (1000, 7, 1):
        pos[0] = 0
        lp, e = streaming_log_likelihood(fixed_weights, X, 1000, chunk)
        assert torch.allclose(lp, exact, atol=1e-10) and torch.allclose(e, ess, rtol=1e-9)


def test_standard_normal_prior():
    p = standard_normal(3, dtype=DT)
    assert p.event_shape == (3,)
    assert p.log_prob(torch.zeros(3, dtype=DT)).item() == pytest.approx(-1.5 * math.log(2 * math.pi))


@pytest.mark.parametrize("max_elements", [4, 9, 1 << 20])
def test_importance_sampling_splits_images_and_samples_without_changing_the_answer(max_elements):
    """At the exact posterior every log-weight is log p(x), so the estimate is exact whatever the
    chunking: this checks that splitting a batch into sub-batches of images and chunks of samples
    keeps every example's estimate, in order."""
    model = _LinearGaussianModel(q_shift=0.0)
    exact = model.marginal.log_prob(X)
    res = importance_sampled_log_likelihood(model, [X[:2], X[2:]], k=37, max_elements=max_elements)
    assert torch.allclose(res.log_px, exact, atol=1e-9)
    assert torch.allclose(res.ess, torch.full((3,), 37.0, dtype=res.ess.dtype), rtol=1e-9)


@pytest.mark.parametrize("n_samples, kl_weight", [(1, 1.0), (4, 0.3)])
def test_tensor_elbo_equals_the_distribution_elbo(n_samples, kl_weight):
    """elbo_diag_gaussian (the training hot path, no Distribution objects) gives the numbers and the
    gradients of elbo() with the analytic KL, for the same random state."""
    decode, prior, _, posterior = _model()
    q = posterior(X)
    results = []
    for fast in (False, True):
        mu = q.base_dist.loc.detach().clone().requires_grad_()
        logvar = q.logvar.detach().clone().requires_grad_()
        torch.manual_seed(7)
        if fast:
            t = elbo_diag_gaussian(X, mu, logvar, lambda z: decode(z).log_prob(X), n_samples, kl_weight)
        else:
            q_ = diag_gaussian(mu, logvar)
            t = elbo(X, q_, decode, prior, n_samples, analytic_kl=True, kl_weight=kl_weight)
        t.bound.sum().backward()
        results.append((t, mu.grad, logvar.grad))
    (ref, gm_ref, gl_ref), (got, gm, gl) = results
    for name in ("bound", "reconstruction", "kl"):
        assert torch.allclose(getattr(got, name), getattr(ref, name), atol=1e-12), name
    assert torch.allclose(gm, gm_ref, atol=1e-12) and torch.allclose(gl, gl_ref, atol=1e-12)


def test_vae_training_bound_equals_the_distribution_path():
    """The VAE's bound() takes the tensor path; it must equal estimators.elbo on its own encode,
    decode and prior (which the evaluation and every other objective use)."""
    from vaelab.models import build_model
    from vaelab.models.vae import VAEConfig
    from vaelab.spec import DataSpec

    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=3, hidden=[16], n_samples=2), DataSpec((1, 4, 4), "binary"))
    x = (torch.rand(5, 1, 4, 4) < 0.4).float()
    torch.manual_seed(1)
    fast = model.bound(x, kl_weight=0.5)
    torch.manual_seed(1)
    ref = elbo(x.flatten(1), model.encode(x), model.decode, model.prior(), n_samples=2, kl_weight=0.5)
    for name in ("bound", "reconstruction", "kl"):
        assert torch.allclose(getattr(fast, name), getattr(ref, name), atol=1e-5), name
