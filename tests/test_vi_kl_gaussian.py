"""KL behaviour (Examples 1-3) and the generic CAVI loop."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.divergences import kl_gaussian
from vaelab.vi.cavi import ElboDecreaseError, cavi
from vaelab.vi.gaussian2d import (
    DiagonalGaussian,
    correlated_gaussian,
    elbo,
    forward_kl_fit,
    reverse_kl_cavi,
    reverse_kl_closed_form,
)
from vaelab.vi.kl_examples import EXAMPLE2_P, contribution_table, example2_candidates, kl_argmin

# thousands of tiny (2x2) torch calls: intra-op threads only add OpenMP hand-off cost
pytestmark = pytest.mark.usefixtures("single_thread")


def test_example1_contributions():
    rows = contribution_table()
    got = [(r.q, r.p, round(r.term, 2)) for r in rows]
    assert got == [(0.9, 0.9, 0.0), (0.9, 0.1, 1.98), (0.1, 0.9, -0.22), (0.1, 0.1, 0.0)]
    assert rows[1].term == pytest.approx(0.9 * math.log(9.0), abs=1e-12)
    assert rows[2].term == pytest.approx(-0.1 * math.log(9.0), abs=1e-12)


def test_example2_argmin_is_p_itself():
    res = kl_argmin(EXAMPLE2_P, example2_candidates())
    assert res.best == "q2 (= p)"
    assert res.kl["q2 (= p)"] == pytest.approx(0.0, abs=1e-15)
    # uniform q: sum_i (1/3) log((1/3) / p_i), computed by hand
    by_hand = sum((1 / 3) * math.log((1 / 3) / p) for p in EXAMPLE2_P)
    assert res.kl["q1 (uniform)"] == pytest.approx(by_hand, rel=1e-12)
    assert all(v > 0 for k, v in res.kl.items() if k != "q2 (= p)")


@pytest.mark.parametrize("rho,scales", [(0.9, (1.0, 1.0)), (-0.6, (2.0, 0.5)), (0.95, (1.0, 3.0))])
def test_example3_cavi_fixed_point_is_closed_form(rho, scales):
    mu, cov = correlated_gaussian(rho, scales, mean=(1.0, -2.0))
    q, trace, _ = reverse_kl_cavi(mu, cov, init_mean=torch.tensor([-3.0, 4.0], dtype=torch.float64))
    closed = reverse_kl_closed_form(mu, cov)
    precision = torch.linalg.inv(cov)
    assert trace.converged
    torch.testing.assert_close(q.mean, mu, atol=1e-6, rtol=0)  # means = p's means
    torch.testing.assert_close(1.0 / q.var, torch.diagonal(precision), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(q.mean, closed.mean, atol=1e-6, rtol=0)
    # conditional variance 1/Lambda_ii = Sigma_ii (1 - rho^2): under-dispersed w.r.t. the marginals
    s = torch.tensor(scales, dtype=torch.float64)
    torch.testing.assert_close(q.var, s**2 * (1 - rho**2), atol=1e-12, rtol=1e-12)
    # the forward fit keeps the marginals
    torch.testing.assert_close(forward_kl_fit(mu, cov).var, s**2)


def test_example3_each_fit_wins_its_own_objective():
    mu, cov = correlated_gaussian(0.9)
    rev, fwd = reverse_kl_closed_form(mu, cov), forward_kl_fit(mu, cov)
    kl_rev = lambda q: float(kl_gaussian(q.mean, q.cov, mu, cov))  # noqa: E731
    kl_fwd = lambda q: float(kl_gaussian(mu, cov, q.mean, q.cov))  # noqa: E731
    assert kl_rev(rev) < kl_rev(fwd)
    assert kl_fwd(fwd) < kl_fwd(rev)
    # KL(q_rev || p) = 0.5 * log det(Sigma) ... closed form for unit scales: -0.5 log(1 - rho^2)
    assert kl_rev(rev) == pytest.approx(-0.5 * math.log(1 - 0.81), rel=1e-10)
    # perturbing the optimum in any direction lowers the ELBO
    base = elbo(rev, mu, cov)
    for dm, dv in [((0.1, 0.0), (0.0, 0.0)), ((0.0, 0.0), (0.05, 0.0)), ((0.0, 0.0), (0.0, -0.05))]:
        q = DiagonalGaussian(rev.mean + torch.tensor(dm, dtype=torch.float64), rev.var + torch.tensor(dv))
        assert elbo(q, mu, cov) < base


def test_gaussian_cavi_elbo_never_decreases_and_stays_below_log_z():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    cov = a @ a.T + 0.3 * torch.eye(4, dtype=torch.float64)
    mu = torch.randn(4, generator=gen, dtype=torch.float64)
    q, trace, _ = reverse_kl_cavi(mu, cov, init_mean=torch.full((4,), 5.0, dtype=torch.float64))
    e = torch.tensor(trace.elbo)
    assert trace.n_sweeps > 3  # a real zig-zag, not a one-step problem
    assert torch.all(e[1:] - e[:-1] >= -1e-12)
    assert torch.all(e <= 1e-12)  # ELBO <= log Z = 0
    torch.testing.assert_close(q.mean, mu, atol=1e-5, rtol=0)


def test_cavi_raises_on_a_faulty_update():
    # ELBO(x) = -(x - 1)^2; the correct update is x = 1. A "faulty" update that moves away must raise.
    f = lambda x: -((x - 1.0) ** 2)  # noqa: E731
    with pytest.raises(ElboDecreaseError, match="decreased"):
        cavi(1.0, [lambda x: x + 0.5], f, max_sweeps=3)
    trace = cavi(5.0, [lambda x: 1.0], f, tol=0.0, max_sweeps=3)
    assert trace.elbo == [-16.0, 0.0, 0.0, 0.0] and trace.n_sweeps == 3 and not trace.converged
    trace = cavi(5.0, [lambda x: 1.0], f, tol=1e-9)
    assert trace.converged and trace.n_sweeps == 2
