"""Renderers of report sections: one function per section kind, looked up in a registry.

A renderer takes one section (``vaelab.sections``: plain NumPy and JSON data, read from a run
folder) and returns a page block (``vaelab.report.html.Section``). A section whose data cannot be
drawn becomes a block holding a one-line note: the rest of the page is built. Nothing here imports
torch or a model.
"""

from __future__ import annotations

import html as _html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vaelab import sections as sec
from vaelab.report import plots
from vaelab.report.explorer import explorer_html
from vaelab.report.html import Section as Block
from vaelab.report.html import figure_png, image_mime, note_html, table_html

__all__ = [
    "RENDERERS",
    "renderer",
    "render_section",
    "render_sections",
    "format_value",
    "metrics_rows",
    "EVAL_LABELS",
]

RENDERERS: dict[str, Callable[[Any], Block]] = {}

MAX_PAIRS = 24  # reconstruction pairs shown (two blocks of 12)
MAX_SAMPLES = 100  # samples shown (10 x 10)
_BAD_INPUT = (OSError, ValueError, KeyError, TypeError, IndexError)

#: Labels and number formats for metric keys (eval.json's); unknown keys are shown under their own name.
EVAL_LABELS = {
    "split": "Split",
    "n_examples": "Examples",
    "is_samples": "Importance samples K",
    "log_px": "IS log p(x) (nats)",
    "elbo": "ELBO (nats)",
    "iwae": "IWAE bound (nats)",
    "bits_per_dim": "Bits/dim",
    "kl": "KL(q(z|x) ‖ p(z)) (nats)",
    "reconstruction": "Reconstruction E_q log p(x|z) (nats)",
    "active_units": "Active units",
    "mutual_information": "Mutual information I(x; z) (nats, aggregate posterior)",
    "latent_dim": "Latent size",
    "ess_mean": "Mean effective sample size",
    "ess_min": "Smallest effective sample size",
    "is_reliable": "IS estimate reliable (mean ESS >= min(10, K/2))",
    "seconds": "Evaluation time",
    "weights": "Weights",
    "checkpoint": "Checkpoint",
    "step": "Step",
    "nll": "NLL (nats)",
    "perplexity": "Perplexity",
}
NATS_KEYS = frozenset({"log_px", "elbo", "iwae", "kl", "reconstruction", "nll", "mutual_information"})


def renderer(kind: str):
    """Decorator registering ``fn(section) -> Block`` as the renderer of section ``kind``."""

    def register(fn: Callable[[Any], Block]) -> Callable[[Any], Block]:
        if kind in RENDERERS:
            raise RuntimeError(f"renderer for section kind {kind!r} registered twice")
        RENDERERS[kind] = fn
        return fn

    return register


# ------------------------------------------------------------------------------------------ numbers


def _minus(s: str) -> str:
    return s.replace("-", "\u2212", 1) if s.startswith("-") else s


def duration(seconds: float) -> str:
    """``42.3 s``, ``12 min 05 s``, ``3 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def format_value(v: Any, key: str = "") -> str:
    """A metric value as text, with a format suited to its key."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v if isinstance(v, str) else json.dumps(v)
    if isinstance(v, int):
        return _minus(str(v))
    if not math.isfinite(v):
        return str(v)
    if key in NATS_KEYS:
        return _minus(f"{v:.2f}")
    if key == "bits_per_dim":
        return f"{v:.4f}"
    if key in ("seconds", "time"):
        return duration(v)
    return _minus(f"{v:.4g}")


def with_stderr(d: Mapping[str, Any], key: str) -> str:
    """``d[key]`` as text, followed by ``± d[key + "_stderr"]`` when that is present."""
    text = format_value(d[key], key)
    se = d.get(f"{key}_stderr")
    if isinstance(se, (int, float)) and not isinstance(se, bool) and math.isfinite(se):
        text += f" ± {se:.2f}"
    return text


