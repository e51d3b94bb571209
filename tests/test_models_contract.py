"""One contract, every registered model: a model added without a case here fails the suite."""

import pytest
import torch
from torch.distributions import Distribution

from vaelab import sections
from vaelab.codes import CodeBatch
from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.models import MODELS, build_model
from vaelab.models.base import (
    AutoregressivePrior,
    DiscreteCodeModel,
    GenerativeLatentModel,
    LatentVariableModel,
    Model,
    Reconstructing,
    ReportInputs,
    Sampling,
)
from vaelab.models.mcem import MCEMConfig
from vaelab.models.pixelcnn_prior import PixelCNNPriorConfig
from vaelab.models.sentence_vae import LSTMLanguageModelConfig, SentenceVAEConfig
from vaelab.models.vae import VAEConfig
from vaelab.models.vqvae import VQVAEConfig
from vaelab.models.vqvae_speech import SpeechVQVAEConfig
from vaelab.models.wake_sleep import WakeSleepConfig
from vaelab.spec import KINDS, DataSpec
from vaelab.tokens import Sequences, TokenBatch
from vaelab.train import checkpoint as ckpt
from vaelab.train.loop import build_optimizer
from vaelab.waves import WaveBatch, Waveforms


def _binary(shape):
    return lambda g, b: (torch.rand(b, *shape, generator=g) < 0.3).float()


def _grey(shape):
    return lambda g, b: torch.rand(b, *shape, generator=g)


