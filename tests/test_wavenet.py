"""The WaveNet decoder: causality and the receptive field, step-by-step generation equal to the
parallel pass, the mixture of discretized logistics (a distribution over the 256 levels, sampled as
it scores), and the speech VQ-VAE with the WaveNet decoder."""

import math

import pytest
import torch

from vaelab.config import config_from_dict
from vaelab.errors import VaelabError
from vaelab.models import build_model
from vaelab.models.vqvae_speech import SpeechVQVAEConfig
from vaelab.spec import DataSpec
from vaelab.wavenet import LogisticMixture, WaveNet, levels_to_inputs, shift_right
from vaelab.waves import WaveBatch, Waveforms, mu_law_decode, mu_law_encode

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

SPEC = DataSpec((300,), "waveforms", extra={"sample_rate": 8000, "labels": {"speaker": ["a", "b", "c"]}})


def net(cond=5, glob=3, layers=6, cycle=3, seed=0, out=12):
    torch.manual_seed(seed)
    return WaveNet(8, 12, layers, cycle, cond, glob, out).eval()


@pytest.mark.parametrize("cond,glob", [(5, 3), (0, 3), (5, 0), (0, 0)])
def test_generation_step_by_step_equals_the_parallel_pass(cond, glob):
    """Fed the true samples (teacher), the cached one-step recursion gives the outputs of the parallel
    pass at every position, whatever the chunking of the conditioning."""
    model = net(cond, glob)
    b, t = 3, 53
    x = torch.rand(b, t) * 2 - 1
    c = torch.randn(b, cond, t) if cond else None
    g = torch.randn(b, glob) if glob else None
    with torch.no_grad():
        want = model(shift_right(x), c, g)
    for chunk in (7, 256):
        _, got = model.generate(t, lambda o: o[:, 0].tanh(), c, g, batch=b, teacher=x, keep_outputs=True,
                                chunk=chunk)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_output_at_t_depends_on_exactly_the_receptive_field_before_t():
    """d out_t / d x_s is exactly 0 for s >= t (x_t is not its own input) and for s < t - r + 1, and
    not 0 at the field's far edge s = t - r + 1 (r = 2 + sum of the dilations = 16 here)."""
    model = net(cond=0, glob=0, layers=6, cycle=3)  # dilations 1 2 4 1 2 4
    assert model.receptive_field == 16
    t, n = 40, 64
    x = (torch.rand(1, n) * 2 - 1).requires_grad_()
    out = model(shift_right(x))
    (grad,) = torch.autograd.grad(out[0, :, t].sum(), x)
    nonzero = (grad[0] != 0).nonzero().flatten().tolist()
    assert min(nonzero) == t - model.receptive_field + 1 and max(nonzero) == t - 1


def test_the_local_conditioning_is_causal_too():
    """c_s reaches the output at t for s in [t - (d_1 + ... + d_{L-1}), t] and no other s: it enters
    every layer at its own position, and the layers after the first carry it forward by their
    dilations (2 + 4 + 1 + 2 + 4 = 13 here); never backwards."""
    model = net(cond=4, glob=0)
    c = torch.randn(1, 4, 40, requires_grad=True)
    out = model(torch.zeros(1, 40), c)
    (grad,) = torch.autograd.grad(out[0, :, 30].sum(), c)
    assert (grad[0].abs().sum(0) != 0).nonzero().flatten().tolist() == list(range(30 - 13, 31))


def test_the_mixture_is_a_distribution_over_the_256_levels():
    mix = LogisticMixture(3)
    torch.manual_seed(1)
    out = torch.randn(4, 9, 1) * 2  # 4 positions (as B), 3 M parameters
    levels = torch.arange(256.0) / 255
    lp = torch.stack([mix.log_prob(out, levels[k].expand(4, 1)) for k in range(256)])  # (256, 4, 1)
    torch.testing.assert_close(lp.exp().sum(0), torch.ones(4, 1), rtol=0, atol=1e-5)


def test_mixture_samples_follow_its_probabilities():
    """200,000 draws from one set of parameters: the histogram over the 256 levels is within 0.01
    total variation of exp(log_prob) (the sampling error is about 0.005 here; seed 0)."""
    mix = LogisticMixture(2)
    params = torch.tensor([0.3, -0.2, 0.1, -0.15, -2.0, -1.0])  # two components, scales ~0.007, 0.018
    torch.manual_seed(0)
    draws = mix.sample(params.expand(200_000, 6))
    hist = torch.bincount(torch.round(draws * 255).long(), minlength=256).double() / draws.numel()
    levels = torch.arange(256.0) / 255
    probs = mix.log_prob(params.view(1, 6, 1).expand(256, 6, 1), levels[:, None]).exp()[:, 0].double()
    assert 0.5 * (hist - probs).abs().sum() < 0.01
    cold = mix.sample(params.expand(200_000, 6), temperature=0.1)
    assert cold.std() < 0.5 * draws.std()  # a low temperature narrows the draws


def tiny_wavenet(seed=0, **kw):
    settings = dict(hidden=8, res_blocks=1, res_channels=4, downsample=3, codebook_size=8, code_dim=3,
                    speaker_dim=4, decoder="wavenet", wavenet_channels=6, wavenet_skip=8, wavenet_layers=4,
                    wavenet_cycle=2, cond_channels=3, mixtures=2) | kw
    torch.manual_seed(seed)
    return build_model(SpeechVQVAEConfig(**settings), SPEC)


def clips(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.5 * torch.sin(torch.arange(n) * (0.05 + 0.3 * torch.rand((), generator=g)))
            + 0.05 * torch.randn(n, generator=g) for n in lengths]


def batch_of(waves, index, speakers):
    b = waves.pad(torch.as_tensor(index))
    return WaveBatch(b.audio, b.lengths, b.mask, {"speaker": torch.as_tensor(speakers)})


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


def test_levels_map_to_inputs_in_minus_one_one():
    assert levels_to_inputs(torch.tensor([0.0, 1.0])).tolist() == [-1.0, 1.0]
    assert math.isclose(float(levels_to_inputs(torch.tensor(0.5))), 0.0)
