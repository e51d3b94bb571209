"""The sentence VAE (Bowman et al. 2016) and its LSTM language-model baseline: padding, word dropout,
KL schedules, free bits, decoding a memorised corpus, importance sampling against the ELBO, and the
pipeline on text."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaelab.cli import main
from vaelab.config import TrainConfig, config_from_dict, read_toml
from vaelab.estimators import logmeanexp
from vaelab.experiment import evaluate_run, load_run_model, train_run
from vaelab.models import build_model
from vaelab.models.sentence_vae import (
    LSTMLanguageModelConfig,
    SentenceVAE,
    SentenceVAEConfig,
    kl_weight,
)
from vaelab.schedules import linear_ramp, logistic_ramp
from vaelab.spec import DataSpec
from vaelab.tokens import Sequences, TokenBatch
from vaelab.train.loop import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WORDS = ["<pad>", "<unk>", "<bos>", "<eos>", "the", "cat", "dog", "sat", "on", "mat", "ate", "bone", "a"]
SPEC = DataSpec((8,), "tokens", extra={"vocab": WORDS})  # the ids are found by name in the vocabulary
CORPUS = ["the cat sat on the mat", "the dog ate the bone", "the cat ate", "the dog sat on a cat"]


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

def _vae(seed: int = 0, **kw) -> SentenceVAE:
    torch.manual_seed(seed)
    cfg = dict(embedding_dim=8, hidden_size=16, latent_dim=3)
    cfg.update(kw)
    return build_model(SentenceVAEConfig(**cfg), SPEC)


def _random_batch(g: torch.Generator, b: int, max_words: int = 7) -> TokenBatch:
    lengths = torch.randint(1, max_words + 1, (b,), generator=g)
    seqs = [torch.randint(4, len(WORDS), (int(n),), generator=g).tolist() + [3] for n in lengths]
    return Sequences.from_lists(seqs).pad(torch.arange(b), 0)


def _padded(batch: TokenBatch, extra: int, g: torch.Generator) -> TokenBatch:
    """The same sentences with ``extra`` more columns, and every padding position (old and new) holding
    a random real word instead of <pad>: what sits past a sentence's end must not matter."""
    b, t = batch.tokens.shape
    mask = torch.cat([batch.mask, torch.zeros(b, extra, dtype=torch.bool)], 1)
    noise = torch.randint(4, len(WORDS), (b, t + extra), generator=g)
    tokens = torch.cat([batch.tokens, torch.zeros(b, extra, dtype=torch.long)], 1)
    return TokenBatch(torch.where(mask, tokens, noise), batch.lengths, mask)


# ------------------------------------------------------------------------------------------ padding
@pytest.mark.parametrize("kw", [{}, {"z_every_step": True, "layers": 2, "tie_embeddings": True,
                                     "embedding_dim": 16}])
def test_padding_never_changes_the_loss(kw):
    """Per-sentence ELBO, reconstruction, KL and importance weights are the same (to float rounding,
    1e-5 nats) with 5 extra columns and random words at every padded position; the LM's too."""
    g = torch.Generator().manual_seed(1)
    batch = _random_batch(g, 6)
    wide = _padded(batch, 5, g)
    model = _vae(**kw).eval()
    with torch.no_grad():
        torch.manual_seed(3)
        a = model.loss(batch)
        torch.manual_seed(3)
        b = model.loss(wide)
        for name in ("elbo", "reconstruction", "kl"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=0)
        torch.manual_seed(4)
        wa = model.log_importance_weights(batch, 3)
        torch.manual_seed(4)
        wb = model.log_importance_weights(wide, 3)
        torch.testing.assert_close(wa, wb, atol=1e-5, rtol=0)
        torch.manual_seed(0)
        lm = build_model(LSTMLanguageModelConfig(embedding_dim=8, hidden_size=16), SPEC).eval()
        torch.testing.assert_close(lm.loss(batch).elbo, lm.loss(wide).elbo, atol=1e-5, rtol=0)
    # and the padded positions do count nowhere: the reconstruction is a sum over the real tokens only,
    # each a log-probability < 0, so a sentence of n tokens costs more than log(1) * n = 0
    assert (a.reconstruction < 0).all()


