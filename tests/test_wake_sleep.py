"""Wake-sleep (Hinton et al. 1995) against its definition and an exact marginal likelihood; the
Kingma & Welling settings it shares with the VAE (init_std); its CLI smoke run."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from vaelab.cli import main
from vaelab.config import TrainConfig
from vaelab.models import build_model
from vaelab.models.vae import VAE, MLPLatentModel, VAEConfig
from vaelab.models.wake_sleep import WakeSleep, WakeSleepConfig
from vaelab.spec import DataSpec
from vaelab.train.batching import TensorBatches
from vaelab.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
D = 8


def _data(n: int, seed: int = 0) -> torch.Tensor:
    """n binary vectors (n, 1, 1, 8) from a 1-latent model: x_d ~ Bernoulli(sigmoid(a_d z + b_d))."""
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([3.0, -3, 2, -2, 3, 1, -1, 0])
    b = torch.tensor([0.0, 0, 1, -1, -2, 0, 0, 1])
    z = torch.randn(n, 1, generator=g)
    return (torch.rand(n, D, generator=g) < torch.sigmoid(z * a + b)).float().reshape(n, 1, 1, D)


def _exact_log_px(model: MLPLatentModel, x: torch.Tensor, n: int = 4001) -> torch.Tensor:
    """log p(x) = log int N(z; 0, 1) p(x|z) dz for a 1-D latent, by the rectangle rule on [-10, 10]:
    (B,). The integrand is smooth with Gaussian tails, so 4001 nodes leave an error far below 1e-4."""
    z = torch.linspace(-10, 10, n).reshape(n, 1, 1)  # (n, 1, latent_dim=1), broadcast over the batch
    with torch.no_grad():
        log_joint = model.decode(z).log_prob(x.flatten(1)) + model.prior().log_prob(z)  # (n, B)
    return torch.logsumexp(log_joint, 0) + math.log(20 / (n - 1))


def _tiny(seed: int = 0, **kw) -> WakeSleep:
    torch.manual_seed(seed)
    cfg = WakeSleepConfig(latent_dim=kw.pop("latent_dim", 1), hidden=[16], activation="tanh", **kw)
    model = build_model(cfg, DataSpec((1, 1, D), "binary"))
    assert isinstance(model, WakeSleep)
    return model


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    got = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, got)]


def test_wake_and_sleep_gradients_touch_disjoint_parameters_and_one_loss_is_both_phases(single_thread):
    """The wake term's gradient w.r.t. the encoder is zero (z is detached), the sleep term's w.r.t.
    the decoder is zero (the dream is drawn without gradients); each is non-zero on its own side.
    So the gradient of loss = wake + sleep is, exactly, the decoder's wake gradient beside the
    encoder's sleep gradient computed one phase at a time with the same random draws."""
    model = _tiny(latent_dim=2)
    x = _data(20)
    enc, dec = list(model.encoder.parameters()), list(model.decoder.parameters())
    assert {id(p) for p in enc + dec} == {id(p) for p in model.parameters()}

    torch.manual_seed(5)
    log_px_z, _, _ = model.wake(x)
    wake = -log_px_z.mean()
    log_q = model.sleep(x.shape[0])
    sleep = -log_q.mean()
    assert all(torch.count_nonzero(g) == 0 for g in _grads(wake, enc))
    assert all(torch.count_nonzero(g) == 0 for g in _grads(sleep, dec))
    wake_dec, sleep_enc = _grads(wake, dec), _grads(sleep, enc)
    assert all(g.abs().sum() > 0 for g in wake_dec + sleep_enc)

    torch.manual_seed(5)  # the same draws: wake's z first, then the dream
    model.train()
    model.loss(x).loss.backward()
    for p, g in zip(dec + enc, wake_dec + sleep_enc):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_wake_sleep_raises_the_exact_marginal_likelihood_and_reports_a_bound_below_it(single_thread):
    """A 1-latent wake-sleep model fitted for 100 steps (Adam) to 500 vectors from a 1-latent model: the
    exact log p(x) (quadrature) of the training set rises by more than 0.5 nats per example from its
    initialisation (about 1.1 nats here); its importance-sampled log p(x) (k = 2000, shared with the
    VAE) agrees with quadrature to 0.02 nats on average; the ELBO (the mean log-weight over 2000
    draws) is below log p(x) (Jensen), and the one-draw ELBO the loss reports agrees with it within
    4 standard errors (it is an unbiased estimate; the gap to log p(x) is ~0.06 nats here, too
    small for one draw to show)."""
    x = _data(500)
    model = _tiny(seed=0)
    start = _exact_log_px(model, x).mean().item()
    cfg = TrainConfig(lr=3e-2, max_steps=100, batch_size=50, log_every=100, seed=0)
    Trainer(model, cfg, TensorBatches(x, 50, seed=0)).fit()
    model.eval()
    exact = _exact_log_px(model, x)
    assert exact.mean().item() > start + 0.5, (start, exact.mean().item())
    torch.manual_seed(1)
    with torch.no_grad():
        lw = model.log_importance_weights(x, 2000)
        out = model.loss(x)
    is_ll = torch.logsumexp(lw, 0) - math.log(2000)
    assert (is_ll - exact).mean().abs().item() < 0.02
    elbo = lw.mean(0)  # E_q[log p(x, z) - log q(z|x)] by 2000 draws: the ELBO itself
    assert elbo.mean().item() < exact.mean().item()
    se = out.elbo.std().item() / math.sqrt(len(x))  # the reported ELBO is a one-draw estimate of it
    assert abs(out.elbo.mean().item() - elbo.mean().item()) < 4 * se
    torch.testing.assert_close(out.loss, -out.elbo.mean())  # eval mode: the bound, no dream


