"""What people do with a trained sentence VAE: reconstruct, sample, walk between sentences, fill gaps.

Bowman, Vilnis, Vinyals, Dai, Jozefowicz & Bengio, *Generating Sentences from a Continuous Space*
(CoNLL 2016; arXiv 2015): Table 7 (greedy decodes from the posterior mean and from posterior
samples), Table 8 (homotopies: decodes along the line between two latent points) and Section 4.2
(imputing missing words). Each function takes a loaded model (``load_sentence_model``) and a seed
where it draws, and returns data (frozen dataclasses of strings); ``vaelab text`` prints them.

Input sentences are lower-cased and split on whitespace (``SentenceVAE.encode_sentences``); words
outside the model's vocabulary become ``<unk>`` and are listed in :class:`TextInput`'s
``unknown`` so the caller can warn. A sentence longer than the model's maximum length (its
decode limit: ``model.max_decode_length``, else the longest training sequence) is kept whole: it
is encoded in full, decodes may run as long as it, and :attr:`TextInput.too_long` says so. An
empty sentence is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vaelab.data.text import SPECIALS
from vaelab.errors import VaelabError
from vaelab.tokens import TokenBatch

if TYPE_CHECKING:
    from vaelab.models.sentence_vae import SentenceVAE

__all__ = ["TextInput", "Reconstruction", "Samples", "HomotopyPoint", "Homotopy", "Imputation", "BLANK",
           "load_sentence_model", "read_sentence", "reconstruct", "sample", "homotopy", "impute"]

BLANK = "_"  # marks a missing word in impute's input


@dataclass(frozen=True)
class TextInput:
    """A sentence as the model sees it.

    text: its words joined by spaces, unknown ones shown as ``<unk>``; unknown: the words that
    became ``<unk>`` (in order, repeats kept); too_long: its word count when that exceeds the
    model's maximum length ``max_len``, else None."""

    text: str
    unknown: tuple[str, ...]
    too_long: int | None
    max_len: int

    def warnings(self) -> list[str]:
        """One line per problem with the input, for the caller to print."""
        out = []
        if self.unknown:
            words = ", ".join(dict.fromkeys(self.unknown))
            out.append(f"{len(self.unknown)} unknown word(s) read as <unk> in {self.text!r}: {words}")
        if self.too_long is not None:
            out.append(f"sentence of {self.too_long} words is longer than the model's maximum length "
                       f"{self.max_len} (its decode limit); encoded whole, decodes allowed "
                       f"{self.too_long} words")
        return out


@dataclass(frozen=True)
class Reconstruction:
    """Table 7: ``mean`` the greedy decode of the posterior mean, ``samples`` of z ~ q(z|x)."""

    input: TextInput
    mean: str
    samples: tuple[str, ...]


@dataclass(frozen=True)
class Samples:
    """Sentences decoded from z ~ p(z) = N(0, I): greedily, or sampled word by word at ``temperature``."""

    sentences: tuple[str, ...]
    temperature: float
    greedy: bool


@dataclass(frozen=True)
class HomotopyPoint:
    """t in [0, 1]: z = (1 - t) z_a + t z_b; sentence its greedy decode."""

    t: float
    sentence: str


@dataclass(frozen=True)
class Homotopy:
    """Table 8: decodes along the line between two latent points.

    start / end: the two sentences (their posterior means are the ends), or None where the end was
    drawn from the prior."""

    start: TextInput | None
    end: TextInput | None
    points: tuple[HomotopyPoint, ...]


@dataclass(frozen=True)
class Imputation:
    """Missing final words filled in (see :func:`impute`).

    observed: the words given; missing: how many were asked for; filled: the whole sentence, the
    observed words followed by the imputed ones; candidates: every completion considered with its
    ELBO in nats (best first)."""

    observed: TextInput
    missing: int
    filled: str
    candidates: tuple[tuple[str, float], ...]


def load_sentence_model(run_dir: str | Path, device: torch.device) -> SentenceVAE:
    """The sentence VAE of a run folder; a run of any other model is a one-line error."""
    from vaelab.experiment import load_run_model
    from vaelab.models.sentence_vae import SentenceVAE

    model, cfg, _ = load_run_model(run_dir, device)
    if not isinstance(model, SentenceVAE):
        raise VaelabError(
            f"run {run_dir} holds a {cfg.model.name!r} model on {cfg.data.name!r}, not a sentence VAE; "
            "give the folder of a run trained with model.name = 'sentence_vae'"
        )
    return model


