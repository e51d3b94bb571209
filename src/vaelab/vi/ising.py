"""Naive mean-field for an Ising model on a grid, and exact log Z to check the bound against.

The model, on an H x W grid with free (open) boundaries and spins s_i in {-1, +1}:

    p(s) = exp( sum_<ij> J_ij s_i s_j + sum_i h_i s_i ) / Z,

where <ij> runs over horizontally and vertically adjacent pairs. Couplings are stored per edge:
``j_right`` (H, W-1) couples (r, c)-(r, c+1), ``j_down`` (H-1, W) couples (r, c)-(r+1, c); ``h`` is (H, W).

Naive mean field takes q(s) = prod_i q_i(s_i) with magnetisation m_i = E_q[s_i]. Then

    ELBO(m) = sum_<ij> J_ij m_i m_j + sum_i h_i m_i + sum_i H_b(m_i) <= log Z,
    H_b(m) = -[(1+m)/2 log((1+m)/2) + (1-m)/2 log((1-m)/2)],

and the CAVI update of one site is m_i = tanh(h_i + sum_{j ~ i} J_ij m_j) (MacKay 2003, eq. 33.28;
Wainwright & Jordan 2008, sec. 5.2). Sites of one colour of the checkerboard are never neighbours, so
updating all black sites at once and then all white sites is an exact block coordinate ascent.

Exact log Z: brute-force enumeration (up to 16 spins), and a transfer matrix along the long side for
narrow grids of any length (cost W * 2^H per column for H the short side, log-space throughout).
All quantities in nats, float64 numpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, xlogy

from vaelab.errors import VaelabError
from vaelab.vi.cavi import CaviTrace, cavi

__all__ = [
    "IsingGrid",
    "log_partition_brute_force",
    "log_partition_transfer_matrix",
    "log_partition",
    "mean_field_elbo",
    "MeanFieldResult",
    "mean_field",
    "IsingRow",
    "ising_table",
    "bound_vs_coupling",
    "MAX_BRUTE_FORCE_SPINS",
    "MAX_TRANSFER_WIDTH",
]

MAX_BRUTE_FORCE_SPINS = 16
MAX_TRANSFER_WIDTH = 16


@dataclass(frozen=True)
class IsingGrid:
    """Couplings and fields of an H x W grid Ising model (free boundaries)."""

    j_right: np.ndarray  # (H, W-1)
    j_down: np.ndarray  # (H-1, W)
    h: np.ndarray  # (H, W)

    def __post_init__(self):
        hh, ww = self.h.shape
        if self.j_right.shape != (hh, ww - 1) or self.j_down.shape != (hh - 1, ww):
            raise ValueError(
                f"for fields of shape {(hh, ww)} need j_right {(hh, ww - 1)} and j_down {(hh - 1, ww)}, "
                f"got {self.j_right.shape} and {self.j_down.shape}"
            )

    @classmethod
    def uniform(cls, height: int, width: int, coupling: float, field: float = 0.0) -> IsingGrid:
        """All couplings equal to ``coupling`` and all fields equal to ``field``."""
        if height < 1 or width < 1:
            raise VaelabError(f"grid must be at least 1x1, got {height}x{width}")
        return cls(
            np.full((height, width - 1), float(coupling)),
            np.full((height - 1, width), float(coupling)),
            np.full((height, width), float(field)),
        )

    @classmethod
    def random(
        cls,
        height: int,
        width: int,
        rng: np.random.Generator,
        coupling_scale: float = 1.0,
        field_scale: float = 0.5,
    ) -> IsingGrid:
        """Couplings ~ N(0, coupling_scale^2) (mixed signs, so frustrated); fields ~ N(0, field_scale^2)."""
        return cls(
            coupling_scale * rng.standard_normal((height, width - 1)),
            coupling_scale * rng.standard_normal((height - 1, width)),
            field_scale * rng.standard_normal((height, width)),
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self.h.shape  # type: ignore[return-value]

    @property
    def n_spins(self) -> int:
        return int(self.h.size)

    def transpose(self) -> IsingGrid:
        return IsingGrid(self.j_down.T.copy(), self.j_right.T.copy(), self.h.T.copy())

    def local_fields(self, m: np.ndarray) -> np.ndarray:
        """h_i + sum_{j ~ i} J_ij m_j for every site; ``m`` (..., H, W) -> (..., H, W)."""
        out = np.broadcast_to(self.h, m.shape).copy()
        out[..., :, :-1] += self.j_right * m[..., :, 1:]
        out[..., :, 1:] += self.j_right * m[..., :, :-1]
        out[..., :-1, :] += self.j_down * m[..., 1:, :]
        out[..., 1:, :] += self.j_down * m[..., :-1, :]
        return out

    def log_potential(self, s: np.ndarray) -> np.ndarray:
        """sum_<ij> J_ij s_i s_j + sum_i h_i s_i for spins (or magnetisations) s (..., H, W) -> (...)."""
        pair = (self.j_right * s[..., :, :-1] * s[..., :, 1:]).sum((-2, -1))
        pair = pair + (self.j_down * s[..., :-1, :] * s[..., 1:, :]).sum((-2, -1))
        return pair + (self.h * s).sum((-2, -1))


def _all_spin_configs(n: int) -> np.ndarray:
    """(2^n, n) array of every configuration in {-1, +1}^n, in C (itertools.product) order."""
    return np.array(list(itertools.product((-1.0, 1.0), repeat=n)))


def log_partition_brute_force(grid: IsingGrid) -> float:
    """log Z by summing over all 2^N configurations; N <= 16."""
    n = grid.n_spins
    if n > MAX_BRUTE_FORCE_SPINS:
        raise VaelabError(
            f"brute-force log Z enumerates 2^{n} states; use at most {MAX_BRUTE_FORCE_SPINS} spins "
            "or log_partition_transfer_matrix for a narrow grid"
        )
    s = _all_spin_configs(n).reshape(-1, *grid.shape)
    return float(logsumexp(grid.log_potential(s)))


def log_partition_transfer_matrix(grid: IsingGrid) -> float:
    """log Z by a transfer matrix along the long side; the short side must be <= 16.

    The state is one column of H spins (H = short side). Column c contributes its own potential
    phi_c(sigma) = sum_i h_ic sigma_i + sum_i Jdown_ic sigma_i sigma_{i+1}; consecutive columns are coupled
    by prod_i exp(Jright_ic sigma_i sigma'_i), which factorises over rows, so it is applied one row (one
    tensor axis) at a time: W * 2^H work per column instead of 4^H.
    """
    if grid.shape[0] > grid.shape[1]:
        grid = grid.transpose()
    height, width = grid.shape
    if height > MAX_TRANSFER_WIDTH:
        raise VaelabError(
            f"transfer matrix needs the short side <= {MAX_TRANSFER_WIDTH}, got a {height}x{width} grid"
        )
    cols = _all_spin_configs(height)  # (2^H, H)

    def column_potential(c: int) -> np.ndarray:  # (2^H,)
        return cols @ grid.h[:, c] + ((cols[:, :-1] * cols[:, 1:]) @ grid.j_down[:, c])

    log_v = column_potential(0).reshape((2,) * height)
    spins = np.array([-1.0, 1.0])
    for c in range(1, width):
        for i in range(height):
            pair = grid.j_right[i, c - 1] * np.outer(spins, spins)  # (s_i, s'_i)
            moved = np.moveaxis(log_v, i, 0)  # (2, ...)
            summed = logsumexp(moved[:, None] + pair.reshape((2, 2) + (1,) * (height - 1)), axis=0)
            log_v = np.moveaxis(summed, 0, i)
        log_v = log_v + column_potential(c).reshape((2,) * height)
    return float(logsumexp(log_v))


def log_partition(grid: IsingGrid) -> float:
    """Exact log Z: brute force up to 16 spins, else the transfer matrix."""
    if grid.n_spins <= MAX_BRUTE_FORCE_SPINS:
        return log_partition_brute_force(grid)
    return log_partition_transfer_matrix(grid)


def _binary_entropy(m: np.ndarray) -> np.ndarray:
    """Entropy of a +-1 spin with mean m, nats; 0 at m = +-1."""
    up, down = (1.0 + m) / 2.0, (1.0 - m) / 2.0
    return -(xlogy(up, up) + xlogy(down, down))


def mean_field_elbo(grid: IsingGrid, m: np.ndarray) -> float:
    """ELBO(m) = sum J m_i m_j + sum h m + sum H_b(m_i) <= log Z for magnetisations m (H, W)."""
    return float(grid.log_potential(m) + _binary_entropy(m).sum())


@dataclass
class MeanFieldResult:
    m: np.ndarray  # (H, W) magnetisations of the best restart
    elbo: float  # its ELBO, a lower bound on log Z
    trace: CaviTrace  # CAVI trace of the best restart
    restart_elbos: list[float]  # final ELBO of every restart


def mean_field(
    grid: IsingGrid,
    *,
    seed: int = 0,
    n_random_starts: int = 2,
    tol: float = 1e-14,
    max_sweeps: int = 10_000,
    check_every_update: bool = False,
) -> MeanFieldResult:
    """Naive mean field by CAVI with checkerboard block updates, from several starts; keeps the best.

    Starts: all spins up (m = 0.5), all down (m = -0.5), and ``n_random_starts`` draws m ~ U(-1, 1).
    m = 0 is deliberately not a start: with h = 0 it is a fixed point that is a saddle for strong J.
    Every start gives a valid lower bound; the best one is returned.
    """
    height, width = grid.shape
    black = (np.add.outer(np.arange(height), np.arange(width)) % 2) == 0
    white = ~black

    def make_update(mask: np.ndarray):
        def update(m: np.ndarray) -> np.ndarray:
            m = m.copy()
            m[mask] = np.tanh(grid.local_fields(m)[mask])  # MacKay eq. 33.28, on one checkerboard colour
            return m

        return update

    rng = np.random.default_rng(seed)
    starts = [np.full(grid.shape, 0.5), np.full(grid.shape, -0.5)]
    starts += [rng.uniform(-1.0, 1.0, grid.shape) for _ in range(n_random_starts)]
    best: CaviTrace | None = None
    finals = []
    for m0 in starts:
        trace = cavi(
            m0,
            [make_update(black), make_update(white)],
            lambda m: mean_field_elbo(grid, m),
            tol=tol,
            max_sweeps=max_sweeps,
            round_off=1e-12,
            check_every_update=check_every_update,
        )
        finals.append(trace.elbo[-1])
        if best is None or trace.elbo[-1] > best.elbo[-1]:
            best = trace
    assert best is not None
    return MeanFieldResult(best.state, best.elbo[-1], best, finals)


@dataclass(frozen=True)
class IsingRow:
    height: int
    width: int
    coupling: float
    field: float
    log_z: float  # exact
    bound: float  # mean-field ELBO
    method: str  # how log Z was computed

    @property
    def gap(self) -> float:
        return self.log_z - self.bound


def ising_table(
    sizes: Sequence[tuple[int, int]] = ((3, 3), (4, 4)),
    couplings: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 1.0),
    field: float = 0.0,
    seed: int = 0,
) -> list[IsingRow]:
    """Exact log Z, the mean-field bound and the gap for uniform grids, one row per (size, J)."""
    rows = []
    for height, width in sizes:
        for j in couplings:
            grid = IsingGrid.uniform(height, width, j, field)
            if grid.n_spins <= MAX_BRUTE_FORCE_SPINS:
                log_z, method = log_partition_brute_force(grid), "enumeration"
            else:
                log_z, method = log_partition_transfer_matrix(grid), "transfer matrix"
            bound = mean_field(grid, seed=seed).elbo
            rows.append(IsingRow(height, width, float(j), float(field), log_z, bound, method))
    return rows


def bound_vs_coupling(
    sizes: Sequence[tuple[int, int]] = ((3, 3), (4, 4), (4, 40)),
    couplings: Sequence[float] | None = None,
    field: float = 0.0,
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Exact log Z and the mean-field bound of uniform grids against J (default 21 J's in [0, 1]).

    Returns "HxW" -> (J (n,), exact log Z (n,), bound (n,)), in nats (not per spin).
    """
    js = np.linspace(0.0, 1.0, 21) if couplings is None else np.asarray(couplings, dtype=float)
    data = {}
    for height, width in sizes:
        exact = [log_partition(IsingGrid.uniform(height, width, float(j), field)) for j in js]
        bound = [mean_field(IsingGrid.uniform(height, width, float(j), field), seed=seed).elbo for j in js]
        data[f"{height}x{width}"] = (js, np.array(exact), np.array(bound))
    return data
