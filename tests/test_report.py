"""The run report: plots lay the arrays out where they say, and build_report turns any run folder into one
self-contained page, leaving out (with a note) whatever is missing or damaged, never crashing on it.

``make_run`` writes a synthetic run folder; tests/test_report_browser.py reuses it.
"""

from __future__ import annotations

import ast
import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vaelab import sections as sec
from vaelab.errors import VaelabError
from vaelab.report import (
    build_report,
    image_grid,
    latent_scatter,
    manifold_figure,
    read_metrics,
    reconstruction_figure,
    training_curves,
)
from vaelab.report.html import figure_png
from vaelab.runfolder import write_run_file

PAD = 2  # plots._PAD: pixels between tiles

# name -> (image shape (C, H, W), latent size, labels saved, manifold saved, extra PNG saved)
CASES: dict[str, tuple[tuple[int, int, int], int, bool, bool, bool]] = {
    "grey-square-2d": ((1, 28, 28), 2, True, True, True),
    "grey-frey-28x20-pca": ((1, 28, 20), 5, False, False, False),
    "rgb-32x24-pca": ((3, 32, 24), 8, True, True, True),
}

EVAL = {
    "split": "test",
    "n_examples": 10000,
    "is_samples": 5000,
    "elbo": -89.1,
    "log_px": -85.3,
    "log_px_stderr": 0.04,
    "bits_per_dim": 0.157,
    "kl": 25.3,
    "reconstruction": -63.8,
    "active_units": 19,
    "latent_dim": 50,
    "ess_mean": 123.4,
    "seconds": 600.1,
}


def _metrics_lines(extra_key: str | None = None) -> list[str]:
    """A training log: 60 train lines, a validation line every 10, lr decay, a truncated last line."""
    lines = []
    for i in range(1, 61):
        elbo = -90.0 - 400.0 * np.exp(-i / 1.5)  # a steep start the robust y-limits must not flatten
        row: dict[str, Any] = {
            "split": "train",
            "step": 100 * i,
            "epoch": i / 6,
            "time": 1.5 * i,
            "lr": 1e-3 * 0.95**i,
            "loss": -elbo,
            "elbo": elbo,
            "reconstruction": elbo - 20.0,
            "kl": 20.0,
        }
        if extra_key:
            row[extra_key] = 1.0 / i
        lines.append(json.dumps(row))
        if i % 10 == 0:
            valid = {k: v for k, v in row.items() if k != "lr"} | {"split": "valid", "elbo": elbo - 1.0}
            lines.append(json.dumps(valid))
    lines.append('{"split": "train", "step": 6100, "epoch": 10.1, "ti')  # killed mid-write
    return lines


def _tiny_png() -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    fig.add_subplot().plot([0, 1, 2], [2, 0, 1])
    return figure_png(fig)


