"""Waveforms: reading WAV files, the generic ``wav:PATH`` loader, and :class:`WaveformBundle`,
what an audio dataset becomes in memory.

Reading (:func:`read_wav`, with :func:`scipy.io.wavfile.read`): integer PCM of 8 bits (unsigned,
centred on 128), 16, 24 and 32 bits (signed), and float32 / float64 files. Integer samples k of b
bits become k / 2^(b-1) (8-bit: (k - 128) / 128), so full scale is [-1, 1); float files are clipped
to [-1, 1]. Several channels are mixed down to mono by their mean. A clip at another rate than the
dataset's is resampled with :func:`scipy.signal.resample_poly` by the exact ratio up / down =
target / rate (both divided by their gcd; e.g. 44,100 -> 8,000 Hz is up 80, down 441), whose
anti-aliasing filter removes what lies above the new Nyquist frequency; the result is clipped to
[-1, 1] again (the filter can overshoot near full scale).

``data.sample_rate`` (default 8,000 Hz, the rate of the Free Spoken Digit Dataset and of telephone
speech; a clip at another rate is resampled to it) and ``data.max_seconds`` (0: no limit; longer
clips keep their first ``max_seconds``) apply to every waveform dataset.

``wav:PATH`` is every ``.wav`` file under folder PATH, recursively, in sorted path order (names
starting with ``.`` are skipped). Labels come from ``PATH/labels.csv`` when it exists: a header
``file,<set>,<set>...`` and one row per clip, ``file`` its path relative to PATH, each other column a
label set whose values are names (the names, sorted, are the label values 0, 1, ...); without it
there are no labels. A test set of 10% is drawn with the fixed seed
:data:`~vaelab.data.base.TEST_SPLIT_SEED`, then ``data.valid_size`` with ``data.split_seed``.
"""

from __future__ import annotations

import csv
import io
import math
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vaelab.config import DataConfig
from vaelab.errors import VaelabError
from vaelab.spec import DataSpec
from vaelab.waves import Waveforms

from .base import TEST_SPLIT_SEED, Bundle, Splits, _carve, split_count
from .registry import register_prefix

__all__ = ["WaveSplits", "WaveformBundle", "read_wav", "to_float", "resample", "list_wavs", "load_wav"]

TEST_FRACTION = 0.1
LABELS_FILE = "labels.csv"
_SPLITS = ("train", "valid", "test")

Labels = dict[str, np.ndarray]
"""Label sets of N clips: set name -> (N,) int64 values (e.g. ``{"digit": ..., "speaker": ...}``)."""


# ----------------------------------------------------------------------------- reading WAV


def to_float(x: np.ndarray, label: str) -> np.ndarray:
    """Samples as :func:`scipy.io.wavfile.read` gives them, (n,) or (n, channels), any PCM dtype ->
    (n,) float32 mono in [-1, 1] (see the module docstring for the scaling)."""
    if x.dtype == np.uint8:
        y = (x.astype(np.float32) - 128.0) / 128.0
    elif x.dtype.kind == "i":
        # 24-bit files are read as int32 with the samples in the top three bytes: the same scale
        wide = np.float64 if x.dtype.itemsize > 2 else np.float32
        y = x.astype(wide) / float(2 ** (8 * x.dtype.itemsize - 1))
    elif x.dtype.kind == "f":
        y = np.clip(x, -1.0, 1.0)
    else:
        raise VaelabError(
            f"{label} holds samples of type {x.dtype}, not PCM audio; convert it to 16-bit PCM WAV"
        )
    if y.ndim == 2:
        y = y.mean(axis=1)  # mix down to mono
    return np.ascontiguousarray(y, dtype=np.float32)


def _broken(label: str, why: str) -> VaelabError:
    return VaelabError(
        f"cannot read {label} as WAV ({why}); replace it with a complete PCM or float WAV file, or remove it"
    )


