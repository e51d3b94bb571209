"""The run pipeline across families and stages: latents written by `vaelab encode`, a family that is
not a latent-variable model going through train/eval/report on what it declares, runs that build on
runs (parent link, hash check, chain in the report), and versioned run folders."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from vaelab import sections
from vaelab.cli import main
from vaelab.config import config_from_dict
from vaelab.data import load_dataset
from vaelab.errors import VaelabError
from vaelab.experiment import evaluate_run, load_run_model, train_run
from vaelab.models import MODELS
from vaelab.models.base import LossOutput, Model, ModelConfig, ReportInputs, Sampling
from vaelab.report import build_report
from vaelab.runfolder import checkpoint_sha256

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_vae_digits.toml")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "parent"
    assert main(["train", SMOKE, "--out", str(out), "--quiet", "--seed", "1", "--set", "train.epochs=1"]) == 0
    return out


def _one_line_error(capsys, *needles: str) -> str:
    text = capsys.readouterr().err.strip()
    err = text.splitlines()[-1]  # after any progress line the command printed before failing
    assert err.startswith("error: ") and "Traceback" not in text, text
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------------------------------ encode


def test_encode_writes_the_posterior_means_of_the_users_data(parent, tmp_path, capsys):
    out = tmp_path / "z.npy"
    assert main(["encode", str(parent), "--data", "digits", "--out", str(out), "--device", "cpu"]) == 0
    assert "latents (" in capsys.readouterr().out
    z = np.load(out)
    model, cfg, _ = load_run_model(parent, CPU)
    x = load_dataset(cfg.data).eval_images("test")
    with torch.no_grad():
        expected = model.encode(x).mean.numpy()
    assert z.shape == (len(x), 2)
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    assert main(["encode", str(parent), "--data", "digits", "--split", "train", "--out", str(out)]) == 0
    assert np.load(out).shape[0] == len(load_dataset(cfg.data).train)


def test_encode_of_the_train_split_gives_a_dynamically_binarised_model_binary_images(parent, tmp_path):
    out = tmp_path / "z.npy"
    assert main(["encode", str(parent), "--data", "digits", "--split", "train", "--out", str(out)]) == 0
    model, cfg, _ = load_run_model(parent, CPU)
    bundle = load_dataset(cfg.data)
    assert bundle.dynamic
    x = bundle.eval_images("train")  # one fixed draw, as the test split is scored
    assert set(x.unique().tolist()) == {0.0, 1.0}
    with torch.no_grad():
        expected = model.encode(x).mean.numpy()
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)


def test_encode_refuses_token_data_for_an_image_run_in_one_line(parent, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, text in (("train", "the cat sat\nthe dog sat\n"), ("valid", "the cat\n"), ("test", "a dog\n")):
        (corpus / f"{split}.txt").write_text(text)
    assert main(["encode", str(parent), "--data", f"text:{corpus}", "--out", str(tmp_path / "z.npy")]) == 2
    _one_line_error(capsys, "holds tokens but run", "models images")


def test_ordered_batches_keep_the_order_of_the_sequences(tmp_path):
    from vaelab.config import DataConfig
    from vaelab.experiment import ordered_batches

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    lines = ["a", "b b b b", "c c", "d d d", "e"] * 3
    (corpus / "train.txt").write_text("\n".join(lines) + "\n")
    (corpus / "test.txt").write_text("a\n")
    bundle = load_dataset(DataConfig(name=f"text:{corpus}", valid_size=0))
    vocab = bundle.vocab.words
    got = []
    for batch in ordered_batches(bundle, "train", 4, CPU):
        for row, n in zip(batch.tokens.tolist(), batch.lengths.tolist(), strict=True):
            got.append(" ".join(vocab[i] for i in row[: n - 1]))  # drop <eos>
    assert got == lines


def test_encode_refuses_data_of_another_shape_in_one_line(parent, tmp_path, capsys):
    arr = tmp_path / "wide.npy"
    np.save(arr, np.random.default_rng(0).random((30, 5, 5)).astype(np.float32))
    assert main(["encode", str(parent), "--data", f"npy:{arr}", "--out", str(tmp_path / "z.npy")]) == 2
    _one_line_error(capsys, "holds examples of shape (1, 5, 5)", "(1, 8, 8)")


# ------------------------------------------- a family with samples but no latents, through the pipeline


@dataclass
class PixelsConfig(ModelConfig):
    name: str = "test_pixels"


class IndependentPixels(Model, Sampling):
    """p(x) = prod_d Bernoulli(x_d; sigmoid(l_d)): exact log p(x), no latent variable."""

    Config = PixelsConfig
    data_kinds = frozenset({"images"})

    def __init__(self, config: PixelsConfig, spec):
        super().__init__(config, spec)
        self.logits = nn.Parameter(torch.zeros(spec.n_dims))

    def loss(self, batch: Tensor) -> LossOutput:
        lp = torch.distributions.Bernoulli(logits=self.logits).log_prob(batch.flatten(1)).sum(-1)
        return LossOutput(loss=-lp.mean(), elbo=lp)

    def sample(self, n: int) -> Tensor:
        return torch.bernoulli(torch.sigmoid(self.logits).expand(n, -1)).unflatten(-1, self.spec.shape)

    def samples_section(self, n: int) -> sections.Section:
        return sections.ImagesSection(name="samples", title="Samples", images=self.sample(n).numpy())

    def report_sections(self, inputs: ReportInputs) -> list[sections.Section]:
        p = torch.sigmoid(self.logits).detach().numpy()
        return [
            self.samples_section(inputs.n_samples),
            sections.TableSection(name="pixels", title="Brightest pixels", header=["pixel", "p(on)"],
                                  rows=[[int(i), float(p[i])] for i in np.argsort(-p)[:3]]),
        ]


@pytest.fixture
def pixels_family(monkeypatch):
    IndependentPixels.name = "test_pixels"
    monkeypatch.setitem(MODELS, "test_pixels", IndependentPixels)


def test_a_family_without_latents_trains_evaluates_and_reports_on_what_it_declares(
        pixels_family, tmp_path, capsys):
    cfg = config_from_dict({"model": {"name": "test_pixels"}, "data": {"name": "digits", "limit": 200},
                            "train": {"epochs": 1, "batch_size": 50}, "eval": {"n_samples": 9}})
    run = tmp_path / "pixels"
    train_run(cfg, run, device=CPU, progress=False)
    result = evaluate_run(run, CPU)
    assert result["elbo"] < 0 and "log_px" not in result and "active_units" not in result
    names = [s.name for s in sections.read_sections(run)]
    assert names == ["samples", "pixels", "evaluation"]
    page = build_report(run).read_text()
    assert ">Brightest pixels</h2>" in page and ">Samples</h2>" in page
    assert main(["encode", str(run), "--data", "digits", "--out", str(tmp_path / "z.npy")]) == 2
    _one_line_error(capsys, "model 'test_pixels' has no latents to encode")
    assert main(["sample", str(run), "-n", "4"]) == 0


def test_a_family_refuses_data_it_does_not_declare(pixels_family, tmp_path):
    (tmp_path / "words.txt").write_text("a few words\nand a few more\n" * 5)
    data = {"name": f"text:{tmp_path / 'words.txt'}"}
    cfg = config_from_dict({"model": {"name": "test_pixels"}, "data": data})
    with pytest.raises(VaelabError, match="does not accept 'tokens' data"):
        train_run(cfg, tmp_path / "never-written", device=CPU, progress=False)
    assert not (tmp_path / "never-written").exists()


# ------------------------------------------------------------------------------------ parent runs


def _child(parent: Path, out: Path) -> int:
    return main(["train", SMOKE, "--out", str(out), "--quiet", "--no-eval", "--set", "train.epochs=1",
                 "--set", f"parent.run={parent}"])


def test_a_child_run_records_its_parents_hash_and_checks_it_on_load(parent, tmp_path, capsys):
    child = tmp_path / "child"
    assert _child(parent, child) == 0
    recorded = json.loads((child / "config.json").read_text())["parent"]
    assert recorded == {"run": str(parent.resolve()), "sha256": checkpoint_sha256(parent)}
    assert len(recorded["sha256"]) == 64
    assert main(["eval", str(child), "--quiet"]) == 0
    page = (child / "report.html").read_text()
    chain = page.split(">Run chain</h2>")[1].split("<h2")[0]
    assert f"{parent} → {child} (this run)" in chain
    assert recorded["sha256"][:12] in chain and "matches" in chain

    # the parent is trained further: its checkpoint no longer is the one the child was started on
    backup = tmp_path / "parent-backup"
    shutil.copytree(parent, backup)
    try:
        from safetensors.torch import load_file, save_file

        weights = parent / "checkpoints" / "best" / "model.safetensors"
        w = load_file(str(weights))
        save_file({k: v + 0.01 for k, v in w.items()}, str(weights))
        capsys.readouterr()
        assert main(["eval", str(child), "--quiet"]) == 2
        _one_line_error(capsys, f"run {child} was started on parent {parent}", recorded["sha256"][:12],
                        "restore that parent checkpoint or retrain")
        assert main(["train", "--resume", "--out", str(child), "--quiet", "--no-eval"]) == 2
        _one_line_error(capsys, "was started on parent")
        assert main(["report", str(child)]) == 0  # the report still builds, and says so
        assert "changed: now" in (child / "report.html").read_text()
    finally:
        shutil.rmtree(parent)
        shutil.copytree(backup, parent)


def _child_on_a_copy(parent: Path, tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A copy of the parent (the test may change it) and a child started on it by a relative path."""
    own = _copy(parent, tmp_path, "own-parent")
    monkeypatch.chdir(tmp_path)
    child = tmp_path / "child"
    assert _child(Path("own-parent"), child) == 0
    return own, child