# ------------------------------------------------------------------------------------------ word dropout
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_word_dropout_replaces_the_configured_fraction_of_real_inputs(p):
    """Of the decoder inputs after <bos> that are words, a fraction p becomes <unk>: binomial, n ~ 7,000
    positions, so the standard deviation is at most 0.006 and 4 of them is 0.024. <bos> and the
    padding are never touched; evaluation (eval mode) never drops."""
    model = _vae(word_dropout=p)
    g = torch.Generator().manual_seed(0)
    batch = _random_batch(g, 2000)
    torch.manual_seed(5)
    inputs = model.decoder.inputs(batch, model._word_dropout())
    clean = model.decoder.inputs(batch, 0.0)
    real = batch.mask.clone()
    real[:, 0] = False
    n = int(real.sum())
    assert n > 6000
    assert ((inputs == 1) & (clean != 1))[~real].sum() == 0 and (inputs[:, 0] == 2).all()
    assert (inputs[~real] == clean[~real]).all()
    dropped = float(((inputs == 1) & real).sum()) / n
    assert abs(dropped - p) <= 4 * math.sqrt(0.25 / n)
    model.eval()
    assert model._word_dropout() == 0.0


# ------------------------------------------------------------------------------------------ schedules
def test_dropout_acts_in_training_only_and_keeps_the_expected_activation():
    """dropout p on the decoder's embeddings and LSTM outputs: in eval mode the LM's loss is
    deterministic and the same as with p = 0 (same weights); in training mode it varies between calls."""
    torch.manual_seed(0)
    plain = build_model(LSTMLanguageModelConfig(embedding_dim=8, hidden_size=16), SPEC)
    torch.manual_seed(0)
    dropped = build_model(LSTMLanguageModelConfig(embedding_dim=8, hidden_size=16, dropout=0.5), SPEC)
    batch = _random_batch(torch.Generator().manual_seed(4), 5)
    plain.eval()
    dropped.eval()
    torch.testing.assert_close(dropped.loss(batch).loss, plain.loss(batch).loss)
    dropped.train()
    a, b = dropped.loss(batch).loss, dropped.loss(batch).loss
    assert not torch.equal(a, b)
    with pytest.raises(Exception, match="dropout must be in"):
        config_from_dict({"model": {"name": "lstm_lm", "dropout": 1.0}, "data": {"name": "ptb"}})


def test_the_kl_schedules_at_fixed_steps():
    """logistic: w(t) = (s(t) - s(0)) / (s(L) - s(0)), s(t) = 1 / (1 + exp(-(10 / L)(t - L / 2))); for
    L = 100, w(25) = (1/(1+e^2.5) - 1/(1+e^5)) / (1/(1+e^-5) - 1/(1+e^5)) = 0.0701037 (by hand), and
    w(75) = 1 - w(25) by symmetry. linear: t / L."""
    assert logistic_ramp(0, 100) == 0.0 and logistic_ramp(100, 100) == 1.0 and logistic_ramp(500, 100) == 1.0
    assert logistic_ramp(50, 100) == pytest.approx(0.5, abs=1e-12)
    assert logistic_ramp(25, 100) == pytest.approx(0.0701037, abs=1e-7)
    assert logistic_ramp(75, 100) == pytest.approx(1 - 0.0701037, abs=1e-7)
    assert logistic_ramp(7, 0) == 1.0
    assert linear_ramp(25, 100) == 0.25 and linear_ramp(100, 100) == 1.0
    assert kl_weight("none", 0, 100) == 1.0 and kl_weight("linear", 30, 100) == pytest.approx(0.3)
    assert kl_weight("logistic", 25, 100) == logistic_ramp(25, 100)


@pytest.mark.parametrize("schedule,beta", [("logistic", 0.0701037), ("linear", 0.25), ("none", 1.0)])
def test_the_training_loss_weights_the_kl_of_its_step_and_reports_the_true_elbo(schedule, beta):
    model = _vae(kl_schedule=schedule, kl_warmup_steps=100)
    batch = _random_batch(torch.Generator().manual_seed(2), 5)
    model.train_step = 25
    torch.manual_seed(1)
    out = model.loss(batch)
    torch.testing.assert_close(out.loss, -(out.reconstruction - beta * out.kl).mean())
    torch.testing.assert_close(out.elbo, out.reconstruction - out.kl)
    model.eval()
    torch.manual_seed(1)
    out = model.loss(batch)
    torch.testing.assert_close(out.loss, -out.elbo.mean())


