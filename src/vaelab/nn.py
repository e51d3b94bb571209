"""The few shared building blocks. Nothing model-specific lives here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from vaelab.errors import VaelabError

__all__ = ["ACTIVATIONS", "activation", "MLP", "InputLinear"]

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
    ``data_input``: the input is data (images, vectors), which is often mostly zeros: the first
    layer is an :class:`InputLinear`, which skips the zeros. The same parameters and results.
    """

    def __init__(self, sizes: Sequence[int], act: str = "relu", data_input: bool = False):
        if len(sizes) < 2:
            raise ValueError("an MLP needs at least an input and an output size")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(InputLinear(a, b) if data_input and i == 0 else nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation(act))
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401 - nn.Sequential's, typed
        return super().forward(x)


class InputLinear(nn.Linear):
    """``nn.Linear`` for a layer that reads data, computed without the data's zeros on the CPU.

    Binarized MNIST is 13% ones and grey-level MNIST 19% non-zeros; a dense matrix product spends
    most of its work multiplying by zero. When at most ``max_density`` of a batch is non-zero
    (0.2: where the two cost the same for a 784 -> 400 layer at batch 128 on one or two threads),
    the output is a sum, per example, of the weight rows of its non-zero inputs (``embedding_bag``),
    and the weight gradient a sum, per input, of the output gradients of the examples where that
    input is non-zero. Both are exact (only the order of the float additions differs). Denser
    batches, other devices and other dtypes take the dense products.

    The parameters are nn.Linear's (``weight`` is (out, in), same names, same checkpoints), but
    the weight is stored column-major: ``weight.t()`` is a contiguous (in, out) matrix, whose rows
    are what the sparse sums read, and both paths return its gradient in that layout, so nothing
    is transposed during training.
    """

    max_density = 0.2

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs):
        super().__init__(in_features, out_features, bias=bias, **kwargs)
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight.t().contiguous().t())

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            return _InputLinearFn.apply(x, self.weight, self.bias, self.max_density)
        lead = x.shape[:-1]
        out = _InputLinearFn.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self.max_density)
        return out.unflatten(0, lead) if lead else out.squeeze(0)


def _sparse_rows(x: Tensor, max_density: float):
    """The non-zeros of a CPU matrix x (B, D), row by row: (mask, columns, offsets (B + 1), values
    or None when every non-zero is 1), or None when x should take the dense product."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
        return None
    a = x.detach().numpy()
    mask = a != 0  # numpy finds the non-zeros of a bool array 7x faster than those of a float one
    if np.count_nonzero(mask) > max_density * mask.size:
        return None
    d = a.shape[1]
    flat = np.flatnonzero(mask)
    offsets = np.searchsorted(flat, np.arange(0, mask.size + 1, d))
    values = a.ravel()[flat]
    weights = None if bool((values == 1).all()) else torch.from_numpy(values)
    return mask, torch.from_numpy(flat % d), torch.from_numpy(offsets), weights


def _sparse_columns(x: Tensor, mask: np.ndarray, binary: bool):
    """The non-zeros of x (B, D) column by column: (rows, offsets (D + 1), values or None)."""
    b = mask.shape[0]
    flat = np.flatnonzero(np.ascontiguousarray(mask.T))
    offsets = np.searchsorted(flat, np.arange(0, mask.size + 1, b))
    rows = flat % b
    values = None if binary else torch.from_numpy(x.detach().numpy()[rows, flat // b])
    return torch.from_numpy(rows), torch.from_numpy(offsets), values


class _InputLinearFn(torch.autograd.Function):
    """y = x W^T + b with W column-major; sparse sums when x is mostly zeros (see InputLinear)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, max_density: float) -> Tensor:
        wt = weight.t()  # (in, out)
        x = x.contiguous()
        sparse = _sparse_rows(x, max_density)
        if sparse is None:
            out = torch.mm(x, wt) if bias is None else torch.addmm(bias, x, wt)
        else:
            _, cols, offsets, values = sparse
            out = F.embedding_bag(cols, wt.contiguous(), offsets, mode="sum", per_sample_weights=values,
                                  include_last_offset=True)
            if bias is not None:
                out.add_(bias)
        ctx.save_for_backward(x, weight)
        ctx.mask = None if sparse is None else sparse[0]
        ctx.binary = sparse is not None and sparse[3] is None
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(grad, weight)
        if ctx.needs_input_grad[1]:
            if ctx.mask is not None:
                rows, offsets, values = _sparse_columns(x, ctx.mask, ctx.binary)
                grad_wt = F.embedding_bag(rows, grad.contiguous(), offsets, mode="sum",
                                          per_sample_weights=values, include_last_offset=True)
            else:
                grad_wt = torch.mm(x.t(), grad)
            grad_w = grad_wt.t()  # (out, in), column-major like the weight
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None
