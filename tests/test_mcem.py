"""Monte Carlo EM (models/mcem.py): it raises the exact marginal likelihood, repeats each batch for its
weight updates, resumes exactly, and is evaluated by AIS through the pipeline and the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from vaelab.cli import main
from vaelab.config import DataConfig, load_config
from vaelab.data import load_dataset
from vaelab.experiment import prepare, train_run
from vaelab.models import build_model
from vaelab.models.mcem import MCEMConfig
from vaelab.train import checkpoint as ckpt
from vaelab.train.batching import RepeatedBatches, TensorBatches

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke_mcem_digits.toml")
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

@torch.no_grad()
def _exact_log_px(model, x, n=801, lim=7.0):
    """log p(x) of a 1-latent model by quadrature: log sum_j p(z_j) p(x|z_j) dz on a grid of n points
    in [-lim, lim] (the prior's mass outside is below 1e-11; the decoder is smooth on the grid's scale)."""
    z = torch.linspace(-lim, lim, n).unsqueeze(-1)  # (n, 1)
    log_joint = model.log_joint(x, z.unsqueeze(1).expand(n, len(x), 1))  # (n, B)
    return torch.logsumexp(log_joint, 0) + math.log(2 * lim / (n - 1))


def test_mcem_raises_the_exact_marginal_likelihood():
    """A 1-latent MCEM model on 100 binarised digits, 24 samples x 5 updates: the mean log p(x) of the
    training images (exact, by quadrature) rises by more than 10 nats from its initial value (from about
    -45 to about -26 nats with this seed: 10 leaves room for other seeds and BLAS), and
    the HMC acceptance rate is held near its target of 0.9."""
    bundle = load_dataset(DataConfig(name="digits", binarize="fixed"))
    x = bundle.train[:100]
    torch.manual_seed(0)
    cfg = MCEMConfig(latent_dim=1, hidden=[16], hmc_transitions=4, leapfrog_steps=4, step_size_gain=0.2)
    model = build_model(cfg, bundle.spec)
    before = _exact_log_px(model, x).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = RepeatedBatches(TensorBatches(x, 25, seed=0), model.steps_per_batch)
    model.train()
    step, rates = 0, []
    for epoch in range(6):
        for batch in batches.epoch(epoch):
            model.train_step = step
            out = model.loss(batch)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            rates.append(out.scalars()["accept_rate"].item())
            step += 1
    after = _exact_log_px(model, x).mean().item()
    assert step == 120
    assert after > before + 10, (before, after)
    assert abs(sum(rates[-50:]) / 50 - 0.9) < 0.1


def test_repeated_batches_repeat_each_batch_exactly_and_start_anywhere():
    data = torch.arange(22.0).unsqueeze(1)
    inner = TensorBatches(data, 4, seed=3)
    rep = RepeatedBatches(inner, 5)
    assert len(rep) == 5 * len(inner) == 30
    for epoch in (0, 1):
        full = list(rep.epoch(epoch))
        plain = list(inner.epoch(epoch))
        assert len(full) == 30
        for i, b in enumerate(full):
            assert torch.equal(b, plain[i // 5])
        for start in (0, 3, 5, 7, 29):  # a resume lands anywhere in a batch's repetitions
            tail = list(rep.epoch(epoch, start))
            assert len(tail) == 30 - start and all(torch.equal(a, b) for a, b in zip(tail, full[start:]))


def test_the_sample_is_drawn_every_steps_per_batch_steps_and_the_pipeline_repeats_batches():
    """Without weight updates, the loss at steps 0..4 is the same number (one sample, reused), and a
    new one is drawn at step 5; a model holding no sample (a resume mid-cycle) draws one at once."""
    cfg = load_config(SMOKE)
    prep = prepare(cfg, CPU)
    assert isinstance(prep.train, RepeatedBatches) and len(prep.train) == 5 * len(prep.train.inner)
    model = prep.model.train()
    x = next(iter(prep.train.inner))
    torch.manual_seed(0)
    losses = []
    for step in range(6):
        model.train_step = step
        losses.append(model.loss(x).loss.item())
    assert len(set(losses[:5])) == 1 and losses[5] != losses[0]
    fresh = build_model(cfg.model, prep.spec).train()
    fresh.load_state_dict(model.state_dict())
    fresh.train_step = 3
    assert fresh.loss(x).loss.item() not in losses


def test_resume_at_a_cycle_boundary_is_exact_and_mid_cycle_resumes(tmp_path):
    """20 steps at once, and 10 + 10 with a resume (a sample's cycle ends at step 10): the same weights
    and adapted step size (the step size is a checkpointed buffer, the trainer restores the random
    state). Resuming at step 7, in the middle of a sample's 5 updates, continues to step 20 from the
    checkpointed step size."""
    def cfg(steps):
        c = load_config(SMOKE)
        c.train.max_steps = steps
        c.train.eval_every = 10  # both runs validate at step 10 (validation draws random numbers too)
        return c

    whole, _ = train_run(cfg(20), tmp_path / "whole", device=CPU, progress=False)
    train_run(cfg(10), tmp_path / "split", device=CPU, progress=False)
    resumed, _ = train_run(cfg(20), tmp_path / "split", device=CPU, resume=True, progress=False)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b) and "hmc_step_size" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert a["hmc_step_size"] != 0.1  # it was adapted
    train_run(cfg(7), tmp_path / "mid", device=CPU, progress=False)
    saved = ckpt.load_checkpoint(tmp_path / "mid").model_state["hmc_step_size"]
    mid, _ = train_run(cfg(20), tmp_path / "mid", device=CPU, resume=True, progress=False)
    assert mid.step == 20 and saved != a["hmc_step_size"]


def test_an_mcem_run_is_evaluated_by_ais_and_the_cli_takes_ais_settings(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--out", str(run), "--quiet", "--no-eval", "--set", "train.max_steps=5"]
    assert main(["train", SMOKE, *args]) == 0
    assert main(["eval", str(run), "--ais", "20", "--ais-chains", "4", "--ais-leapfrog", "3",
                 "--max-examples", "10"]) == 0
    assert "AIS log p(x)" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert result["method"] == "ais" and result["ais_n_steps"] == 20 and result["ais_chains"] == 4
    assert result["n_examples"] == 10 and math.isfinite(result["log_px"]) and "bits_per_dim" in result
    assert "accept_rate" in result  # the test loss's monitored term
    assert main(["eval", str(run), "--ais", "0"]) != 0
    assert "AIS needs at least one step" in capsys.readouterr().err


def test_eval_ais_settings_come_from_the_config(tmp_path, capsys):
    """``eval.ais_*`` choose AIS for any latent model (here a VAE, otherwise evaluated by IS) and its
    settings; an MCEM run with the defaults is evaluated by AIS; bad values are one-line errors."""
    run = tmp_path / "vae"
    vae = str(Path(SMOKE).parent / "smoke_vae_digits.toml")
    sets = ["--set", "eval.ais_steps=15", "--set", "eval.ais_chains=2", "--set", "eval.ais_leapfrog=2",
            "--set", "eval.max_examples=8", "--set", "train.max_steps=3"]
    assert main(["train", vae, "--out", str(run), "--quiet", *sets]) == 0
    result = json.loads((run / "eval.json").read_text())
    got = (result["method"], result["ais_n_steps"], result["ais_chains"], result["ais_leapfrog"])
    assert got == ("ais", 15, 2, 2)
    assert main(["train", vae, "--out", str(tmp_path / "bad"), "--set", "eval.ais_chains=0"]) == 2
    assert "eval.ais_chains" in capsys.readouterr().err
