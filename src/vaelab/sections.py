"""Report sections as data: what a run writes into its folder for ``report/`` to draw.

A model (``Model.report_sections``), the evaluation and the classical-VI commands describe what
they can show as a list of typed sections (images, reconstructions, a latent manifold, a scatter of
codes, a table, text samples, audio clips, a line plot, a ready-made image, a table of metrics).
This module holds those types and the one on-disk format; it imports NumPy and the standard
library only (no torch, no model), so the writers (above) and the report (which must never load a
model) both stand on it.

On disk, in a run folder::

    sections.json              the manifest, {"format": "vaelab-sections", "version": 1,
                               "sections": [ENTRY, ...]} in page order
    sections/<name>.npz        the section's arrays (NumPy, never pickled), when it has any
    sections/<name>.<ext>      the section's raw files (PNG, WAV), when it has any

    ENTRY = {"kind":   "images" | "reconstructions" | "manifold" | "scatter" | "table" | "text"
                       | "audio" | "lines" | "image" | "metrics" | "explorer" ...  (a key of SECTION_KINDS),
             "name":   "samples"        (unique in the run; file stem; a writer replaces its own),
             "title":  "Samples",
             "fields": {...},           JSON-typed fields of the section (caption, rows, texts, ...)
             "arrays": "sections/samples.npz"        (optional) the NumPy-array fields
             "files":  {"field": "sections/x.wav"}   (optional) the bytes / list-of-bytes fields}

Each kind is a dataclass below: its ``np.ndarray`` fields go to the .npz, its ``bytes`` fields
(or lists of bytes) to files, everything else to ``fields``. Readers get the dataclass back
(:func:`read_sections`). A new kind is a new dataclass registered with :func:`section_kind`, and a
renderer registered in ``vaelab.report.render``.

Writing: :func:`write_sections` merges by ``name`` into the manifest (a section written again is
replaced in place, new ones are appended), each file through a temp file and a rename.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import tempfile
import typing
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vaelab.errors import VaelabError

__all__ = [
    "MANIFEST",
    "MANIFEST_VERSION",
    "SECTION_KINDS",
    "Section",
    "ImagesSection",
    "ReconstructionsSection",
    "ManifoldSection",
    "ScatterSection",
    "ExplorerSection",
    "TableSection",
    "TextSection",
    "AudioSection",
    "LinesSection",
    "CurvesSection",
    "HeatmapSection",
    "ImageFileSection",
    "MetricsSection",
    "UnreadableSection",
    "EVALUATION",
    "evaluation_section",
    "section_kind",
    "write_sections",
    "write_atomic",
    "read_sections",
    "load_arrays",
    "wav_bytes",
]

MANIFEST = "sections.json"
MANIFEST_VERSION = 1
_FORMAT = "vaelab-sections"
_DIR = "sections"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

SECTION_KINDS: dict[str, type[Section]] = {}


def section_kind(kind: str):
    """Class decorator registering a Section dataclass under ``kind`` (the manifest's ``kind``)."""

    def register(cls: type[Section]) -> type[Section]:
        if kind in SECTION_KINDS and SECTION_KINDS[kind] is not cls:
            raise RuntimeError(f"section kind {kind!r} registered twice")
        cls.kind = kind
        SECTION_KINDS[kind] = cls
        return cls

    return register


@dataclass(kw_only=True)
class Section:
    """Base of every section: ``name`` (unique in the run, a file stem), ``title``, ``caption``."""

    kind: ClassVar[str] = ""
    name: str
    title: str
    caption: str = ""


@section_kind("images")
@dataclass(kw_only=True)
class ImagesSection(Section):
    """A grid of images: ``images`` (N, C, H, W) or (N, H, W), floats in [0, 1] or uint8."""

    images: np.ndarray


@section_kind("reconstructions")
@dataclass(kw_only=True)
class ReconstructionsSection(Section):
    """Inputs above their reconstructions: ``original`` and ``reconstruction``, both (N, C, H, W)."""

    original: np.ndarray
    reconstruction: np.ndarray


@section_kind("manifold")
@dataclass(kw_only=True)
class ManifoldSection(Section):
    """Decoded images over a 2-D latent grid: ``images`` (n, n, C, H, W), ``images[i, j]`` at
    z = (grid[j], grid[i]) (columns vary z1, rows vary z2); ``grid`` (n,)."""

    images: np.ndarray
    grid: np.ndarray


@section_kind("scatter")
@dataclass(kw_only=True)
class ScatterSection(Section):
    """Codes of examples, drawn in 2-D (first two principal components above two dims):
    ``codes`` (N, D), ``labels`` (N,) optional integers or values to colour by."""

    codes: np.ndarray
    labels: np.ndarray | None = None


@section_kind("explorer")
@dataclass(kw_only=True)
class ExplorerSection(Section):
    """A 2-D latent plane to explore with the pointer: the decode nearest to the pointer is shown.

    ``images`` (G, G, C, H, W), uint8 (or floats in [0, 1]), C = 1 or 3: ``images[i, j]`` is the
    decoded mean at z = (grid[j], grid[i]) (columns vary z1, rows vary z2, as in ManifoldSection);
    ``grid`` (G,) increasing latent values, the same on both axes; ``codes`` (N, 2) posterior means
    drawn on the plane; ``labels`` (N,) optional integers (or values) to colour them by."""

    images: np.ndarray
    grid: np.ndarray
    codes: np.ndarray
    labels: np.ndarray | None = None


@section_kind("table")
@dataclass(kw_only=True)
class TableSection(Section):
    """A table: ``header`` (column names) and ``rows`` (lists of strings or numbers)."""

    header: list[str]
    rows: list[list[Any]]


@section_kind("text")
@dataclass(kw_only=True)
class TextSection(Section):
    """Text samples (e.g. decoded sentences), shown one per line, in order; ``labels`` optional
    (one per text, e.g. "input" / "reconstruction")."""

    texts: list[str]
    labels: list[str] = field(default_factory=list)


@section_kind("audio")
@dataclass(kw_only=True)
class AudioSection(Section):
    """Audio clips as WAV files (``clips``: bytes of each .wav, see :func:`wav_bytes`), with a
    label each."""

    clips: list[bytes]
    labels: list[str] = field(default_factory=list)


@section_kind("lines")
@dataclass(kw_only=True)
class LinesSection(Section):
    """Curves over one axis: ``x`` (N,), ``y`` (M, N) one row per curve, ``labels`` (M names);
    axis names and log scales as options."""

    x: np.ndarray
    y: np.ndarray
    labels: list[str] = field(default_factory=list)
    xlabel: str = ""
    ylabel: str = ""
    logx: bool = False
    logy: bool = False


@section_kind("curves")
@dataclass(kw_only=True)
class CurvesSection(Section):
    """Curves in the plane, each with its own points: ``x`` and ``y`` (M, N), one row per curve
    (NaN ends a shorter curve), ``labels`` (M names, "" for none), ``styles`` (M matplotlib format
    strings such as "-", "--", ".-"; default solid), ``colors`` (M matplotlib colours; default by
    label, so a curve sharing its predecessor's label shares its colour), axis names,
    ``equal_aspect`` for geometry (one unit the same length on both axes), and ``logx`` for a
    logarithmic x axis."""

    x: np.ndarray
    y: np.ndarray
    labels: list[str] = field(default_factory=list)
    styles: list[str] = field(default_factory=list)
    colors: list[str] = field(default_factory=list)
    xlabel: str = ""
    ylabel: str = ""
    equal_aspect: bool = False
    logx: bool = False


@section_kind("heatmap")
@dataclass(kw_only=True)
class HeatmapSection(Section):
    """A matrix drawn as colours: ``values`` (R, C), row r at height r; axis names and the colour
    bar's label as options."""

    values: np.ndarray
    xlabel: str = ""
    ylabel: str = ""
    colorbar: str = ""


@section_kind("image")
@dataclass(kw_only=True)
class ImageFileSection(Section):
    """A figure already drawn: ``image`` is PNG, JPEG or GIF bytes."""

    image: bytes


@section_kind("metrics")
@dataclass(kw_only=True)
class MetricsSection(Section):
    """Named numbers (and strings): ``values`` as in eval.json; ``<key>_stderr`` is shown as
    ``±`` beside ``<key>``. ``warnings``: lines shown above the table (e.g. an unreliable estimate)."""

    values: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


EVALUATION = "evaluation"
"""The name of the section holding a run's evaluation (eval.json's numbers); the report's summary
reads it."""


def evaluation_section(result: dict[str, Any]) -> MetricsSection:
    """The evaluation section of an eval.json dict: its ``is_warning`` (when set) as a warning, the
    other keys as values."""
    values = {k: v for k, v in result.items() if k != "is_warning"}
    warning = result.get("is_warning")
    return MetricsSection(name=EVALUATION, title="Evaluation", values=values,
                          warnings=[str(warning)] if warning else [])


@dataclass(kw_only=True)
class UnreadableSection(Section):
    """What :func:`read_sections` returns for an entry it cannot read: ``reason`` in one line."""

    reason: str


# ------------------------------------------------------------------------------------------ writing


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of ``samples`` (T,), floats in [-1, 1] (clipped)."""
    import wave

    pcm = (np.clip(np.asarray(samples, dtype=np.float64).reshape(-1), -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename: a reader never
    sees a half-written file, and an interrupted write leaves the previous one intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; run files are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_ext(data: bytes) -> str:
    for magic, ext in ((b"\x89PNG", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF8", "gif"), (b"RIFF", "wav")):
        if data.startswith(magic):
            return ext
    return "bin"


def _entry(run: Path, s: Section) -> dict[str, Any]:
    """Write the arrays and files of ``s`` and return its manifest entry."""
    if s.kind not in SECTION_KINDS or type(s) is not SECTION_KINDS[s.kind]:
        raise TypeError(f"{type(s).__name__} is not a registered section kind")
    if not _NAME.match(s.name):
        raise ValueError(f"section name {s.name!r} must be a short file stem (letters, digits, _ . -)")
    entry: dict[str, Any] = {"kind": s.kind, "name": s.name, "title": s.title}
    fields: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    files: dict[str, Any] = {}
    for f in dataclasses.fields(s):
        if f.name in ("name", "title"):
            continue
        v = getattr(s, f.name)
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise TypeError(f"section {s.name}: {f.name} is an object array; give numbers")
            arrays[f.name] = v
        elif isinstance(v, bytes):
            rel = f"{_DIR}/{s.name}.{f.name}.{_file_ext(v)}"
            write_atomic(run / rel, v)
            files[f.name] = rel
        elif isinstance(v, list) and v and all(isinstance(b, bytes) for b in v):
            rels = []
            for i, b in enumerate(v):
                rel = f"{_DIR}/{s.name}.{f.name}{i:03d}.{_file_ext(b)}"
                write_atomic(run / rel, b)
                rels.append(rel)
            files[f.name] = rels
        elif v is not None:
            fields[f.name] = v
    if arrays:
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        rel = f"{_DIR}/{s.name}.npz"
        write_atomic(run / rel, buf.getvalue())
        entry["arrays"] = rel
    if files:
        entry["files"] = files
    entry["fields"] = json.loads(json.dumps(fields, default=_json_default))
    return entry


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"{type(v).__name__} is not JSON data")


def _read_manifest(run: Path) -> list[dict[str, Any]]:
    path = run / MANIFEST
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VaelabError(
            f"{path} is unreadable ({exc}); delete it and run `vaelab eval {run}` again"
        ) from None
    if (
        not isinstance(data, dict)
        or data.get("format") != _FORMAT
        or not isinstance(data.get("sections"), list)
    ):
        raise VaelabError(
            f"{path} is not a vaelab sections manifest; delete it and run `vaelab eval {run}` again"
        )
    version = data.get("version")
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise VaelabError(
            f"{path} has version {version!r}, newer than this vaelab reads "
            f"({MANIFEST_VERSION}); upgrade vaelab"
        )
    return [e for e in data["sections"] if isinstance(e, dict)]


def write_sections(run_dir: str | Path, sections: Sequence[Section]) -> Path:
    """Add ``sections`` to ``run_dir/sections.json`` (replacing those of the same name in place,
    appending the others in order) and write their arrays and files. Returns the manifest's path."""
    run = Path(run_dir)
    entries = _read_manifest(run)
    index = {e.get("name"): i for i, e in enumerate(entries)}
    for s in sections:
        e = _entry(run, s)
        if e["name"] in index:
            entries[index[e["name"]]] = e
        else:
            index[e["name"]] = len(entries)
            entries.append(e)
    doc = {"format": _FORMAT, "version": MANIFEST_VERSION, "sections": entries}
    path = run / MANIFEST
    write_atomic(path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------------ reading

_BAD = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def load_arrays(
    path: str | Path, required: Sequence[str] = (), optional: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The arrays of the .npz file at ``path``; never unpickles.

    required: names that must be there (else ValueError naming the missing ones and those present).
    optional: when given, only the ``required`` and (present) ``optional`` arrays are returned;
        otherwise all of them.

    Raises:
        ValueError: not an .npz archive, or a required array missing; OSError, zipfile.BadZipFile,
            EOFError for unreadable or damaged files.
    """
    # open the file ourselves: np.load leaks its handle when the archive turns out to be corrupt
    with open(path, "rb") as fh:
        f = np.load(fh, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with f:
            missing = [k for k in required if k not in f.files]
            if missing:
                raise ValueError(
                    f"missing array(s) {', '.join(missing)} (has: {', '.join(f.files) or 'none'})"
                )
            keys = f.files if optional is None else [k for k in (*required, *optional) if k in f.files]
            return {k: f[k] for k in keys}


def _inside(run: Path, rel: str) -> Path:
    """``run / rel``, refusing a path that leaves the run's sections/ folder (a hand-edited or
    foreign manifest must not pull other files into the page)."""
    path = (run / str(rel)).resolve()
    if not path.is_relative_to((run / _DIR).resolve()):
        raise ValueError(f"{rel} is outside {_DIR}/")
    return path


def _section_from_entry(run: Path, e: dict[str, Any]) -> Section:
    cls = SECTION_KINDS.get(e.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(
            f"unknown section kind {e.get('kind')!r} (known: {', '.join(sorted(SECTION_KINDS))})"
        )
    values: dict[str, Any] = dict(e.get("fields") or {})
    if "arrays" in e:
        values.update(load_arrays(_inside(run, e["arrays"])))
    for key, rel in (e.get("files") or {}).items():
        values[key] = (
            [_inside(run, r).read_bytes() for r in rel]
            if isinstance(rel, list)
            else _inside(run, rel).read_bytes()
        )
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    missing = sorted(
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values
        and f.name not in ("name", "title")
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    for k, v in values.items():
        if hints.get(k) is np.ndarray and not isinstance(v, np.ndarray):
            raise ValueError(f"{k} is not an array")
    return cls(
        name=str(e["name"]),
        title=str(e.get("title", e["name"])),
        **{k: v for k, v in values.items() if k in names and k not in ("name", "title")},
    )


def read_sections(run_dir: str | Path) -> list[Section]:
    """The sections of ``run_dir/sections.json`` in order; an entry whose files are missing or
    damaged comes back as an :class:`UnreadableSection` saying why (the others are unaffected).
    No manifest: an empty list. A manifest that is not one, or is newer: VaelabError."""
    run = Path(run_dir)
    out: list[Section] = []
    for i, e in enumerate(_read_manifest(run)):
        name = str(e.get("name", f"section{i}"))
        try:
            out.append(_section_from_entry(run, e))
        except _BAD as exc:
            out.append(UnreadableSection(name=name, title=str(e.get("title", name)), reason=str(exc)))
    return out
