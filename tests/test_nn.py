"""The shared MLP block: its layers, and its output against the computation written out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.errors import VaelabError
from vaelab.nn import ACTIVATIONS, MLP


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
