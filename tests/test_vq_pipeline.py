"""The two stages of the VQ-VAE (van den Oord et al. 2017, Sections 4.1-4.2), end to end on tiny sizes:
a VQ-VAE run on four labelled 8x8 patterns (4x4 maps of K = 16 codes), its codes extracted as data
(``vaelab vq extract-codes``, ``codes:PATH``), a class-conditional PixelCNN prior trained on them as a
child run, samples of the prior decoded by the VQ-VAE (``vaelab vq sample``), and the VQ-VAE's bound
with the learned prior against the uniform one (``vaelab vq eval``)."""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.cli import main
from vaelab.codes import CodeBatch
from vaelab.config import DataConfig, config_from_dict, load_config
from vaelab.data import CodeBundle, load_dataset, write_codes
from vaelab.experiment import evaluate_run, load_run_model, train_run
from vaelab.models import build_model
from vaelab.models.pixelcnn_prior import PixelCNNPriorConfig
from vaelab.runfolder import checkpoint_sha256
from vaelab.sections import read_sections
from vaelab.spec import DataSpec
from vaelab.train.codes import CodeBatches
from vaelab.vq_runs import prior_bound, sample_with_prior

ROOT = Path(__file__).resolve().parents[1]
SMOKE_PRIOR = str(ROOT / "configs" / "smoke_pixelcnn_prior.toml")
CPU = torch.device("cpu")
K = 16  # codes of the tiny VQ-VAE; 8x8 images -> 4x4 code maps (downsample 1)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

def _patterns() -> np.ndarray:
    """(4, 8, 8) binary patterns: top half, left half, a thick diagonal, a checkerboard of 2x2 blocks."""
    p = np.zeros((4, 8, 8), np.uint8)
    p[0, :4] = 1
    p[1, :, :4] = 1
    p[2] = np.eye(8, dtype=np.uint8) | np.eye(8, k=1, dtype=np.uint8)
    p[3] = (np.add.outer(np.arange(8) // 2, np.arange(8) // 2) % 2).astype(np.uint8)
    return p


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory) -> Path:
    """A VQ-VAE trained briefly on 160 labelled images (pattern k has label k): 128 train, 16 valid,
    16 test."""
    d = tmp_path_factory.mktemp("vq")
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(4), 40))
    np.savez(d / "patterns.npz", x=_patterns()[labels].astype(bool), y=labels)
    cfg = config_from_dict({
        "model": {"name": "vqvae", "hidden": 16, "res_blocks": 1, "res_channels": 8, "downsample": 1,
                  "codebook_size": K, "code_dim": 4, "kmeans_iters": 5},
        "data": {"name": f"npy:{d / 'patterns.npz'}", "binarize": "none", "valid_size": 16},
        "train": {"epochs": 4, "batch_size": 16, "lr": 3e-3, "log_every": 10},
        "eval": {"batch_size": 16},
    })
    train_run(cfg, d / "vq", device=CPU, progress=False)
    return d / "vq"


@pytest.fixture(scope="module")
def codes_file(vq_run) -> Path:
    assert main(["vq", "extract-codes", str(vq_run), "--device", "cpu"]) == 0
    return vq_run / "codes.npz"


def _train_prior(vq_run: Path, codes: Path, out: Path, *extra: str) -> int:
    return main(["train", SMOKE_PRIOR, "--out", str(out), "--quiet", "--device", "cpu",
                 "--set", f"data.name=codes:{codes}", "--set", f"parent.run={vq_run}", *extra])


