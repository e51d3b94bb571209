"""The ELBO-gradient estimators of vaelab.evaluation.gradients against known answers.

A linear-Gaussian model, p(z) = N(0, I), p(x|z) = N(Wz + c, s2 I), with a free q(z|x_b) = N(mu_b,
diag(exp(logvar_b))) per example, has the ELBO and its gradient in closed form:

    L_b = -D/2 log(2 pi s2) - (|x_b - W mu_b - c|^2 + sum_j v_bj |W_j|^2) / (2 s2) - KL_b,
    KL_b = 1/2 sum_j (mu_bj^2 + v_bj - logvar_bj - 1),      v = exp(logvar), W_j column j,
    dL_b/dmu_b = W^T (x_b - W mu_b - c) / s2 - mu_b,
    dL_b/dlogvar_bj = -v_bj |W_j|^2 / (2 s2) - v_bj / 2 + 1/2.

The batch-mean ELBO's gradient is these over B. And the pathwise estimator of the mu-gradient (with the
analytic KL) is exactly Gaussian: its random part is -W^T W diag(sqrt(v_b)) eps_bar / (B s2), eps_bar the
mean of S standard normals, so its total variance is sum_b |W^T W diag(sqrt(v_b))|_F^2 / (S B^2 s2^2).
"""

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab import estimators
from vaelab.distributions import diag_gaussian, standard_normal
from vaelab.divergences import kl
from vaelab.evaluation.gradients import gradient_variance, pathwise_gradient, score_function_gradient
from vaelab.models import build_model
from vaelab.models.base import LatentVariableModel
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec

S2 = 0.5  # observation noise variance


class LinearGaussian(torch.nn.Module, LatentVariableModel):
    """The model above; its 'encoder' parameters are mu and logvar, (B, Dz) each."""

    def __init__(self, w: torch.Tensor, c: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
        super().__init__()
        self.w, self.c = w, c
        self.mu = torch.nn.Parameter(mu.clone())
        self.logvar = torch.nn.Parameter(logvar.clone())

    @property
    def latent_dim(self) -> int:
        return self.w.shape[1]

    def encode(self, x):
        return diag_gaussian(self.mu, self.logvar)

    def decode(self, z):
        return Independent(Normal(z @ self.w.T + self.c, math.sqrt(S2)), 1)

    def prior(self):
        return standard_normal(self.latent_dim, dtype=self.w.dtype)

    def log_importance_weights(self, x, k):
        return estimators.log_importance_weights(x, self.encode(x), self.decode, self.prior(), k)


def _model():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(3, 2, generator=g, dtype=torch.float64)
    c = torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64) * 2
    mu = torch.randn(2, 2, generator=g, dtype=torch.float64)
    logvar = torch.tensor([[-1.0, -0.3], [0.2, -2.0]], dtype=torch.float64)
    return LinearGaussian(w, c, mu, logvar), x


def _exact(model: LinearGaussian, x: torch.Tensor) -> list[torch.Tensor]:
    w, c, mu, v = model.w, model.c, model.mu.detach(), model.logvar.detach().exp()
    b = x.shape[0]
    d_mu = ((x - mu @ w.T - c) @ w / S2 - mu) / b
    d_logvar = (-v * w.square().sum(0) / (2 * S2) - v / 2 + 0.5) / b
    return [d_mu, d_logvar]


def test_the_closed_form_is_the_gradient_of_the_elbo():
    # the oracle itself, against autograd of the closed-form ELBO
    model, x = _model()
    w, c, v = model.w, model.c, model.logvar.exp()
    recon = (-(x - model.mu @ w.T - c).square().sum(1) - (v * w.square().sum(0)).sum(1)) / (2 * S2)
    kl = 0.5 * (model.mu.square() + v - model.logvar - 1).sum(1)
    grads = torch.autograd.grad((recon - kl).mean(), [model.mu, model.logvar])
    for g, e in zip(grads, _exact(model, x)):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("analytic_kl", [True, False])