def _max_len(model: SentenceVAE) -> int:
    """The most tokens a decode generates: ``model.max_decode_length``, else the longest training
    sequence (its words and ``<eos>``), as the model's own decoding methods default to."""
    return int(model.config.max_decode_length or model.spec.shape[0])


def read_sentence(model: SentenceVAE, sentence: str) -> tuple[list[str], TextInput]:
    """The words of ``sentence`` and how the model reads them; an empty sentence is an error."""
    words = sentence.split()
    if not words:
        raise VaelabError("the sentence is empty; give at least one word, e.g. \"i went to the kitchen .\"")
    known = set(model.vocab) - set(SPECIALS)
    words = [w.lower() for w in words]  # as the model's encode_sentences reads them
    unknown = tuple(w for w in words if w not in known)
    text = " ".join(w if w in known else "<unk>" for w in words)
    limit = _max_len(model)
    return words, TextInput(text, unknown, len(words) if len(words) > limit else None, limit)


def _encode(model: SentenceVAE, sentences: list[str]) -> TokenBatch:
    """The sentences as one padded batch on the model's device (unknown words are counted by
    :func:`read_sentence`, which names them)."""
    batch, _ = model.encode_sentences(sentences)
    return batch.to(model.device)


def _decode_len(model: SentenceVAE, *inputs: TextInput | None) -> int:
    """The longest decode allowed: the model's maximum length, or the longest input when longer."""
    return max([_max_len(model)] + [i.too_long for i in inputs if i is not None and i.too_long is not None])


def _words(model: SentenceVAE, ids: list[list[int]]) -> tuple[str, ...]:
    return tuple(model.words(s) for s in ids)


@torch.no_grad()
def reconstruct(model: SentenceVAE, sentence: str, n_samples: int = 3, seed: int = 0) -> Reconstruction:
    """Greedy decodes of ``sentence``'s posterior mean and of ``n_samples`` draws z ~ q(z|x)
    (Bowman et al. 2015, Table 7)."""
    if n_samples < 0:
        raise VaelabError(f"the number of posterior samples must be >= 0, got {n_samples}")
    _, seen = read_sentence(model, sentence)
    batch = _encode(model, [sentence])
    torch.manual_seed(seed)
    q = model.encode(batch)
    mean = q.mean  # (1, latent_dim)
    z = q.sample((n_samples,)).reshape(n_samples, -1) if n_samples else mean[:0]  # (n_samples, latent_dim)
    decoded = model.greedy(torch.cat([mean, z]), max_len=_decode_len(model, seen))
    out = _words(model, decoded)
    return Reconstruction(seen, out[0], out[1:])


@torch.no_grad()
def sample(model: SentenceVAE, n: int, temperature: float = 1.0, greedy: bool = False,
           seed: int = 0) -> Samples:
    """``n`` sentences from z ~ p(z): the greedy decode of each z, or words sampled at ``temperature``."""
    if n < 1:
        raise VaelabError(f"the number of sentences must be >= 1, got {n}")
    if not temperature > 0:
        raise VaelabError(f"the temperature must be > 0, got {temperature}")
    torch.manual_seed(seed)
    z = _prior_draws(model, n)
    ids = model.greedy(z) if greedy else model.sample_tokens(z, temperature=temperature)
    return Samples(_words(model, ids), temperature, greedy)


def _prior_draws(model: SentenceVAE, n: int) -> Tensor:
    """(n, latent_dim) draws of p(z) on the model's device."""
    return model.prior().sample((n,)).reshape(n, model.latent_dim).to(model.device)


@torch.no_grad()
def homotopy(model: SentenceVAE, a: str | None = None, b: str | None = None, steps: int = 7,
             seed: int = 0) -> Homotopy:
    """Greedy decodes of z_t = (1 - t) z_a + t z_b at ``steps`` evenly spaced t from 0 to 1
    (Bowman et al. 2015, Table 8), z_a and z_b the posterior means of sentences ``a`` and ``b``,
    or two draws from the prior when neither is given."""
    if (a is None) != (b is None):
        raise VaelabError("give two sentences for a homotopy, or none to walk between two prior samples")
    if steps < 2:
        raise VaelabError(f"a homotopy needs at least 2 steps (its two ends), got {steps}")
    torch.manual_seed(seed)
    ins: tuple[TextInput | None, TextInput | None] = (None, None)
    if a is not None and b is not None:
        ins = (read_sentence(model, a)[1], read_sentence(model, b)[1])
        ends = model.posterior_mean(_encode(model, [a, b]))  # (2, latent_dim)
    else:
        ends = _prior_draws(model, 2)
    t = torch.linspace(0.0, 1.0, steps, device=ends.device)[:, None]  # (steps, 1)
    z = torch.lerp(ends[0:1], ends[1:2], t)  # (steps, latent_dim): (1 - t) z_a + t z_b
    out = _words(model, model.greedy(z, max_len=_decode_len(model, *ins)))
    return Homotopy(ins[0], ins[1], tuple(HomotopyPoint(float(ti), s) for ti, s in zip(t[:, 0], out)))


