"""The image VQ-VAE (van den Oord et al. 2017): shapes through encoder, codes and decoder (28x28x1,
32x32x3, sides that need padding), codes decoded = the loss path's reconstruction, the loss's terms
against the equations recomputed by hand, where the gradients go, the whole-set codebook figures,
training through the pipeline on four patterns, the presets, and one-line config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal

from vaelab.cli import main
from vaelab.config import config_from_dict, read_toml
from vaelab.errors import VaelabError
from vaelab.experiment import evaluate_run, load_run_model, prepare, train_run
from vaelab.models import build_model
from vaelab.models.vqvae import VQVAE, VQVAEConfig
from vaelab.quantizers import perplexity
from vaelab.spec import DataSpec

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
TINY = dict(hidden=8, res_blocks=1, res_channels=4, codebook_size=16, code_dim=4)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

def _model(shape=(1, 28, 28), seed=0, **kw) -> VQVAE:
    cfg = {**TINY, **kw}
    values = "binary" if cfg.get("likelihood", "bernoulli") == "bernoulli" else "continuous"
    torch.manual_seed(seed)
    return build_model(VQVAEConfig(**cfg), DataSpec(shape, "images", values=values))


def _images(shape, n=6, binary=True, seed=1):
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))
    return (x < 0.4).float() if binary else (x * 255).round() / 255  # binary, or 8-bit levels


# ------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("shape,downsample,likelihood,code_shape", [
    ((1, 28, 28), 2, "bernoulli", (7, 7)),  # MNIST: 28 -> 14 -> 7 -> 14 -> 28, no padding
    ((3, 32, 32), 2, "gaussian", (8, 8)),  # CIFAR-10: 32 -> 8
    ((1, 28, 28), 3, "bernoulli", (4, 4)),  # 28 is padded to 32 -> 4, the output cropped to 28
    ((3, 6, 5), 1, "gaussian", (3, 3)),  # 5 is padded to 6
    ((3, 32, 32), 2, "discretized_logistic", (8, 8)),  # two outputs (mean, log-scale) per pixel
])
def test_shapes_through_encoder_codes_and_decoder(shape, downsample, likelihood, code_shape):
    model = _model(shape, downsample=downsample, likelihood=likelihood).eval()
    x = _images(shape, binary=likelihood == "bernoulli")
    b = len(x)
    assert model.code_shape == code_shape and model.n_code_positions == code_shape[0] * code_shape[1]
    z_e = model.encode_vectors(x)
    assert z_e.shape == (b, 4, *code_shape)
    codes = model.encode_codes(x)
    assert codes.shape == (b, *code_shape) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < model.codebook_size == 16
    assert model.quantizer.lookup(codes).shape == z_e.shape
    per_pixel = 2 if likelihood == "discretized_logistic" else 1
    assert model.decoder_output(z_e).shape == (b, per_pixel * shape[0], *shape[1:])
    assert model.decode_codes(codes).shape == (b, *shape)
    assert model.decode_codes(codes).shape == (b, *shape) and model.reconstruct(x).shape == x.shape
    px = model.decode(z_e)
    assert px.batch_shape == (b,) and px.event_shape == shape and px.log_prob(x).shape == (b,)


def test_padding_is_zeros_at_the_bottom_and_right_and_the_crop_keeps_the_top_left():
    """A 6x5 image with downsample 1 is encoded as the 6x6 image with a zero last column; the
    decoder's 6x6 output is cropped to its first 5 columns."""
    model = _model((1, 6, 5), downsample=1).eval()
    x = _images((1, 6, 5))
    padded = torch.cat([x, torch.zeros(len(x), 1, 6, 1)], -1)
    torch.testing.assert_close(model.encode_vectors(x), model.encoder(padded), rtol=0, atol=0)
    z = model.encode_vectors(x)
    torch.testing.assert_close(model.decoder_output(z), model.decoder(z)[..., :5], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ codes
@pytest.mark.parametrize("quantizer", ["ema", "vq"])
def test_decoded_codes_are_the_loss_paths_reconstruction_mean_in_eval_mode(quantizer):
    """decode_codes(encode_codes(x)) = E[x | z_q] with z_q from the quantizer's forward (the loss's
    path), exactly; the codes are the forward's; nothing in the state dict moves."""
    shape = (3, 32, 32)
    model = _model(shape, quantizer=quantizer, likelihood="gaussian", kmeans_iters=3)
    x = _images(shape, binary=False)
    model.loss(x)  # a training forward spreads the codebook over these encoder outputs (k-means)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        q = model.quantize(x)
        mean = model.decode_mean(q.z_q)
    codes = model.encode_codes(x)
    assert torch.equal(codes, q.codes)
    assert len(codes.unique()) > 1  # several codes in use, so a wrong lookup would show
    assert torch.equal(model.decode_codes(codes), mean)
    assert torch.equal(model.reconstruct(x), mean)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_encoding_codes_in_training_mode_changes_no_state():
    """encode_codes is a pure nearest-code search: it neither moves the EMA codebook nor initialises it."""
    model = _model(kmeans_iters=2, restart_after=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.encode_codes(_images((1, 28, 28)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.loss(_images((1, 28, 28)))  # the training forward does
    assert bool(model.quantizer.initialized) and not torch.equal(before["quantizer.codebook"],
                                                                 model.quantizer.codebook)


# ------------------------------------------------------------------------------------------ loss
@pytest.mark.parametrize("quantizer,likelihood", [("ema", "bernoulli"), ("vq", "gaussian"),
                                                 ("ema", "discretized_logistic")])
def test_the_loss_terms_are_the_equations_and_add_up(quantizer, likelihood):
    """Eq. 3 recomputed from the pieces: log p(x|z_q) through torch.distributions, commitment
    beta ||z_e - e||^2 and codebook ||z_e - e||^2 summed per example, KL = H'W' log K, elbo =
    reconstruction - KL, loss = -mean(reconstruction) + mean(commitment) (+ mean(codebook))."""
    shape = (1, 28, 28) if likelihood == "bernoulli" else (3, 32, 32)
    model = _model(shape, quantizer=quantizer, likelihood=likelihood, beta=0.4).eval()
    x = _images(shape, binary=likelihood == "bernoulli")
    with torch.no_grad():
        out = model.loss(x)
        z_e = model.encode_vectors(x)
        e = model.quantizer.lookup(model.encode_codes(x))
        params = model.decoder(e)
    if likelihood == "bernoulli":
        px = Independent(Bernoulli(logits=params), 3)
    elif likelihood == "discretized_logistic":  # means, then raw log-scales bounded softly at -9
        from vaelab.distributions import DiscretizedLogistic

        loc, raw = params.unflatten(1, (2, 3)).unbind(1)
        px = Independent(DiscretizedLogistic(loc, -9.0 + torch.nn.functional.softplus(raw + 9.0)), 3)
    else:  # learned per-channel variance, starting at 0.1^2
        logvar = model.likelihood.head.min_logvar + torch.nn.functional.softplus(
            model.likelihood.raw_logvar - model.likelihood.head.min_logvar)
        torch.testing.assert_close(logvar.detach(), torch.full((3,), 2 * math.log(0.1)))
        px = Independent(Normal(params, logvar.detach().exp().sqrt()[:, None, None]), 3)
    torch.testing.assert_close(out.reconstruction, px.log_prob(x))
    sq = (z_e - e).pow(2).sum((1, 2, 3))
    torch.testing.assert_close(out.commitment, 0.4 * sq)
    if quantizer == "vq":
        torch.testing.assert_close(out.codebook, sq)
    else:
        assert out.codebook is None
    kl = model.n_code_positions * math.log(16)
    torch.testing.assert_close(out.kl, torch.full((len(x),), kl))
    torch.testing.assert_close(out.elbo, out.reconstruction - kl)
    expected = -out.reconstruction.mean() + out.commitment.mean()
    if quantizer == "vq":
        expected = expected + out.codebook.mean()
    torch.testing.assert_close(out.loss, expected)
    assert set(out.extras) == {"perplexity", "usage", "dead_codes"}
    counts = torch.bincount(model.encode_codes(x).flatten(), minlength=16)
    torch.testing.assert_close(out.extras["perplexity"], perplexity(counts))
    torch.testing.assert_close(out.extras["usage"], (counts > 0).float().mean())


def test_gradients_reach_encoder_decoder_and_the_vq_codebook():
    """The reconstruction term reaches the encoder only through the straight-through estimator (and
    not the codebook); the codebook's gradient is that of eq. 3's second term,
    d/de_k mean_b sum_n ||sg[z_n] - e_k||^2 = 2/B sum_{n: code k} (e_k - z_n)."""
    model = _model(quantizer="vq")
    x = _images((1, 28, 28))
    out = model.loss(x)
    (-out.reconstruction.mean()).backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert model.quantizer.codebook.grad is None or not model.quantizer.codebook.grad.any()
    model.zero_grad()
    out.codebook.mean().backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.encoder.parameters())
    with torch.no_grad():
        z = model.encode_vectors(x).movedim(1, -1).reshape(-1, 4)
        codes = model.encode_codes(x).flatten()
        cb = model.quantizer.codebook
        want = torch.zeros_like(cb).index_add_(0, codes, 2 * (cb[codes] - z)) / len(x)
    torch.testing.assert_close(model.quantizer.codebook.grad, want)
    model.zero_grad()
    out.commitment.mean().backward()  # beta ||z_e - sg[e]||^2: the encoder, not the codebook
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.quantizer.codebook.grad is None or not model.quantizer.codebook.grad.any()


def test_the_ema_codebook_is_a_buffer_learned_without_gradients():
    model = _model(quantizer="ema")
    assert "quantizer.codebook" not in dict(model.named_parameters())
    assert "quantizer.codebook" in model.state_dict()
    model.loss(_images((1, 28, 28))).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


# ------------------------------------------------------------------------------------------ usage
def test_validation_metrics_count_codes_over_the_whole_set_not_per_batch():
    """Two batches with different code frequencies: the whole-set perplexity and usage are those of
    the summed counts (CodeUsage), not the mean of the batches' figures."""
    model = _model(codebook_size=4, kmeans_iters=5)
    g = torch.Generator().manual_seed(2)
    sparse, dense = (torch.rand(3, 1, 28, 28, generator=g) < 0.1).float(), torch.ones(5, 1, 28, 28)
    model.loss(torch.cat([sparse, dense]))  # k-means puts codes where these images' vectors are
    model.eval()
    per_batch = [torch.bincount(model.encode_codes(b).flatten(), minlength=4) for b in (sparse, dense)]
    counts = per_batch[0] + per_batch[1]
    m = model.validation_metrics([sparse, dense])
    assert m["codebook_perplexity"] == pytest.approx(float(perplexity(counts)), rel=1e-6)
    assert m["codebook_usage"] == float((counts > 0).float().mean())
    batch_mean = sum(float(perplexity(c)) for c in per_batch) / 2
    assert abs(m["codebook_perplexity"] - batch_mean) > 0.05  # what a per-batch average would say
    one = model.validation_metrics([sparse])
    assert one["codebook_perplexity"] == pytest.approx(float(perplexity(per_batch[0])), rel=1e-6)


def test_report_has_reconstructions_and_the_code_frequencies_and_no_samples():
    from vaelab.models.base import ReportInputs, Sampling

    model = _model().eval()
    x = _images((1, 28, 28), n=20)
    sections = {s.name: s for s in model.report_sections(ReportInputs([x[:12], x[12:]], None, n_samples=4))}
    assert set(sections) == {"reconstructions", "codebook_usage"} and not isinstance(model, Sampling)
    assert sections["reconstructions"].reconstruction.shape == (16, 1, 28, 28)
    freq = sections["codebook_usage"].y[0]
    counts = torch.bincount(model.encode_codes(x).flatten(), minlength=16).double()
    np.testing.assert_allclose(freq, (counts / counts.sum()).sort(descending=True).values.numpy())


# ------------------------------------------------------------------------------------------ pipeline
def _patterns() -> np.ndarray:
    """Four distinct binary 8x8 patterns (top half, left half, diagonal, checkerboard of 2x2 cells)."""
    p = np.zeros((4, 8, 8), np.uint8)
    p[0, :4] = 1
    p[1, :, :4] = 1
    p[2] = np.eye(8, dtype=np.uint8) | np.eye(8, k=1, dtype=np.uint8)
    p[3] = (np.add.outer(np.arange(8) // 2, np.arange(8) // 2) % 2).astype(np.uint8)
    return p


def test_training_through_the_pipeline_reconstructs_four_patterns_and_logs_whole_set_usage(tmp_path):
    """A tiny VQ-VAE trained for about 300 steps on four patterns: the reconstruction NLL falls
    below a twentieth of the untrained model's, the patterns are reconstructed pixel for pixel;
    every validation row carries the whole-set perplexity and usage (those of the best checkpoint
    recomputed from the validation set); evaluation reports bits/dim from the uniform-prior bound."""
    x = np.repeat(_patterns(), 40, axis=0).astype(bool)  # 160 images (bool: 0/1 values, not grey levels)
    path = tmp_path / "patterns.npy"
    np.save(path, x)
    model_cfg = {"name": "vqvae", **TINY, "hidden": 16, "res_channels": 8, "code_dim": 4, "kmeans_iters": 5}
    cfg = config_from_dict({"model": model_cfg, "data": {"name": f"npy:{path}", "binarize": "none",
                                                         "valid_size": 16},
                            "train": {"epochs": 27, "batch_size": 12, "lr": 3e-3, "log_every": 20},
                            "eval": {"batch_size": 8, "n_samples": 4}})
    run = tmp_path / "run"
    trainer, prep = train_run(cfg, run, device=CPU, progress=False)
    assert trainer.step >= 280
    pats = torch.from_numpy(_patterns()).float()[:, None]
    torch.manual_seed(cfg.train.seed)
    untrained = build_model(cfg.model, prep.spec).eval()
    model, _, _ = load_run_model(run, CPU)
    with torch.no_grad():
        before = -untrained.loss(pats).reconstruction.mean().item()
        after = -model.loss(pats).reconstruction.mean().item()
    assert after < min(before / 20, 1.0), (before, after)
    assert torch.equal((model.reconstruct(pats) > 0.5).float(), pats)

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in rows if r["split"] == "valid"]
    assert valid and all("codebook_perplexity" in r and "codebook_usage" in r for r in valid)
    assert all(1.0 <= r["codebook_perplexity"] <= 16 * r["codebook_usage"] + 1e-6 for r in valid)
    best = min(valid, key=lambda r: r["loss"])
    whole = model.validation_metrics(prepare(cfg, CPU).valid.epoch(0))
    assert best["codebook_perplexity"] == pytest.approx(whole["codebook_perplexity"], rel=1e-5)
    assert best["codebook_usage"] == pytest.approx(whole["codebook_usage"])

    result = evaluate_run(run, CPU)
    nats = -result["elbo"]  # -log p(x|z_q) + H'W' log K, per example
    assert nats == pytest.approx(-result["reconstruction"] + 4 * math.log(16), rel=1e-6)
    assert result["bits_per_dim"] == pytest.approx(nats / (64 * math.log(2)), rel=1e-6)
    assert "upper bound" in result["units"]


def test_presets_are_valid_run_configs_for_mnist_and_cifar10():
    specs = {"mnist": DataSpec((1, 28, 28), "images", values="binary"),
             "cifar10": DataSpec((3, 32, 32), "images", values="continuous")}
    for name, data in (("smoke_vqvae_mnist", "mnist"), ("vqvae_cifar10", "cifar10")):
        cfg = config_from_dict(read_toml(ROOT / "configs" / f"{name}.toml"))
        assert cfg.model.name == "vqvae" and cfg.data.name == data
        model = build_model(cfg.model, specs[data])
        assert model.code_shape == ((7, 7) if data == "mnist" else (8, 8))
    # CIFAR-10: the 8-bit colour levels, each a probability: bits/dim comparable with the paper's
    assert cfg.data.binarize == "none" and cfg.model.likelihood == "discretized_logistic"


@pytest.mark.datasets("mnist")
def test_the_smoke_preset_trains_from_the_command_line(data_root, tmp_path):
    run = tmp_path / "smoke"
    args = ["train", str(ROOT / "configs" / "smoke_vqvae_mnist.toml"), "--out", str(run), "--quiet",
            "--no-eval", "--set", "train.max_steps=3", "--set", "train.threads=1"]
    assert main(args) == 0
    model, _, _ = load_run_model(run, CPU)
    assert isinstance(model, VQVAE) and model.spec.shape == (1, 28, 28)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("key,value,message", [
    ("codebook_size", 1, "model.codebook_size must be >= 2 codes, got 1"),
    ("downsample", 0, "model.downsample must be a positive integer, got 0"),
    ("hidden", 0, "model.hidden must be a positive integer"),
    ("code_dim", -2, "model.code_dim must be a positive integer"),
    ("res_blocks", -1, r"model.res_blocks must be >= 0 \(0 turns it off\)"),
    ("kmeans_iters", -1, r"model.kmeans_iters must be >= 0 \(0 turns it off\)"),
    ("restart_after", -5, r"model.restart_after must be >= 0"),
    ("beta", -0.1, r"model.beta must be >= 0 \(0.25 in the paper\)"),
    ("ema_decay", 1.0, r"model.ema_decay must be in \[0, 1\)"),
    ("quantizer", "gumbel", "model.quantizer must be one of 'ema', 'vq'; got 'gumbel'"),
    ("likelihood", "categorical",
     "model.likelihood must be one of 'bernoulli', 'gaussian', 'discretized_logistic'"),
    ("codebook_size", 2.5, "model.codebook_size must be an integer, got 2.5"),
])
def test_bad_config_values_are_one_line_errors_naming_the_key(key, value, message):
    with pytest.raises(VaelabError, match=message) as err:
        config_from_dict({"model": {"name": "vqvae", key: value}})
    assert "\n" not in str(err.value)


def test_a_config_built_by_hand_is_validated_and_vectors_and_grey_levels_are_refused():
    with pytest.raises(VaelabError, match="model.quantizer must be one of 'ema', 'vq'; got 'gumbel'"):
        build_model(VQVAEConfig(quantizer="gumbel"), DataSpec((1, 8, 8), "images"))
    with pytest.raises(VaelabError, match=r"takes images \(C, H, W\).*shape \(5,\); give image data") as err:
        build_model(VQVAEConfig(), DataSpec((5,), "images"))
    assert "\n" not in str(err.value)
    with pytest.raises(VaelabError, match="the Bernoulli likelihood needs binary data"):
        _model((1, 8, 8), downsample=1).check_data(torch.full((2, 1, 8, 8), 0.5))
    _model((1, 8, 8), downsample=1, likelihood="gaussian").check_data(torch.full((2, 1, 8, 8), 0.5))


def test_under_bf16_autocast_the_encoder_runs_in_bf16_and_the_quantizer_in_float32():
    model = _model()
    seen = {}
    model.encoder.register_forward_hook(lambda m, i, o: seen.__setitem__("encoder", o.dtype))
    model.quantizer.register_forward_hook(lambda m, i, o: seen.__setitem__("quantizer", (i[0].dtype,
                                                                                          o.z_q.dtype)))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_images((1, 28, 28)))
    assert seen == {"encoder": torch.bfloat16, "quantizer": (torch.float32, torch.float32)}
    assert out.loss.dtype == torch.float32 and out.elbo.dtype == torch.float32
