"""benchmarks/vq_speech_eval.py: its SNR and log-spectral distance against hand-made cases, and end to
end at a tiny budget (the smoke speech VQ-VAE trained 3 steps on FSDD, the two classifiers trained one
epoch on 60 real training clips, 12 test clips evaluated): the JSON's fields and ranges, the .wav files,
the report's sections."""

from __future__ import annotations

import io
import json
import math
import wave
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ev(benchmark_script):
    return benchmark_script("vq_speech_eval")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # tiny models: one thread is faster

# ----------------------------------------------------------------------------- SNR
def test_snr_of_a_known_signal_plus_known_noise(ev):
    # float64 inputs, so that the dB are exact to 1e-9 (the measures compute in float64)
    x = torch.full((100,), 2.0, dtype=torch.float64)  # sum x^2 = 400
    noise = 0.2 * (-1.0) ** torch.arange(100, dtype=torch.float64)  # sum e^2 = 4: a power ratio of 100
    assert ev.snr_db(x, x + noise) == pytest.approx(20.0, abs=1e-9)
    assert ev.snr_db(x, x + 2 * noise) == pytest.approx(20.0 - 20 * math.log10(2), abs=1e-9)
    assert ev.snr_db(x, -x) == pytest.approx(-10 * math.log10(4), abs=1e-9)  # error 2x: -6.02 dB
    assert ev.snr_db(x, torch.zeros(100)) == pytest.approx(0.0, abs=1e-12)  # silence for x: 0 dB


def test_snr_of_identical_signals_is_the_cap_not_infinity(ev):
    x = torch.sin(torch.arange(500) * 0.1)
    assert ev.snr_db(x, x.clone()) == ev.SNR_CAP_DB == 100.0
    assert ev.snr_db(x, x + 1e-9) == 100.0  # above the cap: clamped
    assert ev.snr_db(torch.zeros(10), torch.ones(10)) == -100.0  # a silent original with any error


# ----------------------------------------------------------------------------- LSD
def test_lsd_of_identical_spectra_is_zero_and_of_a_gain_g_is_20_log10_g(ev):
    g = torch.Generator().manual_seed(0)
    mag = torch.rand(129, 30, generator=g, dtype=torch.float64) + 0.01
    assert ev.lsd_db(mag, mag.clone()) == 0.0
    for gain in (0.5, 2.0, 10.0):
        assert ev.lsd_db(mag, gain * mag) == pytest.approx(abs(20 * math.log10(gain)), abs=1e-9)
    # from waveforms: a gain of the signal is the same gain of every |STFT| bin
    x = 0.3 * torch.randn(4000, generator=g)
    assert ev.lsd_db(ev.magnitudes(x), ev.magnitudes(x)) == 0.0
    assert ev.lsd_db(ev.magnitudes(x), ev.magnitudes(0.5 * x)) == pytest.approx(20 * math.log10(2), abs=1e-4)


def test_lsd_is_the_mean_over_frames_of_the_rms_over_bins_with_a_floor(ev):
    mag = torch.ones(4, 2, dtype=torch.float64)
    hat = mag.clone()
    hat[:2, 0] = 10.0  # frame 0: +-20 dB in two of four bins, RMS sqrt(400 / 2) = 14.14; frame 1: 0
    assert ev.lsd_db(mag, hat) == pytest.approx(math.sqrt(200) / 2, abs=1e-9)
    quiet = torch.full((4, 3), 1e-6, dtype=torch.float64)  # both under the floor 1e-3: no difference
    assert ev.lsd_db(quiet, quiet * 100) == 0.0
    louder = torch.full((4, 3), 1e-2, dtype=torch.float64)  # 1e-2 against the floor: 20 dB
    assert ev.lsd_db(quiet, louder) == pytest.approx(20.0, abs=1e-9)
    assert ev.magnitudes(torch.ones(100)).shape == (129, 1)  # a clip shorter than a window: one frame


