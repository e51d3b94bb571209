"""Figures for the run report: NumPy arrays in, a matplotlib ``Figure`` out. No file I/O, no torch.

Figures are built on ``matplotlib.figure.Figure`` directly rather than through pyplot, so this module
never selects a backend or touches pyplot's global figure list: it works headless (the Agg renderer is
used when the figure is saved) and importing vaelab never changes a notebook user's backend. Save with
``vaelab.report.html.figure_png``.

Image arrays are ``(N, C, H, W)`` with C = 1 (grey) or 3 (RGB) and any H, W; ``(N, H, W)`` is read as
grey. Floats are intensities in [0, 1] (clipped; NaN shown black), uint8 is divided by 255.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "image_grid",
    "reconstruction_figure",
    "manifold_figure",
    "latent_scatter",
    "training_curves",
    "line_plot",
    "curves_plot",
    "heatmap",
    "scatter_panels",
]

DPI = 100
_TARGET_PX = (
    640  # longest side an image mosaic is enlarged towards (by a whole factor, so pixels stay square)
)
_MAX_PX = 1000  # longest side beyond which a mosaic is shrunk to fit the page
_PAD = 2  # pixels between tiles, at the images' own resolution
_MAX_CLASSES = 20  # up to this many distinct integer labels get discrete colours and a legend

_META_KEYS = frozenset({"split", "step", "epoch", "time"})
_FIRST_KEYS = ("loss", "elbo", "reconstruction", "kl")
_LAST_KEYS = ("lr",)
_FRIENDLY = {
    "loss": "Loss (nats)",
    "elbo": "ELBO (nats)",
    "reconstruction": "Reconstruction E_q log p(x|z) (nats)",
    "kl": "KL(q(z|x) ‖ p(z)) (nats)",
    "iwae": "IWAE bound (nats)",
    "lr": "Learning rate",
    "beta": "KL weight β",
    "commitment": "Commitment loss",
    "codebook": "Codebook loss",
    "perplexity": "Codebook perplexity",
    "grad_norm": "Gradient norm",
}
_SPLIT_STYLE = {
    "train": {"color": "C0", "lw": 1.2},
    "valid": {"color": "C1", "lw": 1.5, "marker": "o", "ms": 3.5},
}


# ---------------------------------------------------------------------------------------- image mosaics


def _as_images(images: Any, name: str = "images") -> np.ndarray:
    """``(N, C, H, W)`` or ``(N, H, W)`` array-like -> float32 ``(N, C, H, W)`` in [0, 1]."""
    a = np.asarray(images)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"{name} must have shape (N, C, H, W) with C = 1 or 3, or (N, H, W); got {a.shape}")
    if a.shape[0] == 0 or a.shape[2] == 0 or a.shape[3] == 0:
        raise ValueError(f"{name} is empty: shape {a.shape}")
    if a.dtype == np.uint8:
        a = a / 255.0
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(a, 0.0, 1.0)


def _tile(images: np.ndarray, ncol: int, pad: int = _PAD, fill: float = 1.0) -> np.ndarray:
    """Lay ``(N, C, H, W)`` images row by row, ``ncol`` per row, into one ``(C, H', W')`` mosaic.

    Tiles are separated (and framed) by ``pad`` pixels of ``fill``; an unfinished last row is filled.
    """
    n, c, h, w = images.shape
    nrows = math.ceil(n / ncol)
    tiles = np.full((nrows * ncol, c, h + pad, w + pad), fill, dtype=np.float32)
    tiles[:n, :, :h, :w] = images
    mosaic = tiles.reshape(nrows, ncol, c, h + pad, w + pad).transpose(2, 0, 3, 1, 4)
    mosaic = mosaic.reshape(c, nrows * (h + pad), ncol * (w + pad))
    return np.pad(mosaic, ((0, 0), (pad, 0), (pad, 0)), constant_values=fill)


def _mosaic_figure(mosaic: np.ndarray) -> tuple[Figure, Any]:
    """A figure whose single axes fills it and shows the ``(C, H, W)`` mosaic pixel-exactly.

    The figure size makes each image pixel a whole number of screen pixels at ``DPI`` (enlarged towards
    ``_TARGET_PX``), so nearest-neighbour drawing stays crisp; titles and tick labels fall outside the
    figure and are kept by ``bbox_inches="tight"`` when saving.
    """
    c, h, w = mosaic.shape
    longest = max(h, w)
    scale = max(1, _TARGET_PX // longest) if longest <= _MAX_PX else _MAX_PX / longest
    fig = Figure(figsize=(w * scale / DPI, h * scale / DPI), dpi=DPI)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    if c == 1:
        ax.imshow(mosaic[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(mosaic.transpose(1, 2, 0), interpolation="nearest")
    return fig, ax


def _bare(ax: Any) -> None:
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(images: Any, nrow: int | None = None, title: str = "") -> Figure:
    """A grid of images in one axes.

    Args:
        images: ``(N, C, H, W)`` (C = 1 grey, 3 RGB) or ``(N, H, W)``; any H, W (e.g. Frey Face 28x20).
        nrow: images per row (torchvision's ``make_grid`` convention); default ``ceil(sqrt(N))``.
        title: drawn above the grid.

    Returns:
        A figure with one axes holding one image (the mosaic).
    """
    imgs = _as_images(images)
    ncol = nrow if nrow is not None else math.ceil(math.sqrt(len(imgs)))
    if ncol < 1:
        raise ValueError(f"nrow must be at least 1, got {nrow}")
    fig, ax = _mosaic_figure(_tile(imgs, min(ncol, len(imgs))))
    _bare(ax)
    if title:
        ax.set_title(title)
    return fig


def reconstruction_figure(original: Any, reconstruction: Any, ncol: int | None = None) -> Figure:
    """Inputs and their reconstructions as pairs of rows: originals above, reconstructions below.

    Args:
        original: ``(N, C, H, W)`` images.
        reconstruction: the same shape; ``reconstruction[i]`` is drawn under ``original[i]``.
        ncol: pairs per row; default: at most 12, the same number in every row where possible.

    Returns:
        A figure with one axes holding one image; the rows are labelled on the left.
    """
    orig = _as_images(original, "original")
    rec = _as_images(reconstruction, "reconstruction")
    if orig.shape != rec.shape:
        raise ValueError(f"original {orig.shape} and reconstruction {rec.shape} must have the same shape")
    n, c, h, w = orig.shape
    if ncol is None:  # at most 12 pairs a row, spread evenly over the rows (16 -> 8 + 8, not 12 + 4)
        ncol = math.ceil(n / math.ceil(n / 12))
    ncol = min(n, ncol)
    nblocks = math.ceil(n / ncol)
    blocks = []
    for b in range(nblocks):
        sl = slice(b * ncol, (b + 1) * ncol)
        pair = np.full((2 * ncol, c, h, w), 1.0, dtype=np.float32)
        pair[: len(orig[sl])] = orig[sl]
        pair[ncol : ncol + len(rec[sl])] = rec[sl]
        blocks.append(_tile(pair, ncol))
    gap = np.full((c, 3 * _PAD, blocks[0].shape[2]), 1.0, dtype=np.float32)  # wider gap between pairs
    mosaic = np.concatenate([x for blk in blocks for x in (blk, gap)][:-1], axis=1)
    fig, ax = _mosaic_figure(mosaic)
    _bare(ax)
    block_h = blocks[0].shape[1] + gap.shape[1]
    centers, labels = [], []
    for b in range(nblocks):
        centers += [b * block_h + _PAD + h / 2 - 0.5, b * block_h + 2 * _PAD + h + h / 2 - 0.5]
        labels += ["input", "recon."]
    ax.set_yticks(centers, labels)
    ax.tick_params(axis="y", length=0)
    return fig


def manifold_figure(images: Any, grid: Any) -> Figure:
    """The learned manifold: decoded images over a square grid of 2-D latent values (K&W 2014, Fig. 4).

    Args:
        images: ``(n, n, C, H, W)``; ``images[i, j]`` is the decoder mean at ``z = (grid[j], grid[i])``,
            i.e. column j varies z1, row i varies z2.
        grid: ``(n,)`` the latent values along each axis (e.g. ``Phi^{-1}`` of evenly spaced quantiles).

    Returns:
        A figure with one axes holding one image, z1 increasing to the right and z2 upwards, with
        the z values as tick labels.
    """
    a = np.asarray(images)
    g = np.asarray(grid, dtype=float).reshape(-1)
    n = len(g)
    if a.ndim == 4:  # (n, n, H, W) grey
        a = a[:, :, None]
    if a.ndim != 5 or a.shape[0] != n or a.shape[1] != n:
        raise ValueError(
            f"manifold images must have shape (n, n, C, H, W) with n = len(grid) = {n}; got {a.shape}"
        )
    h, w = a.shape[3], a.shape[4]
    # Row i holds z2 = grid[i]; draw it from the bottom so that z2 grows upwards as on a plot.
    tiles = _as_images(a[::-1].reshape(n * n, *a.shape[2:]), "manifold images")
    fig, ax = _mosaic_figure(_tile(tiles, n, pad=0))
    for spine in ax.spines.values():
        spine.set_visible(False)
    step = max(1, math.ceil(n / 7))
    idx = list(range(0, n, step))
    labels = [f"{g[k]:.2g}".replace("-", "\u2212") for k in idx]  # typographic minus, as matplotlib's own
    ax.set_xticks([j * w + w / 2 - 0.5 for j in idx], labels)
    ax.set_yticks([(n - 1 - i) * h + h / 2 - 0.5 for i in idx], labels)
    ax.tick_params(length=3, labelsize=9)
    ax.set_xlabel("z₁")
    ax.set_ylabel("z₂")
    return fig


# ----------------------------------------------------------------------------------------- latent codes


def _pca2(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Project ``(N, D)`` points on their first two principal components.

    Returns the ``(N, 2)`` projection of the centred points and the fraction of the total variance the
    two components explain. Signs are fixed (largest loading positive) so the picture is reproducible.
    """
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    vt = vt[:2] * np.sign(vt[:2, np.argmax(np.abs(vt[:2]), axis=1)].diagonal())[:, None]
    total = float((s**2).sum())
    frac = float((s[:2] ** 2).sum() / total) if total > 0 else 1.0
    return xc @ vt.T, frac


def latent_scatter(codes: Any, labels: Any = None) -> Figure:
    """A scatter of latent codes, coloured by label.

    Args:
        codes: ``(N, Dz)`` posterior means. Dz = 2 is drawn as is; Dz > 2 is projected on the first two
            principal components (the title says so, with the variance they explain); Dz = 1 is drawn
            against a random vertical jitter.
        labels: ``(N,)`` class labels, or None. Up to 20 distinct integers get discrete colours and a
            legend; other labels a continuous colour map with a colour bar.

    Returns:
        A figure with one axes (plus one colour-bar axes for continuous labels).
    """
    z = np.asarray(codes, dtype=float)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"codes must have shape (N, Dz) with N, Dz >= 1; got {z.shape}")
    n, d = z.shape
    rng = np.random.default_rng(0)
    if d == 1:
        xy = np.column_stack([z[:, 0], rng.uniform(-1.0, 1.0, n)])
        title, xlabel, ylabel = "Posterior means (1-D latent; vertical jitter)", "z₁", ""
    elif d == 2:
        xy = z
        title, xlabel, ylabel = "Posterior means of the 2-D latent", "z₁", "z₂"
    else:
        xy, frac = _pca2(z)
        title = f"Posterior means: first two principal components of {d}-D codes ({frac:.0%} of variance)"
        xlabel, ylabel = "PC 1", "PC 2"

    fig = Figure(figsize=(7.0, 5.6), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    size = float(np.clip(3000.0 / n, 1.0, 16.0))
    order = rng.permutation(n)  # draw classes interleaved so the last class does not hide the others
    if labels is None:
        ax.scatter(xy[order, 0], xy[order, 1], s=size, c="C0", alpha=0.6, linewidths=0)
    else:
        lab = np.asarray(labels).reshape(-1)
        if lab.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match codes; got {np.asarray(labels).shape}")
        classes = np.unique(lab)
        integral = np.issubdtype(lab.dtype, np.integer) or np.issubdtype(lab.dtype, np.bool_)
        if integral and len(classes) <= _MAX_CLASSES:
            cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
            index = np.searchsorted(classes, lab)
            ax.scatter(xy[order, 0], xy[order, 1], s=size, c=cmap(index[order]), alpha=0.7, linewidths=0)
            handles = [
                Line2D([], [], ls="", marker="o", ms=6, color=cmap(k), label=str(c))
                for k, c in enumerate(classes)
            ]
            ax.legend(
                handles=handles, title="label", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False
            )
        else:
            sc = ax.scatter(
                xy[order, 0],
                xy[order, 1],
                s=size,
                c=lab[order].astype(float),
                cmap="viridis",
                alpha=0.7,
                linewidths=0,
            )
            fig.colorbar(sc, ax=ax, label="label")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if d == 1:
        ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25)
    return fig