def make_run(
    root: Path,
    name: str = "grey-square-2d",
    shape: tuple[int, int, int] = (1, 28, 28),
    latent_dim: int = 2,
    labels: bool = True,
    manifold: bool = True,
    extra_png: bool = True,
    layout: str = "v2",
) -> tuple[Path, int]:
    """Write a complete synthetic run folder; return it and the number of images its report should hold.

    ``layout="v2"``: today's folder (run.json, sections.json written through vaelab.sections);
    ``"v1"``: a folder of vaelab before versioned run folders (fixed figures/*.npz, no manifest).
    """
    rng = np.random.default_rng(0)
    run = root / name
    (run / "figures").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    config = {
        "name": name,
        "model": {"name": "vae", "latent_dim": latent_dim, "hidden": [64, 64], "likelihood": "bernoulli"},
        "data": {"name": "mnist", "binarize": "dynamic"},
        "train": {"epochs": 10, "lr": 1e-3, "batch_size": 100, "seed": 0},
        "eval": {"is_samples": 5000},
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "command.txt").write_text(
        f"vaelab train configs/vae_mnist.toml --out runs/{name} --set train.epochs=10\n"
    )
    (run / "metrics.jsonl").write_text("\n".join(_metrics_lines("commitment")))
    (run / "eval.json").write_text(json.dumps(EVAL))
    c, h, w = shape
    fig_dir = run / "figures"
    x = rng.random((16, c, h, w), dtype=np.float32)
    arrays: dict[str, dict[str, np.ndarray]] = {
        "reconstructions": {"original": x, "reconstruction": np.clip(x + 0.1, 0, 1)},
        "samples": {"images": rng.random((36, c, h, w), dtype=np.float32)},
    }
    if manifold:
        grid = np.linspace(-1.64, 1.64, 7)
        arrays["manifold"] = {"images": rng.random((7, 7, c, h, w), dtype=np.float32), "grid": grid}
    codes = rng.normal(size=(500, latent_dim)).astype(np.float32)
    arrays["latents"] = {"codes": codes, "labels": rng.integers(0, 10, 500)} if labels else {"codes": codes}
    n_images = 5 if manifold else 4
    if layout == "v1":
        for stem, a in arrays.items():
            np.savez(fig_dir / f"{stem}.npz", **a)
    else:
        write_run_file(run)
        kinds = {"reconstructions": sec.ReconstructionsSection, "samples": sec.ImagesSection,
                 "manifold": sec.ManifoldSection, "latents": sec.ScatterSection}
        titles = {"reconstructions": "Reconstructions", "samples": "Samples", "manifold": "Latent manifold",
                  "latents": "Latent codes"}
        sec.write_sections(run, [kinds[k](name=k, title=titles[k], **a) for k, a in arrays.items()])
        sec.write_sections(run, [sec.MetricsSection(name="evaluation", title="Evaluation", values=EVAL)])
    if extra_png:
        (fig_dir / "beta_schedule.png").write_bytes(_tiny_png())
        n_images += 1
    (run / "checkpoints" / "last.safetensors").write_bytes(b"not read by the report")
    return run, n_images


def _img_sources(page: str) -> list[str]:
    return re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", page)


# ------------------------------------------------------------------------------------------ build_report


@pytest.mark.parametrize("layout", ["v2", "v1"])
@pytest.mark.parametrize("case", list(CASES))
def test_report_is_self_contained_with_one_image_per_figure(tmp_path: Path, case: str, layout: str) -> None:
    run, expected = make_run(tmp_path, case, *CASES[case], layout=layout)
    out = build_report(run)
    assert out == run / "report.html"
    page = out.read_text(encoding="utf-8")

    assert page.count("<img") == expected
    sources = _img_sources(page)
    assert len(sources) == expected
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")
    lowered = page.lower()
    for ref in ('src="http', "src='http", "file:", "<link", "<script", "url(", "@import"):
        assert ref not in lowered, f"external reference {ref!r} in the report"

    assert f"<title>{case}</title>" in page
    assert "−85.30 ± 0.04" in page  # IS log p(x) with its standard error, typographic minus
    assert "19 / 50" in page  # active units of the latent size
    assert "model vae (latent" in page and "data mnist" in page
    for title in ("Summary", "Training curves", "Reconstructions", "Samples", "Latent codes", "Evaluation"):
        assert f">{title}</h2>" in page
    assert (">Latent manifold</h2>" in page) == CASES[case][3]
    assert "train.batch_size" in page  # config flattened to dotted keys
    assert "--set train.epochs=10" in page
    assert "class='note'" not in page  # nothing was missing
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # the atomic write cleaned up