# ----------------------------------------------------------------------------- end to end
@pytest.mark.datasets("fsdd")
def test_evaluate_a_smoke_run_end_to_end(ev, data_root, tmp_path, capsys):
    from vaelab.cli import main
    from vaelab.sections import AudioSection, TableSection, read_sections

    run, clf, out = tmp_path / "run", tmp_path / "clf.pt", tmp_path / "eval"
    preset = ROOT / "configs" / "smoke_vqvae_speech_fsdd.toml"
    assert main(["train", str(preset), "--out", str(run), "--quiet", "--no-eval", "--device", "cpu",
                 "--set", "train.max_steps=3", "--set", "train.threads=1"]) == 0
    capsys.readouterr()

    assert ev.main(["train-classifiers", "--out", str(clf), "--run", str(run), "--limit", "60",
                    "--epochs", "1"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["train_clips"] == 60 and trained["test_clips"] == 300 and trained["valid_clips"] == 270
    assert trained["data"] == {"name": "fsdd", "valid_size": 0.1, "split_seed": 0, "sample_rate": 8000}
    for task in ("digit", "speaker"):
        assert 0.0 <= trained[task]["test_accuracy"] <= 1.0 and trained[task]["seconds"] >= 0

    assert ev.main(["evaluate", "--classifiers", str(clf), "--run", str(run), "--out", str(out),
                    "--clips", "12", "--audio", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((out / "vq_speech_eval.json").read_text())
    assert printed == result
    assert result["clips"] == 12 and result["test_clips"] == 300 and result["conversions"] == 60  # 12 x 5
    assert -100.0 <= result["snr_db"] <= 100.0 and -100.0 <= result["snr_db_median"] <= 100.0
    assert result["lsd_db"] >= 0.0 and math.isfinite(result["lsd_db"])
    assert set(result["digit_accuracy"]) == {"original", "reconstruction", "conversion"}
    assert set(result["speaker_accuracy"]) == {"original", "reconstruction"}
    fractions = [*result["digit_accuracy"].values(), *result["speaker_accuracy"].values(),
                 result["conversion_to_target"], result["conversion_still_source"],
                 *result["conversion_to_target_by_speaker"].values()]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    # a conversion's target is never its source, so the two fractions share no conversion
    assert result["conversion_to_target"] + result["conversion_still_source"] <= 1.0
    assert len(result["conversion_to_target_by_speaker"]) == 6
    ref = result["mulaw_reference"]  # 8-bit mu-law keeps a clip to about 30-40 dB SNR
    assert 20.0 < ref["snr_db"] < 60.0 and 0.0 <= ref["lsd_db"] < 10.0
    assert 0.0 <= ref["digit_accuracy"] <= 1.0 and 0.0 <= ref["speaker_accuracy"] <= 1.0

    # 2 clips x (original, reconstruction, 5 conversions), as 16-bit mono 8 kHz WAV files
    assert len(result["wav_files"]) == 14
    frames = []
    for name in result["wav_files"]:
        with wave.open(str(out / name)) as w:
            assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getsampwidth() == 2
            frames.append(w.getnframes())
    assert frames[:7] == [frames[0]] * 7 and frames[0] > 0  # the versions of a clip are as long

    sections = {s.name: s for s in read_sections(run)}
    table, audio = sections["fsdd_eval"], sections["fsdd_eval_audio"]
    assert isinstance(table, TableSection) and isinstance(audio, AudioSection)
    assert len(table.rows) == 9 and table.rows[0][1] == result["snr_db"]
    assert len(audio.clips) == 14 and len(audio.labels) == 14 and "original" in audio.labels[0]
    with wave.open(io.BytesIO(audio.clips[1])) as w:
        assert w.getnframes() == frames[1]
    page = Path(result["report"]).read_text()
    assert "FSDD: reconstructions and voice conversion, classified" in page

    assert ev.main(["robustness", "--classifiers", str(clf)]) == 0
    robust = json.loads(capsys.readouterr().out)
    assert robust["clips"] == 300 and len(robust["accuracy"]) == 8
    assert robust["accuracy"]["original"]["lsd_db"] == 0.0
    for name, scores in robust["accuracy"].items():
        assert 0.0 <= scores["digit"] <= 1.0 and 0.0 <= scores["speaker"] <= 1.0
        assert name == "original" or scores["lsd_db"] > 0.0


def test_the_degradations_do_what_they_say(ev):
    """Noise at s dB SNR measures s dB (to 0.3 over 40,000 samples); a random-phase resynthesis
    keeps the spectrum's shape but not the waveform; the scaling and the moving average are exact."""
    g = torch.Generator().manual_seed(1)
    x = torch.sin(torch.arange(40000.0) * 0.2) + 0.3 * torch.randn(40000, generator=g)
    changes = ev.degradations(seed=0)
    for snr in (20, 10, 5):
        y = changes[f"white noise at {snr} dB SNR"](x)
        assert abs(ev.snr_db(x, y) - snr) < 0.3
    assert torch.equal(changes["scaled by 0.3"](x), 0.3 * x)
    smooth = changes["4-sample moving average"](x)
    torch.testing.assert_close(smooth[10], x[8:12].mean())
    assert smooth.shape == x.shape
    r = changes["random phase, 256-point STFT"](x)
    assert r.shape == x.shape and ev.snr_db(x, r) < 3.0  # not the waveform
    # its spectrum, averaged over frames, has the original's shape (the overlap-add of frames with
    # unrelated phases loses energy, so compare shapes, not levels)
    other = torch.sin(torch.arange(40000.0) * 0.5) + 0.3 * torch.randn(40000, generator=g)
    a, b, c = (ev.magnitudes(v).mean(1) for v in (x, r, other))
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.9  # 0.92 here
    assert float(torch.corrcoef(torch.stack([a, c]))[0, 1]) < 0.5  # another pitch


def test_evaluate_refuses_a_missing_classifier_file_in_one_line(ev, tmp_path, capsys):
    assert ev.main(["evaluate", "--classifiers", str(tmp_path / "none.pt"), "--run", str(tmp_path),
                    "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no classifiers at") and err.count("\n") == 1
