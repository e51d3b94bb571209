"""The speech VQ-VAE: code lengths, padding that never changes a clip's loss, the speaker's part in the
decoder, the decoded mean in samples, training through the run pipeline and the report's audio."""

import io
import json
import math
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.io import wavfile

from vaelab.config import config_from_dict, read_toml
from vaelab.distributions import DiscretizedLogistic
from vaelab.errors import VaelabError
from vaelab.models import build_model
from vaelab.models.base import ReportInputs
from vaelab.models.vqvae_speech import SpeechVQVAEConfig, mu_law_logistic_mean
from vaelab.sections import AudioSection, LinesSection
from vaelab.spec import DataSpec
from vaelab.waves import WaveBatch, Waveforms, mu_law_decode, mu_law_encode, spectral_distance

pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

SPEC = DataSpec((300,), "waveforms", extra={"sample_rate": 8000, "labels": {"speaker": ["a", "b", "c"]}})


def tiny(seed=0, **kw):
    """A small model, stride 8 (downsample 3), 8 codes of 3, speaker embedding of 4."""
    settings = dict(hidden=8, res_blocks=1, res_channels=4, downsample=3, codebook_size=8, code_dim=3,
                    speaker_dim=4) | kw
    torch.manual_seed(seed)
    return build_model(SpeechVQVAEConfig(**settings), SPEC)


def clips(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.5 * torch.sin(torch.arange(n) * (0.05 + 0.3 * torch.rand((), generator=g)))
            + 0.05 * torch.randn(n, generator=g) for n in lengths]


def batch_of(waves, index, speakers):
    b = waves.pad(torch.as_tensor(index))
    return WaveBatch(b.audio, b.lengths, b.mask, {"speaker": torch.as_tensor(speakers)})


