"""Bag-of-words corpora for LDA: Blei's lda-c format, plain text, and lists of tokens.

A :class:`Corpus` is a sparse document-term count matrix (scipy CSR, shape (D, V), int64, sorted
column indices) with its vocabulary. Loaders raise :class:`~vaelab.errors.VaelabError` with a one-line
message naming the file and the fix when a file is missing, corrupt or malformed. Finding files under
the data root (the AP corpus, ``vaelab lda ap``) is the data layer's: ``vaelab.data.ap``.

lda-c format (Blei's ``lda-c``; the AP corpus): one document per line,
``M id_1:count_1 ... id_M:count_M``, with M the number of distinct terms and ids 0-based line numbers
of ``vocab.txt`` (one term per line).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from vaelab.checksums import sha256_file
from vaelab.errors import VaelabError

__all__ = [
    "Corpus",
    "AP_SHAPE",
    "load_ldac",
    "load_text",
    "from_token_lists",
    "split_tokens",
]

# The AP sample of Blei's lda-c (../shared/data/README.md, section 7); its files, their checksums and
# its loader are the data registry's entry (vaelab.data.ap.load_ap).
AP_SHAPE = {"docs": 2246, "vocab": 10473, "tokens": 435838}

_LINE = re.compile(r"^\s*(\d+)((?:\s+\d+:\d+)*)\s*$")
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


@dataclass(frozen=True)
class Corpus:
    """Document-term counts (D, V) as a CSR matrix, and the vocabulary (V,)."""

    counts: sp.csr_matrix
    vocab: tuple[str, ...]
    name: str = "corpus"

    def __post_init__(self):
        if self.counts.shape[1] != len(self.vocab):
            raise ValueError(
                f"counts have {self.counts.shape[1]} columns but vocab has {len(self.vocab)} terms"
            )

    @property
    def n_docs(self) -> int:
        return self.counts.shape[0]

    @property
    def n_terms(self) -> int:
        return self.counts.shape[1]

    @property
    def n_tokens(self) -> int:
        return int(self.counts.sum())

    def subset(self, docs: Sequence[int] | np.ndarray, name: str | None = None) -> Corpus:
        """The documents with the given indices (in that order)."""
        return Corpus(_csr(self.counts[np.asarray(docs)]), self.vocab, name or self.name)

    def train_test_split(self, heldout: float = 0.1, seed: int = 0) -> tuple[Corpus, Corpus]:
        """A seeded random split of the documents: (train, held-out), held-out has round(heldout * D) docs."""
        if not 0.0 < heldout < 1.0:
            raise VaelabError(f"held-out fraction must be in (0, 1), got {heldout}")
        perm = np.random.default_rng(seed).permutation(self.n_docs)
        n_test = max(1, int(round(heldout * self.n_docs)))
        test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        return self.subset(train, f"{self.name}-train"), self.subset(test, f"{self.name}-heldout")


def _csr(x) -> sp.csr_matrix:
    x = sp.csr_matrix(x, dtype=np.int64)
    x.sum_duplicates()
    x.sort_indices()
    x.eliminate_zeros()
    return x


def _need_file(path: Path, what: str, hint: str) -> None:
    if not path.is_file():
        raise VaelabError(f"{what} not found: {path} ({hint})")


def load_ldac(
    dat_path: str | Path,
    vocab_path: str | Path | None = None,
    *,
    sha256: dict[str, str] | None = None,
    name: str | None = None,
) -> Corpus:
    """Read an lda-c corpus: ``dat_path`` and ``vocab_path`` (default: ``vocab.txt`` beside it).

    Args:
        sha256: optional expected digests keyed by file name (``{"ap.dat": ..., "vocab.txt": ...}``);
            a mismatch is an error naming the file.
    Returns:
        a :class:`Corpus` of shape (number of lines, number of vocabulary lines).
    """
    dat_path = Path(dat_path)
    vocab_path = Path(vocab_path) if vocab_path is not None else dat_path.with_name("vocab.txt")
    hint = "pass the path of an lda-c .dat file with vocab.txt beside it"
    _need_file(dat_path, "lda-c corpus file", hint)
    _need_file(
        vocab_path,
        "vocabulary file",
        f"lda-c needs one term per line in {vocab_path.name} beside {dat_path.name}",
    )
    for path in (dat_path, vocab_path):
        want = (sha256 or {}).get(path.name)
        if want is not None:
            got = sha256_file(path)
            if got != want:
                raise VaelabError(
                    f"{path} is corrupt or a different version: sha256 {got[:16]}..., "
                    f"expected {want[:16]}...; replace it with the original file"
                )
    try:
        vocab = tuple(vocab_path.read_text(encoding="utf-8").splitlines())
        text = dat_path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise VaelabError(
            f"cannot decode {dat_path} or {vocab_path} ({exc.reason}): lda-c files are ASCII text"
        ) from None
    if not vocab:
        raise VaelabError(f"vocabulary file {vocab_path} is empty")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise VaelabError(f"lda-c corpus file {dat_path} holds no documents")
    lengths = np.empty(len(lines), dtype=np.int64)
    pairs: list[str] = []
    for i, line in enumerate(lines):
        match = _LINE.match(line)
        if match is None:
            raise VaelabError(
                f"{dat_path}:{i + 1}: malformed lda-c line (expected 'M id:count ...'): {line[:60]!r}"
            )
        items = match.group(2).split()
        if int(match.group(1)) != len(items):
            raise VaelabError(f"{dat_path}:{i + 1}: line says {match.group(1)} terms but lists {len(items)}")
        lengths[i] = len(items)
        pairs.extend(items)
    flat = np.array(" ".join(pairs).replace(":", " ").split(), dtype=np.int64).reshape(-1, 2)
    ids, cnt = flat[:, 0], flat[:, 1]
    if ids.size and ids.max() >= len(vocab):
        bad = int(np.searchsorted(np.cumsum(lengths), int(np.argmax(ids >= len(vocab))), side="right"))
        raise VaelabError(
            f"{dat_path}:{bad + 1}: term id {int(ids.max())} is outside the vocabulary of {len(vocab)} terms "
            f"in {vocab_path}"
        )
    if np.any(cnt <= 0):
        bad = int(np.searchsorted(np.cumsum(lengths), int(np.argmax(cnt <= 0)), side="right"))
        raise VaelabError(f"{dat_path}:{bad + 1}: counts must be positive")
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    counts = sp.csr_matrix((cnt, ids, indptr), shape=(len(lines), len(vocab)))
    return Corpus(_csr(counts), vocab, name or dat_path.stem)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphabetic words (apostrophes inside words kept); digits and punctuation dropped."""
    return _WORD.findall(text.lower())


