"""Text as token sequences: ``text:PATH``, the vocabulary, the Penn Treebank, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vaelab.config import DataConfig
from vaelab.data import SequenceBundle, load_dataset
from vaelab.data.text import Vocabulary
from vaelab.errors import VaelabError


def ids_of(seqs) -> list[list[int]]:
    return [seqs[i].tolist() for i in range(len(seqs))]


def words_of(bundle: SequenceBundle, split: str) -> list[str]:
    return [bundle.vocab.decode(s) for s in ids_of(bundle.split(split)[0])]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "train.txt").write_text(" the cat sat \n\nthe dog sat\n the cat ran \n")
    (d / "valid.txt").write_text("the bird sat\n")
    (d / "test.txt").write_text("a cat\n")
    return d


def test_folder_splits_vocabulary_and_eos(folder):
    b = load_dataset(DataConfig(name=f"text:{folder}"))
    assert isinstance(b, SequenceBundle) and b.spec.kind == "tokens"
    # specials first, then words by falling count, ties alphabetically: the 3, cat 2, sat 2, dog, ran
    assert b.vocab.words == ("<pad>", "<unk>", "<bos>", "<eos>", "the", "cat", "sat", "dog", "ran")
    assert ids_of(b.train) == [[4, 5, 6, 3], [4, 7, 6, 3], [4, 5, 8, 3]]  # blank line skipped
    assert ids_of(b.valid) == [[4, 1, 6, 3]] and ids_of(b.test) == [[1, 5, 3]]  # unseen words -> <unk>
    assert b.train.lengths.tolist() == [4, 4, 4]  # words and <eos>
    extra = b.spec.extra
    assert (extra["pad_id"], extra["unk_id"], extra["bos_id"], extra["eos_id"]) == (0, 1, 2, 3)
    assert b.spec.shape == (4,) and b.spec.vocab_size == 9
    assert words_of(b, "valid") == ["the <unk> sat"]


def test_max_vocab_and_min_count(folder):
    small = load_dataset(DataConfig(name=f"text:{folder}", max_vocab=2))
    assert small.vocab.words[4:] == ("the", "cat")
    frequent = load_dataset(DataConfig(name=f"text:{folder}", min_count=2))
    assert frequent.vocab.words[4:] == ("the", "cat", "sat")
    assert ids_of(frequent.train)[1] == [4, 1, 6, 3]


def test_ptb_style_names_in_a_folder(tmp_path):
    (tmp_path / "x.train.txt").write_text("a b\n")
    assert ids_of(load_dataset(DataConfig(name=f"text:{tmp_path}", valid_size=0)).train) == [[4, 5, 3]]
    (tmp_path / "train.txt").write_text("c\n")
    with pytest.raises(VaelabError, match=r"holds 2 train files \(train.txt, x.train.txt\); keep one"):
        load_dataset(DataConfig(name=f"text:{tmp_path}"))


def test_one_file_is_split_by_seed(tmp_path):
    f = tmp_path / "all.txt"
    # sentence i spells i in binary with words every split shares, so every sentence decodes exactly
    f.write_text("".join(" ".join(f"b{(i >> k) & 1}" for k in range(8)) + "\n" for i in range(200)))
    runs = [load_dataset(DataConfig(name=f"text:{f}", valid_size=0.2, split_seed=s)) for s in (0, 0, 1)]
    splits = [{s: set(words_of(b, s)) for s in ("train", "valid", "test")} for b in runs]
    assert [len(splits[0][s]) for s in ("train", "valid", "test")] == [144, 36, 20]
    assert splits[0] == splits[1]  # same seed, same split
    assert splits[0]["test"] == splits[2]["test"]  # the test set does not move with split_seed
    assert splits[0]["valid"] != splits[2]["valid"]
    everything = set().union(*splits[2].values())
    assert len(everything) == 200 and sum(len(v) for v in splits[2].values()) == 200


def test_limit_keeps_the_first_training_sentences(folder):
    b = load_dataset(DataConfig(name=f"text:{folder}", limit=1))
    assert len(b.train) == 1 and b.vocab.words[4:] == ("cat", "sat", "the")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"ab\x00cd\n", r"holds binary data \(a NUL byte at offset 2\), not text; give a plain-text file"),
        ("caf\xe9 au lait\n".encode("latin-1"), r"is not UTF-8 text \(byte 0xe9 at offset 3\); convert it"),
        (b"", "holds no sentences; write one sentence per line"),
        (b"  \n\n \t\n", "holds no sentences; write one sentence per line"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    (tmp_path / "train.txt").write_text("fine words\n")
    (tmp_path / "valid.txt").write_bytes(content)
    with pytest.raises(VaelabError, match=message) as err:
        load_dataset(DataConfig(name=f"text:{tmp_path}"))
    assert str(tmp_path / "valid.txt") in str(err.value) and "\n" not in str(err.value)


def test_missing_paths(tmp_path):
    with pytest.raises(VaelabError, match="no such file or folder; give a text file or a folder"):
        load_dataset(DataConfig(name=f"text:{tmp_path / 'nope'}"))
    with pytest.raises(VaelabError, match="has no train.txt"):
        load_dataset(DataConfig(name=f"text:{tmp_path}"))


def test_vocabulary_decode_stops_at_eos():
    v = Vocabulary.build([["a", "b"]])
    assert v.decode([4, 0, 5, 3, 4]) == "a b"


@pytest.mark.datasets("ptb")
def test_ptb_matches_its_published_counts(data_root):
    b = load_dataset(DataConfig(name="ptb"))
    # shared/data/README.md section 4: sentences, words + <eos>, <unk> tokens per split
    expected = {"train": (42068, 929589, 45020), "valid": (3370, 73760, 3485), "test": (3761, 82430, 4794)}
    for split, (n, tokens, unk) in expected.items():
        seqs, labels = b.split(split)
        assert labels is None
        assert (len(seqs), int(seqs.lengths.sum()), int((seqs.flat == 1).sum())) == (n, tokens, unk)
    assert len(b.vocab) == 10002  # 9,999 words + <eos> (the 10k of PTB) + <pad>, <bos>
    assert b.spec.shape == (83,)  # the longest sentence, 82 words, and <eos>
    assert int(torch.bincount(b.train.flat, minlength=len(b.vocab))[4:].min()) >= 1


def test_ptb_missing_file_names_it(tmp_path):
    (tmp_path / "ptb").mkdir()
    missing = r"file ptb.train.txt not found at .*ptb.train.txt; run `vaelab data download ptb`"
    with pytest.raises(VaelabError, match=missing):
        load_dataset(DataConfig(name="ptb"), root=tmp_path)
