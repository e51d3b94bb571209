"""Annealed importance sampling (vaelab.evaluation.ais) against closed forms and against IS."""

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from vaelab.config import DataConfig
from vaelab.data import load_dataset
from vaelab.distributions import standard_normal
from vaelab.errors import VaelabError
from vaelab.evaluation import importance_sampled_log_likelihood
from vaelab.evaluation.ais import AISSettings, ais, ais_log_likelihood, beta_schedule
from vaelab.models import build_model
from vaelab.models.base import GenerativeLatentModel
from vaelab.models.vae import VAEConfig

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

class LinearGaussian(GenerativeLatentModel):
    """p(z) = N(0, I_2), p(x|z) = N(Wz + b, s^2 I_5): log p(x) = log N(x; b, W W^T + s^2 I) exactly."""

    def __init__(self, w, b, s):
        self.w, self.b, self.s = w, b, s

    @property
    def latent_dim(self):
        return self.w.shape[1]

    def prior(self):
        return standard_normal(self.latent_dim, dtype=self.w.dtype)

    def decode(self, z):
        return Independent(Normal(z @ self.w.T + self.b, self.s, validate_args=False), 1, validate_args=False)

    def exact_log_px(self, x):
        cov = self.w @ self.w.T + self.s**2 * torch.eye(self.w.shape[0], dtype=self.w.dtype)
        return MultivariateNormal(self.b, cov).log_prob(x)


def _linear_gaussian():
    """A sharp posterior (s = 0.1, 5 observed dims, 2 latents), so that few annealing steps fall
    clearly short of log p(x); 4 examples drawn from the model."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 2, generator=g, dtype=torch.float64)
    model = LinearGaussian(w, torch.zeros(5, dtype=torch.float64), 0.1)
    z = torch.randn(4, 2, generator=g, dtype=torch.float64)
    x = z @ w.T + 0.1 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    return model, x


def test_ais_approaches_the_exact_log_likelihood_from_below_as_the_annealing_lengthens():
    """T = 10, 100, 1000 intermediate distributions, 64 chains, 3 leapfrog steps: the mean error over
    the 4 examples rises towards 0 (-1.4, -0.5, -0.1 nats with this seed: the gaps are many chain
    standard errors apart), no estimate exceeds log p(x) by more than 3 of its standard errors (AIS is
    a stochastic lower bound), and at T = 1000 every example is within 3 standard errors of its exact
    log p(x)."""
    model, x = _linear_gaussian()
    exact = model.exact_log_px(x)
    gaps = []
    for t in (10, 100, 1000):
        torch.manual_seed(1)
        est = ais(model, x, AISSettings(n_steps=t, chains=64, leapfrog=3))
        err = est.log_px - exact
        se_mean = est.stderr.square().sum().sqrt() / len(x)
        assert err.mean() < 3 * se_mean, (t, err, est.stderr)
        gaps.append(err.mean().item())
    assert gaps[0] < gaps[1] < gaps[2], gaps
    assert gaps[0] < -0.5  # T = 10 is clearly too short: the check above can fail
    assert ((err.abs()) < 3 * est.stderr).all(), (err, est.stderr)
    assert ((est.accept_rate - 0.65).abs() < 0.05).all()  # the per-example adaptation reached its target


def test_beta_schedules_run_from_zero_to_one_increasing():
    for kind in ("sigmoid", "linear"):
        b = beta_schedule(50, kind)
        assert b.shape == (51,) and b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all()
    sig = beta_schedule(50, "sigmoid").diff()
    assert sig[0] < sig[25] and sig[-1] < sig[25]  # denser steps at both ends
    with pytest.raises(VaelabError, match="unknown AIS schedule"):
        beta_schedule(5, "cosine")
    with pytest.raises(VaelabError, match="at least one step"):
        AISSettings(n_steps=0).validate()


def test_ais_agrees_with_importance_sampling_on_a_small_trained_vae():
    """A 2-latent VAE trained 300 steps on the digits: its encoder is good (IS with K = 2000 has a mean
    ESS in the hundreds, so IS is within a few hundredths of log p(x)), and AIS (T = 100, 16 chains)
    agrees with IS on the mean over 20 test images within 0.15 nats (about 4 of AIS's chain standard
    errors of the mean, ~0.035), without the encoder."""
    bundle = load_dataset(DataConfig(name="digits", binarize="fixed"))
    x, xt = bundle.train, bundle.eval_images("test")[:20]
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=2, hidden=[32]), bundle.spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        loss = model.loss(x[torch.randint(0, len(x), (100,))]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.manual_seed(1)
    by_is = importance_sampled_log_likelihood(model, [xt], 2000)
    assert by_is.ess_mean > 100
    torch.manual_seed(2)
    by_ais = ais_log_likelihood(model, [xt[:7], xt[7:]], AISSettings(n_steps=100, chains=16, leapfrog=5))
    assert by_ais.log_px.shape == (20,)
    assert abs(by_ais.mean - by_is.mean) < 0.15, (by_ais.mean, by_is.mean, by_ais.chain_stderr_of_mean)
    d = by_ais.as_dict()
    assert d["method"] == "ais" and d["n_examples"] == 20 and d["ais_n_steps"] == 100
    assert d["log_px_stderr"] == pytest.approx(by_ais.stderr)
