"""Build ``run_dir/report.html`` from a run folder alone: no model, no torch, only the files a run wrote.

The run folder contract (what the CLI writes and this module reads)::

    config.json        the run config {"name", "model", "data", "train", "eval"}        (required)
    command.txt        the command line that made the run
    metrics.jsonl      one JSON object per line; {"split": "train"|"valid", "step", "epoch", "time", ...}
    eval.json          {"split", "n_examples", "elbo", "log_px", "log_px_stderr", "bits_per_dim", ...}
    figures/reconstructions.npz   original (N, C, H, W), reconstruction (N, C, H, W), floats in [0, 1]
    figures/samples.npz           images (N, C, H, W)
    figures/manifold.npz          images (n, n, C, H, W), images[i, j] at z = (grid[j], grid[i]); grid (n,)
    figures/latents.npz           codes (N, Dz) posterior means; labels (N,) ints, optional
    figures/*.png|jpg|gif         embedded as they are, after the known figures, captioned by file stem

Every piece except config.json may be missing or damaged: its section then says so in one line and the
rest of the report is built. A partial last line in metrics.jsonl (a killed run) is skipped.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

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

__all__ = ["build_report", "read_metrics", "FIGURE_FILES"]

#: The arrays the report draws: file name in ``figures/`` -> (required keys, optional keys).
FIGURE_FILES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "reconstructions.npz": (("original", "reconstruction"), ()),
    "samples.npz": (("images",), ()),
    "manifold.npz": (("images", "grid"), ()),
    "latents.npz": (("codes",), ("labels",)),
}

_MAX_PAIRS = 24  # reconstruction pairs shown (two blocks of 12)
_MAX_SAMPLES = 100  # samples shown (10 x 10)
_MAX_EMBED_BYTES = 20 * 2**20  # an extra image larger than this is left out (the page would be unwieldy)
_BAD_INPUT = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)
_TRAIN_HINT = "train a run first with `vaelab train CONFIG.toml --out {run}`"

# Labels and number formats for eval.json keys; unknown keys are shown under their own name.
_EVAL_LABELS = {
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
_NATS_KEYS = frozenset({"log_px", "elbo", "iwae", "kl", "reconstruction", "nll"})


# ------------------------------------------------------------------------------------------ formatting


def _minus(s: str) -> str:
    """Typographic minus sign for a formatted number."""
    return s.replace("-", "\u2212", 1) if s.startswith("-") else s


def _num(v: Any, key: str = "") -> str:
    """A value from eval.json or metrics as text, with a format suited to its key."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v if isinstance(v, str) else json.dumps(v)
    if isinstance(v, int):
        return _minus(str(v))
    if not math.isfinite(v):
        return str(v)
    if key in _NATS_KEYS:
        return _minus(f"{v:.2f}")
    if key == "bits_per_dim":
        return f"{v:.4f}"
    if key in ("seconds", "time"):
        return _duration(v)
    return _minus(f"{v:.4g}")


def _duration(seconds: float) -> str:
    """``42.3 s``, ``12 min 05 s``, ``3 h 07 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _with_stderr(d: Mapping[str, Any], key: str) -> str:
    """``d[key]`` as text, followed by ``± d[key + "_stderr"]`` when that is present."""
    text = _num(d[key], key)
    se = d.get(f"{key}_stderr")
    if isinstance(se, (int, float)) and not isinstance(se, bool) and math.isfinite(se):
        text += f" ± {se:.2f}"
    return text


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


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a known figure file, checked for its required keys. Never unpickles."""
    required, optional = FIGURE_FILES[path.name]
    # Open the file ourselves: np.load leaks its own handle when the archive turns out to be corrupt.
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
            return {k: f[k] for k in (*required, *optional) if k in f.files}


# -------------------------------------------------------------------------------------------- sections


def _subtitle(config: Mapping[str, Any], run: Path) -> str:
    parts = []
    model = config.get("model")
    if isinstance(model, Mapping):
        facts = []
        if "latent_dim" in model:
            facts.append(f"latent {model['latent_dim']}")
        hidden = model.get("hidden")
        if isinstance(hidden, list) and hidden:
            facts.append("hidden " + "–".join(str(h) for h in hidden))
        parts.append(f"model {model.get('name', '?')}" + (f" ({', '.join(facts)})" if facts else ""))
    data = config.get("data")
    if isinstance(data, Mapping):
        extra = f" ({data['binarize']} binarization)" if data.get("binarize") else ""
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
        for key, label, facts in (
            ("log_px", "IS log p(x)", ["nats", *split, *k]),
            ("elbo", "ELBO", ["nats", *split]),
            ("bits_per_dim", "Bits/dim", split),
            ("kl", "KL", ["nats", *split]),
        ):
            if key in ev:
                table.append((f"{label} ({', '.join(facts)})" if facts else label, _with_stderr(ev, key)))
        if "active_units" in ev:
            of = f" / {ev['latent_dim']}" if "latent_dim" in ev else ""
            table.append(("Active units", f"{ev['active_units']}{of}"))
    last = rows[-1] if rows else {}
    if "step" in last:
        table.append(("Steps", _num(last["step"])))
    if isinstance(last.get("epoch"), (int, float)):
        table.append(("Epochs", f"{last['epoch']:.2f}".rstrip("0").rstrip(".")))
    if isinstance(last.get("time"), (int, float)):
        table.append(("Training time", _duration(float(last["time"]))))
    valid = [r for r in rows if r.get("split") == "valid" and isinstance(r.get("elbo"), (int, float))]
    if valid:
        table.append(("Last validation ELBO (nats)", _num(valid[-1]["elbo"], "elbo")))
        table.append(("Best validation ELBO (nats)", _num(max(r["elbo"] for r in valid), "elbo")))
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


