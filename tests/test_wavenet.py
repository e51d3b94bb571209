"""The WaveNet (vaelab.wavenet): causality and the receptive field, step-by-step generation equal to
the parallel pass, the mixture of discretized logistics (a distribution over the 256 levels, sampled
as it scores). The speech VQ-VAE with the WaveNet decoder is tested in test_vqvae_speech.py."""

import math

import pytest
import torch

from vaelab.wavenet import LogisticMixture, WaveNet, levels_to_inputs, shift_right

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

def net(cond=5, glob=3, layers=6, cycle=3, seed=0, out=12):
    torch.manual_seed(seed)
    return WaveNet(8, 12, layers, cycle, cond, glob, out).eval()


@pytest.mark.parametrize("cond,glob", [(5, 3), (0, 3), (5, 0), (0, 0)])
def test_generation_step_by_step_equals_the_parallel_pass(cond, glob):
    """Fed the true samples (teacher), the cached one-step recursion gives the outputs of the parallel
    pass at every position, whatever the chunking of the conditioning."""
    model = net(cond, glob)
    b, t = 3, 53
    x = torch.rand(b, t) * 2 - 1
    c = torch.randn(b, cond, t) if cond else None
    g = torch.randn(b, glob) if glob else None
    with torch.no_grad():
        want = model(shift_right(x), c, g)
    for chunk in (7, 256):
        _, got = model.generate(t, lambda o: o[:, 0].tanh(), c, g, batch=b, teacher=x, keep_outputs=True,
                                chunk=chunk)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_output_at_t_depends_on_exactly_the_receptive_field_before_t():
    """d out_t / d x_s is exactly 0 for s >= t (x_t is not its own input) and for s < t - r + 1, and
    not 0 at the field's far edge s = t - r + 1 (r = 2 + sum of the dilations = 16 here)."""
    model = net(cond=0, glob=0, layers=6, cycle=3)  # dilations 1 2 4 1 2 4
    assert model.receptive_field == 16
    t, n = 40, 64
    x = (torch.rand(1, n) * 2 - 1).requires_grad_()
    out = model(shift_right(x))
    (grad,) = torch.autograd.grad(out[0, :, t].sum(), x)
    nonzero = (grad[0] != 0).nonzero().flatten().tolist()
    assert min(nonzero) == t - model.receptive_field + 1 and max(nonzero) == t - 1


def test_the_local_conditioning_is_causal_too():
    """c_s reaches the output at t for s in [t - (d_1 + ... + d_{L-1}), t] and no other s: it enters
    every layer at its own position, and the layers after the first carry it forward by their
    dilations (2 + 4 + 1 + 2 + 4 = 13 here); never backwards."""
    model = net(cond=4, glob=0)
    c = torch.randn(1, 4, 40, requires_grad=True)
    out = model(torch.zeros(1, 40), c)
    (grad,) = torch.autograd.grad(out[0, :, 30].sum(), c)
    assert (grad[0].abs().sum(0) != 0).nonzero().flatten().tolist() == list(range(30 - 13, 31))


def test_the_mixture_is_a_distribution_over_the_256_levels():
    mix = LogisticMixture(3)
    torch.manual_seed(1)
    out = torch.randn(4, 9, 1) * 2  # 4 positions (as B), 3 M parameters
    levels = torch.arange(256.0) / 255
    lp = torch.stack([mix.log_prob(out, levels[k].expand(4, 1)) for k in range(256)])  # (256, 4, 1)
    torch.testing.assert_close(lp.exp().sum(0), torch.ones(4, 1), rtol=0, atol=1e-5)


def test_mixture_samples_follow_its_probabilities():
    """200,000 draws from one set of parameters: the histogram over the 256 levels is within 0.01
    total variation of exp(log_prob) (the sampling error is about 0.005 here; seed 0)."""
    mix = LogisticMixture(2)
    params = torch.tensor([0.3, -0.2, 0.1, -0.15, -2.0, -1.0])  # two components, scales ~0.007, 0.018
    torch.manual_seed(0)
    draws = mix.sample(params.expand(200_000, 6))
    hist = torch.bincount(torch.round(draws * 255).long(), minlength=256).double() / draws.numel()
    levels = torch.arange(256.0) / 255
    probs = mix.log_prob(params.view(1, 6, 1).expand(256, 6, 1), levels[:, None]).exp()[:, 0].double()
    assert 0.5 * (hist - probs).abs().sum() < 0.01
    cold = mix.sample(params.expand(200_000, 6), temperature=0.1)
    assert cold.std() < 0.5 * draws.std()  # a low temperature narrows the draws


def test_levels_map_to_inputs_in_minus_one_one():
    assert levels_to_inputs(torch.tensor([0.0, 1.0])).tolist() == [-1.0, 1.0]
    assert math.isclose(float(levels_to_inputs(torch.tensor(0.5))), 0.0)