def test_autoencoder_pretraining_decodes_the_posterior_mean_without_kl_then_starts_the_schedule():
    """For steps < autoencoder_steps the training loss is -log p(x | z = mu) (no noise, no KL: the
    same value on every call), the reported ELBO stays rec - KL; the schedule's weight is 0 then and
    counts its warm-up from the end of pretraining; in eval mode nothing changes."""
    model = _vae(kl_schedule="linear", kl_warmup_steps=100, autoencoder_steps=40)
    batch = _random_batch(torch.Generator().manual_seed(3), 6)
    model.train_step = 39
    assert model.kl_weight_now == 0.0 and model.pretraining
    a, b = model.loss(batch), model.loss(batch)
    torch.testing.assert_close(a.loss, b.loss)  # deterministic: z is the posterior mean
    mu, _ = model._posterior_params(batch)
    torch.testing.assert_close(a.loss, -model.decoder.log_prob(batch, mu).mean())
    torch.testing.assert_close(a.elbo, a.reconstruction - a.kl)
    model.train_step = 40 + 25
    assert not model.pretraining and model.kl_weight_now == pytest.approx(0.25)
    torch.manual_seed(1)
    out = model.loss(batch)
    torch.testing.assert_close(out.loss, -(out.reconstruction - 0.25 * out.kl).mean())
    model.train_step = 0
    model.eval()
    assert not model.pretraining


# ------------------------------------------------------------------------------------------ free bits
def test_free_bits_clamp_the_batch_mean_kl_of_each_dimension():
    """sum_j max(lambda, mean_b KL_j) against torch's Normal-Normal KL per dimension (an independent
    oracle); dimensions under lambda get no gradient, those above get the KL's gradient; the training
    loss uses the clamped term and the reported KL stays the true one."""
    lam = 0.5
    model = _vae(free_bits=lam, kl_schedule="none")
    mu = torch.tensor([[0.1, 2.0, 0.0], [-0.1, 1.0, 0.2]], requires_grad=True)
    logvar = torch.tensor([[0.0, 0.0, -3.0], [0.1, -0.2, -2.0]], requires_grad=True)
    per_dim = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)  # (3,)
    assert per_dim[0] < lam < per_dim[1] and per_dim[2] > lam  # one dimension under lambda
    got = model.free_bits_kl(mu, logvar)
    torch.testing.assert_close(got, per_dim.clamp(min=lam).sum())
    got.backward()
    assert (mu.grad[:, 0] == 0).all() and (logvar.grad[:, 0] == 0).all()
    assert (mu.grad[:, 1] != 0).all() and (logvar.grad[:, 2] != 0).all()

    batch = _random_batch(torch.Generator().manual_seed(2), 5)
    torch.manual_seed(1)
    out = model.loss(batch)
    with torch.no_grad():
        clamped = model.free_bits_kl(*model._posterior_params(batch))
    torch.testing.assert_close(out.loss, -(out.reconstruction.mean() - clamped))
    assert clamped >= 3 * lam - 1e-6 and clamped > out.kl.mean()  # every dimension counts at least lambda


# ------------------------------------------------------------------------------------------ decoding
@pytest.fixture(scope="module")
def memorised() -> tuple[SentenceVAE, TokenBatch]:
    """A sentence VAE trained on CORPUS alone until it reconstructs it: four sentences that all start
    with "the", so the decoder must read z to tell them apart (the KL weight stays under 0.01 with a
    logistic warm-up of 10,000 steps, so z carries the sentence)."""
    model = _vae(seed=0, hidden_size=32, kl_warmup_steps=10_000)
    batch, unknown = model.encode_sentences(CORPUS)
    assert unknown == 0
    opt = build_optimizer(model.parameters(), TrainConfig(lr=1e-2))
    model.train()
    for step in range(150):  # reconstructs CORPUS from step ~100 on
        model.train_step = step
        opt.zero_grad()
        model.loss(batch).loss.backward()
        opt.step()
    return model.eval(), batch