def test_summary_has_run_facts_from_the_last_complete_metrics_line(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    page = build_report(run).read_text(encoding="utf-8")
    summary = page.split(">Summary</h2>")[1].split("<h2")[0]
    assert "<td>Steps</td><td>6000</td>" in summary
    assert "<td>Epochs</td><td>10</td>" in summary
    assert "<td>Training time</td><td>1 min 30 s</td>" in summary
    assert "IS log p(x) (nats, test, K = 5000)" in summary


def _write_eval(run: Path, ev: dict[str, Any]) -> None:
    """What `vaelab eval` writes: eval.json, and (version 2) the evaluation section."""
    (run / "eval.json").write_text(json.dumps(ev))
    if (run / "run.json").is_file():
        sec.write_sections(run, [sec.evaluation_section(ev)])


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_an_unreliable_is_estimate_is_flagged_in_the_summary_and_the_evaluation(
    tmp_path: Path, layout: str
) -> None:
    from vaelab.experiment import format_eval

    run, _ = make_run(tmp_path, layout=layout)
    warning = "unreliable IS estimate: mean effective sample size 4.0 of K=5000 is below 10, ..."
    ev = {**EVAL, "ess_mean": 4.0, "is_reliable": False, "is_warning": warning}
    _write_eval(run, ev)
    page = build_report(run).read_text(encoding="utf-8")
    summary, evaluation = (page.split(f">{t}</h2>")[1].split("<h2")[0] for t in ("Summary", "Evaluation"))
    for section in (summary, evaluation):
        assert f"<p class='note'>Warning: {warning}</p>" in section
    assert evaluation.count(warning) == 1  # above the table, not again as a row
    assert "<td>IS estimate reliable (mean ESS &gt;= min(10, K/2))</td><td>false</td>" in evaluation
    assert f"\nwarning: {warning}\n" in format_eval(ev)
    # a reliable estimate: no warning anywhere
    _write_eval(run, {**EVAL, "is_reliable": True, "is_warning": None})
    page = build_report(run).read_text(encoding="utf-8")
    assert "Warning" not in page and "<td>true</td>" in page
    assert "warning" not in format_eval({**EVAL, "is_reliable": True, "is_warning": None})


def test_read_metrics_skips_a_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(_metrics_lines()) + "\nnot json\n[1, 2]\n")
    rows = read_metrics(path)
    assert len(rows) == 66  # 60 train + 6 valid; the partial line, the junk and the non-object are skipped
    assert rows[-1]["split"] == "valid" and rows[-1]["step"] == 6000
    assert read_metrics(tmp_path / "absent.jsonl") == []


def test_a_run_with_only_a_config_builds_with_notes(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "bare", "model": {"name": "vae"}}))
    page = build_report(run).read_text(encoding="utf-8")
    assert "<img" not in page
    assert "vaelab eval" in page  # how to get eval.json
    assert "metrics.jsonl" in page and "command.txt" in page
    assert ">Latent manifold</h2>" not in page and ">Other figures</h2>" not in page  # optional: omitted


def test_damaged_pieces_of_an_old_folder_become_notes_and_the_rest_is_built(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, extra_png=False, layout="v1")
    figs = run / "figures"
    (figs / "samples.npz").write_bytes(b"PK\x03\x04 truncated zip")
    np.savez(figs / "reconstructions.npz", original=np.zeros((4, 1, 8, 8)))  # no "reconstruction"
    np.savez(figs / "manifold.npz", images=np.zeros((3, 3, 1, 8, 8)), grid=np.zeros(4))  # n mismatch
    np.savez(figs / "latents.npz", codes=np.array([{"pickled": 1}], dtype=object))  # refused, never unpickled
    (figs / "notes.png").write_text("not an image")
    np.savez(figs / "mystery.npz", a=np.zeros(3))
    (run / "eval.json").write_text("[1, 2]")
    page = build_report(run).read_text(encoding="utf-8")
    assert page.count("<img") == 1  # the training curves survive
    assert "Could not read section &#x27;samples&#x27;: figures/samples.npz" in page
    assert "missing array(s) reconstruction" in page
    assert "Could not draw section &#x27;manifold&#x27;" in page
    assert "Could not read section &#x27;latents&#x27;: figures/latents.npz" in page
    assert "figures/notes.png left out" in page
    assert "figures/mystery.npz not drawn" in page
    assert "eval.json could not be read" in page


