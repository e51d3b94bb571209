"""Waveforms: reading WAV (every PCM width, float, stereo, resampling), ``wav:PATH`` with labels,
one-line errors for broken files, the Free Spoken Digit Dataset and its official split, and the
crop / pad batcher."""

from __future__ import annotations

import io
import re
import struct
import tarfile

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from torch import nn

from vaelab.config import DataConfig, RunConfig
from vaelab.data import WaveformBundle, load_dataset
from vaelab.data.audio import read_wav, resample
from vaelab.errors import VaelabError
from vaelab.evaluation.units import example_counts
from vaelab.models.base import LossOutput, Model, ModelConfig
from vaelab.train.waveforms import WaveformBatches
from vaelab.waves import WaveBatch, Waveforms


def cfg(name: str, **kw) -> DataConfig:
    kw.setdefault("valid_size", 0)
    return DataConfig(name=name, **kw)


def wav_bytes(rate: int, x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    wavfile.write(buf, rate, x)
    return buf.getvalue()


def pcm24_bytes(rate: int, x: np.ndarray) -> bytes:
    """A 24-bit PCM WAV (which scipy cannot write) of int samples x (n,) or (n, channels) in
    [-2^23, 2^23): little-endian, three bytes a sample."""
    x = x.reshape(len(x), -1)
    channels = x.shape[1]
    data = x.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 3 * channels, 3 * channels, 24)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def every_clip(b: WaveformBundle) -> list[np.ndarray]:
    return [w[i].numpy() for w in (b.train, b.valid, b.test) if w is not None for i in range(len(w))]


# ----------------------------------------------------------------------------- reading WAV


def test_pcm_widths_scale_to_full_scale_exactly():
    k16 = np.array([-32768, -1, 0, 1, 12345, 32767], np.int16)
    rate, x = read_wav(wav_bytes(8000, k16), "a.wav")
    assert rate == 8000 and x.dtype == np.float32
    np.testing.assert_array_equal(x, k16 / 32768.0)
    k24 = np.array([-(2**23), -1, 0, 1, 4_000_000, 2**23 - 1])
    rate, x = read_wav(pcm24_bytes(16000, k24), "b.wav")
    assert rate == 16000
    np.testing.assert_array_equal(x, (k24 / 2.0**23).astype(np.float32))
    k32 = np.array([-(2**31), 0, 2**30, 2**31 - 1], np.int32)
    x = read_wav(wav_bytes(8000, k32), "c.wav")[1]
    np.testing.assert_array_equal(x, (k32 / 2.0**31).astype(np.float32))
    k8 = np.array([0, 64, 128, 255], np.uint8)  # 8-bit WAV is unsigned, centred on 128
    np.testing.assert_array_equal(read_wav(wav_bytes(8000, k8), "d.wav")[1], [-1.0, -0.5, 0.0, 127 / 128])


