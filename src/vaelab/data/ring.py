"""A ring in the plane, a synthetic dataset that needs no files: ``data.name = "ring"``.

x = g(z) = z / 10 + z / ||z||, z ~ N(0, I_2): a standard normal pushed through a fixed map (the
lecture's picture of a generative model; Doersch 2016, "Tutorial on Variational Autoencoders",
Figure 2). The map keeps the angle of z and sends its radius r to 1 + r / 10, so ||x|| - 1 is a
tenth of a chi variable with two degrees of freedom (a Rayleigh variable): ||x|| has mean
1 + sqrt(pi / 2) / 10 ~= 1.1253 and standard deviation sqrt(2 - pi / 2) / 10 ~= 0.0655, and
never falls below 1. Its density is known (:func:`ring_log_prob`), so a model's log-likelihood
can be set beside the truth.

Splits: 10,000 / 1,000 / 1,000 points for train / valid / test, each drawn from its own fixed
seed (the same points on every machine and in every run; ``data.split_seed`` does not move them;
``data.limit`` keeps the first N training points). Examples are (1, 1, 2) float32 arrays (a
"1 x 2 image", as ``npy:`` stores flat vectors), continuous: use ``data.binarize = "none"`` and a
Gaussian likelihood. Labels: the octant of the angle of x (0 for 0-45 degrees, ...), to colour
latent codes by.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .base import ImageSplits
from .registry import Dataset, register_dataset

__all__ = ["RING", "RING_SIZES", "RING_SEED", "ring_map", "ring_points", "ring_log_prob",
           "ring_radius_moments", "ring_octants"]

RING_SIZES = {"train": 10_000, "valid": 1_000, "test": 1_000}
RING_SEED = 20140101
"""With the split's index (train 0, valid 1, test 2) it seeds that split's draws."""

_OCTANTS = 8


def ring_map(z: np.ndarray) -> np.ndarray:
    """g(z) = z / 10 + z / ||z||: (..., 2) -> (..., 2)."""
    r = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / 10 + z / r


def ring_points(n: int, seed: int) -> np.ndarray:
    """n points g(z), z ~ N(0, I_2) from a generator seeded by ``seed``: (n, 2) float64."""
    return ring_map(np.random.default_rng(seed).standard_normal((n, 2)))


def ring_log_prob(x: np.ndarray) -> np.ndarray:
    """log p(x) of the ring's density, in nats: (..., 2) -> (...); -inf inside the unit circle.

    Change of variables in polar coordinates: g keeps the angle and maps the radius r of z to
    rho = 1 + r / 10, so p(rho, theta) = p_z(r, theta) dr/drho = 10 r exp(-r^2 / 2) / (2 pi), and
    the Cartesian density divides by the Jacobian rho: p(x) = 10 r exp(-r^2 / 2) / (2 pi rho),
    with r = 10 (||x|| - 1).
    """
    rho = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=-1)
    r = 10.0 * (rho - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = math.log(10.0 / (2 * math.pi)) + np.log(r) - 0.5 * r**2 - np.log(rho)
    return np.where(r > 0, out, -np.inf)


def ring_radius_moments() -> tuple[float, float]:
    """(mean, standard deviation) of ||x||: 1 + sqrt(pi/2)/10 and sqrt(2 - pi/2)/10 (Rayleigh)."""
    return 1.0 + math.sqrt(math.pi / 2) / 10.0, math.sqrt(2.0 - math.pi / 2) / 10.0


def ring_octants(x: np.ndarray) -> np.ndarray:
    """The octant (0..7) of the angle of each point: (N, 2) -> (N,) int64."""
    angle = np.mod(np.arctan2(x[:, 1], x[:, 0]), 2 * math.pi)
    return np.minimum((angle / (2 * math.pi / _OCTANTS)).astype(np.int64), _OCTANTS - 1)


def load_ring(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> ImageSplits:
    if cfg.binarize != "none":
        raise VaelabError(
            f"dataset 'ring' holds continuous points in the plane, not grey levels to binarize "
            f"(data.binarize = {cfg.binarize!r}); set data.binarize = none and model.likelihood = gaussian"
        )
    split: dict[str, np.ndarray] = {}
    for i, (name, n) in enumerate(RING_SIZES.items()):
        split[name] = ring_points(n, RING_SEED + i).astype(np.float32)
    return ImageSplits(
        train=split["train"][:, None, None, :], train_labels=ring_octants(split["train"]),
        valid=split["valid"][:, None, None, :], valid_labels=ring_octants(split["valid"]),
        test=split["test"][:, None, None, :], test_labels=ring_octants(split["test"]),
        max_value=1.0, n_classes=_OCTANTS,
        class_names=[f"{45 * k}-{45 * (k + 1)}°" for k in range(_OCTANTS)],
    )  # fmt: skip


RING = register_dataset(
    Dataset(
        name="ring",
        description="2-D points g(z) = z/10 + z/||z||, z ~ N(0, I): a ring; 10,000/1,000/1,000, fixed seeds",
        folder="",
        files=(),
        loader=load_ring,
        note="synthetic, drawn on load",
    )
)
