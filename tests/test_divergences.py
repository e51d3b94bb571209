"""KL closed forms against brute-force sums, Monte Carlo, and the lecture's worked examples."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal, kl_divergence

from vaelab.divergences import (
    DiagonalGaussianKL,
    has_closed_form,
    kl,
    kl_categorical,
    kl_gaussian,
    kl_monte_carlo,
    kl_terms,
)


def test_example1_contributions():
    # (q, p) = (.9, .9), (.9, .1), (.1, .9), (.1, .1): q log(q/p) = 0, 1.98, -0.22, 0
    q = torch.tensor([0.9, 0.9, 0.1, 0.1], dtype=torch.float64)
    p = torch.tensor([0.9, 0.1, 0.9, 0.1], dtype=torch.float64)
    terms = kl_terms(q, p)
    assert terms.tolist() == pytest.approx([0.0, 0.9 * math.log(9), 0.1 * math.log(1 / 9), 0.0], abs=1e-12)
    assert [round(t, 2) for t in terms.tolist()] == [0.0, 1.98, -0.22, 0.0]


def test_example2_argmin_is_p():
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    candidates = {"q1 uniform": torch.full((3,), 1 / 3, dtype=torch.float64), "q2 = p": p.clone()}
    values = {name: kl_categorical(q, p).item() for name, q in candidates.items()}
    assert min(values, key=values.get) == "q2 = p"
    assert values["q2 = p"] == pytest.approx(0.0, abs=1e-15)
    # brute force for the uniform candidate
    expected = sum((1 / 3) * math.log((1 / 3) / pi) for pi in (0.7, 0.2, 0.1))
    assert values["q1 uniform"] == pytest.approx(expected, rel=1e-12)


def test_zero_probability_convention_and_infinite_support_mismatch():
    assert kl_categorical(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5])).item() == pytest.approx(
        math.log(2)
    )
    assert math.isinf(kl_categorical(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])).item())


def test_categorical_matches_registry_and_brute_force():
    g = torch.Generator().manual_seed(0)
    q = torch.rand(5, 7, generator=g, dtype=torch.float64).softmax(-1)
    p = torch.rand(5, 7, generator=g, dtype=torch.float64).softmax(-1)
    brute = torch.tensor(
        [sum(q[i, j] * math.log(q[i, j] / p[i, j]) for j in range(7)) for i in range(5)], dtype=torch.float64
    )
    assert torch.allclose(kl_categorical(q, p), brute, atol=1e-12)
    assert torch.allclose(kl(Categorical(probs=q), Categorical(probs=p)), brute, atol=1e-12)


def test_forward_and_reverse_kl_differ():
    q, p = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    assert kl_categorical(q, p).item() != pytest.approx(kl_categorical(p, q).item(), abs=1e-3)


def test_diagonal_gaussian_closed_form_vs_monte_carlo():
    torch.manual_seed(1)
    mu, logvar = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) * 0.5
    q = Independent(Normal(mu, (0.5 * logvar).exp()), 1)
    prior = Independent(Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    closed = kl(q, prior)
    assert torch.allclose(closed, DiagonalGaussianKL.to_standard_normal(mu, logvar), atol=1e-12)
    # Monte Carlo with 200k samples: standard error is ~ sqrt(var/n); allow 5 s.e.
    n = 200_000
    z = q.sample((n,))
    lw = q.log_prob(z) - prior.log_prob(z)
    se = lw.std(0) / math.sqrt(n)
    assert ((lw.mean(0) - closed).abs() < 5 * se).all()
    mc = kl(q, prior, analytic=False, n_samples=1000)
    assert mc.shape == closed.shape


def test_full_covariance_gaussian_kl_matches_registry_and_monte_carlo():
    torch.manual_seed(2)
    a = torch.randn(3, 3, dtype=torch.float64)
    b = torch.randn(3, 3, dtype=torch.float64)
    cov_q, cov_p = (
        a @ a.T + 0.5 * torch.eye(3, dtype=torch.float64),
        b @ b.T + 0.5 * torch.eye(3, dtype=torch.float64),
    )
    mu_q, mu_p = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    ours = kl_gaussian(mu_q, cov_q, mu_p, cov_p)
    q, p = MultivariateNormal(mu_q, cov_q), MultivariateNormal(mu_p, cov_p)
    assert ours.item() == pytest.approx(kl_divergence(q, p).item(), rel=1e-10)
    n = 400_000
    z = q.sample((n,))
    lw = q.log_prob(z) - p.log_prob(z)
    assert abs(lw.mean().item() - ours.item()) < 5 * lw.std().item() / math.sqrt(n)


def test_registered_independent_vs_plain_normal_pair():
    mu = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    q = Independent(Normal(mu, torch.full_like(mu, 0.7)), 1)
    plain = Normal(torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    ref = kl_divergence(Normal(mu, torch.full_like(mu, 0.7)), plain).sum(-1)
    assert has_closed_form(q, plain)
    assert torch.allclose(kl(q, plain), ref)


def test_monte_carlo_fallback_for_a_pair_without_closed_form():
    from torch.distributions import Gumbel, Laplace

    p, q = Gumbel(torch.tensor(0.0), torch.tensor(1.0)), Laplace(torch.tensor(0.5), torch.tensor(2.0))
    assert not has_closed_form(p, q)
    torch.manual_seed(3)
    est = kl(p, q, n_samples=200_000)
    # numerical integration as the oracle
    x = torch.linspace(-8, 20, 200_001, dtype=torch.float64)
    lp = Gumbel(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)).log_prob(x)
    lq = Laplace(torch.tensor(0.5, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)).log_prob(x)
    exact = torch.trapezoid(lp.exp() * (lp - lq), x).item()
    assert est.item() == pytest.approx(exact, abs=0.02)
    with pytest.raises(NotImplementedError):
        kl(p, q, analytic=True)
    with pytest.raises(ValueError):
        kl_monte_carlo(p, q, n_samples=0)