# --------------------------------------------------------------------------------------- training curves


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _quantities(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric keys other than split/step/epoch/time: the usual ones first, lr last, others as met."""
    seen: dict[str, None] = {}
    for row in rows:
        for k, v in row.items():
            if k not in _META_KEYS and _is_number(v):
                seen.setdefault(k)
    first = [k for k in _FIRST_KEYS if k in seen]
    last = [k for k in _LAST_KEYS if k in seen]
    return first + [k for k in seen if k not in first and k not in last] + last


def _robust_ylim(series: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """Limits that leave out each line's first 5% of points when those alone would stretch the axis 3x.

    Early training values (an ELBO of -500 before it settles near -90) otherwise flatten the curves.
    """
    if sum(len(y) for y in series) < 20:
        return None
    full = np.concatenate(series)
    tail = np.concatenate([y[max(1, len(y) // 20) :] if len(y) >= 10 else y for y in series])
    lo, hi = float(tail.min()), float(tail.max())
    if hi <= lo or float(full.max() - full.min()) <= 3 * (hi - lo):
        return None
    margin = 0.08 * (hi - lo)
    return lo - margin, hi + margin


def training_curves(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """One panel per logged quantity, each split (train, valid, ...) a line, against epoch.

    Args:
        rows: metrics.jsonl records, e.g. ``{"split": "train", "step": 100, "epoch": 0.43, "loss": ...}``.
            Every numeric key other than split/step/epoch/time is plotted, whatever the model family
            (elbo, kl, commitment, perplexity, lr, ...). The x axis is ``epoch``, else ``step``.

    Returns:
        A figure with one axes per quantity.

    Raises:
        ValueError: when no row has a numeric quantity to plot.
    """
    keys = _quantities(rows)
    if not keys:
        raise ValueError("no numeric quantity to plot in the metrics rows")
    xkey = "epoch" if any(_is_number(r.get("epoch")) for r in rows) else "step"
    splits: dict[str, None] = {}
    for r in rows:
        splits.setdefault(str(r.get("split", "train")))
    ordered = [s for s in ("train", "valid") if s in splits] + [
        s for s in splits if s not in ("train", "valid")
    ]

    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.3 * ncols, 3.0 * nrows + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for ax in axes[len(keys) :]:
        fig.delaxes(ax)
    handles: dict[str, Any] = {}
    for ax, key in zip(axes, keys):
        drawn = []
        for k, split in enumerate(ordered):
            pts = [
                (float(r[xkey]), float(r[key]))
                for r in rows
                if str(r.get("split", "train")) == split
                and _is_number(r.get(xkey))
                and _is_number(r.get(key))
            ]
            pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
            if not pts:
                continue
            x, y = np.array(pts).T
            style = _SPLIT_STYLE.get(split, {"color": f"C{k + 2}", "lw": 1.2, "marker": "s", "ms": 3})
            (line,) = ax.plot(x, y, label=split, **style)
            handles.setdefault(split, line)
            drawn.append(y)
        ax.set_title(_FRIENDLY.get(key, key), fontsize=10)
        ax.set_xlabel(xkey)
        ax.grid(alpha=0.3)
        if not drawn:
            continue
        values = np.concatenate(drawn)
        if values.min() > 0 and values.max() / values.min() > 20:
            ax.set_yscale("log")
        elif (lim := _robust_ylim(drawn)) is not None:
            ax.set_ylim(*lim)
    if len(handles) > 1:
        fig.legend(
            handles.values(), handles.keys(), loc="outside upper right", ncols=len(handles), frameon=False
        )
    return fig


def line_plot(
    x: Any, y: Any, labels: Sequence[str] = (), xlabel: str = "", ylabel: str = "",
    logx: bool = False, logy: bool = False,
) -> Figure:
    """Curves over one axis: ``x`` (N,), ``y`` (M, N) or (N,), one line per row, named by ``labels``.

    Raises:
        ValueError: when ``y``'s last dimension is not the length of ``x``.
    """
    xs = np.asarray(x, dtype=float).reshape(-1)
    ys = np.asarray(y, dtype=float)
    ys = ys.reshape(1, -1) if ys.ndim == 1 else ys.reshape(len(ys), -1)
    if ys.shape[1] != len(xs):
        raise ValueError(f"y has {ys.shape[1]} points per curve but x has {len(xs)}")
    fig = Figure(figsize=(6.0, 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    for i, row in enumerate(ys):
        ax.plot(xs, row, lw=1.4, label=labels[i] if i < len(labels) else None)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if labels:
        ax.legend(frameon=False)
    return fig


def curves_plot(
    x: Any, y: Any, labels: Sequence[str] = (), styles: Sequence[str] = (), colors: Sequence[str] = (),
    xlabel: str = "", ylabel: str = "", equal_aspect: bool = False, logx: bool = False,
) -> Figure:
    """Curves with their own points: ``x``, ``y`` (M, N), one curve per row, NaN ending a shorter one.

    ``styles``: matplotlib format strings per curve ("-", "--", ".-"); ``colors`` per curve, else one
    colour per distinct label in order. A curve is named in the legend once per label. Without
    ``equal_aspect`` the y axis leaves out early points that alone would stretch it threefold (as
    the training curves do).

    Raises:
        ValueError: when ``x`` and ``y`` differ in shape.
    """
    xs, ys = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    if xs.shape != ys.shape:
        raise ValueError(f"x has shape {xs.shape} but y has {ys.shape}")
    fig = Figure(figsize=(5.6, 5.2) if equal_aspect else (6.0, 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    by_label: dict[str, str] = {}
    for i, (cx, cy) in enumerate(zip(xs, ys)):
        label = labels[i] if i < len(labels) else ""
        color = colors[i] if i < len(colors) and colors[i] else None
        color = color or by_label.setdefault(label, f"C{len(by_label)}")
        style = styles[i] if i < len(styles) and styles[i] else "-"
        first = bool(label) and label not in ax.get_legend_handles_labels()[1]
        ax.plot(cx, cy, style, color=color, lw=1.4, ms=4, label=label if first else None)
    if equal_aspect:
        ax.set_aspect("equal", adjustable="datalim")
    elif (lim := _robust_ylim([cy[np.isfinite(cy)] for cy in ys])) is not None:
        ax.set_ylim(*lim)  # a first value far off (an untrained model's bound) would flatten the rest
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any(labels):
        ax.legend(frameon=False, fontsize=8)
    return fig


def heatmap(values: Any, xlabel: str = "", ylabel: str = "", colorbar: str = "") -> Figure:
    """A matrix (R, C) as colours, row r at height r, with a colour bar.

    Raises:
        ValueError: when ``values`` is not a 2-D array.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2:
        raise ValueError(f"a heat map needs a 2-D array, got shape {v.shape}")
    fig = Figure(figsize=(7.0, 3.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(v, aspect="auto", cmap="viridis", interpolation="nearest", origin="lower")
    fig.colorbar(im, ax=ax, fraction=0.04, label=colorbar)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rows and columns are counted
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig


def scatter_panels(
    points: Sequence[Any], values: Sequence[Any] = (), titles: Sequence[str] = (),
    xlabels: Sequence[str] = (), ylabels: Sequence[str] = (), *, vmin: float | None = None,
    vmax: float | None = None, cmap: str = "twilight", colorbar: str = "", sizes: Sequence[float] = (),
    markers: Sequence[str] = (),
) -> Figure:
    """Point clouds side by side, one panel each, on equal axes and one colour scale.

    ``points``: (N_i, 2) per panel; ``values``: (N_i,) per panel to colour the points by (a cyclic
    colour map suits angles), or empty for one colour; ``vmin`` / ``vmax`` fix the scale (default:
    the range of all values); ``sizes``: marker area in points^2 per panel (default 4); ``markers``:
    matplotlib marker per panel (default "o"; "s" tiles a grid of points).

    Raises:
        ValueError: when a panel's points are not (N, 2) or its values not (N,).
    """
    panels = [np.asarray(p, dtype=float) for p in points]
    colours = [np.asarray(v, dtype=float).reshape(-1) for v in values]
    for i, p in enumerate(panels):
        if p.ndim != 2 or p.shape[1] != 2:
            raise ValueError(f"panel {i}: points must have shape (N, 2), got {p.shape}")
        if i < len(colours) and colours[i].shape != (len(p),):
            raise ValueError(f"panel {i}: {len(colours[i])} values for {len(p)} points")
    if colours:
        finite = np.concatenate([c[np.isfinite(c)] for c in colours] or [np.zeros(1)])
        vmin = float(finite.min()) if vmin is None and finite.size else vmin
        vmax = float(finite.max()) if vmax is None and finite.size else vmax
    n = max(1, len(panels))
    fig = Figure(figsize=(3.4 * n + (0.8 if colours else 0.0), 3.6), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    mappable = None
    for i, (ax, p) in enumerate(zip(axes, panels)):
        c = colours[i] if i < len(colours) else None
        size = sizes[i] if i < len(sizes) else 4.0
        marker = markers[i] if i < len(markers) else "o"
        scale = {"c": c, "cmap": cmap, "vmin": vmin, "vmax": vmax} if c is not None else {}
        if len(p):
            drawn = ax.scatter(p[:, 0], p[:, 1], s=size, marker=marker, linewidths=0, **scale)
            mappable = drawn if c is not None else mappable
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(titles[i] if i < len(titles) else "", fontsize=9)
        ax.set_xlabel(xlabels[i] if i < len(xlabels) else "")
        ax.set_ylabel(ylabels[i] if i < len(ylabels) else "")
        ax.grid(alpha=0.3)
    if colours and mappable is not None:
        fig.colorbar(mappable, ax=list(axes), fraction=0.03, label=colorbar)
    return fig
