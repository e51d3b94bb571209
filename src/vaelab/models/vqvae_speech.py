"""The speech VQ-VAE of van den Oord, Vinyals & Kavukcuoglu (2017), "Neural Discrete Representation
Learning", Section 4.3, at small scale: discrete codes of raw waveforms, decoded with a speaker.

Encoder (Section 4.3: "6 strided convolutions with stride 2 and window-size 4"): ``downsample``
Conv1d(window 4, stride 2, padding 1) with ReLUs, a window-3 convolution, a residual stack of 1-D
blocks (ReLU, window-3 conv, ReLU, 1x1 conv) and a 1x1 convolution to the code dimension D. With the
default ``downsample = 6`` the stride is m = 64: 8 kHz audio becomes 125 codes a second. The vectors
z_e (B, D, T') are quantised (``vaelab.quantizers``: ``VectorQuantizerEMA`` or ``VectorQuantizer``).

Decoder, two kinds (``decoder``):

* ``mirror``: the encoder's mirror, not autoregressive: a window-3 convolution from D, a residual
  stack, and ``downsample`` transposed convolutions (window 4, stride 2) up to the likelihood's two
  parameters per sample (one discretized logistic each, independent given the codes). Fast to train
  and to decode (its mean); but the codes must then say everything about the waveform, its phase
  included, and the decoded mean of what they do not say is a blur.
* ``wavenet``: the paper's: the same mirror, ending in ``cond_channels`` features per sample instead,
  is the local conditioning of a WaveNet (``vaelab.wavenet``) over the samples, with the speaker as
  its global conditioning and a mixture of ``mixtures`` discretized logistics per sample. The codes
  need then say only what the WaveNet cannot predict from the past; decoding is ancestral sampling,
  one sample at a time.

Both are conditioned on the speaker as WaveNet's global conditioning is (van den Oord et al. 2016,
Section 2.5, a V^T h term in every layer): a learned embedding s (n_speakers, speaker_dim), mapped by
a bias-free linear map per layer to that layer's channels and added to its input, so the codes need
not carry who speaks; decoding the codes of one speaker with another's embedding is voice conversion
(``convert``). ``n_speakers`` is the number of names in the data's
``spec.extra["labels"]["speaker"]``; batches carry each clip's speaker in ``WaveBatch.labels``.

Lengths: a clip of L samples has n = ceil(L / m) codes. The audio (B, T) is zero-padded at the end to
T' m, T' = ceil(T / m), and the decoder's output cropped back to T. Every layer's output is set to 0
past a row's real extent at that layer's resolution (ceil(L / stride) positions), and only the n real
code vectors of each row reach the quantizer, so a clip's loss, codes and reconstruction do not depend
on the padding its batch adds (nor do the codebook's statistics).

Likelihood p(x|z_q, s): the sample's 8-bit mu-law level k (``vaelab.waves.mu_law_encode``, 256
levels) is a discretized logistic over the levels k / 255 (``vaelab.distributions.DiscretizedLogistic``,
edge bins open), with decoded mean and log-scale, independent given the codes and the speaker
(``mirror``); or a mixture of them given also the past samples (``wavenet``). A probability of each
level, so -log p is a code length: the model is of the clips quantised to 8-bit mu-law (what WaveNet
and the paper model), and the bits per sample the evaluation reports are an upper bound for those
(at most 8 for a sensible model). Padded samples never count.

Loss (eq. 3, in nats per clip like every vaelab loss):
    -sum_t log p(x_t | z_q, s) + ||sg[z_e] - e||^2 (``vq`` only) + beta ||z_e - sg[e]||^2,
the first sum over the clip's real samples, the others over its n real code positions (and D); the
batch mean is minimised. The bound reported as ``elbo`` (Section 3.1): q(z|x) is one-hot and p(z)
uniform over the K^n code sequences, so KL = n log K, counting only the code positions that cover real
samples, and log p(x) >= log p(x|z_q, s) - n log K; the evaluation turns it into bits per sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, final

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.distributions import DiscretizedLogistic, DiscretizedLogisticHead
from vaelab.errors import VaelabError
from vaelab.models.base import (
    DiscreteCodeModel,
    LossOutput,
    Model,
    ModelConfig,
    Reconstructing,
    ReportInputs,
    register_model,
)
from vaelab.models.vqvae import build_quantizer, validate_vq_settings
from vaelab.quantizers import (
    CodeUsage,
    Quantized,
    nearest_code,
)
from vaelab.sections import AudioSection, LinesSection, Section, wav_bytes
from vaelab.spec import DataSpec
from vaelab.wavenet import LogisticMixture, WaveNet, levels_to_inputs, shift_right
from vaelab.waves import MU_LAW_LEVELS, WaveBatch, mu_law_decode, mu_law_encode, spectral_distance

__all__ = ["SpeechVQVAEConfig", "SpeechVQVAE", "QuantizedClips", "mu_law_logistic_mean"]


@dataclass
class SpeechVQVAEConfig(ModelConfig):
    """Settings of the speech VQ-VAE (module docstring for the architecture).

    hidden: channels of the encoder's and decoder's convolutions; every stride-2 convolution but the
        innermost (and its transposed mirror) has hidden // 2.
    res_blocks / res_channels: residual blocks in each stack, and the width of their window-3 conv.
    downsample: stride-2 convolutions; a clip of L samples has ceil(L / 2^downsample) codes.
    codebook_size: K. code_dim: D.
    quantizer: ``ema`` (codebook as moving averages, App. A.1) or ``vq`` (learned by gradient, eq. 3).
    beta: commitment weight. ema_decay: gamma of the EMA quantizer (unused with ``vq``).
    kmeans_iters: > 0 initialises the codebook by k-means of the first training batch's encoder
        outputs with this many Lloyd iterations; 0 keeps the random N(0, 1) codebook.
    restart_after: re-seed a code unused for this many training steps (0: never).
    restart_below: also re-seed a code used less than this many vectors a step on average (0: off).
    condition_on_speaker: the decoder adds a learned speaker embedding in every layer (needs the
        data's ``speaker`` labels); false decodes from the codes alone.
    speaker_dim: size of the speaker embedding.
    decoder: ``mirror`` or ``wavenet`` (module docstring).
    wavenet_channels / wavenet_skip / wavenet_layers / wavenet_cycle: the WaveNet's residual and skip
        channels, gated layers, and the period of its dilations 1, 2, ..., 2^(cycle - 1).
    cond_channels: features per sample the mirror hands the WaveNet. mixtures: logistics per sample.
    temperature: of the WaveNet's sampling when decoding (1 draws from the model).
    aux_weight: ``wavenet`` only: weight of an auxiliary, not autoregressive likelihood of the samples
        from the mirror's features alone (a 1x1 convolution to a discretized logistic per sample),
        added to the training loss. It keeps the codes carrying the waveform's content while the
        WaveNet, which can model much of the audio from its own past, learns to use them: without
        it the codes collapsed onto a handful (validation perplexity 1.2 of 256 at step 3,000 of a
        trial) and the decoded digits were at chance. Not part of the bound (``elbo``); 0: off.
    spectral_weight: weight of a multi-resolution log-spectral distance (``vaelab.waves.
        spectral_distance``, times the clip's length in samples, so that it grows with the clip as
        the likelihood does) between each clip and a waveform read from the decoder without
        sampling: the decoded mean (``mirror``), or a 1x1 convolution of the mirror's features with
        a tanh (``wavenet``). A per-sample likelihood given only the codes cannot know the phase and
        drives the codes to carry the loudness; short-time spectra ignore the phase, so this term
        asks the codes for what is said (the formants). Added to the training loss, not to the bound;
        0: off.
    """

    name: str = "vqvae_speech"
    hidden: int = 128
    res_blocks: int = 2
    res_channels: int = 32
    downsample: int = 6
    codebook_size: int = 256
    code_dim: int = 64
    quantizer: Literal["ema", "vq"] = "ema"
    beta: float = 0.25
    ema_decay: float = 0.99
    kmeans_iters: int = 0
    restart_after: int = 0
    restart_below: float = 0.0
    condition_on_speaker: bool = True
    speaker_dim: int = 32
    decoder: Literal["mirror", "wavenet"] = "mirror"
    wavenet_channels: int = 32
    wavenet_skip: int = 64
    wavenet_layers: int = 16
    wavenet_cycle: int = 8
    cond_channels: int = 16
    mixtures: int = 10
    temperature: float = 1.0
    aux_weight: float = 0.0
    spectral_weight: float = 0.0

    def validate(self, prefix: str) -> None:
        validate_vq_settings(self, prefix, positive=(
            "speaker_dim", "wavenet_channels", "wavenet_skip", "wavenet_layers", "wavenet_cycle",
            "cond_channels", "mixtures"))
        if self.decoder not in ("mirror", "wavenet"):
            raise VaelabError(f"{prefix}.decoder must be 'mirror' or 'wavenet', got {self.decoder!r}")
        if not self.aux_weight >= 0:
            raise VaelabError(f"{prefix}.aux_weight must be >= 0 (0 turns it off), got {self.aux_weight}")
        if not self.spectral_weight >= 0:
            raise VaelabError(f"{prefix}.spectral_weight must be >= 0 (0 turns it off), "
                              f"got {self.spectral_weight}")
        if self.aux_weight > 0 and self.decoder != "wavenet":
            raise VaelabError(f"{prefix}.aux_weight is for the wavenet decoder (the mirror's likelihood is "
                              f"already not autoregressive); set {prefix}.decoder = \"wavenet\" or "
                              f"{prefix}.aux_weight = 0")
        if not 0.0 < self.temperature <= 1.0:
            raise VaelabError(f"{prefix}.temperature must be in (0, 1] (1 samples the model), "
                              f"got {self.temperature}")


# ----------------------------------------------------------------------------- likelihood
def mu_law_logistic_mean(loc: Tensor, log_scale: Tensor) -> Tensor:
    """E[x] in samples of a discretized logistic over the 256 mu-law levels u_k = k / 255: loc,
    log_scale (...) -> (...) float in [-1, 1].

    With v_k = mu_law_decode(k), E[x] = v_0 + sum_{k=1}^{255} P(K >= k) (v_k - v_{k-1}) and
    P(K >= k) = 1 - F((k - 1/2) / 255) (edge bins open, as ``DiscretizedLogistic``): 255 elementwise
    passes, no (256, ...) tensor."""
    v = mu_law_decode(torch.arange(MU_LAW_LEVELS, device=loc.device)).to(loc.dtype)
    steps = (v[1:] - v[:-1]).tolist()
    inv_scale = torch.exp(-log_scale.clamp(-20.0, 20.0))
    total = torch.full_like(loc, float(v[0]))
    for k, dv in enumerate(steps, start=1):
        total = total + dv * torch.sigmoid((loc - (k - 0.5) / 255) * inv_scale)
    return total


def _levels(audio: Tensor) -> Tensor:
    """Samples (B, T) in [-1, 1] -> their mu-law levels as the values k / 255 the logistic scores."""
    return mu_law_encode(audio).to(audio.dtype) / (MU_LAW_LEVELS - 1)


# ----------------------------------------------------------------------------- networks
def _ceil_div(n: Tensor, d: int) -> Tensor:
    return torch.div(n + d - 1, d, rounding_mode="floor")


def _keep(h: Tensor, n: Tensor) -> Tensor:
    """h (B, C, T) with positions t >= n[b] set to 0, n (B,)."""
    return h * (torch.arange(h.shape[-1], device=h.device) < n[:, None]).unsqueeze(1).to(h.dtype)


def _widths(cfg: SpeechVQVAEConfig) -> list[int]:
    """Channels after each stride-2 convolution of the encoder: hidden // 2 ..., then hidden."""
    return [cfg.hidden // 2] * (cfg.downsample - 1) + [cfg.hidden]


def _residual_blocks(cfg: SpeechVQVAEConfig) -> nn.ModuleList:
    """Blocks x <- x + conv1(relu(conv3(relu(x)))) (Section 4.1's "ReLU, 3x3 conv, ReLU, 1x1 conv",
    in 1-D); applied with a mask after each block (``_run_blocks``)."""
    return nn.ModuleList(
        nn.Sequential(nn.ReLU(), nn.Conv1d(cfg.hidden, cfg.res_channels, 3, padding=1), nn.ReLU(),
                      nn.Conv1d(cfg.res_channels, cfg.hidden, 1))
        for _ in range(cfg.res_blocks)
    )


def _run_blocks(blocks: nn.ModuleList, h: Tensor, n: Tensor) -> Tensor:
    for block in blocks:
        h = _keep(h + block(h), n)
    return torch.relu(h)


class SpeechEncoder(nn.Module):
    """x (B, 1, T), T a multiple of m = 2^downsample, lengths (B,) real samples -> z_e (B, D, T / m),
    zero past each row's ceil(L / m) real code positions."""

    def __init__(self, cfg: SpeechVQVAEConfig):
        super().__init__()
        self.down = nn.ModuleList()
        c = 1
        for w in _widths(cfg):
            self.down.append(nn.Conv1d(c, w, 4, stride=2, padding=1))
            c = w
        self.conv = nn.Conv1d(c, cfg.hidden, 3, padding=1)
        self.blocks = _residual_blocks(cfg)
        self.out = nn.Conv1d(cfg.hidden, cfg.code_dim, 1)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        h = x
        for i, conv in enumerate(self.down, start=1):
            h = _keep(torch.relu(conv(h)), _ceil_div(lengths, 2**i))
        n = _ceil_div(lengths, 2 ** len(self.down))
        h = _run_blocks(self.blocks, _keep(self.conv(h), n), n)
        return _keep(self.out(h), n)


class SpeechDecoder(nn.Module):
    """z_q (B, D, T'), speaker (B,) long or None, lengths (B,) real samples -> (B, out_channels,
    T' m): by default 2, the discretized logistic's mean (in the levels' [0, 1] scale) and raw
    log-scale of every sample; or the WaveNet's local conditioning features.

    ``n_speakers`` 0: no speaker embedding; else one (n_speakers, speaker_dim), added through a
    bias-free linear map to the input of every layer after the first convolution."""

    def __init__(self, cfg: SpeechVQVAEConfig, n_speakers: int,
                 out_channels: int = DiscretizedLogisticHead.params_per_dim):
        super().__init__()
        self.conv = nn.Conv1d(cfg.code_dim, cfg.hidden, 3, padding=1)
        self.blocks = _residual_blocks(cfg)
        widths = list(reversed(_widths(cfg)))  # hidden, hidden // 2, ...
        outs = widths[1:] + [out_channels]
        self.up = nn.ModuleList(
            nn.ConvTranspose1d(w, o, 4, stride=2, padding=1) for w, o in zip(widths, outs)
        )
        self.speaker = nn.Embedding(n_speakers, cfg.speaker_dim) if n_speakers else None
        # one projection for the residual stack's input and one for each transposed convolution's
        self.condition = nn.ModuleList(
            nn.Linear(cfg.speaker_dim, c, bias=False) for c in [cfg.hidden, *widths]
        ) if n_speakers else None

    def forward(self, z_q: Tensor, speaker: Tensor | None, lengths: Tensor) -> Tensor:
        bias: list[Tensor | int] = [0] * (len(self.up) + 1)
        if self.speaker is not None and self.condition is not None:
            if speaker is None:
                raise VaelabError("this decoder is conditioned on the speaker; give each clip's speaker")
            s = self.speaker(speaker)  # (B, speaker_dim)
            bias = [proj(s).unsqueeze(-1) for proj in self.condition]  # V^T s, (B, C, 1) each
        m = 2 ** len(self.up)
        n = _ceil_div(lengths, m)
        h = _run_blocks(self.blocks, _keep(self.conv(z_q) + bias[0], n), n)
        for i, conv in enumerate(self.up):
            # the speaker's term is masked too: past a row's end the input must be 0, as it is past
            # the tensor's end when the clip is batched alone
            h = conv(_keep(h + bias[i + 1], _ceil_div(lengths, m // 2**i)))
            if i < len(self.up) - 1:
                h = torch.relu(h)
        return h


# ----------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class QuantizedClips:
    """The quantizer's output regrouped by clip, for a batch (B, T) with T' = ceil(T / m) codes a row.

    z_q: (B, D, T') code vectors at the real code positions (straight-through gradient), 0 past them.
    codes: (B, T') long, the nearest codes at the real positions, 0 past them.
    n_codes: (B,) long, the real code positions of each row, ceil(L / m).
    commitment: (B,) beta ||z_e - sg[e]||^2 summed over the row's real code positions.
    codebook: (B,) ||sg[z_e] - e||^2 likewise (``vq`` only), else None.
    vectors: the quantizer's own output for the N = sum(n_codes) real vectors (batch metrics).
    """

    z_q: Tensor
    codes: Tensor
    n_codes: Tensor
    commitment: Tensor
    codebook: Tensor | None
    vectors: Quantized


@final
@register_model("vqvae_speech")
class SpeechVQVAE(Model, DiscreteCodeModel, Reconstructing):
    """The speech VQ-VAE (module docstring). A batch is a :class:`~vaelab.waves.WaveBatch` (B, T) of
    clips or crops with masks, carrying ``labels["speaker"]`` (B,) when the decoder is conditioned;
    codes are (B, ceil(T / 2^downsample)) long. No ``Sampling``: the uniform prior over codes draws
    noise; samples come from a prior fitted to the codes afterwards."""

    Config = SpeechVQVAEConfig
    data_kinds = frozenset({"waveforms"})

    def __init__(self, config: SpeechVQVAEConfig, spec: DataSpec):
        super().__init__(config, spec)
        config.validate("model")
        names = (spec.extra.get("labels") or {}).get("speaker") or []
        if config.condition_on_speaker and not names:
            raise VaelabError("model.condition_on_speaker = true needs the data's speaker labels, and these "
                              "data have none; give a labels.csv with a speaker column (wav:PATH) or set "
                              "model.condition_on_speaker = false")
        self.speaker_names: list[str] = list(names) if config.condition_on_speaker else []
        self.stride = 2**config.downsample
        self.encoder = SpeechEncoder(config)
        self.quantizer = build_quantizer(config)
        self.head = DiscretizedLogisticHead()
        self.mixture = LogisticMixture(config.mixtures)
        self.wavenet: WaveNet | None = None
        self.aux_head: nn.Conv1d | None = None
        self.wave_head: nn.Conv1d | None = None
        if config.decoder == "wavenet":
            self.decoder = SpeechDecoder(config, len(self.speaker_names), out_channels=config.cond_channels)
            self.wavenet = WaveNet(config.wavenet_channels, config.wavenet_skip, config.wavenet_layers,
                                   config.wavenet_cycle, config.cond_channels,
                                   config.speaker_dim if self.speaker_names else 0, self.mixture.params)
            if config.aux_weight > 0:
                self.aux_head = nn.Conv1d(config.cond_channels, DiscretizedLogisticHead.params_per_dim, 1)
            if config.spectral_weight > 0:
                self.wave_head = nn.Conv1d(config.cond_channels, 1, 1)
        else:
            self.decoder = SpeechDecoder(config, len(self.speaker_names))

    # ------------------------------------------------------------------ the pieces
    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def n_speakers(self) -> int:
        """Speakers the decoder knows (0 when it is not conditioned)."""
        return len(self.speaker_names)

    def code_lengths(self, lengths: Tensor) -> Tensor:
        """Real code positions of clips of ``lengths`` (B,) samples: ceil(L / m), (B,) long."""
        return _ceil_div(lengths, self.stride)

    def speakers_of(self, batch: WaveBatch) -> Tensor | None:
        """The batch's speakers (B,) long, or None when the decoder is not conditioned on them."""
        if not self.n_speakers:
            return None
        speaker = batch.labels.get("speaker")
        if speaker is None:
            raise VaelabError("the decoder is conditioned on the speaker but the batch carries no "
                              "'speaker' labels; batch the clips with their label sets "
                              "(WaveformBatches(..., labels=bundle.label_sets(split)))")
        return speaker

    def _speaker_tensor(self, speaker: int | Tensor | None, b: int, device: torch.device) -> Tensor | None:
        if not self.n_speakers:
            return None
        s = torch.as_tensor(0 if speaker is None else speaker, dtype=torch.long, device=device)
        s = s.expand(b) if s.dim() == 0 else s
        if s.shape != (b,) or bool(((s < 0) | (s >= self.n_speakers)).any()):
            raise VaelabError(f"speaker must be an int or (B,) = ({b},) values in [0, {self.n_speakers}); "
                              f"got {s.tolist() if s.numel() <= 8 else tuple(s.shape)}")
        return s

    def encode_vectors(self, batch: WaveBatch) -> Tensor:
        """z_e: (B, T) -> (B, D, T'), T' = ceil(T / m); the audio zero-padded to T' m first; 0 past
        each row's real code positions."""
        t = batch.audio.shape[-1]
        padded = F.pad(batch.audio, (0, -(-t // self.stride) * self.stride - t))
        return self.encoder(padded.unsqueeze(1), batch.lengths)

    def quantize(self, batch: WaveBatch) -> QuantizedClips:
        """Quantise the real code vectors of a batch (B, T); in training mode this updates the
        codebook's state (EMA statistics, k-means initialisation, restarts) from them alone."""
        z_e = self.encode_vectors(batch)  # (B, D, T')
        b, _, t = z_e.shape
        n = self.code_lengths(batch.lengths)
        real = torch.arange(t, device=z_e.device) < n[:, None]  # (B, T')
        rows, steps = real.nonzero(as_tuple=True)
        q = self.quantizer(z_e.movedim(1, -1)[rows, steps])  # N vectors (N, D)
        z_q = z_e.new_zeros(b, t, z_e.shape[1]).index_put((rows, steps), q.z_q).movedim(-1, 1)
        codes = torch.zeros(b, t, dtype=torch.long, device=z_e.device).index_put((rows, steps), q.codes)

        def per_clip(per_vector: Tensor) -> Tensor:
            return per_vector.new_zeros(b).index_add(0, rows, per_vector)

        return QuantizedClips(z_q, codes, n, per_clip(q.commitment),
                              None if q.codebook is None else per_clip(q.codebook), q)

    def _speaker_vector(self, speaker: Tensor | None) -> Tensor | None:
        """The speaker embedding s (B, speaker_dim), the WaveNet's global conditioning, or None."""
        if speaker is None or self.decoder.speaker is None:
            return None
        return self.decoder.speaker(speaker)

    def decoder_output(self, z_q: Tensor, speaker: Tensor | None, lengths: Tensor, width: int,
                       audio: Tensor | None = None) -> Tensor:
        """The likelihood's parameters of every sample: z_q (B, D, T'), speaker (B,) or None, lengths
        (B,) -> (B, P, width), width <= T' m: the logistic's 2 (``mirror``), or the mixture's 3 M
        given also the samples before (``wavenet``; ``audio`` (B, >= width) is then needed: teacher
        forcing)."""
        return self._outputs(z_q, speaker, lengths, width, audio)[0]

    def _outputs(self, z_q: Tensor, speaker: Tensor | None, lengths: Tensor, width: int,
                 audio: Tensor | None) -> tuple[Tensor, Tensor]:
        """(``decoder_output``, the mirror's features (B, C, width) it came from)."""
        features = self.decoder(z_q, speaker, lengths)[..., :width]
        if self.wavenet is None:
            return features, features
        if audio is None:
            raise ValueError("the wavenet decoder's parameters depend on the past samples: pass audio")
        previous = shift_right(levels_to_inputs(_levels(audio[..., :width])))
        return self.wavenet(previous, features, self._speaker_vector(speaker)), features

    def _logistic_log_prob(self, out: Tensor, batch: WaveBatch) -> Tensor:
        """The mirror's likelihood: out (B, 2, T) -> (B,) nats over the real samples."""
        loc, log_scale = _split(self.head, out)
        lp = DiscretizedLogistic(loc, log_scale).log_prob(_levels(batch.audio))  # (B, T)
        return (lp * batch.mask).sum(-1)  # padding is no evidence

    def log_prob(self, out: Tensor, batch: WaveBatch) -> Tensor:
        """log p(x|z_q, s) of the real samples: out (B, P, T) from ``decoder_output``, batch (B, T)
        -> (B,) nats."""
        if self.wavenet is None:
            return self._logistic_log_prob(out, batch)
        else:
            lp = self.mixture.log_prob(out, _levels(batch.audio))
        return (lp * batch.mask).sum(-1)  # padding is no evidence

    def generate(self, z_q: Tensor, speaker: Tensor | None, lengths: Tensor, width: int) -> Tensor:
        """Audio (B, width) in samples, 0 past each row's ``lengths``, decoded from z_q (B, D, T'):
        the mean E[x|z_q, s] (``mirror``), or an ancestral sample of the WaveNet at the config's
        temperature (``wavenet``; the global random generator's draws)."""
        features = self.decoder(z_q, speaker, lengths)[..., :width]
        if self.wavenet is None:
            return self.decode_mean(features, lengths)
        temperature = self.config.temperature
        values, _ = self.wavenet.generate(
            width, lambda out: levels_to_inputs(self.mixture.sample(out, temperature)),
            cond=features, glob=self._speaker_vector(speaker))
        level = torch.round((values + 1.0) * 0.5 * (MU_LAW_LEVELS - 1)).long()
        audio = mu_law_decode(level).to(values.dtype)
        return audio * (torch.arange(width, device=audio.device) < lengths[:, None])

    def decode_mean(self, out: Tensor, lengths: Tensor) -> Tensor:
        """E[x|z_q, s] in samples: out (B, 2, T) -> (B, T), 0 past each row's ``lengths``."""
        mean = mu_law_logistic_mean(*_split(self.head, out))
        return mean * (torch.arange(mean.shape[-1], device=mean.device) < lengths[:, None])

    @torch.no_grad()
    def encode_codes(self, x: WaveBatch) -> Tensor:
        """Nearest codes of a batch (B, T): (B, T') long; positions past a row's real code positions
        hold the code nearest the zero vector. Changes no state in either mode."""
        z_e = self.encode_vectors(x)
        z = z_e.movedim(1, -1).reshape(-1, self.config.code_dim)
        return nearest_code(z, self.quantizer.codebook).view(z_e.shape[0], z_e.shape[2])

    @torch.no_grad()
    def decode_codes(self, codes: Tensor, speaker: int | Tensor | None = None,
                     lengths: Tensor | None = None) -> WaveBatch:
        """``generate`` of codes (B, T') long (the mean E[x|z_q, s], or a WaveNet's sample), as a
        WaveBatch (B, T' m) whose rows have ``lengths``
        (B,) real samples (default T' m each; the decoder treats code positions past
        ceil(L / m) as padding) and, with a conditioned decoder, ``labels["speaker"]`` the speakers
        decoded with.

        speaker: an int for every row, or (B,) long; None: speaker 0 (the codes alone do not say who
        spoke: pass each clip's own speaker, ``speakers_of(batch)``, to reconstruct it). Ignored
        when the decoder is not conditioned."""
        b, t = codes.shape
        width = t * self.stride
        if lengths is None:
            lengths = torch.full((b,), width, dtype=torch.long, device=codes.device)
        n = self.code_lengths(lengths)
        z_q = _keep(self.quantizer.lookup(codes), n)
        s = self._speaker_tensor(speaker, b, codes.device)
        audio = self.generate(z_q, s, lengths, width)
        mask = torch.arange(width, device=codes.device) < lengths[:, None]
        return WaveBatch(audio, lengths, mask, {} if s is None else {"speaker": s})

    def _decode_batch(self, x: WaveBatch, speaker: int | Tensor | None) -> WaveBatch:
        """x decoded from its own codes with ``speaker``, cropped to x's width, labels kept (the
        speaker's replaced)."""
        out = self.decode_codes(self.encode_codes(x), speaker, x.lengths)
        labels = dict(x.labels) | out.labels
        t = x.audio.shape[-1]
        return WaveBatch(out.audio[:, :t], x.lengths, x.mask, labels)

    @torch.no_grad()
    def reconstruct(self, x: WaveBatch) -> WaveBatch:
        """x decoded from its nearest codes with each clip's own speaker (``generate``: the mean
        E[x | z_q(x), s], or a WaveNet's sample): a WaveBatch like x (B, T); 0 at the padding."""
        return self._decode_batch(x, self.speakers_of(x))

    @torch.no_grad()
    def convert(self, x: WaveBatch, target_speaker: int | Tensor) -> WaveBatch:
        """Voice conversion: x (B, T) encoded, and decoded with ``target_speaker`` (an int, or (B,)
        long) instead of each clip's own; a WaveBatch like x whose ``labels["speaker"]`` is the
        target."""
        if not self.n_speakers:
            raise VaelabError("convert needs a decoder conditioned on the speaker; train with "
                              "model.condition_on_speaker = true")
        return self._decode_batch(x, target_speaker)

    # ------------------------------------------------------------------ objective
    def loss(self, batch: WaveBatch) -> LossOutput:
        """Eq. 3 (module docstring) on a batch (B, T): per-clip terms (B,) in nats, the quantizer's
        batch metrics (over the real code vectors) as extras."""
        q = self.quantize(batch)
        out, features = self._outputs(q.z_q, self.speakers_of(batch), batch.lengths, batch.audio.shape[-1],
                                      batch.audio)
        log_px = self.log_prob(out, batch)  # (B,)
        # KL(one-hot q(z|x) || uniform p(z)) = n log K over the real code positions (Section 3.1)
        kl = q.n_codes.to(log_px.dtype) * math.log(self.config.codebook_size)
        vq = q.commitment if q.codebook is None else q.commitment + q.codebook
        objective = vq - log_px
        extras = q.vectors.metrics()
        if self.aux_head is not None:  # the auxiliary likelihood from the codes alone (aux_weight)
            aux = self._logistic_log_prob(self.aux_head(features), batch)
            objective = objective - self.config.aux_weight * aux
            extras = extras | {"aux_reconstruction": aux.detach()}
        if self.config.spectral_weight > 0:  # the spectra of a waveform decoded without sampling
            spectral = self._spectral_term(out, features, batch)
            objective = objective + self.config.spectral_weight * spectral
            extras = extras | {"spectral": spectral.detach()}
        return LossOutput(loss=objective.mean(), elbo=log_px - kl, reconstruction=log_px, kl=kl,
                          commitment=q.commitment, codebook=q.codebook, extras=extras)

    def _spectral_term(self, out: Tensor, features: Tensor, batch: WaveBatch) -> Tensor:
        """``spectral_weight``'s term (B,): the log-spectral distance of the clips and their decoded
        mean (``mirror``) or the wave head's waveform (``wavenet``), times each clip's length."""
        if self.wave_head is None:
            wave = self.decode_mean(out, batch.lengths)
        else:
            wave = torch.tanh(self.wave_head(features)).squeeze(1) * batch.mask
        # a WaveBatch is 0 past each clip's end already, as spectral_distance needs
        return spectral_distance(wave, batch.audio, batch.lengths) * batch.lengths.to(wave.dtype)

    @torch.no_grad()
    def code_usage(self, batches: Iterable[WaveBatch]) -> CodeUsage:
        """Counts of the codes at the real code positions of every batch, summed over the processes
        when ``torch.distributed`` is initialised."""
        usage = CodeUsage(self.codebook_size, self.device)
        for x in batches:
            codes = self.encode_codes(x)
            usage.update(codes[torch.arange(codes.shape[1], device=codes.device)
                               < self.code_lengths(x.lengths)[:, None]])
        usage.all_reduce()
        return usage

    def validation_metrics(self, batches: Iterable[WaveBatch]) -> dict[str, float]:
        """Perplexity and usage of the codebook over the whole validation set (a batch's figures,
        logged per step, understate them)."""
        usage = self.code_usage(batches)
        return {"codebook_perplexity": float(usage.perplexity()), "codebook_usage": float(usage.usage())}

    @torch.no_grad()
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        """For the first 4 held-out clips: the original, its reconstruction and (with a conditioned
        decoder) its conversion to the next speaker, as audio; and the code frequencies over all the
        inputs, most used first."""
        usage = self.code_usage(inputs.batches)
        if not inputs.batches:
            return [self._usage_section(usage)]
        x = inputs.batches[0].split(4)[0]
        rate = int(self.spec.extra.get("sample_rate", 8000))
        rec = self.reconstruct(x)
        conv = None
        if self.n_speakers:
            own = self.speakers_of(x)
            assert own is not None
            conv = self.convert(x, (own + 1) % self.n_speakers)
        clips: list[bytes] = []
        labels: list[str] = []

        def wav(audio: Tensor, r: int) -> bytes:
            return wav_bytes(audio[r, : int(x.lengths[r])].cpu().numpy(), rate)

        for r in range(len(x)):
            who = "" if conv is None else f", speaker {self.speaker_names[int(x.labels['speaker'][r])]}"
            clips += [wav(x.audio, r), wav(rec.audio, r)]
            labels += [f"clip {r + 1}{who}: original", f"clip {r + 1}: reconstruction"]
            if conv is not None:
                clips.append(wav(conv.audio, r))
                target = self.speaker_names[int(conv.labels["speaker"][r])]
                labels.append(f"clip {r + 1}: as speaker {target}")
        what = "originals, reconstructions" + ("" if conv is None else " and conversions to the next speaker")
        how = ("the decoder's mean E[x | codes, speaker]" if self.wavenet is None else
               "a sample of the WaveNet decoder given codes and speaker, temperature "
               f"{self.config.temperature:g}")
        caption = (f"{len(x)} held-out clips at {rate} Hz: {what} ({how}, from K = "
                   f"{self.config.codebook_size} codes at {rate / self.stride:g} codes a second).")
        return [AudioSection(name="audio", title="Reconstructions and voice conversion", caption=caption,
                             clips=clips, labels=labels),
                self._usage_section(usage)]

    def _usage_section(self, usage: CodeUsage) -> LinesSection:
        counts = usage.counts.cpu().double()
        freq = (counts / counts.sum().clamp_min(1)).sort(descending=True).values.numpy()
        k = self.codebook_size
        caption = (f"How often each of the K = {k} codes is used over the inputs' {int(counts.sum())} "
                   f"code positions covering real samples, most used first: perplexity "
                   f"{float(usage.perplexity()):.1f}, {int((counts > 0).sum())} of {k} codes used.")
        return LinesSection(name="codebook_usage", title="Codebook usage", caption=caption,
                            x=np.arange(1, k + 1), y=freq[None], labels=["frequency"],
                            xlabel="code rank", ylabel="fraction of code positions")


def _split(head: DiscretizedLogisticHead, out: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 2, T) decoder output -> (loc (B, T), log_scale (B, T)) in the levels' [0, 1] scale.

    Offsets so that an untrained decoder (outputs near 0) starts sensibly: the mean at 0.5, the
    middle level (silence), and the log-scale at ``_INIT_LOG_SCALE`` (a scale of 0.05, a standard
    deviation of about 23 levels) rather than 0 (a scale of the whole range, from which Adam, moving
    a bias by about ``lr`` a step, needs thousands of steps to come down); the log-scale is bounded
    softly below as ``DiscretizedLogisticHead`` does."""
    loc, raw = out.unbind(1)
    return 0.5 + loc, head.min_log_scale + F.softplus(raw + _INIT_LOG_SCALE - head.min_log_scale)


_INIT_LOG_SCALE = math.log(0.05)

