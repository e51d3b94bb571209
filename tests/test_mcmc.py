"""The HMC kernel and its step-size adapter (vaelab.mcmc) against a known correlated 2-D Gaussian."""

import math

import pytest
import torch

from vaelab.errors import VaelabError
from vaelab.mcmc import StepSizeAdapter, hmc_step

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 1.6], [1.6, 4.0]], dtype=torch.float64)  # sd 1 and 2, correlation 0.8
TARGET = torch.distributions.MultivariateNormal(MU, COV)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

def test_hmc_leaves_a_correlated_gaussian_invariant():
    """Chains started from the exact target stay distributed as the target: after 30 transitions the
    C = 4000 chains are independent draws from it, so their mean and covariance agree with MU and COV
    within 4 Monte Carlo standard errors (sd/sqrt(C) for a mean, sqrt((S_ii S_jj + S_ij^2)/C) for a
    covariance entry). The chains must also have moved far from where they started (low correlation
    with their initial states), or invariance would hold trivially."""
    torch.manual_seed(0)
    c = 4000
    z0 = TARGET.sample((c,))
    z = z0
    accepted = 0.0
    for _ in range(30):
        step = hmc_step(z, TARGET.log_prob, 0.35, 5)
        z = step.z
        accepted += step.accepted.double().mean().item() / 30
    assert 0.6 < accepted < 0.999  # a real Metropolis test: some proposals rejected, most accepted
    mean_se = COV.diagonal().sqrt() / math.sqrt(c)
    assert ((z.mean(0) - MU).abs() < 4 * mean_se).all(), (z.mean(0), MU)
    cov = torch.cov(z.T)
    cov_se = ((COV.diagonal()[:, None] * COV.diagonal()[None, :] + COV.square()) / c).sqrt()
    assert ((cov - COV).abs() < 4 * cov_se).all(), (cov, COV)
    # mixing: the correlation of z_1 now with z_1 at the start is small
    corr = torch.corrcoef(torch.stack([z0[:, 1], z[:, 1]]))[0, 1]
    assert corr.abs() < 0.3
    torch.testing.assert_close(step.log_prob, TARGET.log_prob(z))


def test_a_biased_kernel_fails_the_same_check():
    """The invariance check can fail: leapfrog steps on a mis-stated target (the covariance's
    correlation dropped) move the chains' covariance off COV by many standard errors."""
    torch.manual_seed(0)
    wrong = torch.distributions.MultivariateNormal(MU, torch.diag(COV.diagonal()))
    z = TARGET.sample((4000,))
    for _ in range(30):
        z = hmc_step(z, wrong.log_prob, 0.35, 5).z
    cov_se = ((COV[0, 0] * COV[1, 1] + COV[0, 1] ** 2) / 4000).sqrt()
    assert (torch.cov(z.T)[0, 1] - COV[0, 1]).abs() > 10 * cov_se


def test_tiny_steps_are_almost_always_accepted_and_per_chain_step_sizes_apply_per_chain():
    """With step 1e-3 the energy error is O(eps^2) ~ 1e-6: acceptance probability ~1. Per-chain step
    sizes (B,) apply to their own chains: huge steps (50) are rejected, tiny ones accepted."""
    torch.manual_seed(1)
    z = TARGET.sample((3, 200))  # (..., B, D) with a leading chain dim
    step = hmc_step(z, TARGET.log_prob, 1e-3, 3)
    assert step.accept_prob.shape == (3, 200) and step.accepted.dtype == torch.bool
    assert step.accept_prob.min() > 0.999
    sizes = torch.where(torch.arange(200) < 100, 1e-3, 50.0).double()
    step = hmc_step(z, TARGET.log_prob, sizes, 3)
    assert step.accept_prob[:, :100].min() > 0.999
    assert step.accept_prob[:, 100:].mean() < 0.05


def test_hmc_works_under_no_grad_and_leaves_no_graph_nor_parameter_gradients():
    scale = torch.nn.Parameter(torch.tensor(2.0))

    def log_prob(z):
        return -0.5 * (z / scale).square().sum(-1)

    with torch.no_grad():
        step = hmc_step(torch.zeros(5, 2), log_prob, 0.1, 2)
    for t in (step.z, step.accept_prob, step.log_prob):
        assert not t.requires_grad and t.grad_fn is None
    assert scale.grad is None


def test_adapter_reaches_the_target_acceptance_per_example():
    """Two 'examples' whose targets differ in scale by 10 (sd 1 and 0.1), 200 chains each, one step
    size per example adapted towards 0.65: after 150 transitions the acceptance rate of each, averaged
    over the last 50 transitions and the chains, is within 0.05 of the target (the averaging keeps
    its noise near 0.01), and the two step sizes differ by about the ratio of the scales."""
    torch.manual_seed(2)
    sd = torch.tensor([1.0, 0.1])

    def log_prob(z):  # z (C, 2, 2): example b has an isotropic Gaussian of sd[b]
        return -0.5 * (z / sd[:, None]).square().sum(-1)

    z = torch.randn(200, 2, 2) * sd[:, None]
    adapter = StepSizeAdapter(torch.full((2,), 0.5), 0.65, gain=0.2)
    rates = []
    for t in range(150):
        step = hmc_step(z, log_prob, adapter.step_size, 4)
        adapter.update(step.accept_prob)
        z = step.z
        if t >= 100:
            rates.append(step.accept_prob.mean(0))
    rate = torch.stack(rates).mean(0)
    assert ((rate - 0.65).abs() < 0.05).all(), rate
    ratio = (adapter.step_size[0] / adapter.step_size[1]).item()
    assert 5 < ratio < 20
    frozen = adapter.step_size.clone()
    adapter.freeze()
    adapter.update(torch.zeros(200, 2))
    assert torch.equal(adapter.step_size, frozen)


def test_a_shared_adapter_averages_over_every_chain():
    adapter = StepSizeAdapter(1.0, 0.5, gain=1.0)
    adapter.update(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))  # mean 0.75: log step + 0.25
    assert adapter.step_size.shape == () and adapter.step_size.item() == pytest.approx(math.exp(0.25))


def test_bad_settings_are_one_line_errors():
    with pytest.raises(VaelabError, match="target acceptance rate"):
        StepSizeAdapter(0.1, 1.5)
    with pytest.raises(VaelabError, match="positive"):
        StepSizeAdapter(0.0, 0.5)
    with pytest.raises(VaelabError, match="leapfrog"):
        hmc_step(torch.zeros(2, 2), TARGET.log_prob, 0.1, 0)
