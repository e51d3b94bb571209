"""Self-contained HTML pages: figures embedded as base64 data URIs, tables from plain data.

Nothing here loads a model; callers pass figures (matplotlib) or image bytes and rows of values.
The page has no external reference of any kind (no CSS, JS, font or image URL), so a single file
opens the same in any browser, offline, e-mailed or copied out of the run folder.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaelab.sections import write_atomic

__all__ = [
    "Section",
    "figure_png",
    "image_mime",
    "png_img_tag",
    "note_html",
    "pre_html",
    "table_html",
    "render_page",
    "write_page",
    "write_run_page",
    "rebuild_run_page",
    "PAGE_SOURCE",
]

PAGE_SOURCE = "report.json"
"""A page's source in a run folder: title, subtitle and sections, their figures as files beside it."""
_PAGE_FORMAT = "vaelab-page"

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
  color:#222;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}
h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
.meta{color:#666;font-size:.9rem;margin-top:0} .note{color:#777;font-style:italic}
nav{font-size:.85rem;color:#666} nav a{color:#36c;text-decoration:none;margin-right:.8rem}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555;max-width:60ch}
table{border-collapse:collapse;margin:.5rem 0;font-size:.92rem}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:right} th{background:#f6f6f6}
td:first-child,th:first-child{text-align:left}
table.kv td,table.kv th{text-align:left;font-variant-numeric:tabular-nums} table.kv td:first-child{color:#444}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.85rem;white-space:pre-wrap;word-break:break-all}
"""

_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


@dataclass
class Section:
    """One titled block of a page.

    ``body`` is HTML that is already escaped/safe; ``figures`` are (image bytes, caption) pairs drawn
    after the body, each as a ``<figure>`` with its caption.
    """

    title: str
    body: str = ""
    figures: list[tuple[bytes, str]] = field(default_factory=list)


def figure_png(fig: Any, dpi: float | None = None) -> bytes:
    """Render a matplotlib figure to PNG bytes (at the figure's own dpi unless given) and release it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi="figure" if dpi is None else dpi, bbox_inches="tight")
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # only figures made through pyplot are registered there; never import it
        pyplot.close(fig)
    return buf.getvalue()


def image_mime(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG or GIF bytes, sniffed from the magic number; None otherwise."""
    for magic, mime in _MAGIC.items():
        if data.startswith(magic):
            return mime
    return None


def png_img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` whose source is the image itself as a base64 data URI (PNG, JPEG or GIF bytes)."""
    mime = image_mime(png) or "image/png"
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'


def note_html(text: str) -> str:
    """A short, quiet paragraph: why something is missing and how to get it."""
    return f"<p class='note'>{html.escape(text)}</p>"


def pre_html(text: str) -> str:
    """Preformatted text, escaped."""
    return f"<pre>{html.escape(text)}</pre>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.6g}"
    return html.escape(str(v))


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str | None = None) -> str:
    """A table; strings are escaped, floats shown to 4 significant digits. ``cls="kv"`` left-aligns all."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    attr = f" class='{html.escape(cls)}'" if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _anchor(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-")


def render_page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    """The whole page as one string: title, subtitle, a contents line, then the sections in order."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f"<p class='meta'>{html.escape(subtitle)}</p>")
    if len(sections) > 1:
        links = "".join(f"<a href='#{_anchor(s.title)}'>{html.escape(s.title)}</a>" for s in sections)
        parts.append(f"<nav>{links}</nav>")
    for s in sections:
        parts.append(f"<h2 id='{_anchor(s.title)}'>{html.escape(s.title)}</h2>")
        if s.body:
            parts.append(s.body)
        for png, caption in s.figures:
            parts.append(
                f"<figure>{png_img_tag(png, caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_page(path: str | Path, title: str, sections: Sequence[Section], subtitle: str = "") -> Path:
    """Write the page atomically (a temp file in the same folder, then rename) and return its path.

    A reader never sees a half-written page, and an interrupted write leaves the previous one intact.
    """
    path = Path(path)
    write_atomic(path, render_page(title, sections, subtitle).encode("utf-8"))
    return path


def write_run_page(run: str | Path, title: str, sections: Sequence[Section], subtitle: str = "") -> Path:
    """``run/report.html``, and its source (``report.json``; figures not already in ``figures/`` go
    to ``figures/page/``), so that ``vaelab report RUN`` can write the page again from the run
    folder alone. For commands whose page is made of results computed in memory (``vaelab kl``,
    ``lda``, ``ising``)."""
    run = Path(run)
    # a figure the command already saved in figures/ is referenced there, not written twice
    saved = {hashlib.sha256(f.read_bytes()).digest(): f"figures/{f.name}"
             for f in sorted((run / "figures").glob("*")) if f.is_file()}
    spec: dict[str, Any] = {"format": _PAGE_FORMAT, "version": 1, "title": title, "subtitle": subtitle,
                            "sections": []}
    for i, s in enumerate(sections):
        figures = []
        for j, (png, caption) in enumerate(s.figures):
            rel = saved.get(hashlib.sha256(png).digest())
            if rel is None:
                rel = f"figures/page/section{i:02d}_{j:02d}.{(image_mime(png) or 'image/png').split('/')[-1]}"
                write_atomic(run / rel, png)
            figures.append({"file": rel, "caption": caption})
        spec["sections"].append({"title": s.title, "body": s.body, "figures": figures})
    write_atomic(run / PAGE_SOURCE, (json.dumps(spec, indent=1) + "\n").encode("utf-8"))
    return write_page(run / "report.html", title, sections, subtitle)


def rebuild_run_page(run: str | Path) -> Path:
    """Write ``run/report.html`` again from ``run/report.json`` (see :func:`write_run_page`)."""
    from vaelab.errors import VaelabError

    run = Path(run)
    source = run / PAGE_SOURCE
    try:
        spec = json.loads(source.read_text(encoding="utf-8"))
        if not isinstance(spec, dict) or spec.get("format") != _PAGE_FORMAT:
            raise ValueError(f"no format {_PAGE_FORMAT!r}")
        sections = []
        for s in spec["sections"]:
            figures = [((run / f["file"]).read_bytes(), str(f["caption"])) for f in s["figures"]]
            sections.append(Section(str(s["title"]), str(s["body"]), figures))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VaelabError(
            f"cannot rebuild the report of {run}: {source.name} or a figure it names is unreadable "
            f"({exc}); run the command in {run / 'command.txt'} again"
        ) from None
    return write_page(run / "report.html", str(spec["title"]), sections, str(spec.get("subtitle", "")))