def read_wav(data: bytes, label: str) -> tuple[int, np.ndarray]:
    """``(rate, samples)`` of a WAV file's bytes: samples (n,) float32 mono in [-1, 1], n >= 1.

    label: how errors name the file. A file that is not WAV, is truncated or holds no samples raises
    a one-line VaelabError naming it and the fix."""
    from scipy.io import wavfile

    if not data:
        raise _broken(label, "the file is empty")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wavfile.WavFileWarning)
            rate, x = wavfile.read(io.BytesIO(data))
    except (ValueError, EOFError, OSError, IndexError, KeyError, TypeError, struct.error) as exc:  # scipy's
        raise _broken(label, " ".join(str(exc).split()) or type(exc).__name__) from None
    for w in caught:
        if "EOF" in str(w.message):  # a data chunk shorter than its header says: a truncated file
            raise _broken(label, f"truncated: {w.message}")
    if x.ndim not in (1, 2) or x.shape[0] == 0 or x.size == 0:
        raise _broken(label, "it holds no samples")
    if rate <= 0:
        raise _broken(label, f"sample rate {rate}")
    return int(rate), to_float(x, label)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """(n,) samples at ``rate`` Hz -> (ceil(n * target / rate),) float32 at ``target`` Hz, in [-1, 1]:
    :func:`scipy.signal.resample_poly` with up / down = target / rate in lowest terms."""
    if rate == target:
        return x
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    y = resample_poly(x.astype(np.float64), target // g, rate // g)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def read_clip(data: bytes, label: str, target: int) -> np.ndarray:
    """A WAV file's bytes -> (n,) float32 mono at ``target`` Hz (read, mixed down, resampled)."""
    rate, x = read_wav(data, label)
    y = resample(x, rate, target)
    if len(y) == 0:
        raise _broken(label, f"too short to resample from {rate} to {target} Hz")
    return y


# ----------------------------------------------------------------------------- splits and bundle


@dataclass
class WaveSplits(Splits):
    """Clips as read from the files (already at ``sample_rate``), before :meth:`finish`.

    train / valid / test: lists of (n_i,) float32 arrays; valid / test None when the dataset has no
        such split (``test_fraction`` > 0 then carves a test set).
    *_labels: the label sets of each split (set name -> (N,) int64), empty without labels.
    label_names: set name -> the name of each label value (e.g. ``speaker`` -> ``["george", ...]``);
        the first set is the dataset's class label (``spec.n_classes``).
    """

    sample_rate: int
    train: list[np.ndarray]
    train_labels: Labels = field(default_factory=dict)
    valid: list[np.ndarray] | None = None
    valid_labels: Labels = field(default_factory=dict)
    test: list[np.ndarray] | None = None
    test_labels: Labels = field(default_factory=dict)
    test_fraction: float = 0.0
    label_names: dict[str, list[str]] = field(default_factory=dict)

    def finish(self, name: str, cfg: DataConfig) -> WaveformBundle:
        """Carve test and validation sets, apply ``limit`` and ``max_seconds``, hold as tensors."""
        if not self.train:
            raise VaelabError(f"dataset {name!r} has no training clips; check its files")
        train, train_y = self.train, self.train_labels
        test, test_y = self.test, self.test_labels
        if test is None and self.test_fraction > 0:
            n_test = int(round(self.test_fraction * len(train)))
            if 0 < n_test < len(train):
                train, train_y, test, test_y = _split_off(train, train_y, n_test, TEST_SPLIT_SEED)
        valid, valid_y = self.valid, self.valid_labels
        if valid is None:
            n_valid = split_count(cfg.valid_size, len(train), "data.valid_size")
            if n_valid > 0:
                train, train_y, valid, valid_y = _split_off(train, train_y, n_valid, cfg.split_seed)
        if cfg.limit:
            train, train_y = train[: cfg.limit], {k: v[: cfg.limit] for k, v in train_y.items()}
        cut = int(cfg.max_seconds * self.sample_rate) if cfg.max_seconds else None
        named = (("train", train, train_y), ("valid", valid, valid_y), ("test", test, test_y))
        waves = {s: _hold(x, cut) for s, x, _ in named}
        labels = {s: {k: torch.from_numpy(np.asarray(v, np.int64)) for k, v in y.items()} if x else {}
                  for s, x, y in named}
        longest = max(int(w.lengths.max()) for w in waves.values() if w is not None)
        first = next(iter(self.label_names.values()), [])
        spec = DataSpec(shape=(longest,), kind="waveforms", n_classes=len(first),
                        extra={"sample_rate": self.sample_rate, "labels": self.label_names})
        assert waves["train"] is not None
        return WaveformBundle(waves["train"], waves["valid"], waves["test"], spec, name,
                              labels["train"], labels["valid"], labels["test"])


def _hold(clips: list[np.ndarray] | None, cut: int | None) -> Waveforms | None:
    if not clips:
        return None
    return Waveforms.from_clips([torch.from_numpy(c[:cut]) for c in clips])


def _split_off(
    clips: list[np.ndarray], labels: Labels, count: int, seed: int
) -> tuple[list[np.ndarray], Labels, list[np.ndarray], Labels]:
    kept, _, held, _ = _carve(np.arange(len(clips)), None, count, seed)
    return ([clips[i] for i in kept], {k: v[kept] for k, v in labels.items()},
            [clips[i] for i in held], {k: v[held] for k, v in labels.items()})


@dataclass
class WaveformBundle(Bundle):
    """An audio dataset held in memory as mono clips of varying lengths.

    train / valid / test: :class:`~vaelab.waves.Waveforms`, float32 samples in [-1, 1] at
        ``spec.extra["sample_rate"]`` Hz (valid / test None when empty).
    train_labels / valid_labels / test_labels: label set name -> (N,) int64 (empty without labels),
        e.g. ``{"digit": ..., "speaker": ...}`` for FSDD.
    spec: ``kind == "waveforms"``, shape (longest clip in samples,), ``n_classes`` the size of the
        first label set; ``extra``: ``sample_rate`` (Hz) and ``labels`` (set name -> value names).
    """

    train: Waveforms
    valid: Waveforms | None
    test: Waveforms | None
    spec: DataSpec
    name: str
    train_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    valid_labels: dict[str, torch.Tensor] = field(default_factory=dict)
    test_labels: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def sample_rate(self) -> int:
        return int(self.spec.extra["sample_rate"])

    @property
    def label_names(self) -> dict[str, list[str]]:
        """Label set name -> the name of each value (``digit`` -> ``["0", ..., "9"]``)."""
        return self.spec.extra["labels"]

    def labels(self, which: str, label_set: str) -> torch.Tensor | None:
        """(N,) int64 values of ``label_set`` for split ``which``, or None when it has none."""
        if which not in _SPLITS:
            raise ValueError(f"split must be train, valid or test, got {which!r}")
        return getattr(self, f"{which}_labels").get(label_set)

    def label_sets(self, which: str) -> dict[str, torch.Tensor]:
        """Every label set of split ``which``: set name -> (N,) int64 (empty without labels)."""
        if which not in _SPLITS:
            raise ValueError(f"split must be train, valid or test, got {which!r}")
        return dict(getattr(self, f"{which}_labels"))

    def split(self, which: str) -> tuple[Waveforms | None, torch.Tensor | None]:
        """``(clips, labels)`` of ``"train"``, ``"valid"`` or ``"test"``; the labels are those of the
        first label set (FSDD: the digit), None without labels."""
        if which not in _SPLITS:
            raise ValueError(f"split must be train, valid or test, got {which!r}")
        first = next(iter(self.label_names), None)
        return getattr(self, which), None if first is None else self.labels(which, first)

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {0 if x is None else len(x)}" for s in _SPLITS for x in [getattr(self, s)])
        sets = "".join(f", {len(v)} {k}s" for k, v in self.label_names.items())
        return (f"{self.name}: waveforms at {self.sample_rate} Hz, longest {self.spec.shape[0]} samples"
                f"{sets}, {sizes}")


# ----------------------------------------------------------------------------- wav:PATH


def list_wavs(root: Path) -> list[Path]:
    """``.wav`` files under ``root``, recursively, sorted; hidden files and folders are skipped."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() == ".wav"
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def _read_labels(path: Path, files: list[Path], root: Path) -> tuple[Labels, dict[str, list[str]]]:
    """Label sets of ``files`` from ``labels.csv`` (see the module docstring)."""
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise VaelabError(
            f"cannot read {path} ({exc}); write it as UTF-8 CSV: file,<label set>,..."
        ) from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or len(rows[0]) < 2 or rows[0][0].strip() != "file":
        raise VaelabError(
            f"{path} needs a header row 'file,<label set>,...' (e.g. file,speaker); fix its first line"
        )
    sets = [c.strip() for c in rows[0][1:]]
    table: dict[str, list[str]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise VaelabError(
                f"{path} line {n} has {len(row)} fields, the header {len(rows[0])}; fix that line"
            )
        table[Path(row[0].strip()).as_posix()] = [c.strip() for c in row[1:]]
    rel = [p.relative_to(root).as_posix() for p in files]
    missing = [r for r in rel if r not in table]
    if missing:
        raise VaelabError(
            f"{path} has no row for {missing[0]} ({len(missing)} of {len(files)} files have none); "
            "give every .wav file a row, or delete labels.csv"
        )
    values = {s: [table[r][k] for r in rel] for k, s in enumerate(sets)}
    names = {s: sorted(set(v)) for s, v in values.items()}
    labels = {s: np.array([names[s].index(x) for x in v], np.int64) for s, v in values.items()}
    return labels, names


def _read_path(path: Path, target: int) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VaelabError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    return read_clip(data, str(path), target)


def load_wav(path: str, cfg: DataConfig) -> WaveSplits:
    """``wav:PATH``: every .wav file under folder ``path`` (see the module docstring)."""
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise VaelabError(f"data.name wav:{path}: {root} is not a folder; give a folder of .wav files")
    files = list_wavs(root)
    if not files:
        raise VaelabError(
            f"folder {root} holds no .wav files (searched recursively); put WAV files in it or fix data.name"
        )
    labels, names = ({}, {})
    if (root / LABELS_FILE).is_file():
        labels, names = _read_labels(root / LABELS_FILE, files, root)
    clips = [_read_path(p, cfg.sample_rate) for p in files]
    return WaveSplits(cfg.sample_rate, clips, labels, test_fraction=TEST_FRACTION, label_names=names)


register_prefix("wav", load_wav)