def test_pathwise_is_the_gradient_of_the_sampled_elbo(analytic_kl):
    # the same draws as estimators.elbo: the estimator is the SGVB gradient of K&W eq. 6 / eq. 7
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=3, hidden=[16]), DataSpec((1, 4, 4), values="binary"))
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.4))
    params = list(model.encoder.parameters())
    torch.manual_seed(1)
    got = pathwise_gradient(model, x, params, 4, analytic_kl=analytic_kl)
    torch.manual_seed(1)
    terms = estimators.elbo(x.flatten(1), model.encode(x), model.decode, model.prior(), 4,
                            analytic_kl=analytic_kl)
    want = torch.autograd.grad(terms.bound.mean(), params)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module", params=[True, False], ids=["analytic_kl", "sampled_kl"])
def study(request):
    model, x = _model()
    torch.manual_seed(11)
    reps = 1000 if request.param else 600  # the closed-form variance is checked with the analytic KL only
    result = gradient_variance(model, x, {"mu": model.mu, "logvar": model.logvar}, [1, 4], reps,
                               analytic_kl=request.param)
    return model, x, result, request.param


def test_every_estimator_is_unbiased(study):
    # each coordinate's mean is within 4.5 standard errors of the exact gradient (a two-sided normal
    # tail of 7e-6 per coordinate; 8 coordinates x 5 estimator/S pairs)
    model, x, result, _ = study
    exact = _exact(model, x)
    assert len(result.moments) == 5  # no leave-one-out at S = 1
    for (key, s), m in result.moments.items():
        for mean, var, e in zip(m.mean, m.variance(), exact):
            se = (var / m.count).sqrt()
            z = ((mean - e) / se).abs().max().item()
            assert z < 4.5, f"{key} at S={s}: {z:.1f} standard errors from the exact gradient"


def test_pathwise_beats_the_baseline_which_beats_plain_reinforce(study):
    _, _, result, _ = study
    path, score, loo = (result.variance(k).sum(1) for k in ("pathwise", "score", "score_loo"))
    assert torch.isnan(loo[0])  # S = 1: no other draw to form a baseline from
    assert (path * 3 < score).all() and (path[1:] * 3 < loo[1:]).all()
    assert (loo[1:] * 2 < score[1:]).all()


def test_pathwise_variance_falls_as_one_over_s_and_matches_its_closed_form(study):
    model, _, result, analytic_kl = study
    path = result.variance("pathwise")  # (K, P): S = 1, 4
    s = torch.tensor(result.sample_sizes, dtype=torch.float64)
    # Var at S is Var at 1 over S (iid draws); each variance is estimated to ~5% (R = 1000; ~6% for
    # R = 600), so 18% is three standard errors
    torch.testing.assert_close(path.sum(1) * s, path.sum(1)[0].expand(2), rtol=0.18, atol=0)
    if analytic_kl:
        a = model.w.T @ model.w  # (Dz, Dz)
        sd = (0.5 * model.logvar.detach()).exp()  # (B, Dz)
        b = sd.shape[0]
        closed = sum((a * sd[i]).square().sum() for i in range(b)) / (b**2 * S2**2)
        torch.testing.assert_close(path[:, 0], closed / s, rtol=0.15, atol=0)


def test_score_function_gradient_is_reinforce_with_the_leave_one_out_baseline():
    # the same draws, the estimator written out by hand: 1/(S B) sum (f_s - mean_{t != s} f_t) grad log q
    model, x = _model()
    params = [model.mu, model.logvar]
    torch.manual_seed(5)
    got = score_function_gradient(model, x, params, 4, baseline="leave_one_out")
    torch.manual_seed(5)
    q = model.encode(x)
    z = q.rsample((4,)).detach()
    f = model.decode(z).log_prob(x)  # (S, B)
    b = torch.stack([torch.cat([f[:s], f[s + 1:]]).mean(0) for s in range(4)])
    surrogate = ((f - b) * q.log_prob(z)).mean() - kl(q, model.prior(), analytic=True).mean()
    for g, e in zip(got, torch.autograd.grad(surrogate, params)):
        torch.testing.assert_close(g, e)
    with pytest.raises(ValueError, match="leave-one-out"):
        score_function_gradient(model, x, params, 1, baseline="leave_one_out")
