"""Token sequences from text: the generic ``text:PATH`` loader, the vocabulary, and
:class:`SequenceBundle`, what a text dataset becomes in memory.

Text is one sentence per line, tokens separated by whitespace (``line.split()``); blank lines are
skipped. ``text:PATH`` is

- a folder holding ``train.txt`` (or one ``*.train.txt``), and optionally ``valid.txt`` /
  ``test.txt`` (or ``*.valid.txt`` / ``*.test.txt``): so ``text:$VAELAB_DATA/ptb`` reads PTB too;
- or one file, split like images without official splits: a test set of 10% drawn with the fixed
  seed :data:`~vaelab.data.base.TEST_SPLIT_SEED`, then ``data.valid_size`` with ``data.split_seed``.

The vocabulary is built from the training split (after ``data.limit``): ids 0-3 are ``<pad>``,
``<unk>``, ``<bos>``, ``<eos>``, then the words by falling count (ties alphabetically), at most
``data.max_vocab`` of them (0: all) and each seen at least ``data.min_count`` times; other words,
and the literal ``<unk>`` of pre-processed corpora such as PTB, map to ``<unk>``. Every sequence
is its words followed by ``<eos>``; its length counts both, which is what perplexity is per.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaelab.config import DataConfig
from vaelab.errors import VaelabError
from vaelab.spec import DataSpec
from vaelab.tokens import Sequences

from .base import TEST_SPLIT_SEED, Bundle, Splits, _carve, split_count
from .registry import register_prefix

__all__ = ["PAD", "UNK", "BOS", "EOS", "SPECIALS", "TextSplits", "SequenceBundle", "Vocabulary",
           "read_sentences", "load_text"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
TEST_FRACTION = 0.1
_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Vocabulary:
    """Words by id: ``words[i]`` is the token of id i; ids 0-3 are ``<pad> <unk> <bos> <eos>``."""

    words: tuple[str, ...]

    @classmethod
    def build(cls, sentences: list[list[str]], max_words: int = 0, min_count: int = 1) -> Vocabulary:
        counts = Counter(w for s in sentences for w in s)
        for special in SPECIALS:
            counts.pop(special, None)
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(kept[:max_words] if max_words else kept))

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentences: list[list[str]]) -> Sequences:
        """Ids of every sentence followed by ``<eos>``; unknown words (and specials) -> ``<unk>``."""
        index = {w: i for i, w in enumerate(self.words) if w not in SPECIALS}
        unk, eos = self.words.index(UNK), self.words.index(EOS)
        return Sequences.from_lists([[index.get(w, unk) for w in s] + [eos] for s in sentences])

    def decode(self, ids: list[int]) -> str:
        """Words of ``ids`` up to the first ``<eos>`` (exclusive), joined by spaces; pads skipped."""
        eos, pad = self.words.index(EOS), self.words.index(PAD)
        out = []
        for i in ids:
            if i == eos:
                break
            if i != pad:
                out.append(self.words[i])
        return " ".join(out)


@dataclass
class TextSplits(Splits):
    """Sentences (lists of tokens) as read from the files, before :meth:`finish`.

    valid / test: None when the dataset has no such split; ``test_fraction`` > 0 then carves one.
    """

    train: list[list[str]]
    valid: list[list[str]] | None = None
    test: list[list[str]] | None = None
    test_fraction: float = 0.0

    def finish(self, name: str, cfg: DataConfig) -> SequenceBundle:
        """Carve test and validation sets, apply ``limit``, build the vocabulary, encode."""
        train, valid, test = self.train, self.valid, self.test
        if not train:
            raise VaelabError(f"dataset {name!r} has no training sentences; check its files")
        if test is None and self.test_fraction > 0:
            n_test = int(round(self.test_fraction * len(train)))
            if 0 < n_test < len(train):
                train, test = _split_off(train, n_test, TEST_SPLIT_SEED)
        if valid is None:
            n_valid = split_count(cfg.valid_size, len(train), "data.valid_size")
            if n_valid > 0:
                train, valid = _split_off(train, n_valid, cfg.split_seed)
        if cfg.limit:
            train = train[: cfg.limit]
        vocab = Vocabulary.build(train, cfg.max_vocab, cfg.min_count)
        named = (("train", train), ("valid", valid), ("test", test))
        enc = {s: vocab.encode(x) if x else None for s, x in named}
        longest = max(int(x.lengths.max()) for x in enc.values() if x is not None)
        ids = {f"{w.strip('<>')}_id": vocab.words.index(w) for w in SPECIALS}
        spec = DataSpec(shape=(longest,), kind="tokens", extra={"vocab": list(vocab.words), **ids})
        assert enc["train"] is not None
        return SequenceBundle(enc["train"], enc["valid"], enc["test"], spec, name, vocab)


def _split_off(sentences: list[list[str]], count: int, seed: int) -> tuple[list[list[str]], list[list[str]]]:
    kept, _, held, _ = _carve(np.arange(len(sentences)), None, count, seed)
    return [sentences[i] for i in kept], [sentences[i] for i in held]


@dataclass
class SequenceBundle(Bundle):
    """A text dataset held in memory as token ids.

    train / valid / test: :class:`~vaelab.tokens.Sequences` (valid / test None when empty), every
        sequence its words and ``<eos>``.
    spec: ``kind == "tokens"``, shape (longest sequence,), ``extra``: ``vocab`` and the ids
        ``pad_id``, ``unk_id``, ``bos_id``, ``eos_id``.
    """

    train: Sequences
    valid: Sequences | None
    test: Sequences | None
    spec: DataSpec
    name: str
    vocab: Vocabulary

    @property
    def pad_id(self) -> int:
        return self.spec.extra["pad_id"]

    def split(self, which: str) -> tuple[Sequences | None, None]:
        """``(sequences, labels)`` of ``"train"``, ``"valid"`` or ``"test"``; text has no labels."""
        if which not in _SPLITS:
            raise ValueError(f"split must be train, valid or test, got {which!r}")
        return getattr(self, which), None

    def summary(self) -> str:
        sizes = ", ".join(f"{s} {0 if x is None else len(x)}" for s in _SPLITS for x in [getattr(self, s)])
        return f"{self.name}: tokens, vocabulary {len(self.vocab)}, longest {self.spec.shape[0]}, {sizes}"


# ----------------------------------------------------------------------------- reading text


def read_sentences(data: bytes, label: str) -> list[list[str]]:
    """Sentences (whitespace-separated tokens, one line each) of a text file's bytes.

    label: how errors name the file. Binary data, text that is not UTF-8 and files without a
    sentence raise one-line VaelabErrors that say so and how to fix it."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise VaelabError(
            f"{label} holds binary data (a NUL byte at offset {nul}), not text; "
            "give a plain-text file with one sentence per line"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VaelabError(
            f"{label} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"convert it, e.g. iconv -f LATIN1 -t UTF-8 {label} > fixed.txt"
        ) from None
    sentences = [s for s in (line.split() for line in text.splitlines()) if s]
    if not sentences:
        raise VaelabError(
            f"{label} holds no sentences; write one sentence per line, tokens separated by spaces"
        )
    return sentences


