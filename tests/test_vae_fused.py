"""The fused training step of the MLP VAE (vaelab.models.vae_fused) against the modules and autograd.

Every case builds one model, runs the loss with the fused step and with it switched off from the
same random state, and compares the values and every gradient in float64, where the two differ
only by the order of float additions (tolerance 1e-10 relative).
"""

import math

import pytest
import torch

from vaelab.distributions import LIKELIHOODS, likelihood_head
from vaelab.models import build_model, vae_fused
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec

ACTS = ["relu", "tanh", "softplus", "elu", "gelu", "silu", "leaky_relu"]


def _model(dtype=torch.float64, seed=0, **cfg):
    torch.manual_seed(seed)
    kind = "binary" if cfg.get("likelihood", "bernoulli") == "bernoulli" else "continuous"
    spec = DataSpec((1, 5, 6), kind)
    model = build_model(VAEConfig(**{"latent_dim": 3, "hidden": [7], **cfg}), spec).to(dtype)
    model.train()
    return model


def _batch(model, n=9, density=0.13, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *model.spec.shape)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    x = (u < density).double() if model.config.likelihood == "bernoulli" else u
    return x.to(model.encoder[0].weight.dtype)


def _run(model, x, fused, monkeypatch, seed=3, objective=lambda out: out.loss):
    """Loss outputs and gradients with the fused step on or off, from the same random state."""
    monkeypatch.setattr(vae_fused, "ENABLED", fused)
    assert vae_fused.fusable(model.encoder, model.decoder) == fused
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(seed)
    out = model.loss(x)
    objective(out).backward()
    values = {k: getattr(out, k).detach().clone() for k in ("loss", "elbo", "reconstruction", "kl")}
    return values, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b, rtol=1e-10, atol=1e-12):
    va, ga = a
    vb, gb = b
    for k in va:
        torch.testing.assert_close(va[k], vb[k], rtol=rtol, atol=atol, msg=k)
    assert ga.keys() == gb.keys()
    for k in ga:
        torch.testing.assert_close(ga[k], gb[k], rtol=rtol, atol=atol, msg=k)
        assert ga[k].stride() == gb[k].stride(), f"{k}: gradient layout differs"


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_fused_step_equals_autograd_for_every_activation_and_likelihood(act, likelihood, monkeypatch):
    model = _model(activation=act, likelihood=likelihood, hidden=[7, 4])
    x = _batch(model)
    _assert_same(_run(model, x, True, monkeypatch), _run(model, x, False, monkeypatch))


@pytest.mark.parametrize("hidden", [[], [6], [6, 5, 4]])
@pytest.mark.parametrize("n_samples", [1, 3])
@pytest.mark.parametrize("warmup", [0, 10])
def test_fused_step_depths_samples_and_kl_weight(hidden, n_samples, warmup, monkeypatch):
    model = _model(hidden=hidden, n_samples=n_samples, kl_warmup_steps=warmup)
    model.train_step = 4  # KL weight 0.4 while warming up
    x = _batch(model)
    fused, plain = _run(model, x, True, monkeypatch), _run(model, x, False, monkeypatch)
    _assert_same(fused, plain)
    if warmup:  # the annealed loss, and the true ELBO beside it
        loss, rec, kl = fused[0]["loss"], fused[0]["reconstruction"], fused[0]["kl"]
        torch.testing.assert_close(loss, (0.4 * kl - rec).mean(), rtol=1e-12, atol=0)
        torch.testing.assert_close(fused[0]["elbo"], rec - kl, rtol=1e-12, atol=0)


@pytest.mark.parametrize("density", [0.1, 0.5])  # the sparse first layer, and the dense product
def test_fused_step_sparse_and_dense_first_layer(density, monkeypatch, backend):
    model = _model(dtype=torch.float32)
    x = _batch(model, n=16, density=density)
    _assert_same(_run(model, x, True, monkeypatch), _run(model, x, False, monkeypatch), rtol=1e-5, atol=1e-6)


def test_fused_step_uses_the_index_attached_by_the_binariser(monkeypatch):
    from vaelab.train import dynamic_binarize

    model = _model(dtype=torch.float32)
    levels = (torch.rand(12, 1, 5, 6, generator=torch.Generator().manual_seed(0)) * 60).round() / 255
    x = dynamic_binarize(dynamic_binarize.prepare(levels), 7)
    fused = _run(model, x, True, monkeypatch)
    plain = _run(model, x.clone(), False, monkeypatch)  # a copy: no attached index
    _assert_same(fused, plain, rtol=1e-5, atol=1e-6)