def metrics_rows(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value text) rows of a metrics dict; ``<key>_stderr`` goes beside ``<key>``."""
    rows = []
    for key, value in values.items():
        if key.endswith("_stderr") and key[: -len("_stderr")] in values:
            continue
        label = EVAL_LABELS.get(key, key)
        rows.append(
            (label, with_stderr(values, key) if isinstance(value, (int, float)) else format_value(value, key))
        )
    return rows


# ---------------------------------------------------------------------------------------- renderers


def _figure(s: sec.Section, fig: Any, caption: str) -> Block:
    return Block(s.title, "", [(figure_png(fig), s.caption or caption)])


@renderer("images")
def _images(s: sec.ImagesSection) -> Block:
    images = s.images[:MAX_SAMPLES]
    return _figure(s, plots.image_grid(images), f"{len(images)} images.")


@renderer("reconstructions")
def _reconstructions(s: sec.ReconstructionsSection) -> Block:
    orig, rec = s.original[:MAX_PAIRS], s.reconstruction[:MAX_PAIRS]
    fig = plots.reconstruction_figure(orig, rec)
    return _figure(
        s, fig, f"{len(orig)} inputs (upper row of each pair) and their reconstructions (lower row)."
    )


@renderer("manifold")
def _manifold(s: sec.ManifoldSection) -> Block:
    n = len(np.asarray(s.grid).reshape(-1))
    return _figure(s, plots.manifold_figure(s.images, s.grid), f"Decoder means over a {n}×{n} latent grid.")


@renderer("scatter")
def _scatter(s: sec.ScatterSection) -> Block:
    by = "coloured by label" if s.labels is not None else "(no labels saved)"
    return _figure(s, plots.latent_scatter(s.codes, s.labels), f"Codes of {len(s.codes)} examples, {by}.")


@renderer("explorer")
def _explorer(s: sec.ExplorerSection) -> Block:
    return Block(s.title, explorer_html(s))


@renderer("lines")
def _lines(s: sec.LinesSection) -> Block:
    fig = plots.line_plot(s.x, s.y, s.labels, s.xlabel, s.ylabel, s.logx, s.logy)
    return _figure(s, fig, "")


@renderer("curves")
def _curves(s: sec.CurvesSection) -> Block:
    fig = plots.curves_plot(s.x, s.y, s.labels, s.styles, s.colors, s.xlabel, s.ylabel, s.equal_aspect,
                            s.logx)
    return _figure(s, fig, "")


@renderer("heatmap")
def _heatmap(s: sec.HeatmapSection) -> Block:
    return _figure(s, plots.heatmap(s.values, s.xlabel, s.ylabel, s.colorbar), "")


@renderer("image")
def _image(s: sec.ImageFileSection) -> Block:
    if image_mime(s.image) is None:
        raise ValueError("not a PNG, JPEG or GIF image")
    return Block(s.title, "", [(s.image, s.caption or s.title)])


@renderer("table")
def _table(s: sec.TableSection) -> Block:
    if any(len(r) != len(s.header) for r in s.rows):
        raise ValueError(f"a row does not have {len(s.header)} cells")
    cap = f"<p>{_html.escape(s.caption)}</p>" if s.caption else ""
    return Block(s.title, cap + table_html(s.header, s.rows))


@renderer("metrics")
def _metrics(s: sec.MetricsSection) -> Block:
    cap = f"<p>{_html.escape(s.caption)}</p>" if s.caption else ""
    warn = "".join(note_html(f"Warning: {w}") for w in s.warnings)
    return Block(s.title, warn + cap + table_html(("Quantity", "Value"), metrics_rows(s.values), cls="kv"))


@renderer("text")
def _text(s: sec.TextSection) -> Block:
    labels = s.labels if len(s.labels) == len(s.texts) else [""] * len(s.texts)
    rows = "".join(
        f"<tr><td>{_html.escape(str(lab))}</td><td><code>{_html.escape(str(t))}</code></td></tr>"
        for lab, t in zip(labels, s.texts)
    )
    cap = f"<p>{_html.escape(s.caption)}</p>" if s.caption else ""
    return Block(s.title, f"{cap}<table class='kv'><tbody>{rows}</tbody></table>")


@renderer("audio")
def _audio(s: sec.AudioSection) -> Block:
    import base64

    parts = []
    for i, clip in enumerate(s.clips):
        if not clip.startswith(b"RIFF"):
            raise ValueError(f"clip {i} is not a WAV file")
        label = s.labels[i] if i < len(s.labels) else f"clip {i + 1}"
        data = base64.b64encode(clip).decode("ascii")
        parts.append(
            f"<figure><audio controls src='data:audio/wav;base64,{data}'></audio>"
            f"<figcaption>{_html.escape(label)}</figcaption></figure>"
        )
    cap = f"<p>{_html.escape(s.caption)}</p>" if s.caption else ""
    return Block(s.title, cap + "".join(parts))


def render_section(s: sec.Section) -> Block:
    """One section as a page block; an unreadable or undrawable section becomes a one-line note."""
    if isinstance(s, sec.UnreadableSection):
        return Block(s.title, note_html(f"Could not read section {s.name!r}: {s.reason}"))
    fn = RENDERERS.get(s.kind)
    if fn is None:
        return Block(
            s.title,
            note_html(
                f"Section {s.name!r} not drawn: this vaelab has no renderer for "
                f"kind {s.kind!r}; upgrade vaelab"
            ),
        )
    try:
        return fn(s)
    except _BAD_INPUT as e:
        return Block(s.title, note_html(f"Could not draw section {s.name!r}: {e}"))


def render_sections(sections: Sequence[sec.Section]) -> list[Block]:
    """Every section as a page block, in order."""
    return [render_section(s) for s in sections]