def _read(path: Path) -> list[list[str]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VaelabError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    return read_sentences(data, str(path))


def _split_file(folder: Path, split: str) -> Path | None:
    found = [p for p in [folder / f"{split}.txt", *sorted(folder.glob(f"*.{split}.txt"))] if p.is_file()]
    if len(found) > 1:
        raise VaelabError(
            f"text folder {folder} holds {len(found)} {split} files ({', '.join(p.name for p in found)}); "
            "keep one"
        )
    return found[0] if found else None


def load_text(path: str, cfg: DataConfig) -> TextSplits:
    """``text:PATH``: a folder of train/valid/test text files, or one file (see the module docstring)."""
    p = Path(path).expanduser()
    if p.is_file():
        return TextSplits(train=_read(p), test_fraction=TEST_FRACTION)
    if not p.is_dir():
        raise VaelabError(
            f"text:{path}: no such file or folder; give a text file or a folder with train.txt "
            "(and optionally valid.txt, test.txt)"
        )
    files = {s: _split_file(p, s) for s in _SPLITS}
    if files["train"] is None:
        raise VaelabError(
            f"text folder {p} has no train.txt (or *.train.txt); put the training sentences there, "
            "one per line"
        )
    read = {s: _read(f) if f is not None else None for s, f in files.items()}
    assert read["train"] is not None
    return TextSplits(read["train"], read["valid"], read["test"], 0.0 if read["test"] else TEST_FRACTION)


register_prefix("text", load_text)

