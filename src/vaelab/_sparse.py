"""The non-zeros of a batch, as :class:`vaelab.nn.InputLinear` reads them.

A (B, D) batch's non-zeros are indexed two ways:

- row by row (``RowIndex``: for example r, the columns ``cols[offsets[r]:offsets[r + 1]]``), for the
  forward product (a sum of weight rows per example);
- column by column (``ColumnIndex``: for input c, the rows ``rows[offsets[c]:offsets[c + 1]]``),
  for the weight gradient (a sum of output-gradient rows per input).

Both are built by small compiled loops (numba): one pass over the batch for the rows, a counting
sort of the row index for the columns. Inside a training step every NumPy call costs 10-20 us more
than its work (measured; likely because its code and data are cold after the matrix products), and
the NumPy way takes ten of them; the loops take two. The dynamic binariser goes one step further:
it decides every non-zero of a binarised batch, so it writes the row index in the same pass
(``binarize_levels``) and attaches it to the batch (``attach``), where InputLinear finds it
(``attached``).

Without a working numba the same indices are built with NumPy (``VAELAB_NO_NUMBA=1`` forces that,
for tests and for comparison); the results are the same either way.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np

__all__ = [
    "MAX_DENSITY", "RowIndex", "ColumnIndex", "row_index", "column_index", "compiled", "binarize_levels",
    "attach", "attached",
]

MAX_DENSITY = 0.2
"""Above this share of non-zeros a batch takes the dense product (see ``InputLinear.max_density``)."""


class RowIndex(NamedTuple):
    """The non-zeros of x (B, D) row by row; ``values`` is None when every non-zero is 1."""

    cols: np.ndarray  # (nnz,) int64
    offsets: np.ndarray  # (B + 1,) int64
    values: np.ndarray | None  # (nnz,) x's dtype, or None
    n_cols: int


class ColumnIndex(NamedTuple):
    """The same non-zeros column by column, rows ascending within each column."""

    rows: np.ndarray  # (nnz,) int64
    offsets: np.ndarray  # (D + 1,) int64
    values: np.ndarray | None


# ----------------------------------------------------------------------------- NumPy
def _row_index_numpy(a: np.ndarray, max_nnz: int) -> RowIndex | None:
    mask = a != 0  # numpy finds the non-zeros of a bool array 7x faster than those of a float one
    flat = np.flatnonzero(mask)
    if flat.size > max_nnz:
        return None
    d = a.shape[1]
    offsets = np.searchsorted(flat, np.arange(0, mask.size + 1, d))
    values = a.ravel()[flat]
    return RowIndex(flat % d, offsets, None if bool((values == 1).all()) else values, d)


def _column_index_numpy(index: RowIndex) -> ColumnIndex:
    b = index.offsets.size - 1
    rows = np.repeat(np.arange(b, dtype=np.int64), np.diff(index.offsets))
    order = np.argsort(index.cols, kind="stable")
    offsets = np.searchsorted(index.cols[order], np.arange(index.n_cols + 1))
    values = None if index.values is None else index.values[order]
    return ColumnIndex(rows[order], offsets.astype(np.int64), values)


# ----------------------------------------------------------------------------- numba
def _compile():
    """The three loops, compiled (and cached on disk by numba), or None without a working numba."""
    if os.environ.get("VAELAB_NO_NUMBA"):
        return None
    try:
        import numba
    except ImportError:
        return None

    def rows_loop(a, max_nnz):
        b, d = a.shape
        cols = np.empty(max_nnz, np.int64)
        values = np.empty(max_nnz, a.dtype)
        offsets = np.empty(b + 1, np.int64)
        offsets[0] = 0
        k = 0
        binary = True
        for r in range(b):
            for c in range(d):
                v = a[r, c]
                if v != 0:
                    if k == max_nnz:
                        return -1, binary, cols, offsets, values
                    cols[k] = c
                    values[k] = v
                    k += 1
                    if v != 1:
                        binary = False
            offsets[r + 1] = k
        return k, binary, cols, offsets, values

    def columns_loop(cols, offsets, n_cols):
        b = offsets.shape[0] - 1
        n = offsets[b]
        col_offsets = np.zeros(n_cols + 1, np.int64)
        for j in range(n):
            col_offsets[cols[j] + 1] += 1
        for c in range(n_cols):
            col_offsets[c + 1] += col_offsets[c]
        fill = col_offsets[:n_cols].copy()
        rows = np.empty(n, np.int64)
        order = np.empty(n, np.int64)  # position in the row index of each column-ordered entry
        for r in range(b):
            for j in range(offsets[r], offsets[r + 1]):
                c = cols[j]
                rows[fill[c]] = r
                order[fill[c]] = j
                fill[c] += 1
        return rows, col_offsets, order

    ones, high = np.uint64(0x0101010101010101), np.uint64(0x8080808080808080)

    def binarize_loop(levels, raw, n_words, out, max_nnz):
        # x = u < k for the bytes u = raw[:n], each byte of 255 replaced by the next byte other than
        # 255 of the spare ones, raw[n_words * 8:]; and the row index of the ones while there are at
        # most max_nnz. raw (whole 8-byte words) is only read.
        b, d = levels.shape
        n = b * d
        u = raw[:n].copy()
        words = raw.view(np.uint64)
        spare = n_words * 8
        for j in range(n_words):
            w = words[j]
            if (~w - ones) & w & high:  # some byte of w is 255 (a 255 is a zero byte of ~w)
                for i in range(j * 8, min(j * 8 + 8, n)):
                    if u[i] == 255:
                        v = np.uint8(255)
                        while v == 255:
                            if spare == raw.size:
                                return -1, np.empty(0, np.int64), np.empty(0, np.int64)
                            v = raw[spare]
                            spare += 1
                        u[i] = v
        cols = np.empty(max_nnz, np.int64)
        offsets = np.empty(b + 1, np.int64)
        offsets[0] = 0
        k = 0
        for r in range(b):
            for c in range(d):
                if u[r * d + c] < levels[r, c]:
                    out[r, c] = 1
                    if k < max_nnz:
                        cols[k] = c
                    k += 1
                else:
                    out[r, c] = 0
            offsets[r + 1] = k
        return k, cols, offsets

    loops = rows_loop, columns_loop, binarize_loop
    for cache in (True, False):  # without a writable cache location: compile in memory, every run
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", numba.NumbaWarning)
                kernels = tuple(numba.njit(cache=cache, nogil=True)(f) for f in loops)
                _probe(kernels)  # compile (or load) now: a numba that fails falls back here, not mid-run
            return kernels
        except Exception:
            continue
    return None


def _probe(kernels) -> None:
    """Compile the float32 versions (float64 ones compile when first needed)."""
    a = np.array([[0.0, 1.0], [2.0, 0.0]], dtype=np.float32)
    n, _, cols, offsets, _ = kernels[0](a, 4)
    kernels[1](cols[:n], offsets, 2)
    raw = np.array([1, 255, 0, 0, 0, 0, 0, 0, 255, 3, 0, 0, 0, 0, 0, 0], np.uint8)
    kernels[2](np.ones((1, 2), np.uint8), raw, 1, a[:1].copy(), 2)


_KERNELS: tuple | None | bool = False  # False: not loaded yet


def _kernels():
    global _KERNELS
    if _KERNELS is False:
        _KERNELS = _compile()
    return _KERNELS


def compiled() -> bool:
    """Whether the indices are built by the compiled loops (numba) rather than NumPy."""
    return _kernels() is not None


# -------------------------------------------------------------------- the indices and the binarisation
def row_index(a: np.ndarray, max_nnz: int) -> RowIndex | None:
    """The row index of a C-contiguous float matrix ``a`` (B, D), or None when it has more than
    ``max_nnz`` non-zeros (then the dense product is the cheaper one)."""
    kernels = _kernels()
    if kernels is None:
        return _row_index_numpy(a, max_nnz)
    n, binary, cols, offsets, values = kernels[0](a, max_nnz)
    if n < 0:
        return None
    return RowIndex(cols[:n], offsets, None if binary else values[:n], a.shape[1])


def column_index(index: RowIndex) -> ColumnIndex:
    """The column index of the non-zeros that ``index`` lists row by row."""
    kernels = _kernels()
    if kernels is None:
        return _column_index_numpy(index)
    rows, offsets, order = kernels[1](index.cols, index.offsets, index.n_cols)
    return ColumnIndex(rows, offsets, None if index.values is None else index.values[order])


def binarize_levels(
    levels: np.ndarray, raw: np.ndarray, n_words: int, out: np.ndarray
) -> tuple[bool, RowIndex | None]:
    """Bernoulli(k / 255) draws for uint8 levels k (B, D), written as 0/1 into ``out`` (a float array
    of the same shape), with the row index of the ones when there are at most ``MAX_DENSITY`` of
    them: one compiled pass that makes the batch and the index :class:`vaelab.nn.InputLinear` needs.

    ``raw``: uniform bytes; the first B * D are the draws u (x = u < k), and a u of 255 is replaced
    by the next byte other than 255 from ``raw[n_words * 8:]``, so that u is uniform on 0..254.
    Returns (False, None) without the compiled loops, or when those spare bytes run out; the caller
    (``vaelab.train.batching``) then does the same with NumPy, drawing more."""
    kernels = _kernels()
    if kernels is None:
        return False, None
    if raw.size % 8 or raw.size < n_words * 8 or n_words * 8 < levels.size:
        raise ValueError("raw must be whole 8-byte words, the first n_words covering the levels")
    max_nnz = int(MAX_DENSITY * levels.size)
    k, cols, offsets = kernels[2](levels, raw, n_words, out, max_nnz)
    if k < 0:
        return False, None
    return True, (RowIndex(cols[:k], offsets, None, levels.shape[1]) if k <= max_nnz else None)


# ----------------------------------------------------------------------------- an index made with the data
# Whoever makes a batch may already know its non-zeros (the dynamic binariser does: it decides each
# one). It attaches their row index to the batch tensor, and InputLinear uses it instead of finding
# them again, as long as it still describes the data: the same memory, shape and version counter (any
# in-place change to the tensor or a view of it bumps the counter, and the index is then ignored).


class _Attached(NamedTuple):
    index: RowIndex
    data_ptr: int
    shape: tuple[int, int]
    version: int


def attach(t, index: RowIndex) -> None:
    """Remember ``index`` as the row index of ``t`` (a contiguous CPU tensor), viewed as (B, D)."""
    t._vaelab_row_index = _Attached(index, t.data_ptr(), (index.offsets.size - 1, index.n_cols), t._version)


def attached(x) -> RowIndex | None:
    """The index attached to ``x`` or to the tensor it is a view of, if it describes ``x`` (B, D)."""
    base = x._base if x._base is not None else x
    a = getattr(base, "_vaelab_row_index", None)
    if a is None or a.version != x._version or a.data_ptr != x.data_ptr() or tuple(x.shape) != a.shape:
        return None
    return a.index if x.is_contiguous() else None