@pytest.mark.parametrize("width,codes", [(64, 8), (61, 8), (57, 8), (8, 1), (1, 1)])
def test_codes_are_ceil_width_over_stride_and_outputs_are_cropped_back(width, codes):
    """T samples -> ceil(T / 8) codes (the audio zero-padded at the end to 8 ceil(T / 8)), and the
    reconstruction is cropped back to T, zero past each clip's end."""
    model = tiny().eval()
    waves = Waveforms.from_clips(clips([width, max(1, width // 2)]))
    x = batch_of(waves, [0, 1], [0, 2])
    assert model.encode_codes(x).shape == (2, codes)
    assert model.encode_vectors(x).shape == (2, 3, codes)
    assert model.code_lengths(x.lengths).tolist() == [codes, -(-max(1, width // 2) // 8)]
    rec = model.reconstruct(x)
    assert rec.audio.shape == (2, width) and torch.equal(rec.lengths, x.lengths)
    assert bool((rec.audio[~x.mask] == 0).all()) and torch.equal(rec.labels["speaker"], x.labels["speaker"])
    out = model.loss(x)
    assert out.kl.tolist() == pytest.approx([n * math.log(8) for n in model.code_lengths(x.lengths).tolist()])
    assert model.decode_codes(model.encode_codes(x)).audio.shape == (2, 8 * codes)


@pytest.mark.parametrize("quantizer", ["ema", "vq"])
def test_padding_never_changes_a_clips_loss_codes_or_reconstruction(quantizer):
    """Each clip alone (its own width) and in a batch padded to a longer clip: the same per-clip
    terms, the same codes at its real positions and the same reconstruction; and the quantizer sees
    only the real code vectors (the codebook learns nothing from padding)."""
    model = tiny(quantizer=quantizer).eval()
    lengths = [300, 37, 100, 9, 299]
    waves = Waveforms.from_clips(clips(lengths, seed=1))
    together = batch_of(waves, range(5), [0, 1, 2, 0, 1])
    out, codes, rec = model.loss(together), model.encode_codes(together), model.reconstruct(together)
    for i, n in enumerate(lengths):
        alone = batch_of(waves, [i], [together.labels["speaker"][i]])
        one = model.loss(alone)
        for name in ("elbo", "reconstruction", "kl", "commitment", "codebook"):
            a, b = getattr(one, name), getattr(out, name)
            if a is None:
                assert b is None and quantizer == "ema"
                continue
            torch.testing.assert_close(a[0], b[i], rtol=1e-5, atol=1e-4)
        n_codes = -(-n // 8)
        assert torch.equal(model.encode_codes(alone)[0], codes[i, :n_codes])
        torch.testing.assert_close(model.reconstruct(alone).audio[0], rec.audio[i, :n], rtol=0, atol=1e-5)
    model.train()
    q = model.quantize(together)
    assert q.vectors.codes.numel() == sum(-(-n // 8) for n in lengths)  # 38 + 5 + 13 + 2 + 38 vectors
    assert torch.equal(q.n_codes, torch.tensor([38, 5, 13, 2, 38]))
    assert bool((q.z_q[:, :, 5:][1] == 0).all())  # past clip 1's 5 codes: no vector


def test_the_speaker_embedding_is_all_that_changes_between_speakers_and_conversion_keeps_shapes():
    model = tiny(seed=3).eval()
    with torch.no_grad():
        model.decoder.speaker.weight.mul_(10)  # an untrained embedding speaks softly; make it heard
    waves = Waveforms.from_clips(clips([200, 120], seed=2))
    x = batch_of(waves, [0, 1], [0, 1])
    codes = model.encode_codes(x)
    as0, as1 = model.decode_codes(codes, 0, x.lengths), model.decode_codes(codes, 1, x.lengths)
    assert (as0.audio - as1.audio).abs().max() > 1e-3
    assert torch.equal(as0.labels["speaker"], torch.tensor([0, 0]))
    conv = model.convert(x, 2)
    assert conv.audio.shape == x.audio.shape and torch.equal(conv.labels["speaker"], torch.tensor([2, 2]))
    assert torch.equal(conv.mask, x.mask) and bool((conv.audio[~x.mask] == 0).all())
    torch.testing.assert_close(model.convert(x, torch.tensor([0, 1])).audio, model.reconstruct(x).audio)
    with torch.no_grad():  # give speaker 1 speaker 0's embedding: the two decodes agree
        model.decoder.speaker.weight[1] = model.decoder.speaker.weight[0]
    torch.testing.assert_close(model.decode_codes(codes, 1, x.lengths).audio, as0.audio)
    with pytest.raises(VaelabError, match=r"speaker must be an int or \(B,\)"):
        model.convert(x, 3)
    no_labels = WaveBatch(x.audio, x.lengths, x.mask)
    with pytest.raises(VaelabError, match="carries no 'speaker' labels"):
        model.loss(no_labels)
    plain = build_model(SpeechVQVAEConfig(hidden=8, res_blocks=1, res_channels=4, downsample=3,
                                          codebook_size=8, code_dim=3, condition_on_speaker=False), SPEC)
    assert plain.n_speakers == 0 and plain.decoder.speaker is None
    assert torch.isfinite(plain.loss(no_labels).loss)  # needs no speaker
    with pytest.raises(VaelabError, match="convert needs a decoder conditioned on the speaker"):
        plain.convert(no_labels, 0)


def test_decode_codes_of_the_codes_is_the_mean_of_the_loss_likelihood():
    """In eval mode decode_codes(encode_codes(x)) is E[x | z_q(x), s] of the very distribution the
    loss scores; and that mean equals the sum over the 256 mu-law levels of P(level) x sample."""
    model = tiny(seed=4).eval()
    waves = Waveforms.from_clips(clips([150, 61, 90], seed=3))
    x = batch_of(waves, [0, 1, 2], [2, 0, 1])
    q = model.quantize(x)
    out = model.decoder_output(q.z_q, x.labels["speaker"], x.lengths, 150)
    mean = model.decode_mean(out, x.lengths)
    decoded = model.decode_codes(model.encode_codes(x), x.labels["speaker"], x.lengths)
    torch.testing.assert_close(decoded.audio[:, :150], mean, rtol=0, atol=1e-6)
    real = torch.arange(19) < q.n_codes[:, None]
    assert torch.equal(model.encode_codes(x)[real], q.codes[real])
    # the mean, term by term from the 256 probabilities (which sum to 1)
    loc = torch.tensor([0.5, 0.1, 0.93, 0.5, -0.2])
    log_scale = torch.tensor([-3.0, -5.0, -2.0, 1.0, -4.0])
    levels = torch.arange(256, dtype=torch.float32) / 255
    p = DiscretizedLogistic(loc[:, None], log_scale[:, None]).log_prob(levels).exp()  # (5, 256)
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    brute = (p.double() * mu_law_decode(torch.arange(256)).double()).sum(1)
    torch.testing.assert_close(mu_law_logistic_mean(loc, log_scale).double(), brute, rtol=0, atol=1e-5)


def test_loss_terms_are_nats_per_clip_over_real_samples():
    """reconstruction = sum over real samples of log P(mu-law level); elbo = reconstruction - n log K;
    loss = mean(commitment - reconstruction) with the EMA quantizer."""
    model = tiny(seed=5).eval()
    waves = Waveforms.from_clips(clips([80, 33], seed=4))
    x = batch_of(waves, [0, 1], [1, 1])
    out = model.loss(x)
    q = model.quantize(x)
    o = model.decoder_output(q.z_q, x.labels["speaker"], x.lengths, 80)
    from vaelab.models.vqvae_speech import _split  # the parameters as the loss reads them

    loc, log_scale = _split(model.head, o)
    k = torch.round((torch.sign(x.audio) * torch.log1p(255 * x.audio.abs()) / math.log(256) + 1) / 2 * 255)
    lp = DiscretizedLogistic(loc, log_scale).log_prob(k / 255)
    torch.testing.assert_close(out.reconstruction, (lp * x.mask).sum(1))
    torch.testing.assert_close(out.elbo, out.reconstruction - torch.tensor([10.0, 5.0]) * math.log(8))
    torch.testing.assert_close(out.loss, (out.commitment - out.reconstruction).mean())
    assert bool((out.reconstruction <= 0).all())  # probabilities of levels: at most 0 nats


# ----------------------------------------------------------------------------- through the pipeline
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 240 steps through train_run on a wav: folder of sine clips of two
    "speakers" (low and high pitches) named in labels.csv, and evaluated."""
    from vaelab.experiment import evaluate_run, train_run

    root = tmp_path_factory.mktemp("speech")
    data = root / "sines"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = ["file,speaker"]
    for i in range(24):
        who = "high" if i % 2 else "low"
        f = rng.uniform(300, 500) * (3 if i % 2 else 1)
        n = int(rng.integers(400, 900))
        t = np.arange(n) / 8000
        x = 0.6 * np.sin(2 * np.pi * f * t) * np.hanning(n) + 0.01 * rng.standard_normal(n)
        wavfile.write(data / f"{i:02d}.wav", 8000, (x * 32767).astype(np.int16))
        rows.append(f"{i:02d}.wav,{who}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    cfg = config_from_dict({
        "model": {"name": "vqvae_speech", "hidden": 32, "res_blocks": 1, "res_channels": 8, "downsample": 3,
                  "codebook_size": 16, "code_dim": 8, "speaker_dim": 4, "kmeans_iters": 5,
                  "restart_after": 20},
        "data": {"name": f"wav:{data}", "crop": 256, "valid_size": 2},
        "train": {"epochs": 80, "batch_size": 8, "lr": 3e-3, "log_every": 3, "eval_every": 120,
                  "checkpoint_every": 240},
        "eval": {"batch_size": 4},
    })
    run = root / "run"
    _, prep = train_run(cfg, run, device=torch.device("cpu"), progress=False)
    result = evaluate_run(run, torch.device("cpu"))
    return run, prep, result


def test_training_through_the_pipeline_lowers_the_reconstruction_loss(trained):
    run, prep, result = trained
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("split") == "train"]
    assert train[-1]["step"] == 240 and {"perplexity", "usage", "commitment"} <= set(train[-1])
    per_sample = [r["reconstruction"] / 256 for r in train]  # log p(x|z) of 256-sample crops
    first, last = np.mean(per_sample[:3]), np.mean(per_sample[-3:])
    # better than the first steps, and than a uniform distribution over the 256 levels by 0.2 nats
    assert last > first and last > -math.log(256) + 0.2, (first, last)
    valid = [r for r in rows if r.get("split") == "valid"]
    assert valid and "codebook_perplexity" in valid[-1] and valid[-1]["codebook_usage"] > 0
    # evaluation on whole test clips: bits per (8-bit mu-law) sample, -ELBO over the clips' samples
    samples = int(prep.bundle.test.lengths.sum())
    n = len(prep.bundle.test)
    assert result["bits_per_sample"] == pytest.approx(-result["elbo"] * n / (samples * math.log(2)), rel=1e-4)
    assert -result["reconstruction"] * n / (samples * math.log(2)) < 8  # the codes help: under 8 bits
    assert result["units"].startswith("bits per sample")


def test_the_report_has_originals_reconstructions_and_conversions_as_audio(trained):
    from vaelab.sections import read_sections

    run, prep, _ = trained
    sections = {s.name: s for s in read_sections(run)}
    audio = sections["audio"]
    assert isinstance(audio, AudioSection) and isinstance(sections["codebook_usage"], LinesSection)
    n = len(audio.clips)
    assert n % 3 == 0 and n >= 3 and len(audio.labels) == n
    assert "original" in audio.labels[0] and "reconstruction" in audio.labels[1]
    assert "as speaker" in audio.labels[2]
    frames = []
    for clip in audio.clips:
        with wave.open(io.BytesIO(clip)) as w:
            assert w.getframerate() == 8000 and w.getnchannels() == 1
            frames.append(w.getnframes())
    assert frames[0] == frames[1] == frames[2] > 0  # the three versions of a clip are as long


@pytest.mark.parametrize(
    "model,match",
    [
        ({"downsample": 0}, "model.downsample must be a positive integer"),
        ({"codebook_size": 1}, "model.codebook_size must be >= 2"),
        ({"quantizer": "gumbel"}, "model.quantizer must be one of 'ema', 'vq'"),
        ({"ema_decay": 1.0}, r"model.ema_decay must be in \[0, 1\)"),
        ({"restart_after": -1}, "model.restart_after must be >= 0"),
        ({"restart_below": -1.0}, "model.restart_below must be >= 0 vectors a step"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(model, match):
    with pytest.raises(VaelabError, match=match) as err:
        config_from_dict({"model": {"name": "vqvae_speech", **model}})
    assert "\n" not in str(err.value)


def test_speaker_conditioning_without_speaker_labels_is_a_one_line_error():
    spec = DataSpec((100,), "waveforms", extra={"sample_rate": 8000, "labels": {"digit": ["0", "1"]}})
    with pytest.raises(VaelabError, match="condition_on_speaker = true needs the data's speaker") as err:
        build_model(SpeechVQVAEConfig(), spec)
    assert "\n" not in str(err.value) and "condition_on_speaker = false" in str(err.value)
    assert build_model(SpeechVQVAEConfig(condition_on_speaker=False), spec).n_speakers == 0


def test_report_sections_without_inputs_and_with_a_batch():
    model = tiny(seed=6).eval()
    waves = Waveforms.from_clips(clips([100, 50, 70, 20, 90], seed=5))
    x = batch_of(waves, range(5), [0, 1, 2, 0, 1])
    out = model.report_sections(ReportInputs([x], None, 4))
    audio = out[0]
    assert isinstance(audio, AudioSection) and len(audio.clips) == 12  # 4 clips x 3 versions
    assert audio.labels[2] == "clip 1: as speaker b" and audio.labels[5] == "clip 2: as speaker c"
    usage = out[1]
    n_codes = sum(-(-n // 8) for n in [100, 50, 70, 20, 90])
    assert f"over the inputs' {n_codes} code positions" in usage.caption
    assert [s.name for s in model.report_sections(ReportInputs([], None, 4))] == ["codebook_usage"]


# ----------------------------------------------------------------------------- presets
ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
FSDD_SPEC = DataSpec((18262,), "waveforms", n_classes=10, extra={
    "sample_rate": 8000, "labels": {"digit": [str(d) for d in range(10)], "speaker": SPEAKERS}})


def test_the_presets_build_for_fsdd_at_125_codes_a_second():
    for name in ("smoke_vqvae_speech_fsdd", "vqvae_speech_fsdd"):
        cfg = config_from_dict(read_toml(ROOT / "configs" / f"{name}.toml"))
        assert cfg.model.name == "vqvae_speech" and cfg.data.name == "fsdd"
        model = build_model(cfg.model, FSDD_SPEC)
        assert model.n_speakers == 6
    assert model.stride == 64 and 8000 / model.stride == 125 and model.codebook_size == 256


@pytest.mark.datasets("fsdd")
def test_the_smoke_preset_trains_on_fsdd_from_the_command_line(data_root, tmp_path):
    from vaelab.cli import main
    from vaelab.experiment import load_run_model
    from vaelab.models.vqvae_speech import SpeechVQVAE

    run = tmp_path / "smoke"
    args = ["train", str(ROOT / "configs" / "smoke_vqvae_speech_fsdd.toml"), "--out", str(run), "--quiet",
            "--no-eval", "--set", "train.max_steps=3", "--set", "train.threads=1"]
    assert main(args) == 0
    model, _, _ = load_run_model(run, torch.device("cpu"))
    assert isinstance(model, SpeechVQVAE) and model.speaker_names[0] == "george"


def test_encode_writes_each_clips_codes_padded_with_minus_one(trained, tmp_path, capsys):
    from vaelab.cli import main
    from vaelab.experiment import load_run_model

    run, prep, _ = trained
    out = tmp_path / "codes.npy"
    data = json.loads((run / "config.json").read_text())["data"]["name"]
    assert main(["encode", str(run), "--data", data, "--out", str(out), "--device", "cpu"]) == 0
    codes = np.load(out)
    test = prep.bundle.test
    model, _, _ = load_run_model(run, torch.device("cpu"))
    n = model.code_lengths(test.lengths).numpy()
    assert codes.shape == (len(test), n.max()) and f"latents {codes.shape}" in capsys.readouterr().out
    for i in range(len(test)):  # the clip's own codes, as one clip alone gives them, then -1
        alone = model.encode_codes(test.pad(torch.tensor([i])))[0]
        assert codes[i, : n[i]].tolist() == alone[: n[i]].tolist()
        assert (codes[i, : n[i]] >= 0).all() and (codes[i, n[i]:] == -1).all()


# ----------------------------------------------------------------------------- the WaveNet decoder
def tiny_wavenet(seed=0, **kw):
    settings = dict(hidden=8, res_blocks=1, res_channels=4, downsample=3, codebook_size=8, code_dim=3,
                    speaker_dim=4, decoder="wavenet", wavenet_channels=6, wavenet_skip=8, wavenet_layers=4,
                    wavenet_cycle=2, cond_channels=3, mixtures=2) | kw
    torch.manual_seed(seed)
    return build_model(SpeechVQVAEConfig(**settings), SPEC)


def test_padding_never_changes_a_clips_loss_with_the_wavenet_decoder():
    model = tiny_wavenet().eval()
    lengths = [300, 37, 100, 9]
    waves = Waveforms.from_clips(clips(lengths, seed=1))
    together = model.loss(batch_of(waves, range(4), [0, 1, 2, 0]))
    for i in range(4):
        alone = model.loss(batch_of(waves, [i], [[0, 1, 2, 0][i]]))
        torch.testing.assert_close(alone.reconstruction[0], together.reconstruction[i], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(alone.elbo[0], together.elbo[i], rtol=1e-5, atol=1e-4)


def test_the_wavenet_decoder_samples_mu_law_levels_and_scores_them():
    """Decoding codes samples the WaveNet: every decoded sample is one of the 256 mu-law levels, zero
    past each clip's end, the speaker's label is the one decoded with, and the parallel pass scores
    the draws with a finite log-likelihood (no level the sampler can reach has probability 0)."""
    model = tiny_wavenet(seed=2).eval()
    waves = Waveforms.from_clips(clips([120, 70], seed=4))
    x = batch_of(waves, [0, 1], [1, 2])
    torch.manual_seed(5)
    rec = model.reconstruct(x)
    assert rec.audio.shape == x.audio.shape and bool((rec.audio[~x.mask] == 0).all())
    assert torch.equal(rec.labels["speaker"], torch.tensor([1, 2]))
    real = rec.audio[x.mask.bool()]
    torch.testing.assert_close(mu_law_decode(mu_law_encode(real)), real, rtol=0, atol=1e-6)
    assert len(torch.unique(rec.audio)) > 10
    conv = model.convert(x, 0)
    assert torch.equal(conv.labels["speaker"], torch.tensor([0, 0])) and conv.audio.shape == x.audio.shape
    z_q = model.quantizer.lookup(model.encode_codes(x))
    with torch.no_grad():
        own = model.log_prob(model.decoder_output(z_q, x.labels["speaker"], x.lengths, 120, rec.audio),
                             WaveBatch(rec.audio, x.lengths, x.mask, {}))
    assert bool(torch.isfinite(own).all())


def test_the_wavenet_speech_model_learns():
    """A few dozen Adam steps on four clips lower the loss (the decoder's part) by a margin."""
    model = tiny_wavenet(seed=3).train()
    waves = Waveforms.from_clips(clips([200, 160, 190, 120], seed=6))
    x = batch_of(waves, range(4), [0, 1, 2, 0])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    first = None
    for _ in range(60):
        out = model.loss(x)
        first = first if first is not None else out.loss.item()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    per_sample = (first - out.loss.item()) / 670 * 4
    assert per_sample > 1.0  # nats per sample (3.1 measured)


@pytest.mark.parametrize(
    "model,match",
    [
        ({"decoder": "lstm"}, "model.decoder must be"),
        ({"temperature": 0.0}, r"model.temperature must be in \(0, 1\]"),
        ({"wavenet_layers": 0}, "model.wavenet_layers must be a positive integer"),
        ({"mixtures": 0}, "model.mixtures must be a positive integer"),
    ],
)
def test_bad_wavenet_settings_are_one_line_errors(model, match):
    with pytest.raises(VaelabError, match=match) as err:
        config_from_dict({"model": {"name": "vqvae_speech", **model}})
    assert "\n" not in str(err.value)


def test_the_auxiliary_likelihood_adds_to_the_loss_only():
    """aux_weight w: the loss is the plain loss minus w times the auxiliary log-likelihood (nats per
    clip, a discretized logistic per sample from the mirror's features); the bound is unchanged."""
    plain, aux = tiny_wavenet(seed=7).eval(), tiny_wavenet(seed=7, aux_weight=0.5).eval()
    head = {k: v for k, v in aux.state_dict().items() if k.startswith("aux_head")}
    aux.load_state_dict(plain.state_dict() | head)  # the same weights but for the auxiliary head
    x = batch_of(Waveforms.from_clips(clips([80, 50], seed=8)), [0, 1], [0, 2])
    a, b = plain.loss(x), aux.loss(x)
    torch.testing.assert_close(b.elbo, a.elbo)
    extra = b.extras["aux_reconstruction"]
    assert extra.shape == (2,) and bool((extra < 0).all())
    torch.testing.assert_close(b.loss, a.loss - 0.5 * extra.mean())
    with pytest.raises(VaelabError, match="aux_weight is for the wavenet decoder"):
        config_from_dict({"model": {"name": "vqvae_speech", "aux_weight": 1.0}})


# ----------------------------------------------------------------------------- the spectral term
def test_spectral_distance_is_zero_for_equal_clips_and_log_c_for_a_louder_copy():
    """|log(c |X| + f) - log(|X| + f)| = log c wherever |X| >> f: white noise of amplitude 0.5 has
    |X| of order 3 at the smallest window, so a copy twice as loud is log 2 away (to 1e-3)."""
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(3, 4000, generator=g)
    lengths = torch.full((3,), 4000)
    assert float(spectral_distance(x, x.clone(), lengths).abs().max()) == 0.0
    torch.testing.assert_close(spectral_distance(x, 2 * x, lengths), torch.full((3,), math.log(2.0)),
                               rtol=0, atol=1e-3)


def test_spectral_distance_ignores_the_phase_but_not_the_pitch_nor_the_padding():
    t = torch.arange(4000.0)
    tone = torch.sin(0.3 * t)
    shifted, other = torch.sin(0.3 * t + 1.0), torch.sin(0.5 * t)
    lengths = torch.full((1,), 4000)
    near = float(spectral_distance(tone[None], shifted[None], lengths))
    far = float(spectral_distance(tone[None], other[None], lengths))
    # sample by sample the shifted tone is as far off as the other pitch; in short-time spectra it
    # is within the window's leakage (0.11 here), another pitch is not (0.99)
    assert float((tone - shifted).pow(2).mean()) > 0.4 and float((tone - other).pow(2).mean()) > 0.4
    assert far > 5 * near
    # a clip padded with zeros to a longer batch keeps its distance
    a, b = clips([700], seed=3)[0], clips([700], seed=4)[0]
    alone = spectral_distance(a[None], b[None], torch.tensor([700]))
    padded = spectral_distance(F.pad(a, (0, 333))[None], F.pad(b, (0, 333))[None], torch.tensor([700]))
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        spectral_distance(a[None], b[None, :600], torch.tensor([600]))


@pytest.mark.parametrize("make", [tiny, tiny_wavenet], ids=["mirror", "wavenet"])
def test_the_spectral_term_adds_to_the_loss_only_and_reaches_the_encoder(make):
    """spectral_weight w: the loss is the plain loss plus w times the extra ``spectral`` (the
    distance of each clip to its decoded mean, or to the wave head's waveform, times its length);
    the bound is unchanged; the term's gradient reaches the encoder; padding does not change it."""
    plain, spec = make(seed=5).eval(), make(seed=5, spectral_weight=0.5).eval()
    spec.load_state_dict(plain.state_dict() | {k: v for k, v in spec.state_dict().items()
                                               if k.startswith("wave_head")})
    waves = Waveforms.from_clips(clips([300, 120], seed=6))
    x = batch_of(waves, [0, 1], [0, 2])
    a, b = plain.loss(x), spec.loss(x)
    torch.testing.assert_close(b.elbo, a.elbo)
    extra = b.extras["spectral"]
    assert extra.shape == (2,) and bool((extra > 0).all())
    torch.testing.assert_close(b.loss, a.loss + 0.5 * extra.mean())
    if make is tiny:  # the mirror's decoded mean, E[x | z_q, s]
        out = spec.decoder_output(spec.quantize(x).z_q, x.labels["speaker"], x.lengths, x.audio.shape[-1])
        expected = spectral_distance(spec.decode_mean(out, x.lengths), x.audio, x.lengths) * x.lengths
        torch.testing.assert_close(extra, expected)
    else:
        assert plain.wave_head is None and spec.wave_head is not None
    for i in range(2):
        alone = spec.loss(batch_of(waves, [i], [[0, 2][i]])).extras["spectral"]
        torch.testing.assert_close(alone[0], extra[i], rtol=1e-4, atol=1e-3)
    spec.train()
    spec.zero_grad()
    spec._spectral_term(*spec._outputs(spec.quantize(x).z_q, x.labels["speaker"], x.lengths,
                                       x.audio.shape[-1], x.audio), x).sum().backward()
    grads = [p.grad for p in spec.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum().item() for g in grads) > 0
    with pytest.raises(VaelabError, match="spectral_weight must be >= 0"):
        config_from_dict({"model": {"name": "vqvae_speech", "spectral_weight": -1.0}})