def _retrain(parent: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = parent / "checkpoints" / "best" / "model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(str(weights)).items()}, str(weights))


def test_the_parent_is_recorded_absolute_and_found_from_any_directory(parent, tmp_path, monkeypatch, capsys):
    own, child = _child_on_a_copy(parent, tmp_path, monkeypatch)
    assert json.loads((child / "config.json").read_text())["parent"]["run"] == str(own.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    load_run_model(child, CPU)
    assert main(["report", str(child)]) == 0
    chain = (child / "report.html").read_text().split(">Run chain</h2>")[1].split("<h2")[0]
    assert "matches" in chain


def test_resume_with_a_config_file_checks_the_hash_the_run_recorded(parent, tmp_path, monkeypatch, capsys):
    """The config file's parent.sha256 is empty: resuming must not record the changed parent's hash."""
    own, child = _child_on_a_copy(parent, tmp_path, monkeypatch)
    recorded = json.loads((child / "config.json").read_text())["parent"]["sha256"]
    _retrain(own)
    capsys.readouterr()
    assert main(["train", SMOKE, "--resume", "--out", str(child), "--quiet", "--no-eval",
                 "--set", "train.epochs=2", "--set", "parent.run=own-parent"]) == 2
    _one_line_error(capsys, f"run {child} was started on parent", recorded[:12])
    assert json.loads((child / "config.json").read_text())["parent"]["sha256"] == recorded


def test_a_child_with_no_recorded_parent_hash_is_refused_on_load(parent, tmp_path, monkeypatch, capsys):
    _, child = _child_on_a_copy(parent, tmp_path, monkeypatch)
    for state in [child / "config.json", *child.glob("checkpoints/*/state.json")]:
        meta = json.loads(state.read_text())
        cfg = meta.get("config", meta)
        cfg["parent"]["sha256"] = ""
        state.write_text(json.dumps(meta))
    with pytest.raises(VaelabError, match="recorded no checkpoint hash of it"):
        load_run_model(child, CPU)
    capsys.readouterr()
    assert main(["encode", str(child), "--data", "digits", "--out", str(tmp_path / "z.npy")]) == 2
    _one_line_error(capsys, "recorded no checkpoint hash of it")


def test_a_missing_parent_is_a_one_line_error(tmp_path, capsys):
    assert _child(tmp_path / "no-such-run", tmp_path / "child") == 2
    _one_line_error(capsys, "parent.run: no run folder at", "train the parent run first")


# -------------------------------------------------------------------------------- versioned folders


def _copy(run: Path, tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def test_a_version_1_folder_loads_evaluates_and_reports(parent, tmp_path, capsys):
    """A folder as vaelab wrote it before run folders were versioned: no run.json, no sections.json,
    its figures as figures/*.npz under fixed names."""
    old = _copy(parent, tmp_path, "old")
    (old / "run.json").unlink()
    (old / "sections.json").unlink()
    shutil.rmtree(old / "sections")
    (old / "figures").mkdir(exist_ok=True)
    np.savez(old / "figures" / "samples.npz", images=np.random.default_rng(0).random((4, 1, 8, 8)))
    assert main(["report", str(old)]) == 0
    page = (old / "report.html").read_text()
    assert ">Samples</h2>" in page and ">Evaluation</h2>" in page
    model, _, _ = load_run_model(old, CPU)
    assert main(["eval", str(old), "--quiet", "--is-samples", "2"]) == 0
    assert json.loads((old / "run.json").read_text())["version"] == 2  # evaluated: now a version 2 folder
    names = {s.name for s in sections.read_sections(old)}
    assert {"reconstructions", "samples", "latents", "evaluation"} <= names


def test_a_folder_or_checkpoint_of_a_newer_version_is_refused_in_one_line(parent, tmp_path, capsys):
    new = _copy(parent, tmp_path, "new")
    (new / "run.json").write_text(json.dumps({"format": "vaelab-run", "version": 3, "vaelab_version": "0.9"}))
    for args in (["eval", str(new), "--quiet"], ["report", str(new)],
                 ["encode", str(new), "--data", "digits", "--out", str(tmp_path / "z.npy")]):
        capsys.readouterr()
        assert main(args) == 2, args
        _one_line_error(capsys, "has version 3 (written by vaelab 0.9)", "reads versions 1-2",
                        "upgrade vaelab")
    newer_ckpt = _copy(parent, tmp_path, "newer-ckpt")
    state = newer_ckpt / "checkpoints" / "best" / "state.json"
    meta = json.loads(state.read_text())
    state.write_text(json.dumps(meta | {"format_version": 5, "vaelab_version": "0.9"}))
    capsys.readouterr()
    assert main(["eval", str(newer_ckpt), "--quiet"]) == 2
    _one_line_error(capsys, "has format version 5 (written by vaelab 0.9)", "upgrade vaelab")