def test_damaged_sections_become_notes_and_the_rest_is_built(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, extra_png=False)
    (run / "sections" / "samples.npz").write_bytes(b"PK\x03\x04 truncated zip")
    (run / "sections" / "latents.npz").unlink()
    manifest = json.loads((run / "sections.json").read_text())
    manifest["sections"].append({"kind": "hologram", "name": "future", "title": "Future", "fields": {}})
    manifest["sections"][0]["arrays"] = "sections/manifold.npz"  # reconstructions: wrong arrays
    manifest["sections"].append({"kind": "image", "name": "sneaky", "title": "Sneaky", "fields": {},
                                 "files": {"image": "../config.json"}})
    (run / "sections.json").write_text(json.dumps(manifest))
    page = build_report(run).read_text(encoding="utf-8")
    assert page.count("<img") == 2  # the training curves and the manifold survive
    assert "Could not read section &#x27;samples&#x27;" in page
    assert "Could not read section &#x27;latents&#x27;" in page and "No such file" in page
    assert "missing original, reconstruction" in page
    assert "unknown section kind &#x27;hologram&#x27;" in page
    assert "../config.json is outside sections/" in page
    assert ">Evaluation</h2>" in page and "−85.30 ± 0.04" in page


def test_a_newer_manifest_or_run_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path)
    manifest = json.loads((run / "sections.json").read_text())
    (run / "sections.json").write_text(json.dumps(manifest | {"version": 7}))
    page = build_report(run).read_text(encoding="utf-8")
    assert "version 7, newer than this vaelab reads (1); upgrade vaelab" in page  # a note, the page is built
    (run / "run.json").write_text(json.dumps({"format": "vaelab-run", "version": 9, "vaelab_version": "9.0"}))
    with pytest.raises(VaelabError) as err:
        build_report(run)
    assert "has version 9 (written by vaelab 9.0)" in str(err.value) and "upgrade vaelab" in str(err.value)
    assert "\n" not in str(err.value)


def test_every_section_kind_round_trips_and_has_a_renderer(tmp_path: Path) -> None:
    """Each registered kind is written, read back equal, and drawn without a note."""
    from vaelab.report.render import RENDERERS, render_section

    rng = np.random.default_rng(1)
    examples = [
        sec.ImagesSection(name="a", title="A", images=rng.random((4, 1, 5, 5))),
        sec.ReconstructionsSection(name="b", title="B", original=rng.random((2, 3, 4, 4)),
                                   reconstruction=rng.random((2, 3, 4, 4))),
        sec.ManifoldSection(name="c", title="C", images=rng.random((3, 3, 1, 4, 4)), grid=np.arange(3.0)),
        sec.ScatterSection(name="d", title="D", codes=rng.normal(size=(20, 3))),
        sec.TableSection(name="e", title="E", header=["k", "value"], rows=[["x", 1.5], ["y <b>", 2]]),
        sec.TextSection(name="f", title="F", texts=["the cat <eos>", "a dog"], labels=["in", "out"]),
        sec.AudioSection(name="g", title="G", clips=[sec.wav_bytes(np.sin(np.arange(800) / 5), 8000)],
                         labels=["tone"]),
        sec.LinesSection(name="h", title="H", x=np.arange(5.0), y=rng.random((2, 5)), labels=["p", "q"],
                         logy=True),
        sec.ImageFileSection(name="i", title="I", image=_tiny_png(), caption="drawn elsewhere"),
        sec.MetricsSection(name="j", title="J", values={"elbo": -90.5, "elbo_stderr": 0.25, "split": "test"}),
        sec.CurvesSection(name="k", title="K", x=np.array([[0.0, 1.0, np.nan], [0.0, 0.5, 1.0]]),
                          y=rng.random((2, 3)), labels=["a", "a"], styles=["-", "--"], equal_aspect=True),
        sec.HeatmapSection(name="l", title="L", values=rng.random((3, 7)), xlabel="doc", colorbar="p"),
        sec.ExplorerSection(name="m", title="M", images=rng.random((3, 3, 1, 4, 4)), grid=np.arange(3.0),
                            codes=rng.normal(size=(9, 2)), labels=rng.integers(0, 3, 9)),
    ]
    assert {type(s) for s in examples} == set(sec.SECTION_KINDS.values()), "add an example of every kind"
    assert set(RENDERERS) == set(sec.SECTION_KINDS)
    sec.write_sections(tmp_path, examples[:4])
    sec.write_sections(tmp_path, examples[3:])  # "d" again: replaced in place, not repeated
    back = sec.read_sections(tmp_path)
    assert [s.name for s in back] == list("abcdefghijklm")
    for s, r in zip(examples, back):
        assert type(r) is type(s)
        for f in s.__dataclass_fields__:
            a, b = getattr(s, f), getattr(r, f)
            same = np.array_equal(a, b, equal_nan=True) if isinstance(a, np.ndarray) else a == b
            assert same, (s.name, f)
        block = render_section(r)
        assert "class='note'" not in block.body, block.body
        assert block.figures or block.body
    assert "y &lt;b&gt;" in render_section(back[4]).body  # table cells escaped
    assert "data:audio/wav;base64," in render_section(back[6]).body
    assert "−90.50 ± 0.25" in render_section(back[9]).body


