"""The batch indices behind InputLinear: compiled loops, the NumPy way and brute force must agree,
and the dynamic binariser's one-pass draws must be bit for bit the NumPy way's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab import _sparse
from vaelab.nn import InputLinear
from vaelab.train.batching import _binarize_levels, dynamic_binarize


def _matrix(kind: str, shape=(13, 37), dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(4)
    keep = rng.random(shape) < 0.12
    if kind == "binary":
        return keep.astype(dtype)
    if kind == "grey":
        return (keep * rng.random(shape)).astype(dtype)
    if kind == "empty_rows":
        a = keep.astype(dtype)
        a[::3] = 0
        return a
    if kind == "zeros":
        return np.zeros(shape, dtype)
    raise ValueError(kind)


def _brute_rows(a):
    cols, offsets, values = [], [0], []
    for row in a:
        for c, v in enumerate(row):
            if v != 0:
                cols.append(c)
                values.append(v)
        offsets.append(len(cols))
    return np.array(cols, np.int64), np.array(offsets, np.int64), np.array(values, a.dtype)


@pytest.mark.parametrize("kind", ["binary", "grey", "empty_rows", "zeros"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_and_column_index_equal_brute_force(backend, kind, dtype):
    a = _matrix(kind, dtype=dtype)
    cols, offsets, values = _brute_rows(a)
    index = _sparse.row_index(a, a.size)
    np.testing.assert_array_equal(index.cols, cols)
    np.testing.assert_array_equal(index.offsets, offsets)
    assert index.n_cols == a.shape[1]
    if kind == "grey":
        np.testing.assert_array_equal(index.values, values)
    else:  # every non-zero is 1: no per-input values
        assert index.values is None
    # column by column: the transpose's row index
    by_col = _sparse.column_index(index)
    t_cols, t_offsets, t_values = _brute_rows(np.ascontiguousarray(a.T))
    np.testing.assert_array_equal(by_col.rows, t_cols)
    np.testing.assert_array_equal(by_col.offsets, t_offsets)
    if kind == "grey":
        np.testing.assert_array_equal(by_col.values, t_values)
    else:
        assert by_col.values is None


def test_row_index_declines_a_batch_over_the_limit(backend):
    a = _matrix("binary")
    n = int(np.count_nonzero(a))
    assert _sparse.row_index(a, n) is not None
    assert _sparse.row_index(a, n - 1) is None


def _reference_binarize(levels: np.ndarray, seed: int) -> np.ndarray:
    """The definition, one byte at a time: u = the bytes of PCG64(seed)'s raw words; each u of 255
    is replaced by the next byte other than 255 after the first ceil(n / 8) words; x = u < k."""
    n = levels.size
    n_words = -(-n // 8)
    stream = np.random.PCG64(seed).random_raw(n_words + n // 64 + 64).view(np.uint8)
    u, spare = stream[:n].copy(), list(stream[n_words * 8 :])
    for i in range(n):
        while u[i] == 255:
            u[i] = spare.pop(0)
    return (u.reshape(levels.shape) < levels).astype(np.float32)


def _levels(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 256, shape, dtype=np.uint8)
    levels[rng.random(shape) < 0.6] = 0  # mostly zeros, as images are
    return levels


@pytest.mark.parametrize("shape", [(128, 784), (7, 13), (1, 1)])
def test_binarisation_is_its_definition_bit_for_bit(backend, shape):
    """Compiled and NumPy, for several seeds and odd sizes (not whole words). At (128, 784) most
    seeds meet a spare byte of 255 too, which the seeds below include (counted)."""
    levels = _levels(shape)
    spare_255 = 0
    for seed in range(12):
        ref = _reference_binarize(levels, seed)
        x = _binarize_levels(torch.from_numpy(levels), seed)
        np.testing.assert_array_equal(x.numpy(), ref)
        index = _sparse.attached(x)
        if index is not None:
            full = _sparse.row_index(ref, ref.size)
            np.testing.assert_array_equal(index.cols, full.cols)
            np.testing.assert_array_equal(index.offsets, full.offsets)
            assert index.values is None
        else:
            assert backend == "numpy" or np.count_nonzero(ref) > _sparse.MAX_DENSITY * ref.size
        n_words = -(-levels.size // 8)
        stream = np.random.PCG64(seed).random_raw(n_words + levels.size // 64).view(np.uint8)
        used = np.count_nonzero(stream[: levels.size] == 255)
        spare_255 += int((stream[n_words * 8 :][: used + 4] == 255).any())
    if shape == (128, 784):
        assert spare_255 >= 3


def test_binarisation_draws_more_when_the_spare_bytes_run_out(monkeypatch):
    """With no spare words drawn up front, the compiled pass gives up and the NumPy way draws more
    from the same stream: the same batch."""
    import vaelab.train.batching as batching

    levels = torch.from_numpy(_levels((64, 200), seed=3))
    expected = _binarize_levels(levels, 5)
    monkeypatch.setattr(batching, "_spare_words", lambda n: 0)
    assert torch.equal(_binarize_levels(levels, 5), expected)
    np.testing.assert_array_equal(expected.numpy(), _reference_binarize(levels.numpy(), 5))


def test_binariser_attaches_the_index_and_it_is_used_only_while_valid(backend):
    levels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (16, 1, 5, 6), dtype=np.uint8))
    levels[levels < 225] = 0  # about 11% ones after binarisation: below MAX_DENSITY
    x = _binarize_levels(levels, 3)
    flat = x.flatten(1)
    assert x.shape == (16, 1, 5, 6) and x.dtype == torch.float32
    if backend == "numpy":
        assert _sparse.attached(flat) is None
        return
    index = _sparse.attached(flat)
    assert index is not None
    full = _sparse.row_index(flat.numpy(), flat.numel())
    np.testing.assert_array_equal(index.cols, full.cols)
    np.testing.assert_array_equal(index.offsets, full.offsets)
    assert _sparse.attached(flat.clone()) is None  # other memory
    assert _sparse.attached(flat[:8]) is None  # another shape
    flat[0, 0] = 1.0  # any in-place change retires the index
    assert _sparse.attached(flat) is None and _sparse.attached(x.flatten(1)) is None


def test_input_linear_gives_the_same_with_and_without_the_attached_index():
    levels = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (32, 40), dtype=np.uint8))
    levels[levels < 225] = 0
    x = dynamic_binarize(levels, 11)
    assert _sparse.attached(x) is not None
    torch.manual_seed(0)
    layer = InputLinear(40, 9)
    g = torch.randn(32, 9)
    y = layer(x)
    y.backward(g)
    grad = layer.weight.grad.clone()
    layer.weight.grad = None
    y2 = layer(x.clone())  # no index attached: found again
    y2.backward(g)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    torch.testing.assert_close(layer.weight.grad, grad, rtol=0, atol=0)
    torch.testing.assert_close(y, x @ layer.weight.t() + layer.bias, rtol=1e-5, atol=1e-6)