def test_greedy_and_beam_decoding_of_a_memorised_corpus_return_its_sentences(memorised):
    model, batch = memorised
    z = model.posterior_mean(batch)
    assert [model.words(s) for s in model.greedy(z)] == CORPUS
    assert [model.words(s) for s in model.beam(z, beam_size=3)] == CORPUS
    torch.manual_seed(0)  # a tiny temperature is the greedy limit
    assert [model.words(s) for s in model.sample_tokens(z, temperature=1e-3)] == CORPUS
    assert all(len(s) <= 2 for s in model.greedy(z, max_len=2))


def test_beam_of_one_is_greedy_on_an_untrained_model():
    model = _vae(seed=3).eval()
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    assert model.beam(z, beam_size=1) == model.greedy(z)
    assert all(2 not in s and 0 not in s for s in model.greedy(z) + model.sample_tokens(z))  # no <bos>, <pad>


def test_encode_sentences_lowercases_counts_unknown_words_and_ends_with_eos():
    model = _vae()
    batch, unknown = model.encode_sentences(["The CAT  sat", "a zebra ate the gnu"])
    assert unknown == 2
    assert batch.lengths.tolist() == [4, 6] and batch.tokens[0].tolist() == [4, 5, 7, 3, 0, 0]
    assert model.words(batch.tokens[1, :5].tolist()) == "a <unk> ate the <unk>"
    assert model.vocab == WORDS


# ------------------------------------------------------------------------------------------ IS NLL vs ELBO
def test_is_nll_is_at_most_the_negative_elbo_and_equals_it_in_expectation_at_k_1(memorised):
    """At K = 1, log w = log p(x|z) + log p(z) - log q(z|x) has expectation ELBO = E_q log p(x|z) - KL:
    the mean of 4,000 draws matches the analytic-KL ELBO (mean of 4,000 loss evaluations) within
    4 standard errors. At K = 50, logmeanexp log w (mean over 20 repeats) is >= that ELBO on
    average over the sentences (Burda et al. 2016, Theorem 1), by more than 4 standard errors."""
    model, batch = memorised
    torch.manual_seed(0)
    with torch.no_grad():
        lw = model.log_importance_weights(batch, 4000)  # (4000, B)
        elbos = torch.stack([model.loss(batch).elbo for _ in range(500)])  # (500, B)
        iwae = torch.stack([logmeanexp(model.log_importance_weights(batch, 50), 0) for _ in range(20)])
    se = (lw.var(0) / 4000 + elbos.var(0) / 500).sqrt()
    assert ((lw.mean(0) - elbos.mean(0)).abs() <= 4 * se + 1e-4).all()
    gap = iwae.mean(0) - elbos.mean(0)  # (B,) IS log p(x) - ELBO = -ELBO - IS NLL
    gap_se = (iwae.var(0) / 20 + elbos.var(0) / 500).sqrt()
    assert gap.mean() > 4 * gap_se.mean()


