"""Pictures of a 2-D latent space that any latent variable model can write: the latent explorer.

The explorer (``vaelab.sections.ExplorerSection``) is the interactive form of Kingma & Welling
(2014), Figure 4: the report draws the posterior means of held-out examples on the latent plane and
shows, beside it, the decoded image at the point under the reader's pointer. The page must stay one
self-contained file, so the decodes are computed here, on a dense G x G grid, and the page shows the
one nearest to the pointer.

Only a ``decode_mean``-like callable is needed (z (..., 2) -> images (..., C, H, W) in [0, 1]), so
this module does not depend on any model class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vaelab.errors import VaelabError
from vaelab.sections import ExplorerSection

__all__ = ["explorer_grid", "explorer_section", "is_image_shape", "EXPLORER_GRID"]

EXPLORER_GRID = 41
"""Default grid size G: 1,681 decodes, odd so that z = 0 (the prior's mode, shown first) is a grid
point. For 28 x 28 MNIST digits they add about 0.8 MB to the page (a 1148 x 1148 grey PNG sprite in
base64), 0.9 MB with 5,000 posterior means."""

_COVER = 0.995  # the plane covers this fraction of the posterior means on each axis ...
_MARGIN = 1.1  # ... times a margin, so the outermost means are not on the edge


def is_image_shape(shape: tuple[int, ...]) -> bool:
    """Whether an example of this shape can be drawn as an image: (C, H, W) with C = 1 or 3, or (H, W)."""
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def explorer_grid(codes: Tensor | None, n: int = EXPLORER_GRID) -> Tensor:
    """The latent values of an n-point grid, the same on both axes: (n,), increasing, symmetric.

    The range is r = 1.1 x the 99.5% quantile of |mean| over both coordinates of ``codes`` (N, 2),
    so the plane holds nearly all posterior means and a stray one does not stretch it; without
    codes (or with all of them at 0) it is the prior's +-3. Points are equally spaced from -r to r,
    so the page finds the nearest cell by rounding.
    """
    if n < 2:
        raise ValueError(f"an explorer grid needs at least 2 points, got {n}")
    r = 3.0
    if codes is not None and codes.numel():
        q = torch.quantile(codes.detach().abs().flatten().double().cpu(), _COVER).item()
        if q > 0:
            r = _MARGIN * q
    return torch.linspace(-r, r, n)


@torch.no_grad()
def explorer_section(
    decode_mean: Callable[[Tensor], Tensor],
    codes: Tensor,
    labels: Tensor | None = None,
    *,
    n: int = EXPLORER_GRID,
    name: str = "explorer",
    title: str = "Latent explorer",
    chunk: int = 1024,
) -> ExplorerSection:
    """The latent explorer of a model with a 2-D latent space.

    decode_mean: z (B, 2) -> E[x|z] as images (B, C, H, W) or (B, H, W), values in [0, 1]; called on
        the grid in chunks of ``chunk`` points, on the device of ``codes``.
    codes: (N, 2) posterior means of held-out examples (drawn on the plane; they set its range).
    labels: (N,) their labels, or None.
    n: grid size G (the page holds G x G decodes; G >= 30 keeps the nearest decode close to the
        pointer).

    Returns the section with ``images`` (G, G, C, H, W) uint8, ``images[i, j]`` decoded at
    z = (grid[j], grid[i]).

    Raises:
        VaelabError: codes are not (N, 2), or the decodes are not images.
    """
    if codes.dim() != 2 or codes.shape[1] != 2:
        raise VaelabError(
            f"the latent explorer needs a 2-D latent space: codes of shape (N, 2), got {tuple(codes.shape)}"
        )
    grid = explorer_grid(codes, n).to(codes.device, codes.dtype)
    # z[i, j] = (grid[j], grid[i]): columns vary z1, rows vary z2
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)[..., [1, 0]].reshape(n * n, 2)
    images = torch.cat([decode_mean(c) for c in z.split(chunk)])
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) != n * n:
        raise VaelabError(
            "the latent explorer needs decodes that are images (B, C, H, W) with C = 1 or 3; "
            f"got {tuple(images.shape)} for {n * n} points: leave it out for this data"
        )
    pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).unflatten(0, (n, n))
    n_codes = len(codes)
    by = "coloured by label" if labels is not None else "(no labels saved)"
    caption = (
        f"Posterior means of {n_codes} held-out examples, {by}. Move the pointer over the plane: the "
        f"image is the decoder's mean at the nearest of {n}×{n} grid points from {grid[0].item():.2f} to "
        f"{grid[-1].item():.2f} on each axis (the interactive Figure 4 of Kingma & Welling 2014)."
    )
    return ExplorerSection(
        name=name, title=title, caption=caption, images=pixels.cpu().numpy(), grid=grid.cpu().numpy(),
        codes=codes.detach().float().cpu().numpy(),
        labels=labels.cpu().numpy() if labels is not None else None,
    )