def test_float_files_are_kept_and_clipped_to_full_scale():
    f32 = np.array([-1.5, -0.25, 0.0, 0.123456, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(read_wav(wav_bytes(8000, f32), "f.wav")[1], np.clip(f32, -1, 1))
    f64 = np.array([0.1, -0.7], np.float64)
    np.testing.assert_array_equal(read_wav(wav_bytes(8000, f64), "g.wav")[1], f64.astype(np.float32))


def test_stereo_is_mixed_to_the_mean_of_its_channels():
    left = np.array([1000, -2000, 30000, 0], np.int16)
    right = np.array([3000, 2000, -30000, 7], np.int16)
    x = read_wav(wav_bytes(8000, np.stack([left, right], axis=1)), "s.wav")[1]
    np.testing.assert_allclose(x, (left / 32768.0 + right / 32768.0) / 2, atol=1e-7)
    # 24-bit stereo too: the reader, not the writer, decides
    x24 = read_wav(pcm24_bytes(8000, np.stack([left, right], axis=1).astype(np.int64) * 256), "t.wav")[1]
    np.testing.assert_allclose(x24, x, atol=1e-7)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_resampling_44k1_keeps_frequencies_and_removes_what_8k_cannot_hold(tmp_path):
    t = np.arange(44100) / 44100  # one second
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    high = 0.4 * np.sin(2 * np.pi * 6000 * t)  # above 4 kHz: it would alias to 2 kHz without filtering
    wavfile.write(tmp_path / "tone.wav", 44100, np.round((tone + high) * 32767).astype(np.int16))
    b = load_dataset(cfg(f"wav:{tmp_path}"))
    assert b.sample_rate == 8000 and len(b.train) == 1
    y = b.train[0].numpy()
    assert len(y) == 8000  # 44,100 samples * 80 / 441
    spectrum = np.abs(np.fft.rfft(y))
    freqs = np.fft.rfftfreq(len(y), 1 / 8000)
    assert peak_hz(y, 8000) == 440.0
    # the 440 Hz amplitude survives, the alias at 2 kHz is at least 40 dB below it
    assert spectrum[freqs == 440.0][0] / (len(y) / 2) == pytest.approx(0.5, rel=0.01)
    assert spectrum[(freqs > 1900) & (freqs < 2100)].max() < 0.01 * spectrum[freqs == 440.0][0]


def test_resample_upward_and_the_exact_ratio():
    t = np.arange(8000) / 8000
    x = (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = resample(x, 8000, 22050)
    assert y.dtype == np.float32 and len(y) == 22050 and peak_hz(y, 22050) == 1000.0
    assert resample(x, 8000, 8000) is x


# ----------------------------------------------------------------------------- wav:PATH


def test_wav_folder_resamples_every_rate_and_cuts_long_clips(tmp_path):
    wavfile.write(tmp_path / "a.wav", 8000, np.full(800, 1000, np.int16))
    (tmp_path / "sub").mkdir()
    wavfile.write(tmp_path / "sub" / "b.wav", 16000, np.full(3200, 1000, np.int16))
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.wav").write_bytes(b"junk, but hidden")
    b = load_dataset(cfg(f"wav:{tmp_path}"))
    assert isinstance(b, WaveformBundle) and b.spec.kind == "waveforms" and b.test is None
    assert b.spec.extra["sample_rate"] == 8000 and b.spec.n_classes == 0 and b.split("train")[1] is None
    assert sorted(len(c) for c in every_clip(b)) == [800, 1600]  # 0.1 s and 0.2 s at 8 kHz
    wide = load_dataset(cfg(f"wav:{tmp_path}", sample_rate=16000, max_seconds=0.15))
    assert sorted(len(c) for c in every_clip(wide)) == [1600, 2400]
    assert wide.spec.shape == (2400,)


def test_wav_folder_splits_test_then_valid(tmp_path):
    for i in range(20):
        wavfile.write(tmp_path / f"{i:02d}.wav", 8000, np.full(10 + i, i, np.int16))
    b = load_dataset(cfg(f"wav:{tmp_path}", valid_size=3, split_seed=1))
    assert (len(b.train), len(b.valid), len(b.test)) == (15, 3, 2)
    assert sorted(len(c) for c in every_clip(b)) == list(range(10, 30))
    again = load_dataset(cfg(f"wav:{tmp_path}", valid_size=3, split_seed=2))
    assert torch.equal(again.test.flat, b.test.flat)  # the test set does not move with split_seed
    assert not torch.equal(again.valid.flat, b.valid.flat)  # the validation set does


def test_labels_csv_gives_named_label_sets(tmp_path):
    rows = ["file,speaker,word"]
    for i, (spk, word) in enumerate([("bo", "yes"), ("al", "no"), ("bo", "no"), ("al", "yes")] * 3):
        name = f"{spk}/{i}.wav"
        (tmp_path / spk).mkdir(exist_ok=True)
        wavfile.write(tmp_path / name, 8000, np.full(5 + i, i, np.int16))
        rows.append(f"{name},{spk},{word}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    b = load_dataset(cfg(f"wav:{tmp_path}", valid_size=2))
    assert b.label_names == {"speaker": ["al", "bo"], "word": ["no", "yes"]} and b.spec.n_classes == 2
    for split in ("train", "valid", "test"):
        clips, first = b.split(split)
        for j in range(len(clips)):
            i = int(round(float(clips[j][0]) * 32768))  # clip i holds the value i and has 5 + i samples
            assert len(clips[j]) == 5 + i
            spk, word = rows[1 + i].split(",")[1:]
            assert b.label_names["speaker"][int(first[j])] == spk
            assert b.label_names["word"][int(b.labels(split, "word")[j])] == word
    (tmp_path / "labels.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(VaelabError, match=r"csv has no row for al/11.wav .*give every .wav file a row"):
        load_dataset(cfg(f"wav:{tmp_path}"))


GOOD = wav_bytes(8000, np.arange(100, dtype=np.int16))
BROKEN = {
    "garbage": (b"this is not a wave file at all" * 4, "File format"),
    "truncated header": (GOOD[:20], "cannot read"),
    "truncated data": (GOOD[:60], "truncated"),
    "empty": (b"", "the file is empty"),
    "no samples": (wav_bytes(8000, np.zeros(0, np.int16)), "holds no samples"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_file_is_a_one_line_error_naming_it(tmp_path, case):
    data, why = BROKEN[case]
    (tmp_path / "good.wav").write_bytes(GOOD)
    (tmp_path / "bad.wav").write_bytes(data)
    with pytest.raises(VaelabError) as exc:
        load_dataset(cfg(f"wav:{tmp_path}"))
    msg = str(exc.value)
    assert "\n" not in msg and why in msg
    assert msg.startswith(f"cannot read {tmp_path / 'bad.wav'} as WAV (") and msg.endswith("or remove it")


def test_folders_without_wavs_and_missing_folders_say_so(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    no_wavs = rf"^folder {re.escape(str(tmp_path))} holds no .wav files .*fix data.name$"
    with pytest.raises(VaelabError, match=no_wavs):
        load_dataset(cfg(f"wav:{tmp_path}"))
    with pytest.raises(VaelabError, match=r"is not a folder; give a folder of .wav files"):
        load_dataset(cfg(f"wav:{tmp_path / 'nowhere'}"))


@pytest.mark.parametrize("key,value", [("sample_rate", 0), ("crop", 0), ("max_seconds", -1.0),
                                       ("max_seconds", 1e-6)])
def test_waveform_settings_are_validated(key, value):
    with pytest.raises(VaelabError, match=rf"data.{key}"):
        DataConfig(**{key: value}).validate("data")


# ----------------------------------------------------------------------------- FSDD

FSDD_NAME = re.compile(r"recordings/(\d)_([a-z]+)_(\d+)\.wav")


@pytest.mark.datasets("fsdd")
def test_fsdd_official_split_and_labels_match_the_file_names(data_root):
    b = load_dataset(DataConfig(name="fsdd"))  # valid_size 0.1 of the training part
    assert b.spec.kind == "waveforms" and b.sample_rate == 8000 and b.spec.n_classes == 10
    assert b.label_names["speaker"] == ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
    assert b.label_names["digit"] == [str(d) for d in range(10)]
    assert (len(b.train), len(b.valid), len(b.test)) == (2430, 270, 300)
    assert b.spec.shape == (18262,)  # the longest recording (data README)

    # the expected clips, read here independently: (digit, speaker, index) -> int16 samples
    expected = {}
    with tarfile.open(data_root / "fsdd" / "recordings.tar.gz") as tar:
        for m in tar.getmembers():
            if m.isfile():
                d, spk, idx = FSDD_NAME.fullmatch(m.name).groups()
                expected[int(d), spk, int(idx)] = wavfile.read(io.BytesIO(tar.extractfile(m).read()))[1]
    assert len(expected) == 3000
    speakers = b.label_names["speaker"]

    def keyed(split: str) -> dict[tuple[int, str, bytes], int]:
        clips = b.split(split)[0]
        digit, speaker = b.labels(split, "digit"), b.labels(split, "speaker")
        return {(int(digit[i]), speakers[int(speaker[i])], clips[i].numpy().tobytes()): i
                for i in range(len(clips))}

    def want(indices) -> set[tuple[int, str, bytes]]:
        return {(d, s, (x / np.float32(32768)).astype(np.float32).tobytes())
                for (d, s, i), x in expected.items() if i in indices}

    assert set(keyed("test")) == want(range(5))  # exactly the recordings with index 0-4
    train_part = {**keyed("train"), **keyed("valid")}
    assert len(train_part) == 2700 and set(train_part) == want(range(5, 50))
    assert torch.bincount(b.test_labels["speaker"]).tolist() == [50] * 6
    assert torch.bincount(b.test_labels["digit"]).tolist() == [30] * 10

    other = load_dataset(DataConfig(name="fsdd", split_seed=1, valid_size=100))
    assert len(other.valid) == 100 and torch.equal(other.test.flat, b.test.flat)


def test_fsdd_missing_file_names_it(tmp_path):
    with pytest.raises(VaelabError, match=r"file recordings.tar.gz not found at .*fsdd/recordings.tar.gz"):
        load_dataset(DataConfig(name="fsdd"), root=tmp_path)


def test_fsdd_corrupt_archive_is_refused(tmp_path):
    (tmp_path / "fsdd").mkdir()
    (tmp_path / "fsdd" / "recordings.tar.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(VaelabError, match=r"is corrupt \(size"):
        load_dataset(DataConfig(name="fsdd"), root=tmp_path)


# ----------------------------------------------------------------------------- batching


def numbered(lengths: list[int]) -> Waveforms:
    """Clip i sample t holds (1000 i + t + 1) / 2^20 (exact in float32): each value says where it is from."""
    return Waveforms.from_clips([(1000 * i + torch.arange(n, dtype=torch.float32) + 1) / 2**20
                                 for i, n in enumerate(lengths)])


def origin(v: float) -> tuple[int, int]:
    k = round(v * 2**20) - 1
    return k // 1000, k % 1000


def test_crops_have_the_configured_length_and_masks_mark_the_real_samples():
    lengths = [5, 64, 64, 65, 100, 300, 3, 64, 200, 17, 900]
    waves, crop = numbered(lengths), 64
    batches = WaveformBatches(waves, 4, crop=crop, seed=7)
    seen = []
    for batch in batches.epoch(2):
        assert batch.audio.shape == (len(batch), crop) and batch.mask.shape == (len(batch), crop)
        assert torch.equal(batch.mask, torch.arange(crop) < batch.lengths[:, None])
        assert bool((batch.audio[~batch.mask] == 0).all())
        for row in range(len(batch)):
            real = batch.audio[row, : int(batch.lengths[row])].tolist()
            clip, start = origin(real[0])
            assert int(batch.lengths[row]) == min(lengths[clip], crop)
            assert [origin(v) for v in real] == [(clip, start + t) for t in range(len(real))]  # contiguous
            assert start + len(real) <= lengths[clip]
            if lengths[clip] <= crop:
                assert start == 0
            seen.append(clip)
    assert sorted(seen) == list(range(len(lengths)))  # every clip once per epoch
    assert torch.equal(example_counts(batch), batch.lengths)


def test_crop_starts_are_uniform_and_batches_replay_exactly():
    waves = numbered([67] * 8)  # 4 possible starts each
    batches = WaveformBatches(waves, 8, crop=64, seed=3)
    starts = torch.tensor([origin(float(b.audio[r, 0]))[1] for e in range(500) for b in batches.epoch(e)
                           for r in range(len(b))])
    counts = torch.bincount(starts, minlength=4)
    assert counts.numel() == 4 and int(counts.sum()) == 4000
    # chi-square with 3 degrees of freedom: P(> 16.3) = 0.001
    assert float(((counts - 1000.0) ** 2 / 1000.0).sum()) < 16.3
    again = WaveformBatches(waves, 3, crop=64, seed=3)
    whole = list(again.epoch(4))
    resumed = list(WaveformBatches(waves, 3, crop=64, seed=3).epoch(4, start=1))
    assert all(torch.equal(a.audio, b.audio) for a, b in zip(whole[1:], resumed, strict=True))
    assert not torch.equal(whole[0].audio, list(again.epoch(5))[0].audio)


def test_evaluation_batches_hold_whole_clips_in_order():
    lengths = [5, 80, 3, 41, 7]
    waves = numbered(lengths)
    batches = list(WaveformBatches(waves, 2, shuffle=False).epoch(0))
    assert [b.audio.shape for b in batches] == [(2, 80), (2, 41), (1, 7)]
    rows = [(b, r) for b in batches for r in range(len(b))]
    for i, (b, r) in enumerate(rows):
        assert int(b.lengths[r]) == lengths[i] and int(b.mask[r].sum()) == lengths[i]
        assert torch.equal(b.audio[r, : lengths[i]], waves[i]) and bool((b.audio[r, lengths[i]:] == 0).all())
    pieces = batches[0].split(1)
    assert [p.audio.shape for p in pieces] == [(1, 80), (1, 80)] and isinstance(pieces[0], WaveBatch)


def test_batches_carry_the_label_sets_of_their_clips():
    lengths = [5, 64, 100, 300, 3, 200, 17]
    waves = numbered(lengths)
    sets = {"clip": torch.arange(len(lengths)), "speaker": torch.arange(len(lengths)) % 3}
    for crop in (64, 0):
        for batch in WaveformBatches(waves, 3, crop=crop, seed=2, labels=sets).epoch(1):
            clips = torch.tensor([origin(float(batch.audio[r, 0]))[0] for r in range(len(batch))])
            assert torch.equal(batch.labels["clip"], clips)
            assert torch.equal(batch.labels["speaker"], clips % 3)
            first = batch.split(2)[0]
            assert torch.equal(first.labels["clip"], clips[:2]) and len(first) == min(2, len(batch))
            assert torch.equal(batch.to("cpu").labels["speaker"], clips % 3)
    assert WaveformBatches(waves, 3).batch(0, 0).labels == {}
    with pytest.raises(ValueError, match="one value per clip"):
        WaveformBatches(waves, 3, labels={"clip": torch.arange(3)})


def test_mu_law_levels_invert_the_companding_curve():
    from vaelab.waves import mu_law_decode, mu_law_encode

    k = torch.arange(256)
    x = mu_law_decode(k)
    assert torch.equal(mu_law_encode(x), k)  # every level's sample falls back on its level
    assert x[0] == -1 and x[255] == 1 and bool((x[1:] > x[:-1]).all())
    assert torch.allclose(x, -x.flip(0), atol=1e-7)  # odd curve
    # dx/dy = ln(1 + mu) (1 + mu)^|y| / mu and levels are dy = 2 / mu apart: steps of about 1.7e-4 at
    # 0 and 256 times that, 0.044, at full scale
    steps = x[1:] - x[:-1]
    assert 1.6e-4 < steps[127] < 1.8e-4 and 0.042 < steps[-1] < 0.044
    assert torch.equal(mu_law_encode(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255]))


def test_data_parallel_shards_are_disjoint():
    waves = numbered([10 + i for i in range(11)])
    clips = []
    for rank in range(2):
        for b in WaveformBatches(waves, 2, crop=8, seed=1, rank=rank, world=2).epoch(0):
            clips += [origin(float(b.audio[r, 0]))[0] for r in range(len(b))]
    assert len(clips) == 10 and len(set(clips)) == 10


def test_experiment_batches_waveforms_with_crops_for_training(tmp_path):
    from vaelab.experiment import ordered_batches, split_batches

    for i in range(10):
        wavfile.write(tmp_path / f"{i}.wav", 8000, np.full(50 + 30 * i, 100 * (i + 1), np.int16))
    run = RunConfig(model=None, data=cfg(f"wav:{tmp_path}", valid_size=2, crop=32))
    run.train.batch_size = 3
    bundle = load_dataset(run.data)
    b = split_batches(bundle, run, torch.device("cpu"), rank=0, world=1)
    assert all(batch.audio.shape[1] == 32 for batch in b.train.epoch(0))
    assert sum(len(batch) for batch in b.valid.epoch(0)) == 2
    test = list(b.test.epoch(0))
    assert [batch.audio.shape[1] for batch in test] == [len(bundle.test[0])]
    ordered = ordered_batches(bundle, "train", 4, torch.device("cpu"))
    assert sum(len(batch) for batch in ordered.epoch(0)) == len(bundle.train)
    assert all(batch.labels == {} for batch in ordered.epoch(0))  # no labels.csv, no label sets


def test_experiment_batches_carry_the_labels_csv_sets_in_every_split(tmp_path):
    from vaelab.experiment import ordered_batches, split_batches

    rows = ["file,speaker"]
    for i in range(12):
        wavfile.write(tmp_path / f"{i:02d}.wav", 8000, np.full(40 + 10 * i, 100 * (i + 1), np.int16))
        rows.append(f"{i:02d}.wav,{'ab'[i % 2]}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    run = RunConfig(model=None, data=cfg(f"wav:{tmp_path}", valid_size=2, crop=32))
    run.train.batch_size = 3
    bundle = load_dataset(run.data)
    b = split_batches(bundle, run, torch.device("cpu"), rank=0, world=1)
    ordered = ordered_batches(bundle, "valid", 4, torch.device("cpu"))
    seen = 0
    for batches in (b.train, b.valid, b.test, ordered):
        for batch in batches.epoch(0):
            clip = (batch.audio[:, 0] * 32768 / 100).round().long() - 1
            assert torch.equal(batch.labels["speaker"], clip % 2)
            seen += len(batch)
    assert seen == len(bundle.train) + 2 * len(bundle.valid) + len(bundle.test)


# ----------------------------------------------------------------------------- through the run pipeline


class _ScaleConfig(ModelConfig):
    pass


class GaussianSamples(Model):
    """p(x) = prod_t N(x_t; 0, sigma^2) over the real samples (mask): exact log p(x), one parameter."""

    Config = _ScaleConfig
    data_kinds = frozenset({"waveforms"})

    def __init__(self, config, spec):
        super().__init__(config, spec)
        self.log_sigma = nn.Parameter(torch.zeros(()))

    def loss(self, batch: WaveBatch) -> LossOutput:
        lp = torch.distributions.Normal(0.0, self.log_sigma.exp()).log_prob(batch.audio)
        lp = (lp * batch.mask).sum(-1)  # padding is no evidence
        return LossOutput(loss=-lp.mean(), elbo=lp)

    def report_sections(self, inputs):
        return []


def test_train_run_fits_a_waveform_model_on_crops_and_scores_whole_clips(tmp_path, monkeypatch):
    from vaelab.config import config_from_dict
    from vaelab.experiment import evaluate_run, train_run
    from vaelab.models import MODELS

    GaussianSamples.name = "test_gaussian_samples"
    monkeypatch.setitem(MODELS, "test_gaussian_samples", GaussianSamples)
    rng = np.random.default_rng(0)
    data = tmp_path / "noise"
    data.mkdir()
    for i in range(24):  # white noise of standard deviation 0.1, 40-300 samples a clip
        noise = (0.1 * rng.standard_normal(40 + 11 * i)).astype(np.float32)
        wavfile.write(data / f"{i:02d}.wav", 8000, noise)
    cfg = config_from_dict({
        "model": {"name": "test_gaussian_samples"},
        "data": {"name": f"wav:{data}", "crop": 64, "valid_size": 2},
        "train": {"epochs": 60, "batch_size": 8, "lr": 0.05}, "eval": {"batch_size": 5},
    })
    run = tmp_path / "run"
    _, prep = train_run(cfg, run, device=torch.device("cpu"), progress=False)
    # the maximum-likelihood sigma of the padded crops would be far below 0.1: padding must be masked
    assert float(prep.model.log_sigma.detach().exp()) == pytest.approx(0.1, rel=0.1)
    result = evaluate_run(run, torch.device("cpu"))
    # bits per sample of N(0, 0.1^2) data: the differential entropy 0.5 log2(2 pi e 0.01), about -1.27
    assert result["bits_per_sample"] == pytest.approx(0.5 * np.log2(2 * np.pi * np.e * 0.01), abs=0.15)
