"""The lecture's two pictures of the VAE, each one command.

``vaelab reproduce vae-gradient-variance``: why the reparameterisation trick (Kingma & Welling 2014,
sec. 2.2-2.4). A VAE trained on MNIST; on one fixed minibatch, the gradient of the ELBO with respect
to the encoder's parameters is estimated again and again by the pathwise estimator, the score
function (REINFORCE) without a baseline and with the leave-one-out baseline, each from S draws per
example; the variance of each (the trace of the covariance over the repetitions) is tabled and
drawn against S, per layer. The decoder's gradient is pathwise under every estimator, so only the
encoder is compared (``vaelab.evaluation.gradients``).

``vaelab reproduce vae-ring``: a generative model is a fixed map of noise. z ~ N(0, I) in 2-D
through g(z) = z/10 + z/||z|| gives a ring (the ``ring`` dataset); a VAE with a 2-D latent and a
Gaussian decoder (learned variance) trained on it should give it back: the data, the model's
samples x ~ p(x|z) and the learned latent map side by side, and ||x|| of data and samples in a table.

Both train their model through the ordinary pipeline, as a child run under ``runs/`` of the
reproduction's folder (config, checkpoints, evaluation and its own report).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from vaelab.config import DataConfig, EvalConfig, RunConfig, TrainConfig
from vaelab.data import DataBundle, load_dataset
from vaelab.data.ring import ring_log_prob, ring_radius_moments
from vaelab.evaluation.gradients import ESTIMATORS, gradient_variance
from vaelab.experiment import evaluate_run, load_run_model, train_run
from vaelab.models.base import LatentVariableModel, Model
from vaelab.models.vae import VAEConfig
from vaelab.report import plots
from vaelab.report.build import build_report
from vaelab.report.html import figure_png
from vaelab.reproduce import Context, reproduction
from vaelab.sections import ImageFileSection, LinesSection, MetricsSection, Section, TableSection

__all__ = ["SAMPLE_SIZES", "gradient_variance_study", "ring_study"]

SAMPLE_SIZES = (1, 2, 5, 10, 20, 50, 100)
"""S, the draws per example of one gradient estimate."""


def _child(ctx: Context, name: str, cfg: RunConfig, *, k: int, max_examples: int = 0) -> tuple[Model, dict]:
    """Train ``cfg`` as the child run ``name``, evaluate it (IS log p(x) with K = k), write its
    report; returns the trained model (best checkpoint) and its evaluation."""
    run = ctx.child(name)
    train_run(cfg, run, device=ctx.device, progress=ctx.progress,
              command=f"vaelab reproduce (child run {name} of {ctx.out.name})")
    result = evaluate_run(run, ctx.device, k=k, max_examples=max_examples or None, progress=ctx.progress)
    build_report(run)
    model, _, _ = load_run_model(run, ctx.device)
    return model, result


# --------------------------------------------------------------------------- the gradient variance

_GRADIENT_FULL = ("a VAE (784-500-20 tanh encoder, Bernoulli decoder) trained 10 epochs on 59,000 "
                  "dynamically binarized MNIST images, then R = 100 repetitions of each estimator at "
                  "S = 1 ... 100 on a fixed minibatch of 100 test images; 3.5 minutes here with --threads 1")


@reproduction("vae-gradient-variance",
              "The reparameterisation trick, measured: variance of the ELBO's encoder gradient, pathwise "
              "vs score function, against samples S (Kingma & Welling 2014, sec. 2.2-2.4)", _GRADIENT_FULL)
def gradient_variance_study(ctx: Context) -> list[Section]:
    cfg = RunConfig(
        model=VAEConfig(latent_dim=20, hidden=[500], activation="tanh", likelihood="bernoulli"),
        data=DataConfig(name="mnist", binarize="dynamic", valid_size=ctx.scaled(1000, 100),
                        limit=ctx.scaled(59_000, 100)),
        train=TrainConfig(epochs=10, batch_size=100, lr=1e-3, seed=ctx.seed, log_every=100),
        eval=EvalConfig(is_samples=ctx.scaled(1000, 10), max_examples=ctx.scaled(1000, 100), n_samples=64),
        name="vae-mnist",
    )
    model, evaluation = _child(ctx, "vae-mnist", cfg, k=cfg.eval.is_samples,
                               max_examples=cfg.eval.max_examples)
    assert isinstance(model, LatentVariableModel)
    batch = ctx.scaled_log(100, 8)
    repetitions = ctx.scaled_log(100, 3)
    bundle = load_dataset(cfg.data)
    assert isinstance(bundle, DataBundle)
    x = bundle.eval_images("test")[:batch].to(ctx.device)  # binarized once, with the fixed seed
    params = dict(model.encoder.named_parameters())
    torch.manual_seed(ctx.seed)
    study = gradient_variance(model, x, params, SAMPLE_SIZES, repetitions, analytic_kl=True,
                              progress=ctx.progress)
    return _gradient_sections(study, batch, evaluation)


def _layer(name: str) -> str:
    index, kind = name.split(".")  # nn.Sequential's "0.weight": Linear layers at even indices
    return f"layer {int(index) // 2 + 1} {kind}"


def _gradient_sections(study, batch: int, evaluation: dict) -> list[Section]:
    sizes = study.sample_sizes
    norm2 = study.gradient_sq_norm()  # (P,)
    keys = list(ESTIMATORS)
    total = {k: study.variance(k).sum(1) for k in keys}  # (K,)
    layers = [_layer(n) for n in study.names]
    rows, layer_rows = [], []
    for k in keys:
        var = study.variance(k)
        rel = study.relative_variance(k)
        for i, s in enumerate(sizes):
            v = float(total[k][i])
            rows.append([ESTIMATORS[k], s, _num(v), _num(v / float(norm2.sum())), _num(v * s)])
            cells = [_num(float(c)) for j in range(len(layers)) for c in (var[i, j], rel[i, j])]
            layer_rows.append([ESTIMATORS[k], s, *cells])
    setting = (f"Encoder of the trained VAE (test ELBO {evaluation['elbo']:.1f} nats, IS log p(x) "
               f"{evaluation['log_px']:.1f} nats on {evaluation['n_examples']} test images); one fixed "
               f"minibatch of {batch} test images (binarized once); R = {study.repetitions} repetitions of "
               "each estimate. "
               "Variance: trace of the covariance of the estimate over the repetitions. Relative: over "
               "||E grad||^2, taken from the pathwise estimator at the largest S. The ELBO's KL term is "
               "differentiated in closed form under every estimator (K&W eq. 10); they differ on "
               "E_q[log p(x|z)]. Leave-one-out baseline: the mean of the other S - 1 draws' log p(x|z) "
               "(unbiased, undefined at S = 1).")
    x = np.asarray(sizes, dtype=float)
    y = np.stack([total[k].numpy() for k in keys])
    ref = float(total["pathwise"][0]) / x  # the 1/S line through the pathwise estimator at S = 1
    return [
        TableSection(
            name="gradient_variance", title="Variance of the encoder's ELBO gradient",
            caption=setting + " Variance x S stays constant when the variance falls as 1/S.",
            header=["Estimator", "S", "Variance", "Relative variance", "Variance x S"], rows=rows),
        LinesSection(
            name="gradient_variance_plot", title="Gradient variance against samples per estimate",
            caption="Total variance of each estimator of the encoder's gradient against S, log-log; the "
                    "'1/S reference' line falls as 1/S from the pathwise estimator at S = 1.",
            x=x, y=np.vstack([y, ref]), labels=[ESTIMATORS[k] for k in keys] + ["1/S reference"],
            xlabel="samples per estimate S", ylabel="tr Cov of the gradient estimate", logx=True, logy=True),
        TableSection(
            name="gradient_variance_layers", title="Per layer",
            caption="Variance and relative variance of each encoder parameter's gradient estimate. "
                    "||E grad||^2 per parameter: " + ", ".join(f"{lay} {_num(float(v))}"
                                                                for lay, v in zip(layers, norm2)) + ".",
            header=["Estimator", "S", *(f"{lay} {what}" for lay in layers for what in ("var", "rel."))],
            rows=layer_rows),
    ]


def _num(v: float) -> float | str:
    """A cell: 4 significant digits, '—' where not measured."""
    return "—" if not math.isfinite(v) else float(f"{v:.4g}")


# --------------------------------------------------------------------------------------- the ring

_RING_FULL = ("a VAE (2-128-128-4 tanh encoder and decoder, 2-D latent, Gaussian decoder with learned "
              "variance) trained 200 epochs on the 10,000 training points of the ring, KL warm-up over "
              "5,000 steps, evaluated with K = 1000 on the 1,000 test points; 2.5 minutes here with "
              "--threads 1")

_BAND = (0.005, 0.995)  # the central 99% of the ring's radius distribution


@reproduction("vae-ring",
              "Sampling a fixed generative model: the ring g(z) = z/10 + z/||z|| and a VAE trained on it "
              "(data, samples x ~ p(x|z), the learned latent map)", _RING_FULL)
def ring_study(ctx: Context) -> list[Section]:
    cfg = RunConfig(
        model=VAEConfig(latent_dim=2, hidden=[128, 128], activation="tanh", likelihood="gaussian",
                        kl_warmup_steps=ctx.scaled(5000, 1)),
        data=DataConfig(name="ring", binarize="none"),
        train=TrainConfig(epochs=ctx.scaled(200, 1), batch_size=100, lr=2e-3, seed=ctx.seed, log_every=500),
        eval=EvalConfig(is_samples=ctx.scaled(1000, 10), n_samples=64),
        name="vae-ring",
    )
    model, evaluation = _child(ctx, "vae-ring", cfg, k=cfg.eval.is_samples)
    assert isinstance(model, LatentVariableModel)
    bundle = load_dataset(cfg.data)
    assert isinstance(bundle, DataBundle) and bundle.test is not None
    data = bundle.test.flatten(1)  # (N, 2)
    torch.manual_seed(ctx.seed)
    with torch.no_grad():
        z = model.prior().sample((len(data),)).to(ctx.device)
        px = model.decode(z)
        samples, means = px.sample().cpu(), px.mean.cpu()
        codes = model.posterior_mean(data.to(ctx.device)).cpu()
        grid = torch.linspace(-3, 3, 41)
        zg = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
        grid_means = model.decode(zg.to(ctx.device)).mean.cpu()
    figure = _ring_figure(data.numpy(), samples.numpy(), codes.numpy(), zg.numpy(), grid_means.numpy())
    true_log_px = float(ring_log_prob(data.numpy().astype(np.float64)).mean())
    return [
        ImageFileSection(
            name="ring", title="The ring, a VAE's samples and its latent map",
            caption="Left to right: the 1,000 test points x = g(z); as many samples x ~ p(x|z), z ~ p(z) "
                    "(decoder noise included); the posterior means E_q[z|x] of the test points; the decoder "
                    "mean E[x|z] over a 41 x 41 grid of z in [-3, 3]^2. Colour: the angle of x (of the data "
                    "point, the sample, or the decoder mean), so the latent panels show where the decoder "
                    "sends each part of z-space.",
            image=figure),
        _radius_table(data.numpy(), samples.numpy(), means.numpy()),
        MetricsSection(
            name="ring_likelihood", title="Log-likelihood of the test points",
            values={"true_log_px": round(true_log_px, 4), "log_px": evaluation["log_px"],
                    "log_px_stderr": evaluation["log_px_stderr"], "elbo": evaluation["elbo"],
                    "is_samples": evaluation["is_samples"], "n_examples": evaluation["n_examples"]},
            warnings=[str(evaluation["is_warning"])] if evaluation.get("is_warning") else []),
    ]


def _angle(x: np.ndarray) -> np.ndarray:
    return np.arctan2(x[:, 1], x[:, 0])


def _ring_figure(data, samples, codes, grid_z, grid_means) -> bytes:
    fig = plots.scatter_panels(
        [data, samples, codes, grid_z],
        [_angle(data), _angle(samples), _angle(data), _angle(grid_means)],
        ["data x = g(z), z ~ N(0, I)", "VAE samples x ~ p(x|z), z ~ p(z)",
         "posterior means E_q[z|x] of the data", "decoder mean E[x|z] on a grid of z"],
        ["x1", "x1", "z1", "z1"], ["x2", "x2", "z2", "z2"],
        vmin=-math.pi, vmax=math.pi, colorbar="angle of x (radians)", sizes=[3, 3, 3, 26],
        markers=["o", "o", "o", "s"])
    return figure_png(fig)


def _radius_table(data: np.ndarray, samples: np.ndarray, means: np.ndarray) -> TableSection:
    mean, sd = ring_radius_moments()
    # the radius is 1 + r/10 with r Rayleigh: quantile p of r is sqrt(-2 log(1 - p))
    lo, hi = (1 + math.sqrt(-2 * math.log(1 - p)) / 10 for p in _BAND)

    def row(what: str, x: np.ndarray) -> list:
        r = np.linalg.norm(x, axis=1)
        return [what, len(r), round(float(r.mean()), 4), round(float(r.std()), 4),
                round(float(((r >= lo) & (r <= hi)).mean()), 3)]

    return TableSection(
        name="ring_radius", title="Do the samples land on the ring?",
        caption=f"||x|| of the test points, of the VAE's samples and decoder means (z ~ p(z)), and its exact "
                f"law (1 + r/10, r Rayleigh). Band: the central 99% of the exact law, [{lo:.3f}, {hi:.3f}].",
        header=["Points", "N", "mean ||x||", "sd ||x||", "share in the 99% band"],
        rows=[["exact: g(z), z ~ N(0, I)", "∞", round(mean, 4), round(sd, 4), 0.99],
              row("data (test split)", data), row("VAE samples x ~ p(x|z)", samples),
              row("VAE decoder means E[x|z]", means)],
    )
