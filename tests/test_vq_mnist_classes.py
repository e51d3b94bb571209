"""benchmarks/vq_mnist_classes.py end to end at a tiny budget (the smoke VQ-VAE on 400 MNIST digits,
the smoke class-conditional prior over its codes, a classifier trained for one epoch on 300 images),
its agreement arithmetic against a hand-made case, and the MNIST presets of the two stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vaelab.cli import main
from vaelab.config import load_config
from vaelab.models import build_model
from vaelab.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vq_mnist_classes(benchmark_script):
    return benchmark_script("vq_mnist_classes")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

def test_agreement_counts_requested_against_predicted(vq_mnist_classes):
    requested = torch.tensor([0, 0, 1, 1, 2, 2, 2, 9])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0, 2, 9])
    got = vq_mnist_classes.agreement(requested, predicted)
    assert got["agreement"] == pytest.approx(6 / 8)
    assert got["per_class"][:3] == [0.5, 1.0, pytest.approx(2 / 3, abs=1e-4)] and got["per_class"][9] == 1.0
    assert got["per_class"][3] == 0.0  # no sample asked for class 3: 0, not a division by zero
    confusion = torch.tensor(got["confusion"])
    assert confusion.sum() == 8 and confusion[0, 1] == 1 and confusion[2, 0] == 1 and confusion.trace() == 6


@pytest.mark.datasets("mnist")
def test_score_classifies_prior_samples_of_each_class(vq_mnist_classes, data_root, tmp_path, capsys):
    vq, prior, clf = tmp_path / "vq", tmp_path / "prior", tmp_path / "clf.pt"
    assert main(["train", str(ROOT / "configs" / "smoke_vqvae_mnist.toml"), "--out", str(vq), "--quiet",
                 "--no-eval", "--device", "cpu"]) == 0
    assert main(["vq", "extract-codes", str(vq), "--device", "cpu"]) == 0
    assert main(["train", str(ROOT / "configs" / "smoke_pixelcnn_prior.toml"), "--out", str(prior), "--quiet",
                 "--no-eval", "--device", "cpu", "--set", f"data.name=codes:{vq / 'codes.npz'}",
                 "--set", f"parent.run={vq}", "--set", "train.epochs=1"]) == 0
    capsys.readouterr()

    assert vq_mnist_classes.main(["train-classifier", "--out", str(clf), "--epochs", "1", "--limit", "300",
                                  "--test-limit", "200"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["train_examples"] == 300 and trained["test_examples"] == 200
    assert 0.0 <= trained["test_accuracy"] <= 1.0

    out, png = tmp_path / "score.json", tmp_path / "grid.png"
    args = ["score", "--classifier", str(clf), "--vq", str(vq), "--prior", str(prior), "-n", "40",
            "--seed", "3", "--json", str(out), "--png", str(png), "--png-columns", "3"]
    assert vq_mnist_classes.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads(out.read_text())
    assert printed == result
    assert result["n"] == 40 and 0.0 <= result["agreement"] <= 1.0
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 40
    assert confusion.sum(1).tolist() == [4] * 10  # sample i was drawn for class i % 10
    assert result["agreement"] == pytest.approx(confusion.trace().item() / 40)
    assert len(result["per_class"]) == 10 and all(0.0 <= a <= 1.0 for a in result["per_class"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same seed draws the same samples, so the same numbers
    assert vq_mnist_classes.main(args[:-4]) == 0
    assert json.loads(capsys.readouterr().out)["confusion"] == result["confusion"]


def test_score_refuses_a_missing_classifier_in_one_line(vq_mnist_classes, tmp_path, capsys):
    assert vq_mnist_classes.main(["score", "--classifier", str(tmp_path / "none.pt"), "--vq", "a",
                                  "--prior", "b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no classifier at") and err.count("\n") == 1


def test_the_mnist_presets_are_a_vqvae_and_its_class_conditional_prior():
    vq = load_config(ROOT / "configs" / "vqvae_mnist.toml")
    prior = load_config(ROOT / "configs" / "pixelcnn_prior_mnist.toml")
    assert vq.model.name == "vqvae" and vq.data.name == "mnist" and vq.model.likelihood == "bernoulli"
    assert vq.model.quantizer == "ema" and vq.model.kmeans_iters > 0 and vq.model.restart_after > 0
    assert vq.train.threads == 1 and 0 < vq.train.time_limit_min <= 15
    model = build_model(vq.model, DataSpec((1, 28, 28), "images", values="binary"))
    assert model.code_shape == (7, 7)

    assert prior.parent.run == f"runs/{vq.name}" and prior.data.name == f"codes:runs/{vq.name}/codes.npz"
    assert prior.train.threads == 1 and 0 < prior.train.time_limit_min <= 15
    spec = DataSpec((7, 7), "codes", n_classes=10, extra={"codebook_size": vq.model.codebook_size})
    p = build_model(prior.model, spec)
    assert p.n_classes == 10 and p.n_codes == vq.model.codebook_size
    # a position sees the whole 7x7 map before it: each 3x3-masked layer reaches one column further
    assert prior.model.layers * (prior.model.kernel // 2) >= 7
