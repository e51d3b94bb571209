"""The trainer: exact resume, atomic checkpoints, non-finite losses, early stopping, schedules."""

import json
import math
import os
import pickle

import pytest
import torch

from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.models import build_model
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec
from vaelab.train import (
    Callback,
    Checkpointer,
    EarlyStopping,
    JsonlLogger,
    TensorBatches,
    Trainer,
    dynamic_binarize,
)
from vaelab.train import checkpoint as ckpt
from vaelab.train.averaging import ParameterAverage
from vaelab.train.batching import DynamicBinarize, batch_seed, grey_levels
from vaelab.train.schedules import learning_rate, linear_ramp

SPEC = DataSpec((1, 4, 4), "binary")
DATA = torch.rand(300, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def _trainer(run_dir, seed=0, callbacks=None, **train):
    torch.manual_seed(seed)
    model = build_model(VAEConfig(latent_dim=2, hidden=[8], kl_warmup_steps=7), SPEC)
    cfg = TrainConfig(
        **{
            "epochs": 3,
            "batch_size": 32,
            "log_every": 3,
            "seed": seed,
            "schedule": "cosine",
            "lr_final": 1e-4,
            **train,
        }
    )
    # 8-bit grey levels, as images from files are: held as uint8 and binarized from random bytes
    levels = torch.round(DATA[:240] * 255) / 255
    batches = TensorBatches(levels, cfg.batch_size, seed=seed, transform=dynamic_binarize)
    valid = TensorBatches(DATA[240:].bernoulli(generator=torch.Generator().manual_seed(1)), 30, shuffle=False)
    cbs = callbacks if callbacks is not None else [JsonlLogger(run_dir / "metrics.jsonl"), Checkpointer(5)]
    return Trainer(
        model, cfg, batches, valid, run_dir=run_dir, callbacks=cbs, meta={"model": {"name": "vae"}}
    )


@pytest.mark.parametrize("averaging", [{}, {"ema_decay": 0.8, "ema_every": 2}], ids=["plain", "ema"])
def test_resume_is_exact(tmp_path, averaging):
    full = _trainer(tmp_path / "full", **averaging).fit()

    # the same run, stopped after 11 steps (mid-epoch; checkpoint every 5 steps -> last at step 10)
    class StopAt(Callback):  # what Ctrl-C does: stop after the current step, then checkpoint
        def on_step_end(self, trainer):
            if trainer.step == 11:
                trainer.stop_reason = "interrupted"

    run = tmp_path / "part"
    cbs = [JsonlLogger(run / "metrics.jsonl"), Checkpointer(5), StopAt()]
    part = _trainer(run, callbacks=cbs, **averaging)
    part.fit()
    assert part.last_checkpoint.name == "step_00000011"
    resumed = _trainer(tmp_path / "part", **averaging)
    resumed.fit(resume=tmp_path / "part")
    assert resumed.step == full.step == 24
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    if averaging:  # the raw training weights went on exactly too
        raw_full, raw_resumed = full.average.training_state(), resumed.average.training_state()
        for k, a in raw_full.items():
            assert torch.equal(a, raw_resumed[k]), k
        assert full.average.updates == resumed.average.updates == 13  # steps 1, 2, 4, ..., 24
    # the metrics file of the resumed run reads like one clean run
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_interrupted_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, monkeypatch):
    t = _trainer(tmp_path, max_steps=5)
    t.fit()
    good = ckpt.resolve_checkpoint(tmp_path)
    assert good.name == "step_00000005"
    import safetensors.torch as st

    real_save = st.save_file
    calls = {"n": 0}

    def dying_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # die halfway: after the weights, while writing the trainer state
            with open(path, "wb") as fh:
                fh.write(b"\x00" * 10)
            raise OSError("disk full (simulated)")
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", dying_save)
    t.step = 6
    with pytest.raises(ckpt.CheckpointWriteError, match="disk full"):
        t.save_checkpoint()
    monkeypatch.setattr(ckpt, "save_file", real_save)
    assert ckpt.resolve_checkpoint(tmp_path) == good
    c = ckpt.load_checkpoint(tmp_path, with_trainer_state=True)
    assert c.meta["step"] == 5
    fresh = _trainer(tmp_path / "other")
    fresh.load_checkpoint(tmp_path)
    assert fresh.step == 5


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    t = _trainer(tmp_path, max_steps=40)
    t.total_steps = 40
    original = t.model.loss

    def poisoned(batch):
        out = original(batch)
        if t.model.train_step >= 12:
            out.loss = out.loss * float("nan")
        return out

    t.model.loss = poisoned
    with pytest.raises(VaelabError, match=r"loss became nan.*last good checkpoint is .*step_00000010"):
        t.fit()
    c = ckpt.load_checkpoint(tmp_path)
    assert c.meta["step"] == 10
    assert all(torch.isfinite(v).all() for v in c.model_state.values())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_parameter_is_never_checkpointed(tmp_path, bad):
    t = _trainer(tmp_path, max_steps=5)
    t.fit()
    with torch.no_grad():
        next(iter(t.model.parameters()))[0, 1] = bad
    t.step = 6
    with pytest.raises(VaelabError, match="the loss became nan"):
        t.save_checkpoint()
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000005"