_WORDS = ["<pad>", "<unk>", "<bos>", "<eos>", "the", "cat", "sat", "on", "a", "mat"]
_TEXT = DataSpec((7,), "tokens", extra={"vocab": _WORDS, "pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3})


def _sentences(g, b):
    """b sentences of 1-6 random words and <eos>, padded into a TokenBatch (widest first, so the
    batch is as wide as its longest sentence)."""
    lengths = torch.randint(1, 7, (b,), generator=g)
    lengths[0] = 6
    seqs = [torch.randint(4, len(_WORDS), (int(n),), generator=g).tolist() + [3] for n in lengths]
    return Sequences.from_lists(seqs).pad(torch.arange(b), 0)


def _codes(k, shape, n_classes=0):
    """Code maps (b, *shape) in [0, k) with labels in [0, n_classes) (None when 0) as a CodeBatch."""
    def make(g, b):
        labels = torch.randint(0, n_classes, (b,), generator=g) if n_classes else None
        return CodeBatch(torch.randint(0, k, (b, *shape), generator=g), labels)
    return make


_SPEAKERS = DataSpec((27,), "waveforms", extra={"sample_rate": 8000, "labels": {"speaker": ["a", "b", "c"]}})


def _waves(width):
    """b clips of noise (width // 3 to width samples, the first the widest), padded into a WaveBatch
    with masks and a speaker each."""
    def make(g, b):
        lengths = torch.randint(width // 3, width + 1, (b,), generator=g)
        lengths[0] = width
        clips = [(0.3 * torch.randn(int(n), generator=g)).clamp(-1, 1) for n in lengths]
        batch = Waveforms.from_clips(clips).pad(torch.arange(b))
        speaker = torch.randint(3, (b,), generator=g)
        return WaveBatch(batch.audio, batch.lengths, batch.mask, {"speaker": speaker})
    return make


def _form(v):
    """The shape of a batch: a WaveBatch's audio (B, T), else the tensor's."""
    return v.audio.shape if isinstance(v, WaveBatch) else v.shape


def _event(x, b, px):
    """x as ``px.log_prob`` takes it: token batches as they are, tensors flattened to its event."""
    return x if isinstance(x, TokenBatch) else x.reshape(b, *px.event_shape)


# name -> list of (config, spec, batch maker)
CASES = {
    "vae": [
        (VAEConfig(latent_dim=3, hidden=[16]), DataSpec((1, 6, 5), "binary"), _binary((1, 6, 5))),
        (
            VAEConfig(latent_dim=2, hidden=[8, 8], activation="tanh", likelihood="gaussian"),
            DataSpec((1, 4, 4), "continuous"),
            _grey((1, 4, 4)),
        ),
        (
            VAEConfig(latent_dim=2, hidden=[8], objective="iwae", n_samples=4),
            DataSpec((3, 2, 2), "binary"),
            _binary((3, 2, 2)),
        ),
        (
            VAEConfig(latent_dim=2, hidden=[8], analytic_kl=False, n_samples=2, kl_warmup_steps=10),
            DataSpec((1, 3, 3), "binary"),
            _binary((1, 3, 3)),
        ),
        (
            VAEConfig(latent_dim=2, hidden=[8], activation="tanh", likelihood="gaussian_sigmoid",
                      init_std=0.1),
            DataSpec((1, 4, 4), "continuous"),
            _grey((1, 4, 4)),
        ),
    ],
    "wake_sleep": [
        (WakeSleepConfig(latent_dim=3, hidden=[16]), DataSpec((1, 6, 5), "binary"), _binary((1, 6, 5))),
        (
            WakeSleepConfig(latent_dim=2, hidden=[8, 8], activation="tanh", likelihood="gaussian_sigmoid"),
            DataSpec((1, 4, 4), "continuous"),
            _grey((1, 4, 4)),
        ),
    ],
    "sentence_vae": [
        (SentenceVAEConfig(embedding_dim=6, hidden_size=8, latent_dim=3, word_dropout=0.25,
                           kl_warmup_steps=10), _TEXT, _sentences),
        (SentenceVAEConfig(embedding_dim=8, hidden_size=8, latent_dim=2, layers=2, tie_embeddings=True,
                           z_every_step=True, word_dropout=1.0, kl_schedule="linear", kl_warmup_steps=5,
                           free_bits=0.1), _TEXT, _sentences),
    ],
    "lstm_lm": [
        (LSTMLanguageModelConfig(embedding_dim=6, hidden_size=8, word_dropout=0.25), _TEXT, _sentences),
        (LSTMLanguageModelConfig(embedding_dim=8, hidden_size=8, layers=2, tie_embeddings=True), _TEXT,
         _sentences),
    ],
    "vqvae": [
        # EMA codebook, Bernoulli pixels; 6x5 is padded to 6x6 (3x3 codes) and the output cropped
        (VQVAEConfig(hidden=8, res_blocks=1, res_channels=4, downsample=1, codebook_size=8, code_dim=3),
         DataSpec((1, 6, 5), "binary"), _binary((1, 6, 5))),
        # codebook by gradient, k-means initialisation and restarts, Gaussian pixels with learned variances
        (VQVAEConfig(hidden=8, res_blocks=2, res_channels=4, downsample=2, codebook_size=6, code_dim=2,
                     quantizer="vq", kmeans_iters=2, restart_after=1, likelihood="gaussian"),
         DataSpec((3, 8, 8), "continuous"), _grey((3, 8, 8))),
    ],
    "pixelcnn_prior": [
        # unconditional, over 3x4 maps of K = 5 codes
        (PixelCNNPriorConfig(channels=8, layers=2), DataSpec((3, 4), "codes", extra={"codebook_size": 5}),
         _codes(5, (3, 4))),
        # class-conditional (3 classes), 5x5 kernels
        (PixelCNNPriorConfig(channels=6, layers=3, kernel=5, class_conditional=True),
         DataSpec((4, 3), "codes", n_classes=3, extra={"codebook_size": 7}), _codes(7, (4, 3), 3)),
    ],
    "vqvae_speech": [
        # EMA codebook, speaker-conditioned decoder; 24 samples are 6 codes of 4
        (SpeechVQVAEConfig(hidden=8, res_blocks=1, res_channels=4, downsample=2, codebook_size=8, code_dim=3,
                           speaker_dim=4), _SPEAKERS, _waves(24)),
        # codebook by gradient, k-means initialisation and restarts, no speaker; 27 samples are padded
        # to 32 (4 codes of 8) and the output cropped
        (SpeechVQVAEConfig(hidden=8, res_blocks=2, res_channels=4, downsample=3, codebook_size=6, code_dim=2,
                           quantizer="vq", kmeans_iters=2, restart_after=1, condition_on_speaker=False),
         DataSpec((27,), "waveforms", extra={"sample_rate": 8000, "labels": {}}), _waves(27)),
        # the WaveNet decoder (speaker as its global conditioning), rare codes re-seeded
        (SpeechVQVAEConfig(hidden=8, res_blocks=1, res_channels=4, downsample=2, codebook_size=8, code_dim=3,
                           speaker_dim=4, decoder="wavenet", wavenet_channels=4, wavenet_skip=6,
                           wavenet_layers=3, wavenet_cycle=2, cond_channels=3, mixtures=2,
                           restart_below=0.5), _SPEAKERS, _waves(24)),
        # the WaveNet decoder with both training-only terms (auxiliary likelihood, spectral distance)
        (SpeechVQVAEConfig(hidden=8, res_blocks=1, res_channels=4, downsample=2, codebook_size=8, code_dim=3,
                           speaker_dim=4, decoder="wavenet", wavenet_channels=4, wavenet_skip=6,
                           wavenet_layers=3, wavenet_cycle=2, cond_channels=3, mixtures=2,
                           aux_weight=0.5, spectral_weight=0.5), _SPEAKERS, _waves(24)),
    ],
    "mcem": [
        (MCEMConfig(latent_dim=2, hidden=[8], hmc_transitions=2, leapfrog_steps=3),
         DataSpec((1, 3, 3), "binary"), _binary((1, 3, 3))),
        (
            MCEMConfig(latent_dim=1, hidden=[6], likelihood="gaussian", hmc_transitions=1, leapfrog_steps=2,
                       updates_per_sample=1),
            DataSpec((1, 2, 2), "continuous"),
            _grey((1, 2, 2)),
        ),
    ],
}

PARAMS = [pytest.param(name, i, id=f"{name}-{i}") for name, cases in CASES.items() for i in range(len(cases))]


def test_every_registered_model_has_a_contract_case():
    assert set(CASES) == set(MODELS), "add a contract case for every registered model"


def _make(name, i, seed=0):
    cfg, spec, batch = CASES[name][i]
    torch.manual_seed(seed)
    model = build_model(cfg, spec)
    x = batch(torch.Generator().manual_seed(seed), 5)
    return model, x


@pytest.mark.parametrize("name,i", PARAMS)
def test_loss_shapes_and_finiteness(name, i):
    model, x = _make(name, i)
    out = model.loss(x)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for term in (out.elbo, out.reconstruction, out.kl):
        if term is not None:
            assert term.shape == (5,) and torch.isfinite(term).all()
    one_sample_elbo = not isinstance(model.config, VAEConfig) or model.config.objective == "elbo"
    if out.elbo is not None and out.kl is not None and one_sample_elbo:
        assert torch.allclose(out.elbo, out.reconstruction - out.kl, atol=1e-5)
    if out.kl is not None:
        assert (out.kl >= -1e-6).all()  # the analytic KL of a Gaussian to N(0, I) cannot be negative


@pytest.mark.parametrize("name,i", PARAMS)
def test_declared_interfaces_hold(name, i):
    """What a family declares (``isinstance``) it provides, with the shapes the interface states."""
    model, x = _make(name, i)
    model.eval()
    assert isinstance(model, Model) and model.data_kinds and model.spec.kind in model.data_kinds
    b = len(x)
    if isinstance(model, GenerativeLatentModel):
        p = model.prior()
        assert p.event_shape == (model.latent_dim,)
        z = p.sample((3, b))
        px = model.decode(z)
        assert isinstance(px, Distribution) and px.batch_shape == (3, b)
        # log p(x, z) = log p(z) + log p(x|z), from the declared pieces
        direct = p.log_prob(z) + px.log_prob(_event(x, b, px))
        torch.testing.assert_close(model.log_joint(x, z), direct)
    if isinstance(model, LatentVariableModel):
        q, p = model.encode(x), model.prior()
        assert isinstance(q, Distribution) and q.batch_shape == (b,) and q.event_shape == (model.latent_dim,)
        assert p.event_shape == (model.latent_dim,)
        z = q.sample((3,))
        px = model.decode(z)
        assert isinstance(px, Distribution) and px.batch_shape == (3, b)
        assert model.posterior_mean(x).shape == (b, model.latent_dim)
        lw = model.log_importance_weights(x, 7)
        assert lw.shape == (7, b) and torch.isfinite(lw).all()
        # the weights are log p(z) + log p(x|z) - log q(z|x), z ~ q(z|x): their mean over many samples
        # matches the same expectation computed from encode/decode/prior (within 5 standard errors)
        with torch.no_grad():
            torch.manual_seed(0)
            lw = model.log_importance_weights(x, 4000)
            z = q.sample((4000,))
            px = model.decode(z)
            direct = px.log_prob(_event(x, b, px)) + p.log_prob(z) - q.log_prob(z)
        se = (lw.var(0) / 4000 + direct.var(0) / 4000).sqrt()
        assert ((lw.mean(0) - direct.mean(0)).abs() < 5 * se + 1e-4).all()
    if isinstance(model, Reconstructing):
        assert _form(model.reconstruct(x)) == _form(x)
    if isinstance(model, Sampling):
        drawn = model.sample(4)
        if model.spec.kind == "tokens":  # sentences as strings
            assert len(drawn) == 4 and all(isinstance(s, str) for s in drawn)
        else:
            assert drawn.shape == (4, *model.spec.shape)
        section = model.samples_section(3)
        assert section.name == "samples" and type(section) in sections.SECTION_KINDS.values()
    if isinstance(model, DiscreteCodeModel):
        codes = model.encode_codes(x)
        assert codes.dtype == torch.long and codes.shape[0] == b
        assert codes.min() >= 0 and codes.max() < model.codebook_size
        decoded = model.decode_codes(codes)
        if isinstance(x, WaveBatch):  # T' codes decode to T' times the stride, at least the width
            assert decoded.audio.shape[0] == b and decoded.audio.shape[1] >= x.audio.shape[1]
        else:
            assert decoded.shape == x.shape
    if isinstance(model, AutoregressivePrior):
        y = torch.arange(3) % model.n_classes if model.n_classes else None
        c = model.sample(3, y)
        assert c.dtype == torch.long and c.shape == (3, *model.spec.shape)
        assert c.min() >= 0 and c.max() < model.spec.extra["codebook_size"]
        lp = model.log_prob(c, y)
        assert lp.shape == (3,) and (lp <= 0).all()


@pytest.mark.parametrize("name,i", PARAMS)
def test_report_sections_are_registered_kinds_that_round_trip(name, i, tmp_path):
    model, x = _make(name, i)
    model.eval()
    labels = torch.arange(len(x))
    out = model.report_sections(ReportInputs(list(x.split(3)), labels, n_samples=6))
    assert out and all(type(s) in sections.SECTION_KINDS.values() for s in out)
    assert len({s.name for s in out}) == len(out)
    sections.write_sections(tmp_path, out)
    back = sections.read_sections(tmp_path)
    assert [type(s) for s in back] == [type(s) for s in out]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_family_refuses_data_kinds_it_does_not_declare_in_one_line(name):
    cfg, spec, _ = CASES[name][0]
    other = next(k for k in KINDS if k not in MODELS[name].data_kinds)
    with pytest.raises(VaelabError, match=rf"does not accept '{other}' data \(it takes") as err:
        build_model(cfg, DataSpec(spec.shape, other))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,i", PARAMS)
def test_gradients_reach_every_parameter(name, i):
    model, x = _make(name, i)
    model.loss(x).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name,i", PARAMS)
def test_train_step_changes_weights_and_eval_does_not(name, i):
    model, x = _make(name, i)
    opt = build_optimizer(model.parameters(), TrainConfig(lr=1e-2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        model.loss(x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.train()
    opt.zero_grad()
    model.loss(x).loss.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    # every weight moves; a training buffer may too (MCEM's adapted HMC step size)
    assert set(changed) >= {k for k, _ in model.named_parameters()}


@pytest.mark.parametrize("name,i", PARAMS)
def test_checkpoint_round_trip(name, i, tmp_path):
    model, x = _make(name, i)
    ckpt.save_checkpoint(tmp_path / "step_00000001", model.state_dict(), {"model": {"name": name}})
    other, _ = _make(name, i, seed=99)
    ckpt.load_model_weights(other, ckpt.load_checkpoint(tmp_path))
    model.eval()
    other.eval()
    torch.manual_seed(7)
    a = model.loss(x).loss
    torch.manual_seed(7)
    b = other.loss(x).loss
    assert torch.equal(a, b)


def test_negative_latent_size_is_a_clear_error():
    from vaelab.config import config_from_dict
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError, match="model.latent_dim must be a positive integer"):
        config_from_dict({"model": {"name": "vae", "latent_dim": -3}})


def test_vae_kl_warmup_weights_the_kl_and_reports_the_true_elbo():
    """beta = step / warmup inside the training loss; the reported ELBO keeps beta = 1; evaluation
    and steps past the warm-up use beta = 1. The weight is one tensor updated in place, so a
    compiled loss (train.compile) takes it as an input and is not compiled again every step."""
    spec = DataSpec((1, 3, 3), "binary")
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=2, hidden=[5], kl_warmup_steps=10), spec)
    x = (torch.rand(6, 1, 3, 3) < 0.3).float()
    weight = model._kl_weight
    for step, beta in ((0, 0.0), (4, 0.4), (10, 1.0), (25, 1.0)):
        model.train_step = step
        assert model._kl_weight is weight and model._kl_weight.item() == pytest.approx(beta)
        torch.manual_seed(1)
        out = model.loss(x)
        torch.testing.assert_close(out.loss, -(out.reconstruction - beta * out.kl).mean())
        torch.testing.assert_close(out.elbo, out.reconstruction - out.kl)
    model.train_step = 4
    model.eval()
    torch.manual_seed(1)
    out = model.loss(x)
    torch.testing.assert_close(out.loss, -out.elbo.mean())
    assert "_kl_weight" not in model.state_dict()  # checkpoints are unchanged


BF16 = [p for p in PARAMS if MODELS[p.values[0]].supports_bf16]


def test_the_families_that_declare_bf16():
    assert {p.values[0] for p in BF16} == {"vae", "sentence_vae", "lstm_lm", "vqvae", "pixelcnn_prior"}


@pytest.mark.parametrize("name,i", BF16)
def test_a_family_declaring_bf16_keeps_its_probabilities_in_float32(name, i):
    """Under bf16 autocast (train.precision = 'bf16') the loss and the per-example bound are float32
    and close to float32's on the same weights, batch and noise (eval mode: no state changes), yet
    not equal to them (the networks' products did run in bf16); in training mode the gradients are
    finite."""
    model, x = _make(name, i)
    model.eval()
    out = {}
    for on in (False, True):
        torch.manual_seed(1)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=on):
            out[on] = model(x)
    for field in ("loss", "elbo"):
        got, ref = getattr(out[True], field), getattr(out[False], field)
        assert got.dtype == torch.float32, field
        assert torch.allclose(got, ref, rtol=0.05, atol=0.05), (field, got, ref)
    assert out[True].loss.item() != out[False].loss.item()
    model.train()
    torch.manual_seed(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).loss
    loss.backward()
    assert all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
