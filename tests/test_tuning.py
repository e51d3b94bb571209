"""The step-size search of vaelab.tuning (Kingma & Welling 2014, Section 5) and its place in the
pipeline (train.lr_search)."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from vaelab import tuning
from vaelab.config import TrainConfig, config_from_dict, load_config
from vaelab.errors import VaelabError
from vaelab.experiment import train_run
from vaelab.models import build_model
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec
from vaelab.train.batching import TensorBatches
from vaelab.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _setup():
    g = torch.Generator().manual_seed(0)
    probs = torch.linspace(0.05, 0.95, 16).reshape(1, 1, 4, 4)
    x = (torch.rand(200, 1, 4, 4, generator=g) < probs).float()
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=2, hidden=[16]), DataSpec((1, 4, 4), "binary"))
    return model, TensorBatches(x, 50, seed=0)


def test_lr_search_keeps_the_step_size_with_the_best_training_bound(single_thread):
    """Adam on a tiny VAE for 40 steps: 1e-5 barely moves, 1.0 overshoots, 1e30 makes the loss
    non-finite (scored -inf), 1e-2 is clearly best (by > 1 nat). The model and the caller's random
    stream are left untouched, and the chosen trial's bound is what an ordinary training run from
    the same init, seed and step size reaches (each trial is exactly that run)."""
    model, batches = _setup()
    before = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(optimizer="adam", batch_size=50, seed=3)
    rng = torch.get_rng_state()
    found = tuning.search_learning_rate(model, cfg, batches, [1e-5, 1e-2, 1.0, 1e30], 40)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert found.chosen == 1e-2 and found.candidates == [1e-5, 1e-2, 1.0, 1e30] and found.steps == 40
    b = found.bounds
    assert b[3] == -math.inf and b[1] > max(b[0], b[2]) + 1.0
    assert "chose train.lr = 0.01" in found.describe()

    twin = copy.deepcopy(model)
    torch.manual_seed(3)
    trainer = Trainer(twin, TrainConfig(optimizer="adam", batch_size=50, seed=3, lr=1e-2, lr_final=1e-2,
                                        max_steps=40, log_every=40), batches)
    trainer.fit()
    assert trainer.evaluate(batches)["elbo"] == pytest.approx(b[1], abs=1e-5)


def test_every_trial_starts_from_the_same_init_and_draws_whatever_the_order(single_thread):
    """The bounds do not depend on the order of the candidates (to float precision): each trial
    starts from the model's initialisation with the same seeded draws, not where the last ended."""
    model, batches = _setup()
    cfg = TrainConfig(optimizer="adagrad", batch_size=50)
    a = tuning.search_learning_rate(model, cfg, batches, [1e-4, 0.1, 0.02], 20, score_examples=100)
    b = tuning.search_learning_rate(model, cfg, batches, [0.02, 0.1, 1e-4], 20, score_examples=100)
    assert a.chosen == b.chosen == 0.1
    assert a.bounds == pytest.approx(b.bounds[::-1], abs=1e-5)


def test_lr_search_refuses_bad_lists_and_all_diverging_trials():
    model, batches = _setup()
    cfg = TrainConfig(optimizer="adam", batch_size=50)
    with pytest.raises(VaelabError, match="non-finite with every step size"):
        tuning.search_learning_rate(model, cfg, batches, [1e30], 5)
    with pytest.raises(VaelabError, match="train.lr_search must list step sizes > 0"):
        config_from_dict({"model": {"name": "vae"}, "train": {"lr_search": [0.1, 0.0]}})
    with pytest.raises(VaelabError, match="train.lr_search_steps"):
        config_from_dict({"model": {"name": "vae"}, "train": {"lr_search": [0.1], "lr_search_steps": 0}})


def test_train_run_records_the_choice_and_a_resumed_run_keeps_it(tmp_path, monkeypatch, single_thread):
    """train_run searches before training, writes lr_search.json and trains with the choice (the
    checkpoint's config holds it); resuming takes the recorded choice and does not search again."""
    cfg = load_config(ROOT / "configs" / "smoke_wake_sleep_digits.toml",
                      ["train.max_steps=4", "train.lr_search=[0.01, 0.1]", "train.lr_search_steps=5"])
    run = tmp_path / "run"
    trainer, prep = train_run(cfg, run, device=torch.device("cpu"), progress=False)
    recorded = tuning.read_lr_search(run)
    assert recorded == prep.lr_search and recorded.chosen in (0.01, 0.1)
    assert trainer.optimizer.param_groups[0]["lr"] == recorded.chosen
    given = json.loads((run / "config.json").read_text())["train"]
    assert given["lr"] == 0.01 and given["lr_search"] == [0.01, 0.1]  # the config as given

    def no_search(*args, **kwargs):
        raise AssertionError("a resumed run searched again")

    monkeypatch.setattr("vaelab.experiment.search_learning_rate", no_search)
    again = load_config(ROOT / "configs" / "smoke_wake_sleep_digits.toml",
                        ["train.max_steps=6", "train.lr_search=[0.01, 0.1]", "train.lr_search_steps=5"])
    trainer, prep = train_run(again, run, device=torch.device("cpu"), resume=True, progress=False)
    assert trainer.step == 6 and trainer.optimizer.param_groups[0]["lr"] == recorded.chosen
    assert prep.lr_search is None
