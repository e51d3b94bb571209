"""Figures of the classical-VI runs (``vaelab kl``, ``lda``): data in, figure out.

NumPy arrays in, a matplotlib ``Figure`` out (no pyplot state, no torch, no model), like
:mod:`vaelab.report.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

__all__ = ["gaussian_fits_figure", "topic_proportions_figure"]


def gaussian_fits_figure(
    mean: np.ndarray,
    cov: np.ndarray,
    fits: Sequence[tuple[str, np.ndarray, np.ndarray]],
    path: np.ndarray | None = None,
) -> Figure:
    """p = N(mean, cov) in 2-D as its 1- and 2-sigma contours, and diagonal Gaussian fits as ellipses.

    mean (2,), cov (2, 2); ``fits``: (label, mean (2,), variances (2,)) each, drawn in turn in C3, C0,
    ...; ``path`` (T, 2): the means after every coordinate update of CAVI, drawn over the first fit.
    """
    mean = np.asarray(mean, dtype=float)
    cov = np.asarray(cov, dtype=float)
    span = 3.2 * np.sqrt(np.diag(cov)).max()
    xs = np.linspace(mean[0] - span, mean[0] + span, 200)
    ys = np.linspace(mean[1] - span, mean[1] + span, 200)
    gx, gy = np.meshgrid(xs, ys)
    diff = np.stack([gx - mean[0], gy - mean[1]], -1)
    maha = np.einsum("...i,ij,...j->...", diff, np.linalg.inv(cov), diff)
    fig = Figure(figsize=(5.2, 5.2), layout="constrained")
    ax = fig.subplots()
    ax.contour(gx, gy, maha, levels=[1.0, 4.0], colors="0.25", linewidths=1.2)
    ax.plot([], [], color="0.25", label="p (1σ, 2σ)")
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple"]
    for (label, m, var), color in zip(fits, colors):
        sd = np.sqrt(np.asarray(var, dtype=float))
        for k in (1.0, 2.0):
            ax.add_patch(
                Ellipse(tuple(m), 2 * k * sd[0], 2 * k * sd[1], fill=False, color=color, lw=1.6,
                        ls="-" if k == 1 else "--")
            )
        ax.plot([], [], color=color, label=label)
    if path is not None and len(path):
        pts = np.asarray(path, dtype=float)
        ax.plot(pts[:, 0], pts[:, 1], ".-", color=colors[0], alpha=0.5, ms=4, lw=0.8,
                label="CAVI path of the means")
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_aspect("equal")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Mean-field fits to a correlated Gaussian")
    return fig


def topic_proportions_figure(theta: np.ndarray, max_docs: int = 40) -> Figure:
    """E_q[θ_d] of documents as a heat map: theta (D, K), the first ``max_docs`` documents as columns."""
    theta = np.asarray(theta, dtype=float)[:max_docs]
    fig = Figure(figsize=(7, 3.5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(theta.T, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.04)
    ax.set_xlabel("held-out document")
    ax.set_ylabel("topic")
    ax.set_title("topic proportions E_q[θ_d]")
    return fig