# ------------------------------------------------------------------------------------------ pipeline
@pytest.mark.parametrize("family", ["lstm_lm", "sentence_vae"])
def test_both_families_train_and_report_nll_and_perplexity_through_the_pipeline(family, tmp_path):
    """On a tiny text file: the trained model's NLL per sentence is far below the uniform model's
    (log V per token), perplexity is exp(NLL / tokens) with <eos> counted, and the report has samples
    (and, for the VAE, reconstructions labelled input / reconstruction)."""
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(CORPUS * 10) + "\n", encoding="utf-8")
    model = {"name": family, "embedding_dim": 8, "hidden_size": 16, "max_decode_length": 10}
    if family == "sentence_vae":
        model |= {"latent_dim": 2, "kl_warmup_steps": 20}
    cfg = config_from_dict({"model": model, "data": {"name": f"text:{text}", "valid_size": 4},
                            "train": {"epochs": 15, "batch_size": 8, "lr": 1e-2},
                            "eval": {"is_samples": 5, "n_samples": 3}})
    run = tmp_path / family
    train_run(cfg, run, device=CPU, progress=False)
    result = evaluate_run(run, CPU)
    counted = result["counted"].split()  # "26 tokens (words and <eos>) in 4 examples"
    tokens, n = int(counted[0]), int(counted[-2])
    nll = -result["log_px"]  # the VAE's IS estimate; the LM's exact log-likelihood
    if family == "lstm_lm":
        assert result["method"] == "exact" and result["log_px"] == pytest.approx(result["elbo"], rel=1e-9)
        assert "upper bound" not in result["units"]  # the LM's NLL is exact, not a bound
    assert result["nats_per_sequence"] == pytest.approx(nll, rel=1e-6)
    uniform = tokens * math.log(9 + 4) / n  # the file's 9 words and 4 specials, equally likely
    assert result["nats_per_sequence"] < 0.5 * uniform
    assert result["perplexity_per_token"] == pytest.approx(math.exp(result["nats_per_sequence"] * n / tokens),
                                                           rel=1e-6)
    from vaelab import sections

    by_name = {s.name: s for s in sections.read_sections(run)}
    assert len(by_name["samples"].texts) == 3
    if family == "sentence_vae":
        assert "log_px" in result and "active_units" in result
        assert by_name["reconstructions"].labels[:2] == ["input", "reconstruction"]
    # every validation logs the VAE's active units (a curve in the report); the LM has no latents
    import json

    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    valid = [r for r in rows if r["split"] == "valid"]
    assert valid and all(("active_units" in r) == (family == "sentence_vae") for r in valid)
    if family == "sentence_vae":
        assert all(0 <= r["active_units"] <= 2 for r in valid)


@pytest.mark.datasets("ptb")
def test_the_ptb_presets_are_valid_and_the_smoke_preset_trains_from_the_command_line(data_root, tmp_path):
    """The smoke preset trains a few steps on PTB through ``vaelab train``; every sentence preset is a
    valid run config whose model builds on that run's (token) spec."""
    run = tmp_path / "smoke"
    args = ["train", str(ROOT / "configs" / "smoke_sentence_vae_ptb.toml"), "--out", str(run), "--quiet",
            "--no-eval", "--set", "train.max_steps=4", "--set", "train.threads=1"]
    assert main(args) == 0
    model, _, _ = load_run_model(run, CPU)
    assert isinstance(model, SentenceVAE) and model.spec.vocab_size == 504  # data.max_vocab = 500
    for name in ("sentence_vae_ptb", "lstm_lm_ptb", "smoke_sentence_vae_ptb", "smoke_lstm_lm_ptb"):
        cfg = config_from_dict(read_toml(ROOT / "configs" / f"{name}.toml"))
        assert cfg.data.name == "ptb"
        build_model(cfg.model, model.spec)


def test_token_ids_outside_the_vocabulary_are_a_one_line_error():
    from vaelab.errors import VaelabError

    model = _vae()
    model.check_data(Sequences.from_lists([[4, 5, 3], [12, 3]]))  # ids up to V - 1 = 12 are fine
    with pytest.raises(VaelabError, match="vocabulary holds 13 words; build the model from this data's spec"):
        model.check_data(Sequences.from_lists([[4, 13, 3]]))


@pytest.mark.parametrize("family", ["sentence_vae", "lstm_lm"])
def test_under_bf16_autocast_the_loss_is_float32_and_close_to_float32s(family):
    """train.precision = 'bf16' runs the LSTMs and projections in bf16; the softmax, the KL and the loss
    stay float32, within 2% of the float32 loss on the same weights, batch and noise."""
    torch.manual_seed(0)
    cfg = dict(embedding_dim=16, hidden_size=32, word_dropout=0.0)
    model = (_vae(latent_dim=4, **cfg) if family == "sentence_vae"
             else build_model(LSTMLanguageModelConfig(**cfg), SPEC))
    assert model.supports_bf16
    batch = _random_batch(torch.Generator().manual_seed(1), 16)
    model.train()
    out = {}
    for on in (False, True):
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            out[on] = model(batch)
    assert out[True].loss.dtype == torch.float32 and out[True].elbo.dtype == torch.float32
    assert out[True].loss.item() == pytest.approx(out[False].loss.item(), rel=0.02)
    assert out[True].loss.item() != out[False].loss.item()
    out[True].loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
