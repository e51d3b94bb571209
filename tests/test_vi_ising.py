"""Ising model: exact log Z (two ways, against closed forms) and the mean-field lower bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vaelab.errors import VaelabError
from vaelab.vi.ising import (
    IsingGrid,
    log_partition_brute_force,
    log_partition_transfer_matrix,
    mean_field,
    mean_field_elbo,
)


@pytest.mark.parametrize("j", [0.0, 0.4, -1.3])
def test_exact_log_z_matches_closed_forms(j):
    # open chain of n spins, h = 0: Z = 2 (2 cosh J)^(n-1)
    chain = IsingGrid.uniform(1, 9, j)
    want = math.log(2) + 8 * math.log(2 * math.cosh(j))
    assert log_partition_brute_force(chain) == pytest.approx(want, rel=1e-12)
    assert log_partition_transfer_matrix(chain) == pytest.approx(want, rel=1e-12)
    # 2x2 grid = a 4-cycle: Z = (2 cosh J)^4 + (2 sinh J)^4
    ring = IsingGrid.uniform(2, 2, j)
    want = math.log((2 * math.cosh(j)) ** 4 + (2 * math.sinh(j)) ** 4)
    assert log_partition_brute_force(ring) == pytest.approx(want, rel=1e-12)
    assert log_partition_transfer_matrix(ring) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (2, 7), (5, 3), (1, 16)])
def test_transfer_matrix_equals_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        grid = IsingGrid.random(*shape, rng, coupling_scale=0.8, field_scale=0.7)
        assert log_partition_transfer_matrix(grid) == pytest.approx(
            log_partition_brute_force(grid), rel=1e-12
        )


def test_brute_force_refuses_large_grids():
    with pytest.raises(VaelabError, match="transfer"):
        log_partition_brute_force(IsingGrid.uniform(4, 5, 0.1))
    # ... but the transfer matrix handles a long strip, and agrees with the 1-D recursion when the
    # rows decouple (J_down = 0): log Z = sum over 3 independent chains
    strip = IsingGrid.uniform(3, 60, 0.7)
    strip = IsingGrid(strip.j_right, np.zeros_like(strip.j_down), strip.h)
    want = 3 * (math.log(2) + 59 * math.log(2 * math.cosh(0.7)))
    assert log_partition_transfer_matrix(strip) == pytest.approx(want, rel=1e-12)


def test_mean_field_bound_is_exact_without_couplings():
    rng = np.random.default_rng(0)
    h = rng.normal(0, 1.0, (4, 4))
    grid = IsingGrid(np.zeros((4, 3)), np.zeros((3, 4)), h)
    exact = float(np.log(2 * np.cosh(h)).sum())
    assert log_partition_brute_force(grid) == pytest.approx(exact, rel=1e-12)
    res = mean_field(grid)
    assert res.elbo == pytest.approx(exact, rel=1e-12)
    np.testing.assert_allclose(res.m, np.tanh(h), atol=1e-12)
    assert mean_field(IsingGrid.uniform(3, 3, 0.0)).elbo == pytest.approx(9 * math.log(2), rel=1e-14)


@pytest.mark.parametrize("seed", range(6))
def test_mean_field_is_a_lower_bound_on_random_grids(seed):
    rng = np.random.default_rng(100 + seed)
    shape = [(3, 3), (4, 4), (2, 6), (3, 5), (4, 4), (3, 4)][seed]
    grid = IsingGrid.random(*shape, rng, coupling_scale=1.0, field_scale=0.5)
    exact = log_partition_brute_force(grid)
    res = mean_field(grid, seed=seed, check_every_update=True)  # raises if any block update lowers it
    assert res.elbo <= exact + 1e-10
    assert exact - res.elbo > 1e-4  # couplings are non-zero: mean field is not exact
    # the returned m is a CAVI fixed point: m = tanh(local field) at every site
    np.testing.assert_allclose(res.m, np.tanh(grid.local_fields(res.m)), rtol=0, atol=1e-6)
    e = np.array(res.trace.elbo)
    assert np.all(np.diff(e) >= -1e-12 * np.abs(e[1:]).max())
    # any other magnetisation also gives a lower bound, and a worse one than the optimum nearby
    other = np.clip(res.m + rng.normal(0, 0.05, res.m.shape), -0.999, 0.999)
    assert mean_field_elbo(grid, other) <= res.elbo


def test_ferromagnet_mean_field_orders_above_critical_coupling():
    # a long 3-row strip at strong coupling: the broken-symmetry solution beats m = 0
    grid = IsingGrid.uniform(3, 30, 1.0)
    res = mean_field(grid)
    assert np.all(np.abs(res.m) > 0.9)
    assert res.elbo > mean_field_elbo(grid, np.zeros(grid.shape))
    assert res.elbo <= log_partition_transfer_matrix(grid)
