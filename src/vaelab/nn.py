"""The few shared building blocks. Nothing model-specific lives here."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vaelab.errors import VaelabError

__all__ = ["ACTIVATIONS", "activation", "MLP", "ResidualStack", "normal_init_"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise VaelabError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class MLP(nn.Sequential):
    """Linear layers with an activation between them (none after the last).

    Input (..., sizes[0]) -> output (..., sizes[-1]); any leading dims are batch dims.
    """

    def __init__(self, sizes: Sequence[int], act: str = "relu"):
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least an input and an output size")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation(act))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - nn.Sequential's, typed
        return super().forward(x)


class ResidualStack(nn.Module):
    """``blocks`` residual blocks x <- x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU (the VQ-VAE's
    encoder and decoder stacks, van den Oord et al. 2017, Section 4.1: "ReLU, 3x3 conv, ReLU, 1x1
    conv").

    x (B, channels, H, W) -> (B, channels, H, W); ``hidden`` is the width of the 3x3 convolution.
    """

    def __init__(self, channels: int, hidden: int, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden, channels, 1))
            for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return torch.relu(x)


@torch.no_grad()
def normal_init_(module: nn.Module, std: float) -> None:
    """Draw every parameter of ``module`` from N(0, std^2) in place (Kingma & Welling 2014, Section 5
    initialise all weights and biases this way)."""
    for p in module.parameters():
        p.normal_(0.0, std)