def from_token_lists(
    docs: Iterable[Sequence[str]],
    vocab: Sequence[str] | None = None,
    *,
    min_count: int = 1,
    name: str = "tokens",
) -> Corpus:
    """Counts from documents given as lists of tokens.

    Args:
        docs: D lists of tokens.
        vocab: fixed vocabulary (tokens outside it are dropped); default: every token seen at least
            ``min_count`` times in the whole corpus, sorted by decreasing frequency then alphabetically.
    """
    docs = [list(d) for d in docs]
    if vocab is None:
        freq: dict[str, int] = {}
        for d in docs:
            for t in d:
                freq[t] = freq.get(t, 0) + 1
        vocab = sorted((t for t, c in freq.items() if c >= min_count), key=lambda t: (-freq[t], t))
    index = {t: i for i, t in enumerate(vocab)}
    rows, cols = [], []
    for i, d in enumerate(docs):
        ids = [index[t] for t in d if t in index]
        rows.append(np.full(len(ids), i, dtype=np.int64))
        cols.append(np.asarray(ids, dtype=np.int64))
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    counts = sp.csr_matrix((np.ones_like(r), (r, c)), shape=(len(docs), len(vocab)))
    return Corpus(_csr(counts), tuple(vocab), name)


def load_text(path: str | Path, *, min_count: int = 2, stopwords: Iterable[str] = ()) -> Corpus:
    """A plain text file with one document per line, tokenised by :func:`tokenize`.

    Terms seen fewer than ``min_count`` times in the file, and ``stopwords``, are dropped.
    """
    path = Path(path)
    _need_file(path, "text corpus file", "pass a text file with one document per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise VaelabError(
            f"{path} is not UTF-8 text ({exc.reason}); pass a UTF-8 file, one document per line"
        ) from None
    stop = set(stopwords)
    docs = [[t for t in tokenize(line) if t not in stop] for line in lines if line.strip()]
    corpus = from_token_lists(docs, min_count=min_count, name=path.stem)
    if corpus.n_tokens == 0:
        raise VaelabError(f"{path} has no words that occur at least {min_count} times")
    return corpus


def split_tokens(counts: sp.csr_matrix, seed: int = 0) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split every document's tokens into two halves for document completion.

    A bag of words has no order, so "the first half" of a document is defined as a seeded random half
    of its token occurrences: the N_d tokens are put in a random order and the first floor(N_d / 2)
    form the observed half, the remaining ceil(N_d / 2) the half to predict. Returns (observed, held),
    both (D, V) int64 CSR with ``observed + held == counts``.
    """
    counts = _csr(counts)
    d, v = counts.shape
    doc_of_nz = np.repeat(np.arange(d), np.diff(counts.indptr))
    tok_doc = np.repeat(doc_of_nz, counts.data)
    tok_word = np.repeat(counts.indices, counts.data)
    keys = np.random.default_rng(seed).random(tok_doc.size)
    order = np.lexsort((keys, tok_doc))  # grouped by document, random within each
    n_d = np.bincount(tok_doc, minlength=d)
    start = np.concatenate([[0], np.cumsum(n_d)[:-1]])
    rank = np.arange(tok_doc.size) - start[tok_doc[order]]
    first = rank < (n_d // 2)[tok_doc[order]]
    rows, cols = tok_doc[order], tok_word[order]
    observed = sp.csr_matrix((np.ones(first.sum(), np.int64), (rows[first], cols[first])), shape=(d, v))
    held = sp.csr_matrix((np.ones((~first).sum(), np.int64), (rows[~first], cols[~first])), shape=(d, v))
    return _csr(observed), _csr(held)
