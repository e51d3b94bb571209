"""The shared blocks: the MLP's layers, and the MLP's and the residual stack's outputs against the
computation written out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.errors import VaelabError
from vaelab.nn import ACTIVATIONS, MLP, ResidualStack


def test_mlp_layers_alternate_linear_and_activation_with_none_after_the_last():
    m = MLP([30, 8, 6, 4], "tanh")
    kinds = [type(layer) for layer in m]
    assert kinds == [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]
    assert [(layer.in_features, layer.out_features) for layer in list(m)[::2]] == [(30, 8), (8, 6), (6, 4)]


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlp_output_is_the_composition_written_out(act):
    """y = W3 f(W2 f(W1 x + b1) + b2) + b3 on inputs with two leading batch dims, in float64."""
    torch.manual_seed(0)
    m = MLP([5, 7, 3, 2], act).double()
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    f = ACTIVATIONS[act]()
    h = x
    for i, layer in enumerate(list(m)[::2]):
        h = h @ layer.weight.T + layer.bias
        if i < 2:
            h = f(h)
    torch.testing.assert_close(m(x), h, rtol=1e-12, atol=1e-12)


def test_mlp_rejects_unknown_activation_and_too_few_sizes():
    with pytest.raises(VaelabError, match="unknown activation 'swish'"):
        MLP([3, 4, 2], "swish")
    with pytest.raises(ValueError):
        MLP([3])


def test_residual_stack_is_the_blocks_written_out():
    """x <- x + W1x1 relu(W3x3 relu(x) + b) + b' per block, then relu (VQ-VAE Section 4.1), in float64;
    the shape is kept."""
    torch.manual_seed(0)
    stack = ResidualStack(channels=4, hidden=3, blocks=2).double()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    h = x
    for block in stack.blocks:
        conv3, conv1 = block[1], block[3]
        inner = torch.nn.functional.conv2d(torch.relu(h), conv3.weight, conv3.bias, padding=1)
        h = h + torch.nn.functional.conv2d(torch.relu(inner), conv1.weight, conv1.bias)
    out = stack(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, torch.relu(h), rtol=1e-12, atol=1e-12)
    assert torch.equal(ResidualStack(4, 3, blocks=0)(x), torch.relu(x))  # no blocks: only the final relu
