"""The speech VQ-VAE on the Free Spoken Digit Dataset, checked by classifiers (van den Oord et al.
2017, Section 4.3: the codes keep what was said and drop who said it, so decoding them with another
speaker's embedding converts the voice).

Two small CNNs are trained on the REAL recordings of the training split, as vaelab's ``fsdd`` loader
splits it (``data.valid_size`` and ``data.split_seed`` of the VQ-VAE run, or the full preset's when no
run is given): one for the spoken digit (10 classes), one for the speaker (6). Both read the same
features: the log-magnitude spectrogram log(1 + |X|) of the clip (``torch.stft``, 256-point Hann
window at 8 kHz = 32 ms, hop 64 = 8 ms, 129 bins, no centring), its frames pooled or stretched to a
fixed 40 (so every clip, 0.14-2.28 s, gives one 129 x 40 map), standardised per bin by the training
clips' mean and standard deviation. Their accuracies on the held-out recordings (the validation part
and the official test set, indices 0-4) are printed.

Then, on the run's test split (the official 300 recordings, held out from the VQ-VAE and from the
classifiers alike), every clip is reconstructed (``reconstruct``: its own codes and speaker) and
converted to EVERY other speaker (``convert``: 5 conversions a clip, 1,500 for the whole test set).
Reported as JSON (printed and written to ``DIR/vq_speech_eval.json``):

- ``snr_db``: per clip 10 log10(sum_t x_t^2 / sum_t (x_t - x^_t)^2) over the clip's real samples,
  then the mean over clips (``snr_db_median`` too). Identical signals have an infinite SNR: each
  clip's value is clamped to [-SNR_CAP_DB, SNR_CAP_DB] = [-100, 100] dB (16-bit PCM's own
  quantisation SNR is about 98 dB), so a perfect clip counts 100 dB and the mean stays finite.
- ``lsd_db``: log-spectral distance. Per frame (the STFT above), the root mean square over the 129
  bins of 20 log10(max(|X|, f) / max(|X^|, f)), floor f = LSD_FLOOR = 1e-3 (a full-scale sine peaks
  at |X| = 64; quantisation noise of 16-bit audio is about 1e-4 a bin); the mean over the clip's
  frames, then over clips.
- ``digit_accuracy`` of the digit classifier on the originals, reconstructions and conversions
  (the label: the clip's digit); ``speaker_accuracy`` of the speaker classifier on the originals and
  reconstructions (the label: the clip's speaker).
- ``conversion_to_target``: the fraction of conversions the speaker classifier assigns to the
  target speaker (chance 1/6); ``conversion_still_source``: the fraction it still assigns to the
  clip's own speaker; ``conversion_to_target_by_speaker``: the first, per target speaker.
- ``mulaw_reference``: SNR, LSD and the two accuracies of the originals quantised to 8-bit mu-law
  (``vaelab.waves``), the form the model's likelihood scores: the ceiling of a perfect model.

A few clips are written as .wav files into DIR (original, reconstruction and each conversion), and
added to the run's report as an AudioSection ``fsdd_eval_audio`` with a TableSection ``fsdd_eval`` of
the numbers; the report is rebuilt.

    vaelab train configs/vqvae_speech_fsdd.toml
    python benchmarks/vq_speech_eval.py train-classifiers --out runs/fsdd_classifiers.pt \\
        --run runs/vqvae_speech_fsdd
    python benchmarks/vq_speech_eval.py evaluate --classifiers runs/fsdd_classifiers.pt \\
        --run runs/vqvae_speech_fsdd --out runs/vqvae_speech_fsdd/fsdd_eval

``robustness`` scores the classifiers on the 300 test recordings changed in known ways (white noise
at 20, 10 and 5 dB SNR, scaled by 0.3, resynthesised from their 256- or 64-point |STFT| with random
phases, a 4-sample moving average), so that ``evaluate``'s accuracies can be read: which errors of a
decoder the classifiers forgive. Measured (seed 0): digits 99.3% / speakers 99.3% on the originals;
noise at 20 dB 94.7% / 81.3%, at 10 dB 66.0% / 39.0%, at 5 dB 40.3% / 31.3%; scaled by 0.3 94.3% /
64.7% (the speaker classifier hears loudness); random phase (256) 97.3% / 96.3%, (64) 91.7% / 80.0%;
moving average 75.7% / 85.3%. The short-time magnitudes carry the words: a decoder need not get the
phase right, only the spectra.

    python benchmarks/vq_speech_eval.py robustness --classifiers runs/fsdd_classifiers.pt

The classifier file holds weights and numbers only (``torch.load(weights_only=True)``).

Measured on one thread of the busy 2-core reference machine (niced, beside two training runs), with
the defaults (12 epochs of Adam, lr 2e-3 with cosine decay to 2e-4, batch 32, seed 0, all 2,430
training clips of the preset's split): the digit classifier 99.33% on the 300 test recordings
(97.78% on the 270 validation clips) in 62 s; the speaker classifier 99.33% (100.0%) in 70 s;
features of all 3,000 clips 0.5 s. On the originals quantised to 8-bit mu-law both keep 99.0%
(SNR 36.8 dB, LSD 2.2 dB).

The full preset (``configs/vqvae_speech_fsdd.toml``, 13,680 steps) had not been trained when this was
written. A trial of it stopped at 4,000 steps (26 epochs, 469 s; validation codebook perplexity 109)
gave, over all 300 test clips and 1,500 conversions (evaluate took 19 s, 7 s of it decoding):
SNR -1.9 dB (median -1.1), LSD 20.5 dB, digit accuracy 9.3% on reconstructions and 8.0% on
conversions (chance 10%), speaker accuracy 41.7% on reconstructions, conversions heard as the target
26.2% and as the source 27.7%. The reconstructions are uncorrelated with the originals (a correlation
of about 0 in the clips looked at): at that point the decoder's mean E[x | codes, speaker] is not yet
speech to these classifiers. These are the numbers of a trial, not of the trained model.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.config import DataConfig
from vaelab.data import WaveformBundle, load_dataset
from vaelab.data.fsdd import FSDD_RATE, FSDD_SPEAKERS
from vaelab.errors import VaelabError
from vaelab.waves import WaveBatch, Waveforms, mu_law_decode, mu_law_encode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks/classifier_fit.py
from classifier_fit import fit_classifier  # noqa: E402

N_FFT, HOP = 256, 64  # 32 ms Hann window, 8 ms hop at 8 kHz
N_BINS = N_FFT // 2 + 1
FRAMES = 40  # every clip's spectrogram is pooled (or stretched) to this many frames
SNR_CAP_DB = 100.0
LSD_FLOOR = 1e-3
TASKS = {"digit": 10, "speaker": len(FSDD_SPEAKERS)}
# the full preset's split (configs/vqvae_speech_fsdd.toml) when no run is given
DEFAULT_DATA = DataConfig(name="fsdd", valid_size=0.1, split_seed=0)


# ----------------------------------------------------------------------------- signal measures
def magnitudes(x: Tensor) -> Tensor:
    """|STFT| of one clip: x (n,) samples -> (129, frames) magnitudes, frames = 1 + (n' - 256) // 64
    with n' = max(n, 256) (a clip shorter than a window is zero-padded to one)."""
    x = x.reshape(-1).float()
    if len(x) < N_FFT:
        x = F.pad(x, (0, N_FFT - len(x)))
    window = torch.hann_window(N_FFT, device=x.device)
    return torch.stft(x, N_FFT, HOP, N_FFT, window, center=False, return_complex=True).abs()


def snr_db(x: Tensor, x_hat: Tensor, cap: float = SNR_CAP_DB) -> float:
    """10 log10(sum x^2 / sum (x - x_hat)^2) of two clips (n,), in dB, computed in float64 and
    clamped to [-cap, cap]: identical signals give +cap (not +inf), a silent x with any error -cap."""
    x, x_hat = x.double().reshape(-1), x_hat.double().reshape(-1)
    signal, error = float((x**2).sum()), float(((x - x_hat) ** 2).sum())
    if error == 0.0:
        return cap
    if signal == 0.0:
        return -cap
    return float(np.clip(10 * math.log10(signal / error), -cap, cap))


def lsd_db(mag: Tensor, mag_hat: Tensor, floor: float = LSD_FLOOR) -> float:
    """Log-spectral distance of two magnitude spectrograms (F, T), in dB: per frame the RMS over the
    F bins of 20 log10(max(|X|, floor) / max(|X^|, floor)), then the mean over the T frames."""
    d = 20 * (torch.log10(mag.double().clamp_min(floor)) - torch.log10(mag_hat.double().clamp_min(floor)))
    return float(d.pow(2).mean(0).sqrt().mean())


# ----------------------------------------------------------------------------- classifiers
def features(clips: list[Tensor]) -> Tensor:
    """Clips (each (n,) samples) -> (N, 1, 129, FRAMES): log(1 + |STFT|), its frames averaged down
    (``adaptive_avg_pool1d``) or, for clips of fewer frames, stretched linearly to FRAMES."""
    out = []
    for c in clips:
        s = torch.log1p(magnitudes(c))[None]  # (1, 129, T)
        s = F.adaptive_avg_pool1d(s, FRAMES) if s.shape[-1] >= FRAMES else \
            F.interpolate(s, size=FRAMES, mode="linear", align_corners=False)
        out.append(s)
    return torch.stack(out)


class SpectrogramCNN(nn.Module):
    """x (B, 1, 129, FRAMES) features -> logits (B, n_classes). Standardised per frequency bin by the
    training set's statistics (buffers), then three 3x3 convolutions (16, 32, 64 channels) each with
    ReLU and 2x2 max pooling, dropout and a linear layer."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 1, N_BINS, 1))
        self.register_buffer("std", torch.ones(1, 1, N_BINS, 1))
        self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in ((1, 16), (16, 32), (32, 64)))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(64 * (N_BINS // 8) * (FRAMES // 8), n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = (x - self.mean) / self.std
        for conv in self.convs:
            h = F.max_pool2d(F.relu(conv(h)), 2)  # (B, 16, 64, 20) -> (B, 32, 32, 10) -> (B, 64, 16, 5)
        return self.fc(self.drop(h.flatten(1)))


@torch.no_grad()
def predict(clf: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted classes (N,) long of features x (N, 1, 129, FRAMES)."""
    clf.eval()
    if not len(x):
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([clf(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def accuracy(predicted: Tensor, labels: Tensor) -> float:
    return float((predicted == labels).double().mean()) if len(labels) else float("nan")


_BUNDLES: dict[str, WaveformBundle] = {}


def fsdd_bundle(cfg: DataConfig) -> WaveformBundle:
    """The FSDD splits of ``cfg`` (loaded once per process and data config)."""
    if cfg.name != "fsdd":
        raise VaelabError(f"this benchmark is for the fsdd dataset; the run's data are {cfg.name!r}")
    key = json.dumps(asdict(cfg), sort_keys=True)
    if key not in _BUNDLES:
        bundle = load_dataset(cfg)
        assert isinstance(bundle, WaveformBundle)
        if bundle.label_names.get("speaker") != list(FSDD_SPEAKERS):
            raise VaelabError("the fsdd data carry other speakers than the six of the data README")
        _BUNDLES[key] = bundle
    return _BUNDLES[key]


def clips_of(waves: Waveforms | None, index: Tensor | None = None) -> list[Tensor]:
    if waves is None:
        return []
    rows = range(len(waves)) if index is None else index.tolist()
    return [waves[int(i)] for i in rows]


def run_config(run: str | Path):
    from vaelab.config import config_from_dict

    path = Path(run) / "config.json"
    try:
        return config_from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise VaelabError(f"no run at {run} (no config.json); train one with `vaelab train "
                          "configs/vqvae_speech_fsdd.toml`") from None


def train_one(name: str, x: Tensor, y: Tensor, args: argparse.Namespace, held_out: dict[str, tuple]) -> tuple:
    """Train the ``name`` classifier on features x (N, 1, 129, FRAMES) and labels y (N,); return it
    with its held-out accuracies (split -> accuracy) and its training time."""
    torch.manual_seed(args.seed)
    clf = SpectrogramCNN(TASKS[name])
    clf.mean.copy_(x.mean((0, 3), keepdim=True))
    clf.std.copy_(x.std((0, 3), keepdim=True).clamp_min(1e-3))
    acc: dict[str, float] = {}

    def after_epoch(epoch: int, took: float) -> None:
        acc.update({split: accuracy(predict(clf, hx), hy) for split, (hx, hy) in held_out.items()})
        print(f"{name} epoch {epoch}/{args.epochs}: " + ", ".join(f"{s} {a:.4f}" for s, a in acc.items())
              + f" ({took:.0f} s)", file=sys.stderr)

    seconds = fit_classifier(clf, x, y, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, after_epoch=after_epoch)
    return clf.eval(), acc, round(seconds, 1)


def train_classifiers(args: argparse.Namespace) -> dict:
    if args.epochs < 1:
        raise VaelabError(f"--epochs must be >= 1, got {args.epochs}")
    data = run_config(args.run).data if args.run else DEFAULT_DATA
    data = replace(data, limit=0, max_seconds=0.0)  # the whole clips of the whole training split
    if data.sample_rate != FSDD_RATE:
        raise VaelabError(f"the run resamples FSDD to {data.sample_rate} Hz; these features are for 8000 Hz")
    bundle = fsdd_bundle(data)
    start = time.perf_counter()
    train = clips_of(bundle.train)
    n = len(train) if not args.limit else min(args.limit, len(train))
    if args.limit:  # an even spread over the training clips, so every digit and speaker appears
        pick = torch.linspace(0, len(train) - 1, n).round().long()
        train = [train[int(i)] for i in pick]
    else:
        pick = torch.arange(n)
    x = features(train)
    held = {s: (features(clips_of(getattr(bundle, s))), bundle.label_sets(s)) for s in ("valid", "test")}
    seconds_features = round(time.perf_counter() - start, 1)
    result: dict = {
        "train_clips": n, "valid_clips": len(held["valid"][0]), "test_clips": len(held["test"][0]),
        "epochs": args.epochs, "seed": args.seed, "feature_seconds": seconds_features,
        "data": {k: getattr(data, k) for k in ("name", "valid_size", "split_seed", "sample_rate")},
    }
    stored: dict = {}
    for name in TASKS:
        y = bundle.label_sets("train")[name][pick]
        held_out = {s: (hx, hy[name]) for s, (hx, hy) in held.items() if len(hx)}
        clf, acc, seconds = train_one(name, x, y, args, held_out)
        result[name] = {**{f"{s}_accuracy": round(a, 4) for s, a in acc.items()}, "seconds": seconds}
        stored[name] = clf.state_dict()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"states": stored, "speakers": list(FSDD_SPEAKERS), "n_fft": N_FFT, "hop": HOP,
                "frames": FRAMES, **json.loads(json.dumps(result))}, out)
    return result


def load_classifiers(path: str | Path) -> tuple[dict[str, SpectrogramCNN], dict]:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VaelabError(f"no classifiers at {path}; train them with `python {sys.argv[0]} "
                          f"train-classifiers --out {path}`") from None
    if (stored.get("n_fft"), stored.get("hop"), stored.get("frames")) != (N_FFT, HOP, FRAMES):
        raise VaelabError(f"{path} was trained on other features; train the classifiers again")
    models = {}
    for name, n_classes in TASKS.items():
        clf = SpectrogramCNN(n_classes)
        clf.load_state_dict(stored["states"][name])
        models[name] = clf.eval()
    return models, stored


# ----------------------------------------------------------------------------- evaluation
def batch_of(waves: Waveforms, index: Tensor, labels: dict[str, Tensor], device: torch.device) -> WaveBatch:
    b = waves.pad(index)
    return WaveBatch(b.audio, b.lengths, b.mask, {k: v[index] for k, v in labels.items()}).to(device)


def wav_name(i: int, what: str) -> str:
    return f"clip{i:03d}_{what}.wav"


@torch.no_grad()
def evaluate(args: argparse.Namespace) -> dict:
    from vaelab.experiment import load_run_model, resolve_device
    from vaelab.models.vqvae_speech import SpeechVQVAE
    from vaelab.report.build import build_report
    from vaelab.sections import AudioSection, TableSection, wav_bytes, write_sections

    device = resolve_device(args.device)
    classifiers, stored = load_classifiers(args.classifiers)
    model, cfg, ckpt_path = load_run_model(args.run, device)
    if not isinstance(model, SpeechVQVAE) or model.speaker_names != list(FSDD_SPEAKERS):
        raise VaelabError(f"{args.run} is not a speech VQ-VAE conditioned on FSDD's six speakers")
    if cfg.data.sample_rate != FSDD_RATE:
        raise VaelabError(f"{args.run} resamples FSDD to {cfg.data.sample_rate} Hz; the classifiers read "
                          f"{FSDD_RATE} Hz")
    if args.temperature:
        if not 0.0 < args.temperature <= 1.0:
            raise VaelabError(f"--temperature must be in (0, 1], got {args.temperature}")
        model.config = replace(model.config, temperature=args.temperature)
    trained_on = stored.get("data", {})
    split = {k: getattr(cfg.data, k) for k in ("valid_size", "split_seed")}
    if any(trained_on.get(k) != v for k, v in split.items()):
        print(f"note: the classifiers were trained on the split {trained_on}, the run's is {split}; the "
              "official test set is held out from both either way", file=sys.stderr)
    bundle = fsdd_bundle(replace(cfg.data, max_seconds=0.0))
    test, labels = bundle.test, bundle.label_sets("test")
    assert test is not None
    n_all = len(test)
    n = min(args.clips, n_all) if args.clips else n_all
    chosen = torch.linspace(0, n_all - 1, n).round().long() if n < n_all else torch.arange(n_all)
    digit, speaker = labels["digit"][chosen], labels["speaker"][chosen]
    lengths = test.lengths[chosen]
    n_spk = len(FSDD_SPEAKERS)
    offsets = range(1, n_spk)  # target = (own + k) % 6: every other speaker, once each

    originals: list[Tensor] = [torch.empty(0)] * n
    recs: list[Tensor] = [torch.empty(0)] * n
    convs: dict[int, list[Tensor]] = {k: [torch.empty(0)] * n for k in offsets}
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    order = torch.argsort(lengths)  # batches of similar lengths: little padding
    for b in range(0, n, args.batch_size):
        rows = order[b : b + args.batch_size]
        x = batch_of(test, chosen[rows], labels, device)
        # the reconstruction (k = 0: the clip's own speaker) and the conversions to every other
        # speaker decoded as one batch of 6 B rows (one pass of a WaveNet decoder's sampling loop)
        shifts = torch.arange(n_spk, device=device).repeat_interleave(len(rows))
        many = WaveBatch(x.audio.repeat(n_spk, 1), x.lengths.repeat(n_spk), x.mask.repeat(n_spk, 1),
                         {"speaker": x.labels["speaker"].repeat(n_spk)})
        decoded = model.convert(many, (many.labels["speaker"] + shifts) % n_spk).audio.cpu()
        rec = decoded[: len(rows)]
        conv = {k: decoded[k * len(rows) : (k + 1) * len(rows)] for k in offsets}
        for j, r in enumerate(rows.tolist()):
            m = int(x.lengths[j])
            originals[r], recs[r] = x.audio[j, :m].cpu(), rec[j, :m]
            for k in offsets:
                convs[k][r] = conv[k][j, :m]
    decode_seconds = time.perf_counter() - start

    snr = np.array([snr_db(o, r) for o, r in zip(originals, recs)])
    lsd = np.array([lsd_db(magnitudes(o), magnitudes(r)) for o, r in zip(originals, recs)])
    conv_clips = [c for k in offsets for c in convs[k]]
    targets = torch.cat([(speaker + k) % n_spk for k in offsets])
    pred = {
        "original": {t: predict(c, features(originals)) for t, c in classifiers.items()},
        "reconstruction": {t: predict(c, features(recs)) for t, c in classifiers.items()},
        "conversion": {t: predict(c, features(conv_clips)) for t, c in classifiers.items()},
    }
    # the ceiling: the originals quantised to 8-bit mu-law, the form the model's likelihood scores
    mulaw = [mu_law_decode(mu_law_encode(o)) for o in originals]
    pred["mulaw"] = {t: predict(c, features(mulaw)) for t, c in classifiers.items()}
    conv_speaker = pred["conversion"]["speaker"]
    source = speaker.repeat(len(offsets))
    result = {
        "run": str(args.run), "checkpoint": str(ckpt_path), "classifiers": str(args.classifiers),
        "clips": n, "test_clips": n_all, "sample_rate": FSDD_RATE,
        "conversions": len(conv_clips),
        "conversion_targets": f"every other speaker: each clip decoded with each of the {n_spk - 1} others",
        "snr_db": round(float(snr.mean()), 3), "snr_db_median": round(float(np.median(snr)), 3),
        "lsd_db": round(float(lsd.mean()), 3),
        "digit_accuracy": {w: round(accuracy(pred[w]["digit"], d), 4) for w, d in
                           (("original", digit), ("reconstruction", digit),
                            ("conversion", digit.repeat(len(offsets))))},
        "speaker_accuracy": {w: round(accuracy(pred[w]["speaker"], speaker), 4)
                             for w in ("original", "reconstruction")},
        "conversion_to_target": round(accuracy(conv_speaker, targets), 4),
        "conversion_still_source": round(accuracy(conv_speaker, source), 4),
        "conversion_to_target_by_speaker": {
            name: round(accuracy(conv_speaker[targets == s], targets[targets == s]), 4)
            for s, name in enumerate(FSDD_SPEAKERS)},
        "chance_speaker": round(1 / n_spk, 4),
        "mulaw_reference": {  # the originals through 8-bit mu-law: what a perfect model would give
            "snr_db": round(float(np.mean([snr_db(o, q) for o, q in zip(originals, mulaw)])), 3),
            "lsd_db": round(float(np.mean([lsd_db(magnitudes(o), magnitudes(q))
                                           for o, q in zip(originals, mulaw)])), 3),
            "digit_accuracy": round(accuracy(pred["mulaw"]["digit"], digit), 4),
            "speaker_accuracy": round(accuracy(pred["mulaw"]["speaker"], speaker), 4),
        },
        "classifier_test_accuracy": {t: stored.get(t, {}).get("test_accuracy") for t in TASKS},
        "decode_seconds": round(decode_seconds, 1),
        "sampling_seed": args.seed,
        "temperature": model.config.temperature if model.wavenet is not None else None,
        "definitions": {
            "snr_db": f"per clip 10 log10(sum x^2 / sum (x - x_hat)^2) over its real samples, clamped "
                      f"to [-{SNR_CAP_DB:g}, {SNR_CAP_DB:g}] dB (identical clips: {SNR_CAP_DB:g}); mean over "
                      "clips",
            "lsd_db": f"per frame (|STFT|, Hann {N_FFT}, hop {HOP}) the RMS over {N_BINS} bins of "
                      f"20 log10(max(|X|, {LSD_FLOOR:g}) / max(|X_hat|, {LSD_FLOOR:g})); mean over frames, "
                      "then over clips",
        },
    }

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n_audio = min(args.audio, n)
    shown = [round(i * n / n_audio) for i in range(n_audio)] if n_audio else []  # spread over the digits
    clips: list[bytes] = []
    names: list[str] = []
    written: list[str] = []
    for i in shown:
        who, said = FSDD_SPEAKERS[int(speaker[i])], int(digit[i])
        versions = [(originals[i], "original", f"digit {said}, speaker {who}: original"),
                    (recs[i], "reconstruction", "reconstruction")]
        versions += [(convs[k][i], f"as_{FSDD_SPEAKERS[(int(speaker[i]) + k) % n_spk]}",
                      f"as speaker {FSDD_SPEAKERS[(int(speaker[i]) + k) % n_spk]}") for k in offsets]
        for audio, what, label in versions:
            data = wav_bytes(audio.numpy(), FSDD_RATE)
            path = out / wav_name(i, what)
            path.write_bytes(data)
            written.append(path.name)
            clips.append(data)
            names.append(f"clip {i}: {label}" if what != "original" else f"clip {i}, {label}")
    result["wav_files"] = written

    if not args.no_report:
        acc = result["digit_accuracy"], result["speaker_accuracy"]
        rows = [
            ["SNR of reconstructions (dB, mean over clips)", result["snr_db"]],
            ["log-spectral distance of reconstructions (dB)", result["lsd_db"]],
            ["digit accuracy: originals", acc[0]["original"]],
            ["digit accuracy: reconstructions", acc[0]["reconstruction"]],
            ["digit accuracy: conversions", acc[0]["conversion"]],
            ["speaker accuracy: originals", acc[1]["original"]],
            ["speaker accuracy: reconstructions", acc[1]["reconstruction"]],
            ["conversions heard as the target speaker", result["conversion_to_target"]],
            ["conversions heard as the source speaker", result["conversion_still_source"]],
        ]
        clf_acc = result["classifier_test_accuracy"]
        caption = (f"{n} held-out FSDD test recordings (official indices 0-4), reconstructed and each "
                   f"converted to the {n_spk - 1} other speakers ({len(conv_clips)} conversions), judged "
                   "by a digit and a speaker classifier trained on the real training recordings "
                   f"(held-out test accuracy {clf_acc['digit']} and {clf_acc['speaker']}); chance for the "
                   f"speaker 1/6. SNR: {result['definitions']['snr_db']}. "
                   f"LSD: {result['definitions']['lsd_db']}.")
        audio_caption = (f"{n_audio} held-out clips at {FSDD_RATE} Hz: the original, its reconstruction "
                         f"and its conversions to the {n_spk - 1} other speakers "
                         "(benchmarks/vq_speech_eval.py).")
        write_sections(args.run, [
            TableSection(name="fsdd_eval", title="FSDD: reconstructions and voice conversion, classified",
                         caption=caption, header=["measure", "value"], rows=rows),
            AudioSection(name="fsdd_eval_audio", title="FSDD: held-out clips, reconstructed and converted",
                         caption=audio_caption, clips=clips, labels=names),
        ])
        result["report"] = str(build_report(args.run))
    (out / "vq_speech_eval.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


# ----------------------------------------------------------------------------- robustness
def random_phase(x: Tensor, n_fft: int, generator: torch.Generator) -> Tensor:
    """x (n,) resynthesised from its |STFT| (Hann n_fft, hop n_fft / 4) with uniformly random phases:
    the same short-time magnitudes, none of the waveform's phase."""
    window = torch.hann_window(n_fft)
    spec = torch.stft(x, n_fft, n_fft // 4, n_fft, window, return_complex=True)
    phase = torch.exp(2j * math.pi * torch.rand(spec.shape, generator=generator))
    return torch.istft(spec.abs() * phase, n_fft, n_fft // 4, n_fft, window, length=len(x))


def degradations(seed: int) -> dict[str, Callable[[Tensor], Tensor]]:
    """Named changes of a clip (n,) -> (n,), each a kind of error a decoder makes."""
    g = torch.Generator().manual_seed(seed)

    def noise(snr: float) -> Callable[[Tensor], Tensor]:
        return lambda x: x + torch.randn(x.shape, generator=g) * x.pow(2).mean().sqrt() * 10 ** (-snr / 20)

    def smooth(x: Tensor) -> Tensor:  # a 4-sample moving average: a low-pass, -6 dB near 1.4 kHz
        return F.avg_pool1d(x[None, None], 4, 1, 2, count_include_pad=False)[0, 0, : len(x)]

    return {"white noise at 20 dB SNR": noise(20), "white noise at 10 dB SNR": noise(10),
            "white noise at 5 dB SNR": noise(5), "scaled by 0.3": lambda x: 0.3 * x,
            "random phase, 256-point STFT": lambda x: random_phase(x, 256, g),
            "random phase, 64-point STFT": lambda x: random_phase(x, 64, g),
            "4-sample moving average": smooth}


def robustness(args: argparse.Namespace) -> dict:
    """The classifiers on the 300 test recordings changed in known ways (``degradations``): what
    kind of decoding error they forgive, to read ``evaluate``'s accuracies by."""
    classifiers, _ = load_classifiers(args.classifiers)
    bundle = fsdd_bundle(DEFAULT_DATA)
    labels = bundle.label_sets("test")
    originals = clips_of(bundle.test)
    result: dict = {"clips": len(originals), "seed": args.seed, "accuracy": {}}
    versions = {"original": originals} | {name: [f(x) for x in originals]
                                          for name, f in degradations(args.seed).items()}
    for name, clips in versions.items():
        x = features(clips)
        scores = {t: round(accuracy(predict(classifiers[t], x), labels[t]), 4) for t in TASKS}
        result["accuracy"][name] = scores
        result["accuracy"][name]["lsd_db"] = round(float(np.mean([
            lsd_db(magnitudes(o), magnitudes(c)) for o, c in zip(originals, clips)])), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    t = sub.add_parser("train-classifiers", help="train the digit and speaker CNNs on real FSDD recordings")
    t.add_argument("--out", required=True, help="the .pt file to write (weights and numbers only)")
    t.add_argument("--run", default=None, help="take the data split from this speech VQ-VAE run "
                   "(default: the full preset's, valid_size 0.1, split_seed 0)")
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=0, help="train on N training clips spread evenly (0: all)")
    e = sub.add_parser("evaluate", help="reconstruct and convert the test recordings of a run; classify")
    e.add_argument("--classifiers", required=True, help="a file written by train-classifiers")
    e.add_argument("--run", required=True, help="the speech VQ-VAE run folder (its report gets the results)")
    e.add_argument("--out", required=True, help="folder for the .wav files and vq_speech_eval.json")
    e.add_argument("--clips", type=int, default=0, help="N test clips spread evenly (0: all 300)")
    e.add_argument("--audio", type=int, default=4, help="clips written as .wav and into the report")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    e.add_argument("--no-report", action="store_true", help="leave the run's report alone")
    e.add_argument("--seed", type=int, default=0, help="of a WaveNet decoder's draws")
    e.add_argument("--temperature", type=float, default=0.0,
                   help="a WaveNet decoder's sampling temperature in (0, 1] (0: the run's model.temperature)")
    r = sub.add_parser("robustness", help="the classifiers on test recordings with known degradations")
    r.add_argument("--classifiers", required=True, help="a file written by train-classifiers")
    r.add_argument("--seed", type=int, default=0)
    for q in (t, e, r):
        q.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        command = {"train-classifiers": train_classifiers, "evaluate": evaluate, "robustness": robustness}
        result = command[args.command](args)
    except VaelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