def test_fit_restores_the_thread_count(tmp_path):
    """train.threads holds while fitting only: a library call leaves the process as it found it."""
    seen = []

    class Threads(Callback):
        def on_step_end(self, trainer):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    outside = 2 if before == 1 else before  # a count other than the run's 1
    torch.set_num_threads(outside)
    try:
        _trainer(tmp_path, max_steps=2, threads=1, callbacks=[Threads()]).fit()
        assert seen == [1, 1]
        assert torch.get_num_threads() == outside
    finally:
        torch.set_num_threads(before)


def test_early_stopping(tmp_path):
    t = _trainer(
        tmp_path, epochs=50, eval_every=2, lr=1e-9, lr_final=1e-9, patience=2, callbacks=[EarlyStopping(2)]
    )
    t.fit()
    assert t.stop_reason and "early stopping" in t.stop_reason
    assert t.step < 50 * len(t.train_batches)


def test_schedules_are_pure_functions():
    assert linear_ramp(0, 10) == 0.0 and linear_ramp(5, 10) == 0.5 and linear_ramp(50, 10) == 1.0
    assert linear_ramp(3, 0) == 1.0
    assert learning_rate(0, 100, 1e-3, 1e-4, "cosine") == pytest.approx(1e-3)
    assert learning_rate(100, 100, 1e-3, 1e-4, "cosine") == pytest.approx(1e-4)
    assert learning_rate(50, 100, 1e-3, 1e-4, "exponential") == pytest.approx(math.sqrt(1e-3 * 1e-4))
    assert learning_rate(4, 100, 1e-3, 1e-4, "constant", warmup_steps=10) == pytest.approx(5e-4)


@pytest.mark.parametrize("levels", [False, True], ids=["float-probabilities", "8-bit-levels"])
def test_batches_are_a_pure_function_of_seed_epoch_and_index(levels):
    data = torch.round(DATA * 255) / 255 if levels else DATA
    tb = TensorBatches(data, 64, seed=3, transform=dynamic_binarize)
    assert (tb.data.dtype == torch.uint8) == levels
    full = list(tb.epoch(2))
    tail = list(tb.epoch(2, start=2))
    assert all(torch.equal(a, b) for a, b in zip(full[2:], tail))
    assert not torch.equal(list(tb.epoch(1))[0], full[0])
    assert len(tb) == 5 and sum(b.shape[0] for b in full) == 300
    assert batch_seed(1, 2, 3) != batch_seed(1, 3, 2)
    # data-parallel shards are disjoint and cover the permutation
    a = TensorBatches(torch.arange(10.0).unsqueeze(1), 5, seed=0, rank=0, world=2)
    b = TensorBatches(torch.arange(10.0).unsqueeze(1), 5, seed=0, rank=1, world=2)
    xa, xb = torch.cat(list(a.epoch(0))), torch.cat(list(b.epoch(0)))
    assert sorted(torch.cat([xa, xb]).squeeze(1).tolist()) == list(range(10))


def test_dynamic_binarization_has_the_right_mean():
    p = torch.full((200, 1000), 0.3)
    x = dynamic_binarize(p, 0)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert x.mean().item() == pytest.approx(0.3, abs=4 * math.sqrt(0.21 / 200_000))


