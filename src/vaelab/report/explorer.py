"""The latent explorer's page block: a 2-D latent plane that follows the reader's pointer.

From an ``ExplorerSection`` (G x G decodes on a latent grid, posterior means, labels) this writes
one block of HTML with everything inline, so the report stays a single self-contained file:

* the plane, a ``<canvas>`` on which a small inline script draws the posterior means, coloured by
  label (legend beside it), z1 to the right and z2 upwards;
* the decodes, as one PNG sprite sheet (tile (i, j) at row i, column j is the decode at
  z = (grid[j], grid[i])) in a hidden ``<img>`` with a base64 data URI;
* the view, a second ``<canvas>`` into which the script copies the tile of the grid point nearest
  to the pointer (on ``pointermove``/``pointerdown``, which also covers pen and touch, and on
  ``touchstart``/``touchmove`` for browsers without pointer events), enlarged by a whole factor
  without smoothing, with the pointer's z printed below.

The plane spans the grid padded by half a cell on each side, so every point of it has a nearest
grid point at most half a cell away on each axis. State for tests and scripts: the plane's
``data-cell`` attribute is ``"i,j"``, the tile shown. No network, no external script or style.
"""

from __future__ import annotations

import base64
import html
import json
import re
import struct
import zlib

import numpy as np

from vaelab.sections import ExplorerSection

__all__ = ["explorer_html", "png_bytes", "sprite_sheet", "label_colours", "PLANE_PX", "MAX_POINTS"]

PLANE_PX = 420  # side of the plane, CSS pixels
VIEW_PX = 196  # the view is enlarged towards this side by a whole factor
MAX_POINTS = 10_000  # posterior means drawn (the first ones); keeps the page's JSON small

_TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_TAB20 = _TAB10 + ["#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
                   "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
_RAMP = ["#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725"]  # viridis

_STYLE = """
.vx{display:inline-flex;max-width:100%;flex-wrap:wrap;gap:1.2rem;align-items:flex-start;margin:.5rem 0}
.vx-plane{border:1px solid #ccc;cursor:crosshair;touch-action:none;background:#fff}
.vx-view{border:1px solid #ccc;image-rendering:pixelated;background:#000}
.vx-z{font-family:ui-monospace,monospace;font-size:.9rem;margin:.3rem 0}
.vx-legend{font-size:.85rem;color:#444;max-width:220px}
.vx-legend span{display:inline-block;margin:0 .6rem .2rem 0;white-space:nowrap}
.vx-legend i{display:inline-block;width:.7rem;height:.7rem;border-radius:50%;margin-right:.25rem;
  vertical-align:-.05rem}
.vx-axis{font-size:.8rem;color:#666;margin:.2rem 0 0}
"""

# Reads the block's JSON, draws the plane, and shows the decode nearest to the pointer. The tile of
# cell (i, j) sits at (j * W, i * H) in the sprite; the plane maps x -> z1 (left to right) and
# y -> z2 (bottom to top) over [lo, hi] on both axes.
_SCRIPT = """
(function () {
  const root = document.getElementById(%(id)s);
  const d = JSON.parse(root.querySelector(".vx-data").textContent);
  const plane = root.querySelector(".vx-plane"), view = root.querySelector(".vx-view");
  const sprite = root.querySelector(".vx-sprite"), out = root.querySelector(".vx-z");
  const G = d.grid.length, H = d.h, W = d.w, S = d.scale, lo = d.lo, hi = d.hi;
  const side = plane.clientWidth || %(px)d, dpr = window.devicePixelRatio || 1;
  plane.width = Math.round(side * dpr); plane.height = Math.round(side * dpr);
  const toPx = z => (z - lo) / (hi - lo) * side;
  const base = document.createElement("canvas");
  base.width = plane.width; base.height = plane.height;
  (function drawPoints() {
    const c = base.getContext("2d");
    c.scale(dpr, dpr);
    c.fillStyle = "#fff"; c.fillRect(0, 0, side, side);
    c.strokeStyle = "#ddd"; c.lineWidth = 1;
    if (lo < 0 && hi > 0) {
      c.beginPath(); c.moveTo(toPx(0), 0); c.lineTo(toPx(0), side);
      c.moveTo(0, side - toPx(0)); c.lineTo(side, side - toPx(0)); c.stroke();
    }
    c.globalAlpha = 0.55;
    const p = d.points, n = p.length / 2, r = n > 3000 ? 1.3 : 2;
    for (let k = 0; k < n; k++) {
      c.fillStyle = d.colors[d.colour[k]];
      c.beginPath(); c.arc(toPx(p[2 * k]), side - toPx(p[2 * k + 1]), r, 0, 2 * Math.PI); c.fill();
    }
  })();
  const nearest = z => {
    let best = 0;
    for (let k = 1; k < G; k++) if (Math.abs(d.grid[k] - z) < Math.abs(d.grid[best] - z)) best = k;
    return best;
  };
  const vc = view.getContext("2d");
  function show(z1, z2) {
    const i = nearest(z2), j = nearest(z1);
    vc.imageSmoothingEnabled = false;
    vc.drawImage(sprite, j * W, i * H, W, H, 0, 0, W * S, H * S);
    plane.setAttribute("data-cell", i + "," + j);
    const c = plane.getContext("2d");
    c.setTransform(1, 0, 0, 1, 0, 0);
    c.drawImage(base, 0, 0);
    c.scale(dpr, dpr);
    const cw = side / G;  // outline the grid cell shown
    c.strokeStyle = "#000"; c.lineWidth = 1.5;
    c.strokeRect(toPx(d.grid[j]) - cw / 2, side - toPx(d.grid[i]) - cw / 2, cw, cw);
    const f = v => (Math.abs(v) < 0.005 ? 0 : v).toFixed(2);  // no "-0.00"
    out.textContent = "z = (" + f(z1) + ", " + f(z2) + "), nearest grid point (" + f(d.grid[j]) + ", " +
      f(d.grid[i]) + ")";
  }
  function at(clientX, clientY) {
    const b = plane.getBoundingClientRect();  // the border box: the plane is inside the border
    const fx = Math.min(Math.max((clientX - b.left - plane.clientLeft) / plane.clientWidth, 0), 1);
    const fy = Math.min(Math.max((clientY - b.top - plane.clientTop) / plane.clientHeight, 0), 1);
    show(lo + fx * (hi - lo), hi - fy * (hi - lo));
  }
  plane.addEventListener("pointermove", e => at(e.clientX, e.clientY));
  plane.addEventListener("pointerdown", e => at(e.clientX, e.clientY));
  const touch = e => {
    if (e.touches.length) { e.preventDefault(); at(e.touches[0].clientX, e.touches[0].clientY); }
  };
  plane.addEventListener("touchstart", touch, {passive: false});
  plane.addEventListener("touchmove", touch, {passive: false});
  const start = () => show((lo + hi) / 2, (lo + hi) / 2);  // the centre: z = 0 for a symmetric grid
  if (sprite.complete && sprite.naturalWidth) start(); else sprite.addEventListener("load", start);
})();
"""


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG file of ``pixels``: (H, W) grey or (H, W, 3) RGB, uint8; 8 bits per channel, no colour
    profile (read as sRGB, so a canvas gets the values back unchanged). Rows are filtered with
    PNG's "Up" filter (difference from the row above), which suits smooth images."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3) or 0 in a.shape:
        raise ValueError(f"PNG pixels must be (H, W) or (H, W, 3), got {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, -1)
    up = np.diff(rows.astype(np.int16), axis=0, prepend=0).astype(np.uint8)  # wraps mod 256, as PNG says
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = 0 if a.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def _uint8(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)


def sprite_sheet(images: np.ndarray) -> np.ndarray:
    """The G x G decodes (G, G, C, H, W) as one image: tile (i, j) at rows i*H.., columns j*W..;
    (G*H, G*W) for C = 1, (G*H, G*W, 3) for C = 3; uint8 (floats in [0, 1] are scaled)."""
    a = _uint8(images)
    if a.ndim != 5 or a.shape[0] != a.shape[1] or a.shape[2] not in (1, 3):
        raise ValueError(f"explorer images must be (G, G, C, H, W) with C = 1 or 3, got {a.shape}")
    g, _, c, h, w = a.shape
    sheet = a.transpose(0, 3, 1, 4, 2).reshape(g * h, g * w, c)
    return sheet[..., 0] if c == 1 else sheet


def label_colours(labels: np.ndarray | None, n: int) -> tuple[list[int], list[str], list[tuple[str, str]]]:
    """Colours of ``n`` points: (colour index per point, colours, legend (colour, text) pairs).

    Integer labels with at most 20 distinct values get a colour each (tab10 / tab20); other values
    are cut into 8 equal bins of a viridis ramp; no labels: one colour and no legend.
    """
    if labels is None:
        return [0] * n, [_TAB10[0]], []
    lab = np.asarray(labels).reshape(-1)[:n]
    if len(lab) != n:
        raise ValueError(f"{len(lab)} labels for {n} posterior means")
    if not np.issubdtype(lab.dtype, np.number):
        raise ValueError(f"labels must be numbers, got {lab.dtype}")
    values = np.unique(lab)
    whole = np.issubdtype(lab.dtype, np.integer) or bool(np.all(np.mod(values, 1) == 0))
    if whole and len(values) <= len(_TAB20):
        palette = _TAB10 if len(values) <= len(_TAB10) else _TAB20
        index = np.searchsorted(values, lab)
        return index.tolist(), palette[: len(values)], [
            (palette[k], f"{v:g}") for k, v in enumerate(values.tolist())]
    lo, hi = float(np.nanmin(lab)), float(np.nanmax(lab))
    bins = len(_RAMP)
    index = np.clip(((lab - lo) / ((hi - lo) or 1.0) * bins).astype(int), 0, bins - 1)
    edges = np.linspace(lo, hi, bins + 1)
    return index.tolist(), list(_RAMP), [
        (_RAMP[k], f"{edges[k]:.3g} – {edges[k + 1]:.3g}") for k in range(bins)]


def explorer_html(s: ExplorerSection) -> str:
    """The block's HTML (style, plane, view, legend, data and script inline).

    Raises:
        ValueError: the arrays do not fit together (grid length, image or code shapes, labels).
    """
    images = np.asarray(s.images)
    grid = np.asarray(s.grid, dtype=np.float64).reshape(-1)
    sheet = sprite_sheet(images)
    g, h, w = images.shape[0], images.shape[3], images.shape[4]
    if len(grid) != g or g < 2 or not np.all(np.diff(grid) > 0) or not np.all(np.isfinite(grid)):
        raise ValueError(f"the explorer's grid must be {g} increasing finite values, got {grid.shape}")
    codes = np.asarray(s.codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] != 2:
        raise ValueError(f"the explorer's codes must be (N, 2), got {codes.shape}")
    n = min(len(codes), MAX_POINTS)
    colour, colors, legend = label_colours(s.labels, len(codes))
    lo = grid[0] - (grid[1] - grid[0]) / 2
    hi = grid[-1] + (grid[-1] - grid[-2]) / 2
    scale = max(1, round(VIEW_PX / max(h, w)))
    data = {
        "grid": [round(float(v), 6) for v in grid], "lo": float(lo), "hi": float(hi),
        "h": h, "w": w, "scale": scale,
        "points": np.round(np.nan_to_num(codes[:n]), 3).reshape(-1).tolist(),
        "colour": colour[:n], "colors": colors,
    }
    block_id = "vx-" + re.sub(r"[^A-Za-z0-9_-]", "-", s.name)
    sprite = base64.b64encode(png_bytes(sheet)).decode("ascii")
    keys = "".join(f"<span><i style='background:{c}'></i>{html.escape(t)}</span>" for c, t in legend)
    shown = f"the first {n} of {len(codes)}" if n < len(codes) else f"{n}"
    return (
        f"<style>{_STYLE}</style>"
        f"<div class='vx' id='{block_id}'>"
        f"<div><canvas class='vx-plane' style='width:{PLANE_PX}px;max-width:100%;aspect-ratio:1' "
        f"width='{PLANE_PX}' height='{PLANE_PX}' role='img' "
        f"aria-label='latent plane with {shown} posterior means'></canvas>"
        f"<p class='vx-axis'>z1 → (from {lo:.2f} to {hi:.2f}), z2 ↑ (the same)</p></div>"
        f"<div><canvas class='vx-view' width='{w * scale}' height='{h * scale}' "
        f"role='img' aria-label='decoded image at the pointer'></canvas>"
        f"<p class='vx-z'>z = (0.00, 0.00)</p><div class='vx-legend'>{keys}</div></div>"
        f"<img class='vx-sprite' hidden alt='the {g}×{g} decodes' src='data:image/png;base64,{sprite}'>"
        f"<script type='application/json' class='vx-data'>{json.dumps(data, separators=(',', ':'))}</script>"
        f"<script>{_SCRIPT % {'id': json.dumps(block_id), 'px': PLANE_PX}}</script>"
        "<noscript><p class='vx-axis'>The latent explorer needs JavaScript; the latent manifold "
        "figure shows the same decoder on a coarser grid.</p></noscript>"
        "</div>"
        + (f"<p class='vx-axis'>{html.escape(s.caption)}</p>" if s.caption else "")
    )