def test_wake_sleep_and_the_vae_share_their_networks_and_checkpoint_keys():
    """Both are MLPLatentModel; the same config builds the same parameter names and shapes (a
    VAE's checkpoint keys are unchanged by the shared base: encoder.*, decoder.*)."""
    spec = DataSpec((1, 4, 4), "binary")
    vae = build_model(VAEConfig(latent_dim=2, hidden=[8, 6]), spec)
    ws = build_model(WakeSleepConfig(latent_dim=2, hidden=[8, 6]), spec)
    assert isinstance(vae, VAE) and isinstance(ws, WakeSleep) and isinstance(ws, MLPLatentModel)
    shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in ws.state_dict().items()}
    assert sorted(shapes) == ["decoder.0.bias", "decoder.0.weight", "decoder.2.bias", "decoder.2.weight",
                              "decoder.4.bias", "decoder.4.weight", "encoder.0.bias", "encoder.0.weight",
                              "encoder.2.bias", "encoder.2.weight", "encoder.4.bias", "encoder.4.weight"]
    with pytest.raises(TypeError, match="abstract"):
        MLPLatentModel(VAEConfig(), spec)


@pytest.mark.parametrize("family", ["vae", "wake_sleep"])
def test_init_std_draws_every_parameter_from_a_centred_normal_of_that_std(family):
    """init_std = 0.1: all n (about 3e5) parameter values together have sample std within 1% of 0.1
    (the relative standard error of a sample std is 1/sqrt(2n) ~ 0.13%), mean within 5 standard
    errors of 0, and 68.27% of them within one std (binomial s.e. 0.09%, tolerance 0.5%): a
    uniform of the same std puts 57.7% there, PyTorch's default init is far narrower (checked), so
    the test fails unless the draw is N(0, 0.1^2). Each weight matrix's std is within 5 s.e. too."""
    spec = DataSpec((1, 28, 28), "binary")
    cls = {"vae": VAEConfig, "wake_sleep": WakeSleepConfig}[family]
    torch.manual_seed(0)
    model = build_model(cls(latent_dim=20, hidden=[200], init_std=0.1), spec)
    values = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
    n, std = values.numel(), values.std().item()
    assert n > 3e5
    assert abs(std - 0.1) < 0.01 * 0.1
    assert abs(values.mean().item()) < 5 * 0.1 / math.sqrt(n)
    inside = (values.abs() < 0.1).double().mean().item()
    assert abs(inside - 0.6827) < 0.005
    for name, p in model.named_parameters():
        if p.dim() == 2:
            assert abs(p.std().item() - 0.1) < 5 * 0.1 / math.sqrt(2 * p.numel()), name
    torch.manual_seed(0)
    default = build_model(cls(latent_dim=20, hidden=[200]), spec)
    assert torch.cat([p.detach().flatten() for p in default.parameters()]).std().item() < 0.05


def test_cli_trains_the_wake_sleep_smoke_preset_end_to_end(tmp_path, capsys, single_thread):
    """`vaelab train configs/smoke_wake_sleep_digits.toml`: Adagrad with a step-size search, the
    evaluation (IS log p(x) at least the ELBO, within noise) and the report."""
    out = tmp_path / "ws"
    assert main(["train", str(ROOT / "configs" / "smoke_wake_sleep_digits.toml"), "--out", str(out),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    search = json.loads((out / "lr_search.json").read_text())
    assert search["candidates"] == [0.01, 0.02, 0.1] and search["chosen"] in search["candidates"]
    assert f"lr search: chose train.lr = {search['chosen']:g}" in printed
    best = max(range(3), key=lambda i: search["bounds"][i])
    assert search["chosen"] == search["candidates"][best]
    state = json.loads(next((out / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["config"]["train"]["lr"] == search["chosen"]  # trained with the chosen step size
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"elbo", "reconstruction", "kl", "loss"} <= set(rows[0])
    ev = json.loads((out / "eval.json").read_text())
    assert ev["log_px"] < 0 and ev["log_px"] >= ev["elbo"] - 1.0
    assert (out / "report.html").is_file()


def test_weight_decay_one_over_n_is_the_gaussian_prior_on_the_parameters():
    """K&W's MAP criterion adds log N(theta; 0, I) to the sum of the N examples' bounds; divided by N
    (our loss is a per-example mean) that is |theta|^2 / (2N). Adagrad with weight_decay = 1/N takes
    exactly the steps of Adagrad without it on loss + |theta|^2 / (2N) (float64, 5 steps)."""
    from vaelab.train.loop import build_optimizer

    n = 360
    torch.manual_seed(0)
    base = torch.nn.Linear(6, 3).double()
    models = [copy.deepcopy(base) for _ in range(2)]
    x = torch.randn(20, 6, dtype=torch.float64)
    with_decay = build_optimizer(models[0].parameters(), TrainConfig(optimizer="adagrad", lr=0.1,
                                                                      weight_decay=1 / n))
    with_prior = build_optimizer(models[1].parameters(), TrainConfig(optimizer="adagrad", lr=0.1))
    for _ in range(5):
        for model, opt, prior in ((models[0], with_decay, False), (models[1], with_prior, True)):
            opt.zero_grad()
            loss = model(x).square().mean()
            if prior:
                loss = loss + sum(p.square().sum() for p in model.parameters()) / (2 * n)
            loss.backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not torch.equal(models[0].weight, base.weight)