@pytest.fixture(scope="module")
def prior_run(vq_run, codes_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prior") / "prior"
    assert _train_prior(vq_run, codes_file, out) == 0
    return out


def _one_line_error(capsys, *parts: str) -> None:
    """stderr ends with one line ``error: ...`` holding ``parts`` (``train`` first says what it starts)."""
    err = capsys.readouterr().err
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("error: ") and err.endswith(last + "\n") and err.count("error") == 1, err
    err = last
    for part in parts:
        assert part in err, (part, err)


# ------------------------------------------------------------------------------------ codes as data
def test_extracted_codes_are_the_vq_codes_of_every_split_with_their_labels(vq_run, codes_file):
    model, cfg, _ = load_run_model(vq_run, CPU)
    bundle = load_dataset(cfg.data)
    with np.load(codes_file) as z:
        stored = {k: z[k] for k in z.files}
    assert int(stored["codebook_size"]) == K and int(stored["n_classes"]) == 4
    assert str(stored["parent_run"]) == str(vq_run.resolve())
    assert str(stored["parent_sha256"]) == checkpoint_sha256(vq_run)
    for split, n in (("train", 128), ("valid", 16), ("test", 16)):
        x, y = bundle.split(split)
        assert stored[f"codes_{split}"].shape == (n, 4, 4)
        np.testing.assert_array_equal(stored[f"codes_{split}"], model.encode_codes(x).numpy())
        np.testing.assert_array_equal(stored[f"labels_{split}"], y.numpy())

    codes = load_dataset(DataConfig(name=f"codes:{codes_file}"))
    assert isinstance(codes, CodeBundle)
    assert codes.spec.kind == "codes" and codes.spec.shape == (4, 4) and codes.spec.n_classes == 4
    assert codes.spec.extra == {"codebook_size": K}
    assert codes.train.dtype == torch.long and torch.equal(codes.train, torch.from_numpy(
        stored["codes_train"].astype(np.int64)))
    assert torch.equal(codes.test_labels, bundle.test_labels)
    assert codes.parent_run == str(vq_run.resolve())
    limited = load_dataset(DataConfig(name=f"codes:{codes_file}", limit=10))
    assert len(limited.train) == 10 and torch.equal(limited.train_labels, codes.train_labels[:10])


def test_code_batches_keep_each_map_with_its_label_and_resume_exactly():
    codes = torch.arange(50).view(50, 1, 1).expand(50, 2, 3).contiguous()
    labels = torch.arange(50) * 10
    batches = CodeBatches(codes, labels, 8, shuffle=True, seed=3)
    assert len(batches) == 7
    epoch = list(batches.epoch(1))
    assert all(isinstance(b, CodeBatch) and torch.equal(b.labels, b.codes[:, 0, 0] * 10) for b in epoch)
    seen = torch.cat([b.codes[:, 0, 0] for b in epoch])
    assert sorted(seen.tolist()) == list(range(50)) and seen.tolist() != list(range(50))
    assert [b.codes.tolist() for b in batches.epoch(1, 4)] == [b.codes.tolist() for b in epoch[4:]]
    assert torch.cat([b.codes[:, 0, 0] for b in batches.epoch(2)]).tolist() != seen.tolist()
    pieces = epoch[0].split(3)
    assert [len(p) for p in pieces] == [3, 3, 2] and torch.equal(pieces[1].labels, epoch[0].labels[3:6])
    unlabelled = next(iter(CodeBatches(codes, None, 8, shuffle=False)))
    assert unlabelled.labels is None and unlabelled.split(5)[1].labels is None


def test_bad_codes_files_are_one_line_errors(tmp_path, capsys):
    good = np.zeros((4, 2, 2), np.int64)
    cases = {
        "missing.npz": (None, "not found; write it with `vaelab vq extract-codes"),
        "range.npz": (dict(codes={"train": good + 5}, labels={}, codebook_size=4),
                      "outside [0, 4) for codebook_size 4"),
        "labels.npz": (dict(codes={"train": good}, labels={"train": np.zeros(3, np.int64)}, codebook_size=4),
                       "labels_train must be non-negative integers of shape (4,)"),
    }
    for name, (content, message) in cases.items():
        if content is not None:
            write_codes(tmp_path / name, **content)
        args = ["train", SMOKE_PRIOR, "--out", str(tmp_path / f"run-{name}"), "--quiet",
                "--set", f"data.name=codes:{tmp_path / name}", "--set", "parent.run="]
        assert main(args) == 2
        _one_line_error(capsys, message)


# ------------------------------------------------------------------------------------ the prior
def test_the_priors_log_prob_is_normalised_over_every_map_for_each_class():
    """sum over all K^(HW) maps of p(c | y) = 1 for every class y: the loss is an exact likelihood."""
    spec = DataSpec((1, 3), "codes", n_classes=2, extra={"codebook_size": 3})
    torch.manual_seed(0)
    model = build_model(PixelCNNPriorConfig(channels=8, layers=2, class_conditional=True), spec).eval()
    maps = torch.tensor(list(itertools.product(range(3), repeat=3))).view(27, 1, 3)
    for y in (0, 1):
        labels = torch.full((27,), y)
        with torch.no_grad():
            lp = model.log_prob(maps, labels)
            out = model.loss(CodeBatch(maps, labels))
        assert float(lp.double().exp().sum()) == pytest.approx(1.0, abs=1e-5)
        torch.testing.assert_close(out.elbo, lp)
        torch.testing.assert_close(out.loss, -lp.mean())
    assert model.exact_likelihood


def test_a_conditional_prior_on_codes_without_labels_is_a_one_line_error(vq_run, tmp_path, capsys):
    unlabelled = tmp_path / "codes.npz"
    write_codes(unlabelled, {"train": np.zeros((8, 4, 4), np.int64)}, {}, codebook_size=K,
                parent_run=str(vq_run.resolve()), parent_sha256=checkpoint_sha256(vq_run))
    assert _train_prior(vq_run, unlabelled, tmp_path / "p") == 2
    _one_line_error(capsys, "model.class_conditional is true but the data have no class labels")


def test_the_prior_trains_as_a_child_run_and_reports_exact_bits_per_code(prior_run, vq_run):
    recorded = json.loads((prior_run / "config.json").read_text())["parent"]
    assert recorded == {"run": str(vq_run.resolve()), "sha256": checkpoint_sha256(vq_run)}
    rows = [json.loads(line) for line in (prior_run / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert train[-1] < train[0] / 3, train
    result = json.loads((prior_run / "eval.json").read_text())
    assert result["method"] == "exact" and "upper bound" not in result["units"]
    assert result["log_px"] == pytest.approx(-result["nats_per_example"])
    assert result["bits_per_code"] == pytest.approx(result["nats_per_example"] / (16 * math.log(2)))
    assert result["bits_per_code"] < 0.5 * math.log2(K)  # the uniform prior's 4 bits per code
    (heatmap,) = [s for s in read_sections(prior_run) if s.name == "bits_per_position"]
    assert heatmap.values.shape == (4, 4) and (prior_run / "report.html").is_file()


def test_a_prior_run_resumes_on_its_recorded_parent(vq_run, codes_file, tmp_path):
    out = tmp_path / "p"
    assert _train_prior(vq_run, codes_file, out, "--no-eval", "--set", "train.max_steps=3") == 0
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-eval", "--device", "cpu",
                 "--set", "train.max_steps=6"]) == 0
    model, cfg, path = load_run_model(out, CPU)
    assert json.loads((path / "state.json").read_text())["step"] == 6
    assert cfg.parent.sha256 == checkpoint_sha256(vq_run)


def test_codes_of_another_run_than_the_parent_are_refused_in_one_line(vq_run, codes_file, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(vq_run, other)
    assert _train_prior(other, codes_file, tmp_path / "p") == 2
    _one_line_error(capsys, f"are the codes of run {vq_run.resolve()}",
                    f"but parent.run is {other.resolve()}")


def test_codes_of_an_older_checkpoint_of_the_parent_are_refused_in_one_line(vq_run, codes_file, tmp_path,
                                                                            capsys):
    with np.load(codes_file) as z:
        stored = {k: z[k] for k in z.files}
    stale = tmp_path / "stale.npz"
    write_codes(stale, {"train": stored["codes_train"]}, {"train": stored["labels_train"]}, codebook_size=K,
                n_classes=4, parent_run=str(vq_run.resolve()), parent_sha256="0" * 64)
    assert _train_prior(vq_run, stale, tmp_path / "p") == 2
    _one_line_error(capsys, "were extracted from checkpoint sha256 000000000000",
                    f"extract the codes again (vaelab vq extract-codes {vq_run.resolve()})")


def test_the_cifar10_preset_is_a_class_conditional_child_of_the_vqvae_preset():
    cfg = load_config(ROOT / "configs" / "pixelcnn_prior_cifar10.toml")
    vq = load_config(ROOT / "configs" / "vqvae_cifar10.toml")
    assert cfg.parent.run == f"runs/{vq.name}" and cfg.data.name == f"codes:runs/{vq.name}/codes.npz"
    spec = DataSpec((8, 8), "codes", n_classes=10, extra={"codebook_size": vq.model.codebook_size})
    model = build_model(cfg.model, spec)
    assert model.n_classes == 10 and model.n_codes == 512 and len(model.network.layers) == 12
    assert model.network.embedding.weight.shape == (512, 64)
    # a position sees the whole 8x8 map before it: 12 layers of 3x3 masks reach 12 columns either side
    assert cfg.model.layers * (cfg.model.kernel // 2) >= 8


# ------------------------------------------------------------------------------------ generation
def _modal_maps(codes_file: Path) -> torch.Tensor:
    """(4, 4, 4): per class, the most frequent code at each position of its training maps."""
    with np.load(codes_file) as z:
        codes = torch.from_numpy(z["codes_train"].astype(np.int64))
        labels = torch.from_numpy(z["labels_train"])
    return torch.stack([codes[labels == c].mode(0).values for c in range(4)])


def test_vq_sample_decodes_prior_codes_of_the_asked_class(vq_run, prior_run, codes_file, tmp_path, capsys):
    png = tmp_path / "samples.png"
    assert main(["vq", "sample", str(vq_run), "--prior", str(prior_run), "-n", "8", "--class", "2",
                 "--png", str(png), "--seed", "1", "--device", "cpu"]) == 0
    assert "8 samples (1, 8, 8)" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (section,) = [s for s in read_sections(vq_run) if s.name == "prior_samples"]
    assert section.images.shape == (8, 1, 8, 8) and "class 2" in section.caption
    assert "Samples with the learned prior" in (vq_run / "report.html").read_text()  # rebuilt at once

    modal = _modal_maps(codes_file)
    assert len({tuple(m.flatten().tolist()) for m in modal}) == 4  # the classes have distinct code maps
    for c in range(4):
        out = sample_with_prior(vq_run, prior_run, CPU, 12, label=c, seed=c)
        assert out.codes.shape == (12, 4, 4) and out.codes.min() >= 0 and out.codes.max() < K
        assert out.images.shape == (12, 1, 8, 8) and torch.equal(out.labels, torch.full((12,), c))
        agreement = (out.codes[:, None] == modal[None]).flatten(2).float().mean((0, 2))  # (4,) per class
        assert int(agreement.argmax()) == c and agreement[c] > 0.7, agreement
    mixed = sample_with_prior(vq_run, prior_run, CPU, 6, seed=0)
    assert mixed.labels.tolist() == [0, 1, 2, 3, 0, 1]


def test_wrong_prior_and_parent_pairings_are_one_line_errors(vq_run, prior_run, tmp_path, capsys):
    other = tmp_path / "other-vq"
    shutil.copytree(vq_run, other)
    assert main(["vq", "sample", str(other), "--prior", str(prior_run), "--device", "cpu"]) == 2
    _one_line_error(capsys, f"was trained on the codes of {vq_run.resolve()}, not of {other}")
    assert main(["vq", "eval", str(other), "--prior", str(prior_run), "--device", "cpu"]) == 2
    _one_line_error(capsys, "give the VQ-VAE run the prior was trained on")
    assert main(["vq", "sample", str(vq_run), "--prior", str(vq_run), "--device", "cpu"]) == 2
    _one_line_error(capsys, "holds model 'vqvae', not a prior over codes")
    args = ["vq", "sample", str(vq_run), "--prior", str(prior_run), "--device", "cpu"]
    assert main([*args, "--class", "4"]) == 2
    _one_line_error(capsys, "--class must be between 0 and 3")
    assert main(["vq", "extract-codes", str(prior_run), "--device", "cpu"]) == 2
    _one_line_error(capsys, "has no discrete codes; give a VQ-VAE run")


def test_vq_eval_the_learned_prior_tightens_the_bound(vq_run, prior_run, codes_file, capsys):
    assert main(["vq", "eval", str(vq_run), "--prior", str(prior_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "16 test examples, -log p(x | y) bounds:" in out
    assert "uniform prior" in out and "learned prior" in out
    (table,) = [s for s in read_sections(vq_run) if s.name == "prior_bound"]  # and into the report
    assert [r[0].split(":")[0] for r in table.rows] == ["uniform over the K^(H'W') code maps", "learned"]
    assert "Bound with the learned prior" in (vq_run / "report.html").read_text()

    b = prior_bound(vq_run, prior_run, CPU)
    assert b.split == "test" and b.n_examples == 16 and b.conditional
    # uniform: -log p(x|z_q) + H'W' log K; learned: -log p(x|z_q) - log p(z_q | y), z_q the test codes
    assert b.uniform.nats_per_example == pytest.approx(b.reconstruction + 16 * math.log(K), rel=1e-6)
    prior, _, _ = load_run_model(prior_run, CPU)
    with np.load(codes_file) as z:
        codes, labels = torch.from_numpy(z["codes_test"].astype(np.int64)), torch.from_numpy(z["labels_test"])
    with torch.no_grad():
        prior_nats = -prior.log_prob(codes, labels).double().mean().item()
    assert b.learned.nats_per_example == pytest.approx(b.reconstruction + prior_nats, rel=1e-5)
    assert b.uniform.value == pytest.approx(b.uniform.nats_per_example / (64 * math.log(2)))
    assert b.learned.value < b.uniform.value - 0.25  # at least 16 bits per image saved of the 64
    assert [float(r[1]) for r in table.rows] == pytest.approx([b.uniform.value, b.learned.value], abs=1e-4)
    vq_eval = evaluate_run(vq_run, CPU)
    assert b.uniform.value == pytest.approx(vq_eval["bits_per_dim"], rel=1e-5)  # the VQ run's own bound
