"""InputLinear: the data-reading layer that skips zeros must be nn.Linear, number for number."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.nn import MLP, InputLinear


def _pair(d_in=30, d_out=7, bias=True, dtype=torch.float32):
    torch.manual_seed(0)
    fast = InputLinear(d_in, d_out, bias=bias, dtype=dtype)
    ref = nn.Linear(d_in, d_out, bias=bias, dtype=dtype)
    ref.load_state_dict(fast.state_dict())
    return fast, ref


def _inputs(kind: str, shape=(9, 30), dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(shape, generator=g, dtype=dtype) < 0.1
    if kind == "binary":  # the sparse path without per-input weights
        return keep.to(dtype)
    if kind == "grey":  # sparse, with per-input values
        return keep * torch.rand(shape, generator=g, dtype=dtype)
    if kind == "dense":  # above max_density: the dense product
        return torch.rand(shape, generator=g, dtype=dtype)
    if kind == "empty_rows":  # some examples with no non-zero at all
        x = keep.to(dtype)
        x[::2] = 0
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["binary", "grey", "dense", "empty_rows"])
@pytest.mark.parametrize("bias", [True, False])
def test_input_linear_matches_linear_values_and_gradients(kind, bias, backend):
    """Output, weight and bias gradients equal nn.Linear's within float rounding, on every path."""
    fast, ref = _pair(bias=bias)
    x = _inputs(kind)
    g = torch.randn(9, 7, generator=torch.Generator().manual_seed(2))
    y, y_ref = fast(x), ref(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-6)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-6)
    # the weight is column-major, and so is its gradient: no transposing copy on either side
    assert fast.weight.t().is_contiguous()
    assert fast.weight.grad.stride() == fast.weight.stride()


def test_input_linear_takes_the_sparse_path_only_below_max_density(monkeypatch):
    """The path is chosen by the batch's share of non-zeros (so the test above covers both)."""
    import vaelab.nn as vnn

    taken = []
    real = vnn._sparse_rows
    monkeypatch.setattr(vnn, "_sparse_rows", lambda x, d: taken.append(real(x, d) is not None) or real(x, d))
    fast, _ = _pair()
    for kind in ("binary", "grey", "dense"):
        fast(_inputs(kind))
    assert taken == [True, True, False]


def test_input_linear_float64_leading_dims_and_input_gradient(backend):
    """(S, B, D) inputs, float64, and an input that itself needs a gradient."""
    fast, ref = _pair(dtype=torch.float64)
    x = _inputs("grey", (3, 9, 30), torch.float64).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = fast(x), ref(x_ref)
    assert y.shape == (3, 9, 7)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
    one = fast(x[0, 0].detach())  # a single vector
    torch.testing.assert_close(one, ref(x_ref[0, 0].detach()))


def test_input_linear_state_dict_is_nn_linear_s_and_loading_keeps_the_layout():
    """Checkpoints hold the usual (out, in) weight; loading one keeps the column-major storage."""
    fast, ref = _pair()
    sd = fast.state_dict()
    assert sd["weight"].shape == (7, 30)
    other = InputLinear(30, 7)
    other.load_state_dict(ref.state_dict())
    assert other.weight.t().is_contiguous()
    assert torch.equal(other.weight, ref.weight)


def test_mlp_puts_input_linear_first_only_for_data_input():
    assert isinstance(MLP([30, 8, 4], data_input=True)[0], InputLinear)
    assert not isinstance(MLP([30, 8, 4], data_input=True)[2], InputLinear)
    assert type(MLP([30, 8, 4])[0]) is nn.Linear


def test_vae_training_step_with_input_linear_equals_dense_layers(backend):
    """One loss and backward of the MLP VAE on binarized data: the same gradients as with an
    nn.Linear first layer (same weights, same random state)."""
    from vaelab.models import build_model
    from vaelab.models.vae import VAEConfig
    from vaelab.spec import DataSpec

    spec = DataSpec(shape=(1, 6, 6), kind="binary")
    torch.manual_seed(0)
    fast = build_model(VAEConfig(latent_dim=3, hidden=[10]), spec)
    ref = build_model(VAEConfig(latent_dim=3, hidden=[10]), spec)
    lin = nn.Linear(36, 10)
    ref.encoder[0] = lin
    ref.load_state_dict(fast.state_dict())
    x = (torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(3)) < 0.12).float()
    for m in (fast, ref):
        torch.manual_seed(5)
        m.loss(x).loss.backward()
    for (name, a), b in zip(fast.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