def _figure_section(
    title: str, path: Path, draw: Callable[[dict[str, np.ndarray]], tuple[Any, str]], missing: str | None
) -> Section | None:
    """A section drawing one known npz file; None when the file is absent and ``missing`` is None."""
    sec = Section(title)
    if not path.is_file():
        if missing is None:
            return None
        sec.body = note_html(missing)
        return sec
    try:
        fig, caption = draw(_load_npz(path))
    except _BAD_INPUT as e:
        sec.body = note_html(f"Could not draw figures/{path.name}: {e}")
        return sec
    sec.figures.append((figure_png(fig), caption))
    return sec


def _draw_reconstructions(a: dict[str, np.ndarray]) -> tuple[Any, str]:
    orig, rec = a["original"][:_MAX_PAIRS], a["reconstruction"][:_MAX_PAIRS]
    fig = plots.reconstruction_figure(orig, rec)
    return fig, f"{len(orig)} inputs (upper row of each pair) and their reconstructions (lower row)."


def _draw_samples(a: dict[str, np.ndarray]) -> tuple[Any, str]:
    images = a["images"][:_MAX_SAMPLES]
    return plots.image_grid(images), f"{len(images)} samples from the model."


def _draw_manifold(a: dict[str, np.ndarray]) -> tuple[Any, str]:
    n = len(np.asarray(a["grid"]).reshape(-1))
    caption = (
        f"Decoder means over a {n}×{n} grid of latent values spaced by the inverse Gaussian CDF "
        "(as in Kingma & Welling 2014, Figure 4)."
    )
    return plots.manifold_figure(a["images"], a["grid"]), caption


def _draw_latents(a: dict[str, np.ndarray]) -> tuple[Any, str]:
    codes = a["codes"]
    labels = a.get("labels")
    by = "coloured by label" if labels is not None else "(no labels saved)"
    return plots.latent_scatter(codes, labels), f"Posterior means of {len(codes)} examples, {by}."


def _other_figures(fig_dir: Path) -> Section | None:
    sec = Section("Other figures")
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
            sec.figures.append((data, p.stem))
        elif p.suffix == ".npz" and p.name not in FIGURE_FILES:
            notes.append(f"figures/{p.name} not drawn: the report does not know this figure.")
    if not sec.figures and not notes:
        return None
    sec.body = "".join(note_html(n) for n in notes)
    return sec


def _evaluation(ev: dict[str, Any] | None, ev_note: str) -> Section:
    sec = Section("Evaluation")
    if ev is None:
        sec.body = note_html(ev_note)
        return sec
    rows = []
    for key, value in ev.items():
        if key.endswith("_stderr") and key[: -len("_stderr")] in ev or key == "is_warning":
            continue  # shown as ± beside its value; the warning above the table
        label = _EVAL_LABELS.get(key, key)
        rows.append((label, _with_stderr(ev, key) if isinstance(value, (int, float)) else _num(value, key)))
    sec.body = table_html(("Quantity", "Value"), rows, cls="kv")
    if ev.get("is_warning"):
        sec.body = note_html(f"Warning: {ev['is_warning']}") + sec.body
    return sec


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

    if (run / PAGE_SOURCE).is_file():  # a page made by vaelab kl / lda / ising: its own source
        return rebuild_run_page(run)
    config_note = ""
    try:
        config = _read_json(run / "config.json")
    except (OSError, ValueError) as e:
        config, config_note = None, f"config.json could not be read: {e}"
    if isinstance(config, dict) and "model" not in config and (run / "command.txt").is_file():
        # a folder of vaelab kl / lda / ising from before pages kept their source: leave its page
        raise VaelabError(
            f"{run} was written by `{_first_words(run / 'command.txt')}`, whose report this version "
            "cannot rebuild from the folder; run that command again to write it"
        )
    ev_note = f"No eval.json: run `vaelab eval {run}` to estimate log p(x) on the test set."
    try:
        ev = _read_json(run / "eval.json")
    except (OSError, ValueError) as e:
        ev, ev_note = None, f"eval.json could not be read ({e}); run `vaelab eval {run}` again."
    rows = read_metrics(run / "metrics.jsonl")
    figs = run / "figures"
    no_fig = "No figures/{} in the run folder."

    sections = [
        _summary(rows, ev, ev_note),
        _curves(rows),
        _figure_section(
            "Reconstructions",
            figs / "reconstructions.npz",
            _draw_reconstructions,
            no_fig.format("reconstructions.npz"),
        ),
        _figure_section("Samples", figs / "samples.npz", _draw_samples, no_fig.format("samples.npz")),
        _figure_section("Latent manifold", figs / "manifold.npz", _draw_manifold, None),
        _figure_section("Latent codes", figs / "latents.npz", _draw_latents, no_fig.format("latents.npz")),
        _other_figures(figs),
        _evaluation(ev, ev_note),
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