@pytest.mark.parametrize("make", ["absent", "no-config", "a-file"])
def test_not_a_run_folder_is_a_one_line_error_naming_it_and_the_fix(tmp_path: Path, make: str) -> None:
    run = tmp_path / "runs" / "nope"
    if make == "no-config":
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("")
    elif make == "a-file":
        run.parent.mkdir()
        run.write_text("")
    with pytest.raises(VaelabError) as err:
        build_report(run)
    message = str(err.value)
    assert str(run) in message and "vaelab train" in message and "\n" not in message
    assert not (run / "report.html").exists() if run.is_dir() else True


def test_report_package_imports_no_torch_and_no_model() -> None:
    """report/ builds from files alone (DESIGN: import directions); checked on the source, not sys.modules."""
    package = Path(__file__).resolve().parents[1] / "src" / "vaelab" / "report"
    forbidden = (
        "torch",
        "vaelab.models",
        "vaelab.train",
        "vaelab.evaluation",
        "vaelab.cli",
        "matplotlib.pyplot",
    )
    for source in [*package.glob("*.py"), package.parent / "sections.py", package.parent / "runfolder.py"]:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not name.startswith(forbidden), f"{source.name} imports {name}"


# -------------------------------------------------------------------------------------------------- plots


def _tile_at(mosaic: np.ndarray, row: int, col: int, h: int, w: int, pad: int = PAD) -> np.ndarray:
    """The (H, W[, 3]) tile at grid position (row, col) of a displayed mosaic."""
    top, left = pad + row * (h + pad), pad + col * (w + pad)
    return mosaic[top : top + h, left : left + w]


def _chw(tile: np.ndarray) -> np.ndarray:
    return tile[None] if tile.ndim == 2 else tile.transpose(2, 0, 1)