def test_grey_levels_are_found_only_when_every_value_is_k_over_255():
    k = torch.randint(0, 256, (50, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = k.float() / 255
    assert torch.equal(grey_levels(x), k)
    assert grey_levels(x + 1e-3) is None  # not a level
    assert grey_levels(torch.full((3,), 2.0)) is None  # out of [0, 1]
    assert grey_levels(k) is None  # already integers: left alone
    tb = TensorBatches(x, 10, seed=0, transform=dynamic_binarize)
    assert tb.data.dtype == torch.uint8  # held as levels, a quarter of the memory
    assert next(iter(tb)).dtype == torch.float32
    # converted once per tensor: a second batcher over it reuses the levels, unless x changed
    assert TensorBatches(x, 10, transform=dynamic_binarize).data is tb.data
    x[0, 0, 0, 0] = 0.5  # not a level any more
    assert TensorBatches(x, 10, transform=dynamic_binarize).data is x
    # the remembered levels do not outlive their source tensor
    binarize = DynamicBinarize()
    y = k.float() / 255
    binarize.prepare(y)
    assert binarize._last is not None
    del y
    assert binarize._last is None


def test_binarized_grey_levels_are_exact_bernoulli_k_over_255():
    """Every level k, 4000 draws each: k = 0 never and k = 255 always gives 1 (a byte of 255 left in
    the draw would turn about 16 of the k = 255 draws into 0), and every other frequency is within
    5 standard errors of k / 255; all the draws together pass a chi-square test."""
    n = 4000
    levels = torch.arange(256, dtype=torch.uint8).repeat(n, 1)
    x = dynamic_binarize(levels, 12345)
    assert x.dtype == torch.get_default_dtype() and set(x.unique().tolist()) == {0.0, 1.0}
    freq = x.mean(0).double()
    p = torch.arange(256, dtype=torch.float64) / 255
    assert freq[0] == 0 and freq[255] == 1
    se = (p * (1 - p) / n).sqrt()[1:255]
    assert ((freq[1:255] - p[1:255]).abs() <= 5 * se).all()
    chi2 = (((freq[1:255] - p[1:255]) / se) ** 2).sum().item()
    assert chi2 < 254 + 5 * math.sqrt(2 * 254)  # mean 254, sd sqrt(508): 5 sd
    # a batch is a pure function of its seed, and another seed gives another draw
    assert torch.equal(dynamic_binarize(levels, 12345), x)
    assert not torch.equal(dynamic_binarize(levels, 12346), x)


class TestCheckpointRefusals:
    def test_pickle_is_refused_without_unpickling(self, tmp_path):
        marker = tmp_path / "was_unpickled"

        class Evil:
            def __reduce__(self):
                return (os.mkdir, (str(marker),))

        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(Evil()))
        with pytest.raises(VaelabError, match="pickled PyTorch file .* never unpickles"):
            ckpt.load_checkpoint(path)
        torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
        with pytest.raises(VaelabError, match="never unpickles"):
            ckpt.load_checkpoint(tmp_path / "model.pt")
        assert not marker.exists()

    def test_corrupt_weights(self, tmp_path):
        t = _trainer(tmp_path, max_steps=5)
        t.fit()
        f = ckpt.resolve_checkpoint(tmp_path) / "model.safetensors"
        f.write_bytes(f.read_bytes()[:50])
        with pytest.raises(VaelabError, match="is corrupt"):
            ckpt.load_checkpoint(tmp_path)

    def test_checkpoint_of_another_model(self, tmp_path):
        t = _trainer(tmp_path, max_steps=5)
        t.fit()
        other = build_model(VAEConfig(latent_dim=3, hidden=[8]), SPEC)
        with pytest.raises(VaelabError, match="does not fit this model"):
            ckpt.load_model_weights(other, ckpt.load_checkpoint(tmp_path))
        other = build_model(VAEConfig(latent_dim=2, hidden=[8, 8]), SPEC)
        with pytest.raises(VaelabError, match="holds a different model"):
            ckpt.load_model_weights(other, ckpt.load_checkpoint(tmp_path))

    def test_not_a_checkpoint(self, tmp_path):
        with pytest.raises(VaelabError, match="does not exist"):
            ckpt.load_checkpoint(tmp_path / "nope")
        with pytest.raises(VaelabError, match="no checkpoint found"):
            ckpt.load_checkpoint(tmp_path)
        (tmp_path / "state.json").write_text("{not json")
        with pytest.raises(VaelabError, match="corrupt"):
            ckpt.load_checkpoint(tmp_path)


def test_dynamic_binarization_is_the_comparison_of_one_bulk_uniform_draw():
    """Probabilities that are not 8-bit levels: u < p with u ~ U(0, 1) drawn in one call, exactly
    x ~ Bernoulli(p), the same draw as before the in-place rewrite, and float {0, 1} values."""
    p = torch.rand(64, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    x = dynamic_binarize(p, 7)
    u = torch.rand(p.shape, generator=torch.Generator().manual_seed(7))
    assert x.dtype == p.dtype and torch.equal(x, (u < p).to(p.dtype))


def test_scalar_vector_holds_the_batch_mean_of_every_term():
    """One stack for (B,)-shaped terms, one mean per term otherwise: the same numbers either way."""
    from vaelab.models.base import LossOutput

    g = torch.Generator().manual_seed(0)
    elbo, kl = torch.randn(6, generator=g), torch.rand(6, generator=g)
    loss = (-elbo).mean().requires_grad_()
    for out in (LossOutput(loss=loss, elbo=elbo, kl=kl),
                LossOutput(loss=loss, elbo=elbo, kl=kl[:3])):  # terms of different shapes
        names, values = out.scalar_vector()
        assert names == ("loss", "elbo", "kl") and not values.requires_grad
        expected = torch.stack([loss.detach(), elbo.mean(), out.kl.mean()])
        assert torch.allclose(values, expected)
        assert out.scalars().keys() == {"loss", "elbo", "kl"}


def test_parameter_average_follows_its_recurrence():
    p = torch.nn.Parameter(torch.zeros(3))
    avg = ParameterAverage([("p", p)], decay=0.9, every=2)
    expected, n = [0.0, 0.0, 0.0], 0
    for step in range(1, 12):
        with torch.no_grad():
            p.copy_(torch.tensor([step, -2.0 * step, step**2], dtype=torch.float32))
        avg.update(step, last=step == 11)
        if step % 2 == 0 or step in (1, 11):  # every 2 steps, and the first and the last
            n += 1
            d = min(0.9**2, (1 + n) / (10 + n))  # the documented warm-up of the decay
            expected = [d * e + (1 - d) * x for e, x in zip(expected, [step, -2.0 * step, step**2])]
    assert avg.updates == 7
    torch.testing.assert_close(avg.averaged_state()["p"], torch.tensor(expected), rtol=1e-6, atol=1e-6)
    raw = p.detach().clone()
    avg.swap()  # the parameter holds the average, the average holds the raw values, and back again
    torch.testing.assert_close(p.detach(), torch.tensor(expected), rtol=1e-6, atol=1e-6)
    assert torch.equal(avg.training_state()["p"], raw)
    assert torch.equal(avg.averaged_state()["p"], p.detach())
    with pytest.raises(RuntimeError):
        avg.update(12)
    avg.swap()
    assert torch.equal(p.detach(), raw)


def test_weight_averaging_is_what_is_validated_and_checkpointed(tmp_path):
    class Watch(Callback):  # the weights the model holds while it is being validated
        def on_eval_end(self, trainer, metrics):
            self.seen = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            self.averaged = {n: a.clone() for n, a in trainer.average.averaged_state().items()}
            self.raw = {n: a.clone() for n, a in trainer.average.training_state().items()}

    watch = Watch()
    t = _trainer(tmp_path, ema_decay=0.9, callbacks=[JsonlLogger(tmp_path / "metrics.jsonl"), Checkpointer(5),
                                                     watch]).fit()
    for name, seen in watch.seen.items():
        assert torch.equal(seen, watch.averaged[name]) and not torch.equal(seen, watch.raw[name]), name
    c = ckpt.load_checkpoint(tmp_path, with_trainer_state=True)
    # after fit the model holds the average; checkpoints store it as the weights, the raw ones beside
    for name, p in t.model.named_parameters():
        assert torch.equal(c.model_state[name], p.detach()), name
        assert torch.equal(c.trainer_state[f"raw.{name}"], t.average.training_state()[name]), name
        assert not torch.equal(c.model_state[name], c.trainer_state[f"raw.{name}"]), name
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = ckpt.load_checkpoint(tmp_path / "checkpoints" / "best")
    assert best.meta["step"] in {r["step"] for r in rows if r["split"] == "valid"}


def test_weight_averaging_of_a_run_shorter_than_its_update_interval(tmp_path):
    t = _trainer(tmp_path, max_steps=5, ema_decay=0.99, ema_every=10)
    init = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    assert t.average.updates == 2  # after the first step and after the last one
    for name, p in t.model.named_parameters():  # after fit the model holds the average
        assert not torch.equal(p.detach(), init[name]), name


def test_the_best_checkpoint_is_the_best_bound_not_the_lowest_training_loss(tmp_path):
    """A model whose loss holds more than -ELBO (a VQ-VAE's commitment term, free bits): ``best`` and
    early stopping follow the bound, what evaluation reports. Here the validation loss gets a bonus
    that grows with every call, so its minimum is always the last validation."""
    from dataclasses import replace

    from vaelab.models.vae import VAE
    from vaelab.train.loop import selection_value

    class Penalised(VAE):
        calls = 0

        def loss(self, batch):
            out = super().loss(batch)
            if self.training:
                return out
            Penalised.calls += 1
            return replace(out, loss=out.loss - 1000.0 * Penalised.calls)

    torch.manual_seed(0)
    model = Penalised(VAEConfig(latent_dim=2, hidden=[8]), SPEC)
    cfg = TrainConfig(epochs=12, batch_size=32, log_every=100, eval_every=2, lr=3e-2, seed=0)
    batches = TensorBatches(DATA[:240].bernoulli(generator=torch.Generator().manual_seed(2)), 32, seed=0)
    valid = TensorBatches(DATA[240:].bernoulli(generator=torch.Generator().manual_seed(1)), 30, shuffle=False)
    Trainer(model, cfg, batches, valid, run_dir=tmp_path, callbacks=[JsonlLogger(tmp_path / "metrics.jsonl")],
            meta={"model": {"name": "vae"}}).fit()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    valid_rows = [r for r in rows if r["split"] == "valid"]
    by_bound = max(valid_rows, key=lambda r: r["elbo"])["step"]
    by_loss = min(valid_rows, key=lambda r: r["loss"])["step"]
    assert by_loss == valid_rows[-1]["step"] and by_bound != by_loss  # the criteria disagree here
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "best").meta["step"] == by_bound
    assert selection_value({"loss": 3.0, "elbo": -5.0}) == 5.0
    assert selection_value({"loss": 3.0}) == 3.0 and selection_value({"loss": 3.0, "elbo": math.nan}) == 3.0


# ------------------------------------------------------------------------------------------ bf16
def test_bf16_precision_runs_the_products_in_bf16_and_the_probabilities_in_float32(tmp_path):
    """train.precision = 'bf16': the networks' linear layers see bf16 under autocast, the loss is a
    float32 number within 2% of float32's on the same weights and noise, and training stays finite."""
    trainer = _trainer(tmp_path / "bf16", precision="bf16")
    model = trainer.model
    seen = []
    hook = model.encoder.register_forward_hook(lambda mod, inp, out: seen.append((mod.training, out.dtype)))
    trainer.fit()
    hook.remove()
    # training steps in bf16; validation (eval mode) in float32
    assert {d for training, d in seen if training} == {torch.bfloat16}
    assert {d for training, d in seen if not training} == {torch.float32}
    rows = [json.loads(line) for line in (tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows)
    x = DATA[:64].bernoulli(generator=torch.Generator().manual_seed(2))
    model.train()
    losses = {}
    for on in (False, True):
        torch.manual_seed(3)  # the same eps
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            losses[on] = model(x).loss
    assert losses[True].dtype == torch.float32
    assert losses[True].item() == pytest.approx(losses[False].item(), rel=0.02)
    assert losses[True].item() != losses[False].item()  # the products really ran in bf16
