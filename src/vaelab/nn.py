"""The few shared building blocks. Nothing model-specific lives here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from vaelab._sparse import MAX_DENSITY, RowIndex, attached, column_index, row_index
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

    The non-zeros are listed by :mod:`vaelab._sparse` (compiled loops), or taken from the batch when
    whoever made it attached them (the dynamic binariser does, as it draws them).

    The parameters are nn.Linear's (``weight`` is (out, in), same names, same checkpoints), but
    the weight is stored column-major: ``weight.t()`` is a contiguous (in, out) matrix, whose rows
    are what the sparse sums read, and both paths return its gradient in that layout, so nothing
    is transposed during training.
    """

    max_density = MAX_DENSITY

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


def _sparse_rows(x: Tensor, max_density: float) -> RowIndex | None:
    """The row index of the non-zeros of a CPU matrix x (B, D), or None when x should take the
    dense product."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
        return None
    max_nnz = int(max_density * x.numel())
    known = attached(x)  # made with the data (e.g. by the dynamic binariser)
    if known is not None:
        return known if known.cols.size <= max_nnz else None
    return row_index(x.detach().numpy(), max_nnz)


def _bag_sums(table: Tensor, indices: np.ndarray, offsets: np.ndarray, values: np.ndarray | None) -> Tensor:
    """out[i] = sum over j in offsets[i]:offsets[i + 1] of values[j] * table[indices[j]] (values 1
    when None): ``embedding_bag``'s sums, on the index arrays of :mod:`vaelab._sparse`."""
    return F.embedding_bag(torch.from_numpy(indices), table, torch.from_numpy(offsets), mode="sum",
                           per_sample_weights=None if values is None else torch.from_numpy(values),
                           include_last_offset=True)


def _input_linear(x: Tensor, weight: Tensor, bias: Tensor | None, max_density: float
                  ) -> tuple[Tensor, RowIndex | None]:
    """x W^T + b for InputLinear's column-major W (out, in) and a contiguous x (B, in): sparse sums
    when x is mostly zeros, else the dense product. Returns the output and the row index used (None
    for the dense product), which the weight gradient needs."""
    wt = weight.t()  # (in, out)
    index = _sparse_rows(x, max_density)
    if index is None:
        return (torch.mm(x, wt) if bias is None else torch.addmm(bias, x, wt)), None
    out = _bag_sums(wt.contiguous(), *index[:3])
    return (out if bias is None else out.add_(bias)), index


def _input_linear_weight_grad(x: Tensor, index: RowIndex | None, grad: Tensor) -> Tensor:
    """The gradient of InputLinear's weight from the output gradient (B, out): (out, in), column-major
    like the weight, so nothing is transposed during training."""
    if index is not None:
        return _bag_sums(grad.contiguous(), *column_index(index)).t()
    return torch.mm(x.t(), grad).t()


class _InputLinearFn(torch.autograd.Function):
    """y = x W^T + b with W column-major; sparse sums when x is mostly zeros (see InputLinear)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, max_density: float) -> Tensor:
        x = x.contiguous()
        out, index = _input_linear(x, weight, bias, max_density)
        ctx.save_for_backward(x, weight)
        ctx.index = index
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
            grad_w = _input_linear_weight_grad(x, ctx.index, grad)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None
