"""The Free Spoken Digit Dataset (Jackson et al.): ``<root>/fsdd/recordings.tar.gz``.

3,000 recordings, 16-bit mono 8,000 Hz WAV, named ``recordings/{digit}_{speaker}_{index}.wav``:
six male English speakers, 50 recordings (index 0-49) of each digit 0-9 per speaker, 0.14-2.28 s
long. The archive is read with :mod:`tarfile` in memory, never extracted; its sha256 is checked
first. Formats, origin and checksum: ../shared/data/README.md, section 6.

Splits: the dataset's official convention (its README) - the recordings with index 0-4 of every
speaker and digit are the **test** set (300 clips); the other 2,700 are the training part, from
which ``data.valid_size`` clips (a fraction or a count, default 10%) are drawn for **validation**
by a permutation seeded with ``data.split_seed``. Labels: ``digit`` (0-9, value names ``"0"`` ..
``"9"``) and ``speaker`` (0-5, the speakers' names sorted: george, jackson, lucas, nicolas, theo,
yweweler), in ``spec.extra["labels"]``; ``digit`` is the class label (``spec.n_classes == 10``).
Clips are resampled when ``data.sample_rate`` is not 8,000 (see :mod:`vaelab.data.audio`).
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError

from .audio import WaveSplits, read_clip
from .registry import DataFile, Dataset, read_file, register_dataset

__all__ = ["FSDD", "FSDD_FILES", "FSDD_RATE", "FSDD_SPEAKERS", "TEST_INDICES"]

FSDD_FILES = (
    DataFile("recordings.tar.gz", 15_557_796,
             "92ae31db225d2c2b7fa5d3fac1145be9ff4c4b031a9b2d80aa727b1fb8b234f4"),
)
FSDD_RATE = 8000
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")
TEST_INDICES = range(5)
"""Recording indices of the official test set (of every speaker and digit)."""

_NAME = re.compile(r"(?:.*/)?(\d)_([a-z]+)_(\d+)\.wav")


def _load(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> WaveSplits:
    path = root / ds.folder / "recordings.tar.gz"
    data = read_file(ds, "recordings.tar.gz", root, verify)
    clips: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    labels: dict[str, list[tuple[int, int]]] = {"train": [], "test": []}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
                found = _NAME.fullmatch(m.name)
                if found is None or found[2] not in FSDD_SPEAKERS:
                    raise VaelabError(
                        f"dataset 'fsdd': {path} holds {m.name}, not {{digit}}_{{speaker}}_{{index}}.wav of "
                        "a known speaker; replace the archive with the one described in the data README"
                    )
                fh = tar.extractfile(m)
                assert fh is not None  # a regular file
                split = "test" if int(found[3]) in TEST_INDICES else "train"
                clips[split].append(read_clip(fh.read(), f"{path}:{m.name}", cfg.sample_rate))
                labels[split].append((int(found[1]), FSDD_SPEAKERS.index(found[2])))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise VaelabError(
            f"dataset 'fsdd': {path} is not a readable tar.gz ({exc}); delete it and copy a good one"
        ) from None
    if not clips["train"] or not clips["test"]:
        raise VaelabError(f"dataset 'fsdd': {path} holds no recordings; replace it")

    def sets(split: str) -> dict[str, np.ndarray]:
        y = np.array(labels[split], np.int64).reshape(-1, 2)
        return {"digit": y[:, 0], "speaker": y[:, 1]}

    return WaveSplits(
        cfg.sample_rate, clips["train"], sets("train"), test=clips["test"], test_labels=sets("test"),
        label_names={"digit": [str(d) for d in range(10)], "speaker": list(FSDD_SPEAKERS)},
    )  # fmt: skip


FSDD = register_dataset(
    Dataset(
        name="fsdd",
        description="Free Spoken Digit Dataset: 3,000 spoken digits, 6 speakers, 8 kHz mono waveforms",
        folder="fsdd",
        files=FSDD_FILES,
        loader=_load,
    )
)
