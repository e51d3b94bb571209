"""The run report: figures from arrays (plots), renderers of report sections by kind (render), and a
self-contained report.html from a run folder (build).

Nothing here imports torch or a model: the report is built from the files a run wrote.
"""

from vaelab.report.build import FIGURE_FILES, build_report, read_metrics
from vaelab.report.plots import (
    image_grid,
    latent_scatter,
    line_plot,
    manifold_figure,
    reconstruction_figure,
    training_curves,
)
from vaelab.report.render import RENDERERS, render_sections, renderer

__all__ = [
    "FIGURE_FILES",
    "build_report",
    "read_metrics",
    "RENDERERS",
    "render_sections",
    "renderer",
    "image_grid",
    "line_plot",
    "latent_scatter",
    "manifold_figure",
    "reconstruction_figure",
    "training_curves",
]