def test_gradients_of_every_output(monkeypatch):
    """reconstruction and kl are differentiable outputs too: per-example weights on each."""
    model = _model(n_samples=2, likelihood="gaussian")
    x = _batch(model)
    w = torch.linspace(-1, 2, x.shape[0], dtype=torch.float64)

    def objective(out):
        return 0.7 * out.loss + (w * out.reconstruction).sum() - 0.3 * out.kl[2] + out.elbo.sum()

    _assert_same(_run(model, x, True, monkeypatch, objective=objective),
                 _run(model, x, False, monkeypatch, objective=objective))
    # and an output without the loss
    _assert_same(_run(model, x, True, monkeypatch, objective=lambda o: o.kl.sum()),
                 _run(model, x, False, monkeypatch, objective=lambda o: o.kl.sum()))


def test_a_second_backward_gives_the_same_gradients(monkeypatch):
    monkeypatch.setattr(vae_fused, "ENABLED", True)
    model = _model()
    out = model.loss(_batch(model))
    out.loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = None
    out.loss.backward()
    for a, p in zip(first, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=0, atol=0)


def test_frozen_parameters_get_no_gradient(monkeypatch):
    model = _model(hidden=[6, 5])
    model.encoder[0].weight.requires_grad_(False)
    model.decoder[-1].bias.requires_grad_(False)
    x = _batch(model)
    fused, plain = _run(model, x, True, monkeypatch), _run(model, x, False, monkeypatch)
    _assert_same(fused, plain)
    assert "encoder.0.weight" not in fused[1] and "decoder.4.bias" not in fused[1]


def test_the_step_trains_the_same_weights_as_autograd(monkeypatch):
    """A few Adam steps either way end at the same weights (float64)."""
    results = []
    for fused in (True, False):
        monkeypatch.setattr(vae_fused, "ENABLED", fused)
        model = _model(seed=5, kl_warmup_steps=3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        torch.manual_seed(0)
        for step in range(6):
            model.train_step = step
            loss = model.loss(_batch(model, seed=step)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-9, atol=1e-11)


def test_where_the_fused_step_does_not_apply(monkeypatch):
    monkeypatch.setattr(vae_fused, "ENABLED", True)
    model = _model()
    assert vae_fused.fusable(model.encoder, model.decoder)
    # a forward hook must fire: the modules run
    calls = []
    handle = model.decoder[0].register_forward_hook(lambda *a: calls.append(1))
    assert not vae_fused.fusable(model.encoder, model.decoder)
    model.loss(_batch(model)).loss.backward()
    assert calls == [1]
    handle.remove()
    # an activation it does not know, a layer without bias, a model that is not an MLP
    model.decoder[1] = torch.nn.Hardtanh()
    assert not vae_fused.fusable(model.encoder, model.decoder)
    model = _model()
    model.decoder[0] = torch.nn.Linear(3, 7, bias=False).double()
    assert not vae_fused.fusable(model.encoder, model.decoder)
    assert not vae_fused.fusable(torch.nn.Linear(2, 2), model.decoder)

    class Residual(torch.nn.Sequential):  # the same children, another computation
        def forward(self, x):
            return super().forward(x) + x

    model = _model(hidden=[])
    model.decoder = Residual(*model.decoder)
    assert not vae_fused.fusable(model.encoder, model.decoder)
    # evaluation, no grad, other objectives: the modules' path (the loss still works)
    model = _model(objective="iwae", n_samples=2)
    torch.manual_seed(0)
    assert torch.isfinite(model.loss(_batch(model)).loss)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not vae_fused.fusable(model.encoder, model.decoder)


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihood_gradients_against_autograd(name):
    """log_prob_and_grad of each head: the value of log_prob and autograd's gradient, including
    decoder outputs far in the tails."""
    head = likelihood_head(name)
    g = torch.Generator().manual_seed(0)
    d = 11
    params = torch.randn(3, 4, head.params_per_dim, d, generator=g, dtype=torch.float64) * 30
    x = (torch.rand(4, d, generator=g, dtype=torch.float64) < 0.5).double() if name == "bernoulli" else \
        torch.rand(4, d, generator=g, dtype=torch.float64)
    value, grad = head.log_prob_and_grad(params, x, (d,))
    p = params.clone().requires_grad_()
    ref = head(p, (d,)).log_prob(x)
    (ref_grad,) = torch.autograd.grad(ref.sum(), p)
    torch.testing.assert_close(value, ref.detach(), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-12)  # tails: exp(+-30) scales
    assert math.isfinite(float(grad.abs().max()))
