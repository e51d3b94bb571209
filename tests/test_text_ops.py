"""vaelab.text_ops against a stand-in model whose decoder is known exactly.

The stand-in ("codebook") keeps three sentences, each at a fixed point of a 2-D latent space; its
encoder puts q(z|x) at the point of the stored sentence sharing the longest prefix with x (sd 0.01),
and every decode returns the stored sentence nearest to z. So the right answers are known: a stored
sentence reconstructs to itself from the mean and from every posterior sample (0.01 is far below the
half-distance 2 between points), and a homotopy between two stored sentences switches from one to the
other exactly at t = 1/2. Imputation, which drives the decoder step by step, is tested on a trained
model in test_text_cli.py; here only its input checks.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from vaelab import text_ops
from vaelab.data.text import Vocabulary
from vaelab.errors import VaelabError

STORED = ("the cat sat .", "a dog ran far away .", "i went to the kitchen .")
POINTS = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 3.0]])


class Codebook(nn.Module):
    """The API of vaelab.models.sentence_vae.SentenceVAE that text_ops uses, with a known decoder."""

    latent_dim = 2
    config = SimpleNamespace(max_decode_length=7)
    spec = SimpleNamespace(shape=(5,))
    device = torch.device("cpu")

    def __init__(self):
        super().__init__()
        self._vocab = Vocabulary.build([s.split() for s in STORED])

    @property
    def vocab(self) -> list[str]:
        return list(self._vocab.words)

    def words(self, ids: list[int]) -> str:
        return " ".join(self._vocab.words[i] for i in ids)

    def encode_sentences(self, sentences):
        seqs = self._vocab.encode([s.lower().split() for s in sentences])
        return seqs.pad(torch.arange(len(sentences)), 0), int((seqs.flat == 1).sum())

    def _nearest_stored(self, batch) -> torch.Tensor:
        """(B,) index of the stored sentence sharing the longest prefix with each row."""
        rows = [self._vocab.decode(r.tolist()).split() for r in batch.tokens]
        def shared(a, b):
            return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        return torch.tensor([max(range(3), key=lambda k: shared(r, STORED[k].split())) for r in rows])

    def encode(self, batch):
        mean = POINTS[self._nearest_stored(batch)]
        return Independent(Normal(mean, torch.full_like(mean, 0.01)), 1)

    def posterior_mean(self, batch):
        return self.encode(batch).mean

    def prior(self):
        return Independent(Normal(torch.zeros(2), torch.ones(2)), 1)

    def greedy(self, z, max_len=None):
        k = torch.cdist(z, POINTS).argmin(1)
        limit = max_len or self.config.max_decode_length
        return [self._vocab.encode([STORED[int(i)].split()])[0].tolist()[:-1][:limit] for i in k]

    def sample_tokens(self, z, temperature=1.0, max_len=None):
        return self.greedy(z, max_len)


@pytest.fixture
def model():
    return Codebook()


def test_reconstruct_stored_sentence_from_mean_and_samples(model):
    rec = text_ops.reconstruct(model, "i went to the kitchen .", n_samples=3, seed=0)
    assert rec.mean == "i went to the kitchen ." and rec.samples == ("i went to the kitchen .",) * 3
    assert rec.input.unknown == () and rec.input.warnings() == []


def test_unknown_words_are_counted_and_named(model):
    rec = text_ops.reconstruct(model, "The zebra sat Zebra .", n_samples=0)  # lower-cased
    assert rec.input.text == "the <unk> sat <unk> ." and rec.input.unknown == ("zebra", "zebra")
    (line,) = rec.input.warnings()
    assert line.startswith("2 unknown word(s) read as <unk>") and line.endswith(": zebra")
    assert rec.samples == () and rec.mean == "the cat sat ."


def test_long_sentence_is_kept_whole_with_a_warning(model):
    long = "the cat sat on the mat all day long ."  # 10 words, the model's maximum is 7
    rec = text_ops.reconstruct(model, long, n_samples=1)
    assert rec.input.too_long == 10
    assert rec.input.text == "the cat sat <unk> the <unk> <unk> <unk> <unk> ."  # every word kept
    assert any("10 words is longer than the model's maximum length 7" in w for w in rec.input.warnings())


@pytest.mark.parametrize("bad", ["", "   \t "])
def test_empty_sentence_is_an_error(model, bad):
    with pytest.raises(VaelabError, match="the sentence is empty; give at least one word"):
        text_ops.reconstruct(model, bad)


def test_homotopy_switches_at_the_midpoint(model):
    path = text_ops.homotopy(model, "the cat sat .", "a dog ran far away .", steps=5)
    assert [p.t for p in path.points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    # z_t = (-2 + 4t, 0): nearest to the first point for t < 1/2, the second for t > 1/2
    got = [p.sentence for p in path.points]
    assert got[:2] == ["the cat sat ."] * 2 and got[3:] == ["a dog ran far away ."] * 2
    assert path.start is not None and path.start.text == "the cat sat ."


def test_homotopy_between_prior_samples_is_seeded(model):
    a = text_ops.homotopy(model, steps=9, seed=1)
    assert a == text_ops.homotopy(model, steps=9, seed=1) and a.start is None and a.end is None
    runs = {tuple(p.sentence for p in text_ops.homotopy(model, steps=9, seed=s).points) for s in range(6)}
    assert len(runs) > 1  # different seeds draw different ends
    with pytest.raises(VaelabError, match="give two sentences for a homotopy, or none"):
        text_ops.homotopy(model, "the cat sat .")
    with pytest.raises(VaelabError, match="at least 2 steps"):
        text_ops.homotopy(model, steps=1)


def test_sample_is_seeded_and_follows_the_prior(model):
    s = text_ops.sample(model, 400, seed=3)
    assert s == text_ops.sample(model, 400, seed=3) and len(s.sentences) == 400
    # the decode of z ~ N(0, I) is the stored sentence nearest to z: the two lower points (+-2, 0) each
    # with probability 0.449 (symmetric about z_1 = 0), the upper one 0.101 (10^6 draws). With 400
    # draws the difference of the two shares has s.d. 0.047 and their sum 0.015: 2 and 10 s.d. margins
    left = sum(x == STORED[0] for x in s.sentences) / 400
    right = sum(x == STORED[1] for x in s.sentences) / 400
    assert abs(left - right) < 0.1 and left + right > 0.7
    with pytest.raises(VaelabError, match="temperature must be > 0"):
        text_ops.sample(model, 2, temperature=0.0)


@pytest.mark.parametrize(
    ("sentence", "missing", "message"),
    [
        ("i _ to the kitchen", None, "only missing final words can be imputed"),
        ("_ _", None, "no observed words"),
        ("i went _", 3, "marks 1 missing words but 3 were asked for"),
    ],
)
def test_impute_bad_input(model, sentence, missing, message):
    with pytest.raises(VaelabError, match=message):
        text_ops.impute(model, sentence, missing=missing)
