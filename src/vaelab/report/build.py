"""Build ``run_dir/report.html`` from a run folder alone: no model, no torch, only the files a run wrote.

The run folder contract (what the run code writes and this module reads)::

    config.json        the run config {"name", "model", "data", "train", "eval", "parent"}   (required)
    run.json           the folder's schema version (``vaelab.runfolder``; absent: version 1)
    command.txt        the command line that made the run
    metrics.jsonl      one JSON object per line; {"split": "train"|"valid", "step", "epoch", "time", ...}
    eval.json          {"split", "n_examples", "elbo", "log_px", "log_px_stderr", "bits_per_dim", ...}
    sections.json      the report's sections in order, as data (``vaelab.sections``): figures as
                       arrays, tables, text samples, audio, metrics; drawn by ``vaelab.report.render``
    figures/*.png|jpg|gif   embedded as they are, after the sections, captioned by file stem

A version 1 folder (no sections.json) is read through a compatibility path: its fixed figure files
``figures/{reconstructions,samples,manifold,latents}.npz`` (FIGURE_FILES) and eval.json become
sections. A run that builds on another (``parent.run`` in its config) shows the chain of runs
with the checkpoint hashes recorded and whether the parents still match them.

Every piece except config.json may be missing or damaged: its section then says so in one line and the
rest of the report is built. A partial last line in metrics.jsonl (a killed run) is skipped.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from vaelab import sections as sec
from vaelab.errors import VaelabError
from vaelab.report import plots
from vaelab.report.html import (
    PAGE_SOURCE,
    Section,
    figure_png,
    image_mime,
    note_html,
    pre_html,
    rebuild_run_page,
    table_html,
    write_page,
)
from vaelab.report.render import duration, format_value, render_sections, with_stderr
from vaelab.runfolder import checkpoint_sha256, run_version

__all__ = ["build_report", "read_metrics", "FIGURE_FILES", "legacy_sections"]

#: Version 1 run folders: the fixed figure files, name in ``figures/`` -> (required keys, optional keys).
FIGURE_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "reconstructions.npz": (("original", "reconstruction"), ()),
    "samples.npz": (("images",), ()),
    "manifold.npz": (("images", "grid"), ()),
    "latents.npz": (("codes",), ("labels",)),
}

_MAX_EMBED_BYTES = 20 * 2**20  # an extra image larger than this is left out (the page would be unwieldy)
_BAD_INPUT = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
_TRAIN_HINT = "train a run first with `vaelab train CONFIG.toml --out {run}`"


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested config -> (dotted key, value as text) rows; lists stay on one line as JSON."""
    rows: list[tuple[str, str]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += _flatten(v, key + ".")
        else:
            rows.append((key, v if isinstance(v, str) else json.dumps(v)))
    return rows


# ---------------------------------------------------------------------------------------------- inputs


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl file, in order; unparsable lines (a killed run's last) skipped.

    A missing file gives an empty list.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when missing; ValueError when it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} holds a JSON {type(data).__name__}, not an object")
    return data


# -------------------------------------------------------------------------------------------- sections


def _data_kind(run: Path) -> str:
    """The data kind the run's checkpoint records (``images`` when none says otherwise)."""
    for which in ("best", "latest"):
        try:
            state = run / "checkpoints" / which / "state.json"
            spec = json.loads(state.read_text(encoding="utf-8"))["spec"]
            return str(spec.get("kind", "images"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return "images"


def _subtitle(config: Mapping[str, Any], run: Path) -> str:
    parts = []
    model = config.get("model")
    if isinstance(model, Mapping) and "name" in model:
        facts = []
        if "latent_dim" in model:
            facts.append(f"latent {model['latent_dim']}")
        hidden = model.get("hidden")
        if isinstance(hidden, list) and hidden:
            facts.append("hidden " + "–".join(str(h) for h in hidden))
        parts.append(f"model {model.get('name', '?')}" + (f" ({', '.join(facts)})" if facts else ""))
    data = config.get("data")
    if isinstance(data, Mapping):
        binarized = data.get("binarize") and data.get("binarize") != "none" and _data_kind(run) == "images"
        extra = f" ({data['binarize']} binarization)" if binarized else ""
        parts.append(f"data {data.get('name', '?')}{extra}")
    started = (run / "config.json").stat().st_mtime
    parts.append(f"run of {datetime.fromtimestamp(started):%Y-%m-%d %H:%M}")
    parts.append(f"report built {datetime.now():%Y-%m-%d %H:%M}")
    return " · ".join(parts)


def _summary(rows: list[dict[str, Any]], ev: dict[str, Any] | None, ev_note: str) -> Section:
    table: list[tuple[str, str]] = []
    if ev is not None:
        split = [str(ev["split"])] if "split" in ev else []
        k = [f"K = {ev['is_samples']}"] if "is_samples" in ev else []
        method = "IS"
        if ev.get("method") == "ais":  # annealed importance sampling: T intermediate distributions
            method, k = "AIS", [f"T = {ev['ais_n_steps']}"]
        elif ev.get("method") == "exact":  # a model whose loss is its exact likelihood (a language model)
            method, k = "Exact", []
        for key, label, facts in (
            ("log_px", f"{method} log p(x)", ["nats", *split, *k]),
            ("elbo", "ELBO", ["nats", *split]),
            ("bits_per_dim", "Bits/dim", split),
            ("kl", "KL", ["nats", *split]),
        ):
            if key in ev:
                table.append((f"{label} ({', '.join(facts)})" if facts else label, with_stderr(ev, key)))
        if "active_units" in ev:
            of = f" / {ev['latent_dim']}" if "latent_dim" in ev else ""
            table.append(("Active units", f"{ev['active_units']}{of}"))
        if "mutual_information" in ev:
            table.append(("Mutual information I(x; z) (nats, aggregate posterior)",
                          format_value(ev["mutual_information"], "mutual_information")))
    last = rows[-1] if rows else {}
    if "step" in last:
        table.append(("Steps", format_value(last["step"])))
    if isinstance(last.get("epoch"), (int, float)):
        table.append(("Epochs", f"{last['epoch']:.2f}".rstrip("0").rstrip(".")))
    if isinstance(last.get("time"), (int, float)):
        table.append(("Training time", duration(float(last["time"]))))
    valid = [r for r in rows if r.get("split") == "valid" and isinstance(r.get("elbo"), (int, float))]
    if valid:
        table.append(("Last validation ELBO (nats)", format_value(valid[-1]["elbo"], "elbo")))
        table.append(("Best validation ELBO (nats)", format_value(max(r["elbo"] for r in valid), "elbo")))
    body = table_html(("Quantity", "Value"), table, cls="kv") if table else ""
    notes = [ev_note] if ev is None and ev_note else []
    if ev is not None and ev.get("is_warning"):
        notes.append(f"Warning: {ev['is_warning']}")
    if not rows:
        notes.append("No training metrics (metrics.jsonl is missing or has no complete line).")
    return Section("Summary", body + "".join(note_html(n) for n in notes))


def _curves(rows: list[dict[str, Any]]) -> Section:
    sec = Section("Training curves")
    if not rows:
        sec.body = note_html("No metrics.jsonl with complete lines: nothing to plot.")
        return sec
    try:
        png = figure_png(plots.training_curves(rows))
    except ValueError as e:
        sec.body = note_html(f"Could not plot metrics.jsonl: {e}")
        return sec
    sec.figures.append(
        (png, "Training values (means over each logging interval) and validation values, by epoch.")
    )
    return sec


def _legacy_figure(run: Path, file: str, name: str, title: str, caption: str) -> sec.Section | None:
    """One fixed figure file of a version 1 folder as a section (None when absent)."""
    path = run / "figures" / file
    if not path.is_file():
        return None
    try:
        a = sec.load_arrays(path, *FIGURE_FILES[file])
    except _BAD_INPUT as e:
        return sec.UnreadableSection(name=name, title=title, reason=f"figures/{file}: {e}")
    cls = {"reconstructions": sec.ReconstructionsSection, "samples": sec.ImagesSection,
           "manifold": sec.ManifoldSection, "latents": sec.ScatterSection}[name]
    return cls(name=name, title=title, caption=caption, **a)


def legacy_sections(run: Path, ev: dict[str, Any] | None) -> list[sec.Section]:
    """The sections of a version 1 run folder (no sections.json): its fixed figure files, in the
    order the report drew them, and eval.json."""
    out = []
    for file, name, title, caption in (
        ("reconstructions.npz", "reconstructions", "Reconstructions", ""),
        ("samples.npz", "samples", "Samples", ""),
        ("manifold.npz", "manifold", "Latent manifold",
         "Decoder means over a grid of latent values spaced by the inverse Gaussian CDF "
         "(as in Kingma & Welling 2014, Figure 4)."),
        ("latents.npz", "latents", "Latent codes", ""),
    ):
        s = _legacy_figure(run, file, name, title, caption)
        if s is not None:
            out.append(s)
    if ev is not None:
        out.append(sec.evaluation_section(ev))
    return out


def _run_sections(run: Path, version: int) -> tuple[list[sec.Section], str]:
    """The run's own sections (figures, tables, samples, its evaluation), and a note for what is
    missing. Version 2 reads sections.json; version 1 its fixed figure files and eval.json."""
    if version < 2:
        note = f"No eval.json: run `vaelab eval {run}` to estimate log p(x) on the test set."
        try:
            ev = _read_json(run / "eval.json")
        except (OSError, ValueError) as e:
            ev, note = None, f"eval.json could not be read ({e}); run `vaelab eval {run}` again."
        found = legacy_sections(run, ev)
        if not any(s.name != sec.EVALUATION for s in found):
            note += f" No figures in the run folder: `vaelab eval {run}` draws them."
        return found, note
    try:
        note = f"No evaluation: run `vaelab eval {run}` to write its figures and numbers."
        return sec.read_sections(run), note
    except VaelabError as e:
        return [], str(e)


def _evaluation_values(found: list[sec.Section]) -> dict[str, Any] | None:
    """eval.json's numbers as the evaluation section holds them (its warnings as ``is_warning``)."""
    for s in found:
        if s.name == sec.EVALUATION and isinstance(s, sec.MetricsSection):
            return {**s.values, **({"is_warning": " ".join(s.warnings)} if s.warnings else {})}
    return None


def _other_figures(fig_dir: Path) -> Section | None:
    sec_ = Section("Other figures")
    notes = []
    files = sorted(p for p in fig_dir.glob("*") if p.is_file()) if fig_dir.is_dir() else []
    for p in files:
        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".gif"):
            if p.stat().st_size > _MAX_EMBED_BYTES:
                notes.append(f"figures/{p.name} left out: larger than {_MAX_EMBED_BYTES >> 20} MiB.")
                continue
            data = p.read_bytes()
            if image_mime(data) is None:
                notes.append(f"figures/{p.name} left out: not a PNG, JPEG or GIF image.")
                continue
            sec_.figures.append((data, p.stem))
        elif p.suffix == ".npz" and p.name not in FIGURE_FILES:
            notes.append(f"figures/{p.name} not drawn: the report does not know this figure.")
    if not sec_.figures and not notes:
        return None
    sec_.body = "".join(note_html(n) for n in notes)
    return sec_


def _chain(run: Path, config: Mapping[str, Any] | None) -> Section | None:
    """Parent -> child, each with the checkpoint hash the child recorded and whether it still holds."""
    links: list[tuple[str, str, str, str]] = []
    seen = {run.resolve()}
    cfg = config
    while isinstance(cfg, Mapping) and isinstance(cfg.get("parent"), Mapping) and cfg["parent"].get("run"):
        parent = Path(str(cfg["parent"]["run"]))
        recorded = str(cfg["parent"].get("sha256", ""))
        try:
            now = checkpoint_sha256(parent)
            state = "matches" if now == recorded else f"changed: now {now[:12]}"
        except (OSError, VaelabError):
            state = "parent checkpoint not found"
        try:
            pcfg = _read_json(parent / "config.json")
        except (OSError, ValueError):
            pcfg = None
        model = pcfg.get("model", {}).get("name", "?") if isinstance(pcfg, Mapping) else "?"
        links.append((str(parent), model, recorded[:12] or "not recorded", state))
        if parent.resolve() in seen:
            break
        seen.add(parent.resolve())
        cfg = pcfg
    if not links:
        return None
    names = " → ".join([*(p for p, *_ in reversed(links)), f"{run} (this run)"])
    body = f"<p>{names}</p>" + table_html(
        ("Parent run", "Model", "Checkpoint sha256 recorded by its child", "Now"), links)
    return Section("Run chain", body)


def _configuration(config: dict[str, Any] | None, note: str) -> Section:
    if config is None:
        return Section("Configuration", note_html(note))
    return Section("Configuration", table_html(("Key", "Value"), _flatten(config), cls="kv"))


def _command(run: Path) -> Section:
    try:
        text = (run / "command.txt").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return Section("Command", note_html("No command.txt in the run folder."))
    return Section("Command", pre_html(text) if text else note_html("command.txt is empty."))


# ----------------------------------------------------------------------------------------------- build


def _first_words(path: Path, n: int = 2) -> str:
    try:
        return " ".join(path.read_text(encoding="utf-8").split()[:n]) or "its command"
    except OSError:
        return "its command"


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html``, one self-contained page (every image embedded), and return its path.

    Raises:
        VaelabError: when ``run_dir`` is not a folder or has no config.json (not a run), or when the
            page cannot be written.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise VaelabError(f"no run folder at {run}: {_TRAIN_HINT.format(run=run)}")
    if not (run / "config.json").is_file():
        raise VaelabError(
            f"{run} has no config.json, so it is not a vaelab run folder: {_TRAIN_HINT.format(run=run)}"
        )

    version = run_version(run)  # a folder newer than this vaelab is refused in one line
    if version < 2 and (run / PAGE_SOURCE).is_file():
        # a page made by vaelab kl / lda / ising before their folders had sections: its own source
        # (a version 2 folder is drawn from its sections; a report.json left in it is stale)
        return rebuild_run_page(run)
    config_note = ""
    try:
        config = _read_json(run / "config.json")
    except (OSError, ValueError) as e:
        config, config_note = None, f"config.json could not be read: {e}"
    if version < 2 and isinstance(config, dict) and "model" not in config and (run / "command.txt").is_file():
        # a folder of vaelab kl / lda / ising from before pages kept their source: leave its page
        raise VaelabError(
            f"{run} was written by `{_first_words(run / 'command.txt')}`, whose report this version "
            "cannot rebuild from the folder; run that command again to write it"
        )
    # a run of a registered model (config model.name) is trained and evaluated: its page has the
    # training summary, curves and evaluation; a run of another command (vaelab kl, lda, ising) has
    # its own sections only
    model = config.get("model") if isinstance(config, dict) else None
    model_run = isinstance(model, dict) and "name" in model
    found, note = _run_sections(run, version)
    ev = _evaluation_values(found)
    rows = read_metrics(run / "metrics.jsonl")
    blocks = render_sections(found)
    if ev is None and model_run:
        blocks.append(Section("Evaluation", note_html(note)))
    sections = [
        _summary(rows, ev, note) if model_run else None,
        _chain(run, config),
        _curves(rows) if model_run else None,
        *blocks,
        _other_figures(run / "figures"),
        _configuration(config, config_note),
        _command(run),
    ]
    name = str(config.get("name") or run.name) if config else run.name
    subtitle = _subtitle(config or {}, run)
    out = run / "report.html"
    try:
        return write_page(out, name, [s for s in sections if s is not None], subtitle)
    except OSError as e:
        raise VaelabError(f"cannot write {out}: {e.strerror or e}; make the run folder writable") from e