@pytest.mark.parametrize("shape", [(1, 28, 20), (3, 12, 17)])
def test_image_grid_places_image_k_at_row_k_div_nrow_column_k_mod_nrow(shape: tuple[int, int, int]) -> None:
    c, h, w = shape
    images = np.random.default_rng(1).random((7, c, h, w), dtype=np.float32)
    fig = image_grid(images, nrow=3, title="samples")
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 1
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    assert mosaic.shape[:2] == (PAD + 3 * (h + PAD), PAD + 3 * (w + PAD))
    assert mosaic.ndim == (2 if c == 1 else 3)
    for k in range(7):
        np.testing.assert_array_equal(_chw(_tile_at(mosaic, k // 3, k % 3, h, w)), images[k])
    assert np.all(_tile_at(mosaic, 2, 2, h, w) == 1.0)  # the unfilled slot is blank
    assert fig.axes[0].get_title() == "samples"
    figure_png(fig)  # renders without a warning


def test_image_grid_reads_uint8_and_hw_arrays_and_rejects_other_channel_counts() -> None:
    fig = image_grid(np.full((4, 5, 6), 255, dtype=np.uint8))
    assert np.all(np.asarray(fig.axes[0].images[0].get_array()) == 1.0)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        image_grid(np.zeros((4, 2, 5, 5)))


def test_reconstruction_figure_puts_each_original_above_its_reconstruction() -> None:
    rng = np.random.default_rng(2)
    original = rng.random((5, 1, 10, 7), dtype=np.float32)
    recon = rng.random((5, 1, 10, 7), dtype=np.float32)
    fig = reconstruction_figure(original, recon, ncol=3)  # two blocks of pairs: 3 then 2
    assert len(fig.axes) == 1 and len(fig.axes[0].images) == 1
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    block = 2 * (10 + PAD) + PAD + 3 * PAD  # a pair of rows and the gap after it
    for i in range(5):
        b, col = divmod(i, 3)
        shifted = mosaic[b * block :]
        np.testing.assert_array_equal(_tile_at(shifted, 0, col, 10, 7)[None], original[i])
        np.testing.assert_array_equal(_tile_at(shifted, 1, col, 10, 7)[None], recon[i])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["input", "recon."] * 2
    with pytest.raises(ValueError, match="same shape"):
        reconstruction_figure(original, recon[:4])


def test_manifold_figure_draws_z1_rightwards_and_z2_upwards() -> None:
    n, h, w = 4, 6, 5
    grid = np.linspace(-1.5, 1.5, n)
    images = np.zeros((n, n, 1, h, w), dtype=np.float32)
    for i in range(n):
        for j in range(n):
            images[i, j] = (i * n + j) / (n * n)  # images[i, j] is decoded at z = (grid[j], grid[i])
    fig = manifold_figure(images, grid)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and len(ax.images) == 1
    mosaic = np.asarray(ax.images[0].get_array())
    assert mosaic.shape == (n * h, n * w)
    for i in range(n):
        for j in range(n):
            tile = _tile_at(mosaic, n - 1 - i, j, h, w, pad=0)  # z2 = grid[i] is drawn i rows from the bottom
            np.testing.assert_array_equal(tile, images[i, j, 0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["−1.5", "−0.5", "0.5", "1.5"]
    assert ax.get_yticks()[0] > ax.get_yticks()[-1]  # the first grid value sits lowest (image rows go down)
    with pytest.raises(ValueError, match="len\\(grid\\)"):
        manifold_figure(images, grid[:3])


def test_latent_scatter_2d_draws_the_codes_with_one_legend_entry_per_class() -> None:
    rng = np.random.default_rng(3)
    codes = rng.normal(size=(300, 2))
    labels = rng.integers(0, 10, 300)
    fig = latent_scatter(codes, labels)
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    drawn = ax.collections[0].get_offsets()
    np.testing.assert_allclose(np.sort(drawn, axis=0), np.sort(codes, axis=0))  # all points, unprojected
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [str(k) for k in range(10)]
    figure_png(fig)


def test_latent_scatter_continuous_labels_get_a_colour_bar_and_no_labels_a_single_colour() -> None:
    codes = np.random.default_rng(4).normal(size=(100, 2))
    assert len(latent_scatter(codes, np.linspace(0, 1, 100)).axes) == 2  # the plot and its colour bar
    assert len(latent_scatter(codes, np.arange(100)).axes) == 2  # 100 classes: too many for a legend
    fig = latent_scatter(codes)
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is None


def test_latent_scatter_projects_higher_dimensions_on_the_first_two_principal_components() -> None:
    rng = np.random.default_rng(5)
    scales = np.array([0.3, 3.0, 0.1, 1.5, 0.2])
    rotation, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    codes = (rng.normal(size=(2000, 5)) * scales) @ rotation.T + 4.0
    fig = latent_scatter(codes, rng.integers(0, 3, 2000))
    ax = fig.axes[0]
    # Oracle: eigen-decomposition of the sample covariance (the code uses an SVD of the centred data).
    centred = codes - codes.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(centred.T))
    top = eigvec[:, ::-1][:, :2]
    expected = centred @ top
    drawn = ax.collections[0].get_offsets()
    for k in range(2):  # up to sign and point order
        ok = [np.allclose(np.sort(s * drawn[:, k]), np.sort(expected[:, k]), atol=1e-9) for s in (1, -1)]
        assert any(ok)
    fraction = eigval[::-1][:2].sum() / eigval.sum()
    assert "principal components of 5-D codes" in ax.get_title()
    assert f"({fraction:.0%} of variance)" in ax.get_title()
    figure_png(fig)


def test_latent_scatter_one_dimensional_codes() -> None:
    fig = latent_scatter(np.arange(10.0)[:, None])
    np.testing.assert_allclose(np.sort(fig.axes[0].collections[0].get_offsets()[:, 0]), np.arange(10.0))


def test_training_curves_one_panel_per_quantity_train_and_valid_lines_against_epoch() -> None:
    rows = [json.loads(line) for line in _metrics_lines("perplexity")[:-1]]
    fig = training_curves(rows)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6  # loss, elbo, reconstruction, kl, perplexity, lr
    assert titles[:4] == [
        "Loss (nats)",
        "ELBO (nats)",
        "Reconstruction E_q log p(x|z) (nats)",
        "KL(q(z|x) ‖ p(z)) (nats)",
    ]
    assert titles[-1] == "Learning rate"
    assert fig.axes[-1].get_yscale() == "log"  # lr spans more than 20x: log axis
    assert fig.axes[1].get_yscale() == "linear"
    elbo = fig.axes[1]
    assert [line.get_label() for line in elbo.get_lines()] == ["train", "valid"]
    train, valid = elbo.get_lines()
    np.testing.assert_allclose(train.get_xdata(), [r["epoch"] for r in rows if r["split"] == "train"])
    np.testing.assert_allclose(valid.get_ydata(), [r["elbo"] for r in rows if r["split"] == "valid"])
    assert len(fig.axes[-1].get_lines()) == 1  # lr is logged for training only
    assert all(ax.get_xlabel() == "epoch" for ax in fig.axes)
    # The steep start (ELBO -295 at the first line, -118 by the fourth) is left off the axis so that the
    # settled curve is readable; everything from the fourth line on stays in view.
    low, high = elbo.get_ylim()
    assert -125 < low < -118 and high > -89
    figure_png(fig)


def test_training_curves_fall_back_to_step_and_reject_rows_without_numbers() -> None:
    fig = training_curves([{"split": "train", "step": s, "loss": 1.0 / s} for s in range(1, 5)])
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "step"
    with pytest.raises(ValueError, match="no numeric quantity"):
        training_curves([{"split": "train", "step": 1, "epoch": 0.1, "note": "x"}])


def test_a_run_page_is_rebuilt_from_its_source_with_figures_saved_once(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from vaelab.report import build_report
    from vaelab.report.html import Section, rebuild_run_page, write_run_page

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    saved_png, new_png = figure_png(fig), figure_png(fig, dpi=50)
    plt.close(fig)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "line.png").write_bytes(saved_png)
    (tmp_path / "config.json").write_text('{"name": "x"}')
    plots = Section("Plots", "", [(saved_png, "saved"), (new_png, "new")])
    sections = [Section("Table", "<p>a &amp; b</p>"), plots]
    page = write_run_page(tmp_path, "A page", sections, "vaelab x --seed 1").read_text()
    spec = json.loads((tmp_path / "report.json").read_text())
    files = [f["file"] for f in spec["sections"][1]["figures"]]
    assert files == ["figures/line.png", "figures/page/section01_01.png"]
    assert (tmp_path / "figures" / "page" / "section01_01.png").read_bytes() == new_png
    (tmp_path / "report.html").unlink()
    assert rebuild_run_page(tmp_path).read_text() == page
    assert build_report(tmp_path).read_text() == page  # `vaelab report` takes the same path


def test_a_run_without_a_model_reports_its_sections(tmp_path: Path) -> None:
    """A version 2 folder of a command that trains no model (vaelab lda, kl, ising) is drawn from its
    sections like any other run."""
    run = tmp_path / "lda"
    run.mkdir()
    write_run_file(run)
    (run / "config.json").write_text(json.dumps({"name": "lda", "lda": {"topics": 3}}))
    (run / "command.txt").write_text("vaelab lda ap --topics 3\n")
    sec.write_sections(run, [
        sec.TableSection(name="topics", title="Topics", header=["topic", "words"],
                         rows=[[0, "a b"], [1, "c d"]]),
        sec.LinesSection(name="bound", title="ELBO by iteration", x=np.arange(4.0),
                         y=np.array([[-9, -7, -6, -5.5]]), labels=["ELBO"], xlabel="iteration"),
        sec.MetricsSection(name="heldout", title="Held-out", values={"perplexity": 3079.0}),
    ])
    page = build_report(run).read_text(encoding="utf-8")
    for title in ("Topics", "ELBO by iteration", "Held-out", "Configuration", "Command"):
        assert f">{title}</h2>" in page
    assert "<td>Perplexity</td><td>3079</td>" in page and "lda.topics" in page


def test_a_version_2_folder_is_drawn_from_its_sections_not_a_stale_page_source(tmp_path: Path) -> None:
    from vaelab.report.html import Section, write_run_page

    run = tmp_path / "lda"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "lda", "lda": {"topics": 3}}))
    (run / "command.txt").write_text("vaelab lda ap --topics 3\n")
    # report.json, the page source of a folder from before sections, left behind in the folder
    write_run_page(run, "old page", [Section("Stale table", "<p>old</p>")], "vaelab lda ap")
    write_run_file(run)
    held_out = sec.MetricsSection(name="heldout", title="Held-out", values={"perplexity": 3.0})
    sec.write_sections(run, [held_out])
    page = build_report(run).read_text(encoding="utf-8")
    assert ">Held-out</h2>" in page and "Stale table" not in page


def test_load_arrays_checks_required_keys_and_keeps_the_asked_ones(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, codes=np.zeros(3), labels=np.ones(3), extra=np.arange(2))
    assert set(sec.load_arrays(path)) == {"codes", "labels", "extra"}
    assert set(sec.load_arrays(path, ("codes",), ("labels", "missing"))) == {"codes", "labels"}
    with pytest.raises(ValueError, match=r"missing array\(s\) images \(has: codes, labels, extra\)"):
        sec.load_arrays(path, ("images",))
    np.save(tmp_path / "b.npy", np.zeros(2))
    with pytest.raises(ValueError, match="not an .npz archive"):
        sec.load_arrays(tmp_path / "b.npy")


def test_curves_and_heatmap_of_the_wrong_shape_become_notes() -> None:
    from vaelab.report.render import render_section

    bad = sec.CurvesSection(name="k", title="K", x=np.zeros((2, 3)), y=np.zeros((2, 4)))
    assert "x has shape (2, 3) but y has (2, 4)" in render_section(bad).body
    bad = sec.HeatmapSection(name="l", title="L", values=np.zeros(3))
    assert "a heat map needs a 2-D array, got shape (3,)" in render_section(bad).body


def test_curves_keep_a_far_off_first_point_out_of_the_axis_and_draw_log_x() -> None:
    """A model's bound before training (-200,000 nats) would flatten curves near -150: the y axis
    leaves it out as the training curves do; ``logx`` gives a log x axis; geometry keeps every point."""
    from vaelab.report.plots import curves_plot

    x = np.array([[1e3, 1e4, 1e5] + [2e5 + i for i in range(20)]], float)
    y = np.array([[-2e5, -180.0, -160.0] + [-150.0 + 0.1 * i for i in range(20)]])
    ax = curves_plot(x, y, ["AEVB"], logx=True).axes[0]
    lo, hi = ax.get_ylim()
    assert ax.get_xscale() == "log" and -200 < lo < -175 and -150 < hi < -140
    lo, _ = curves_plot(x, y, ["AEVB"], equal_aspect=True).axes[0].get_ylim()
    assert lo <= -2e5