@torch.no_grad()
def impute(model: SentenceVAE, sentence: str, missing: int | None = None, n_samples: int = 10,
           score_samples: int = 8, seed: int = 0) -> Imputation:
    """Fill in a sentence's missing final words.

    The missing words are either marked by trailing ``_`` (``"the cat sat on the _ _"``) or asked
    for with ``missing``; only a missing *suffix* is supported (as in Bowman et al. 2015, Section
    4.2, which imputes the final words). A ``_`` before an observed word is an error.

    Method (simpler than the paper's, stated): the encoder reads the observed words alone; for its
    posterior mean and for ``n_samples`` draws z ~ q(z | observed words), the decoder conditioned on
    z is fed the observed words and then chooses the most probable next word ``missing`` times
    (``<eos>`` and ``<unk>`` excluded: a missing word is a word). The completions found are ranked by
    their ELBO under the model, the mean of ``score_samples`` one-sample estimates (``Model.loss``),
    and the best is returned.
    """
    words = sentence.split()
    blanks = 0
    while blanks < len(words) and words[len(words) - 1 - blanks] == BLANK:
        blanks += 1
    observed = words[: len(words) - blanks]
    if BLANK in observed:
        raise VaelabError(f"only missing final words can be imputed; {sentence!r} has a {BLANK!r} before "
                          "a given word: put the blanks at the end")
    if blanks and missing is not None and missing != blanks:
        raise VaelabError(f"{sentence!r} marks {blanks} missing words but {missing} were asked for; give one")
    missing = blanks or missing or 1
    if missing < 1 or n_samples < 0 or score_samples < 1:
        raise VaelabError("impute needs missing >= 1, n_samples >= 0 and score_samples >= 1")
    if not observed:
        raise VaelabError("the sentence has no observed words to condition on; give some before the blanks")
    text = " ".join(observed)
    _, seen = read_sentence(model, text)
    torch.manual_seed(seed)
    batch = _encode(model, [text])
    q = model.encode(batch)
    z = torch.cat([q.mean, q.sample((n_samples,)).reshape(n_samples, -1)])  # (1 + n_samples, latent_dim)
    prefix = batch.tokens[0, : len(observed)]  # (len(observed),) ids, without <eos>
    fills = _continue(model, z, prefix, missing)  # (1 + n_samples, missing) ids
    known = seen.text.split()
    candidates = list(dict.fromkeys(" ".join(known + model.words(f).split()) for f in fills))
    scores = _elbo(model, candidates, score_samples)
    ranked = sorted(zip(candidates, scores), key=lambda cs: -cs[1])
    return Imputation(seen, missing, ranked[0][0], tuple(ranked))


def _continue(model: SentenceVAE, z: Tensor, prefix: Tensor, missing: int) -> list[list[int]]:
    """The decoder p(x_t | x_<t, z) fed ``<bos>`` and ``prefix`` (P,) ids, then ``missing`` argmax
    words, never ``<eos>`` or ``<unk>``. z: (N, latent_dim) -> N lists of ``missing`` ids."""
    decoder, n = model.decoder, z.shape[0]
    token, state = decoder.start(z, n, z.device)  # <bos> (N,)
    for t in prefix.tolist():
        _, state = decoder.step(token, state, z)
        token = torch.full((n,), t, dtype=torch.long, device=z.device)
    out = []
    for _ in range(missing):
        logp, state = decoder.step(token, state, z)  # (N, V) log-probabilities of the next word
        logp[:, [model.ids.eos, model.ids.unk]] = -torch.inf
        token = logp.argmax(-1)
        out.append(token)
    return torch.stack(out, 1).tolist()


def _elbo(model: SentenceVAE, sentences: list[str], repeats: int) -> list[float]:
    """Each sentence's ELBO in nats: the mean of ``repeats`` one-sample estimates (``Model.loss``)."""
    batch = _encode(model, [s for s in sentences for _ in range(repeats)])
    elbo = model.loss(batch).elbo
    assert elbo is not None  # a sentence VAE's loss states its bound
    return elbo.reshape(len(sentences), repeats).mean(1).tolist()
