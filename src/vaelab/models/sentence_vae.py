"""The sentence VAE of Bowman et al. (2016), "Generating Sentences from a Continuous Space", and its
LSTM language-model baseline: one decoder class, used with and without z.

:class:`SentenceVAE` (``sentence_vae``): an LSTM encoder reads the sentence (words and ``<eos>``);
its last hidden state gives the mean and log-variance of a diagonal Gaussian q(z|x). The decoder
is an LSTM language model whose initial state (h, c) is a linear map of z (optionally z is also
concatenated to its input at every step, ``z_every_step``); it reads ``<bos>`` and the sentence
shifted by one and predicts the sentence's tokens and ``<eos>``. Prior p(z) = N(0, I). The loss is
-ELBO per sentence (log p(x|z) summed over the real tokens, analytic KL), batch mean, with:

* word dropout (Bowman et al. Section 3.2): in training each decoder input after ``<bos>`` is
  replaced by ``<unk>`` with probability ``word_dropout``; 1 is the inputless decoder;
* KL annealing (Section 3.1): the KL weight is ``vaelab.schedules.logistic_ramp`` or
  ``linear_ramp`` of the training step over ``kl_warmup_steps`` ("none": weight 1);
* free bits (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
  Flow", eq. 15): the trained KL term is sum_j max(lambda, E_batch[KL_j]), so a latent dimension
  whose batch-mean KL is below lambda = ``free_bits`` nats gets no gradient pushing it lower.

The reported ``elbo``, ``reconstruction`` and ``kl`` are always the true per-sentence terms (weight
1, no free bits): the training objective differs from the bound only while annealing or clamping.

:class:`LSTMLanguageModel` (``lstm_lm``): the same decoder without z; loss -log p(x) per sentence,
written into ``LossOutput.elbo`` as the (exact) log-likelihood so evaluation reports NLL and
perplexity per token the same way for both.

Shapes: a batch is a :class:`~vaelab.tokens.TokenBatch` of B sentences padded to T tokens; z is
(..., B, latent_dim) with any sample dims in front; logits are (N, T, V) for V words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, final

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from vaelab.distributions import diag_gaussian, standard_normal
from vaelab.divergences import DiagonalGaussianKL
from vaelab.errors import VaelabError
from vaelab.models.base import (
    KLAnnealed,
    LatentVariableModel,
    LossOutput,
    Model,
    ModelConfig,
    ReportInputs,
    Sampling,
    register_model,
)
from vaelab.schedules import linear_ramp, logistic_ramp
from vaelab.sections import Section, TextSection
from vaelab.spec import DataSpec
from vaelab.tokens import Sequences, TokenBatch

__all__ = [
    "LSTMDecoder",
    "LSTMDecoderConfig",
    "LSTMLanguageModel",
    "LSTMLanguageModelConfig",
    "SentenceDistribution",
    "SentenceVAE",
    "SentenceVAEConfig",
    "SpecialIds",
    "kl_weight",
]

KL_SCHEDULES = ("logistic", "linear", "none")


# ---------------------------------------------------------------------------------------------- configs
@dataclass
class LSTMDecoderConfig(ModelConfig):
    """Settings of the LSTM decoder, shared by the sentence VAE and the LSTM language model.

    embedding_dim: size of the word embeddings. hidden_size: LSTM state size. layers: LSTM layers.
    tie_embeddings: the output layer's weights are the input embeddings (Press & Wolf 2017; needs
        embedding_dim == hidden_size).
    word_dropout: rate p at which decoder inputs after ``<bos>`` become ``<unk>`` in training
        (Bowman et al. 2016, Section 3.2); 1 is the inputless decoder. Never applied in evaluation.
    max_decode_length: most tokens a decode generates (0: the data's longest sentence, spec.shape[0]).
    dropout: rate of (ordinary, Zaremba et al. 2014) dropout on the decoder's input embeddings and on
        its LSTM outputs before the softmax, in training only; the usual regulariser of an LSTM
        language model, which otherwise overfits PTB within a few epochs. 0 is off.
    """

    embedding_dim: int = 256
    hidden_size: int = 256
    layers: int = 1
    tie_embeddings: bool = False
    word_dropout: float = 0.0
    max_decode_length: int = 0
    dropout: float = 0.0

    def validate(self, prefix: str) -> None:
        for key in ("embedding_dim", "hidden_size", "layers"):
            if getattr(self, key) < 1:
                raise VaelabError(f"{prefix}.{key} must be a positive integer, got {getattr(self, key)}")
        if not 0.0 <= self.word_dropout <= 1.0:
            raise VaelabError(f"{prefix}.word_dropout must be in [0, 1], got {self.word_dropout}")
        if not 0.0 <= self.dropout < 1.0:
            raise VaelabError(f"{prefix}.dropout must be in [0, 1), got {self.dropout}")
        if self.tie_embeddings and self.embedding_dim != self.hidden_size:
            raise VaelabError(f"{prefix}.tie_embeddings needs embedding_dim == hidden_size, got "
                              f"{self.embedding_dim} and {self.hidden_size}; set them equal or untie")
        if self.max_decode_length < 0:
            raise VaelabError(f"{prefix}.max_decode_length must be >= 0 (0: the longest sentence), "
                              f"got {self.max_decode_length}")


@dataclass
class LSTMLanguageModelConfig(LSTMDecoderConfig):
    """The LSTM language model: the decoder's settings alone (:class:`LSTMDecoderConfig`)."""

    name: str = "lstm_lm"


@dataclass
class SentenceVAEConfig(LSTMDecoderConfig):
    """The sentence VAE: the decoder's settings (:class:`LSTMDecoderConfig`) and

    latent_dim: size of z. z_every_step: feed z to the decoder at every step (concatenated to the
        word embedding) besides initialising its state.
    kl_schedule: ``logistic`` or ``linear`` rise of the KL weight from 0 to 1 over
        ``kl_warmup_steps`` (``vaelab.schedules``), or ``none`` (weight 1 from the start).
    free_bits: lambda, nats per latent dimension (Kingma et al. 2016, eq. 15); 0 is off.
    autoencoder_steps: pretrain as a plain autoencoder for this many first steps: z is the posterior
        mean (no noise) and the loss is the reconstruction alone (no KL), so that the encoder learns
        to carry information before the KL term pulls q(z|x) to the prior; the KL schedule starts
        after them. 0 is off. (The reported ELBO is the true one throughout.)
    """

    name: str = "sentence_vae"
    latent_dim: int = 32
    z_every_step: bool = False
    kl_schedule: Literal["logistic", "linear", "none"] = "logistic"
    kl_warmup_steps: int = 0
    free_bits: float = 0.0
    autoencoder_steps: int = 0

    def validate(self, prefix: str) -> None:
        super().validate(prefix)
        if self.autoencoder_steps < 0:
            raise VaelabError(f"{prefix}.autoencoder_steps must be >= 0 (0 is off), "
                              f"got {self.autoencoder_steps}")
        if self.latent_dim < 1:
            raise VaelabError(f"{prefix}.latent_dim must be a positive integer, got {self.latent_dim}")
        if self.kl_warmup_steps < 0:
            raise VaelabError(f"{prefix}.kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}")
        if self.free_bits < 0:
            raise VaelabError(f"{prefix}.free_bits must be >= 0 nats per dimension (0 is off), "
                              f"got {self.free_bits}")


def kl_weight(schedule: str, step: int, warmup_steps: int) -> float:
    """The KL weight of training step ``step``: a pure function of it (``vaelab.schedules``)."""
    if schedule == "logistic":
        return logistic_ramp(step, warmup_steps)
    if schedule == "linear":
        return linear_ramp(step, warmup_steps)
    if schedule == "none":
        return 1.0
    raise VaelabError(f"unknown kl_schedule {schedule!r}; choose one of {', '.join(KL_SCHEDULES)}")


# ---------------------------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class SpecialIds:
    """The ids of ``<pad>``, ``<unk>``, ``<bos>`` and ``<eos>`` in a token spec's vocabulary."""

    pad: int
    unk: int
    bos: int
    eos: int

    @classmethod
    def of(cls, spec: DataSpec) -> SpecialIds:
        vocab = spec.extra.get("vocab")
        if not vocab:
            raise VaelabError("token data without a vocabulary (spec.extra['vocab']); load text through "
                              "data.name = 'ptb' or 'text:PATH'")
        ids = {}
        for key, word in (("pad", "<pad>"), ("unk", "<unk>"), ("bos", "<bos>"), ("eos", "<eos>")):
            if f"{key}_id" in spec.extra:
                ids[key] = int(spec.extra[f"{key}_id"])
            elif word in vocab:
                ids[key] = vocab.index(word)
            else:
                raise VaelabError(f"the vocabulary has no {word}; rebuild the data with vaelab's text loader")
        return cls(**ids)


# ---------------------------------------------------------------------------------------------- decoder
State = tuple[Tensor, Tensor]


class LSTMDecoder(nn.Module):
    """An LSTM language model p(x | c) = prod_t p(x_t | x_<t, c), optionally conditioned on a vector c
    (z for the VAE; ``cond_dim = 0`` for the plain language model).

    With c, the initial state (h_0, c_0) of every layer is a linear map of c, and with
    ``cond_every_step`` c is concatenated to each step's input embedding.
    """

    def __init__(self, cfg: LSTMDecoderConfig, vocab_size: int, ids: SpecialIds, cond_dim: int = 0,
                 cond_every_step: bool = False):
        super().__init__()
        self.cfg, self.ids, self.cond_dim = cfg, ids, cond_dim
        self.cond_every_step = cond_every_step and cond_dim > 0
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim)
        in_size = cfg.embedding_dim + (cond_dim if self.cond_every_step else 0)
        self.lstm = nn.LSTM(in_size, cfg.hidden_size, cfg.layers, batch_first=True)
        # tied: the output layer reads the embedding matrix itself (one parameter, so checkpoints
        # hold no shared tensors), with a bias of its own
        self.out = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, vocab_size)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size)) if cfg.tie_embeddings else None
        self.init_state = nn.Linear(cond_dim, 2 * cfg.layers * cfg.hidden_size) if cond_dim else None
        self.drop = nn.Dropout(cfg.dropout)  # identity in eval mode (and when the rate is 0)

    # ------------------------------------------------------------------ teacher forcing
    def inputs(self, batch: TokenBatch, word_dropout: float) -> Tensor:
        """Decoder inputs (B, T): ``<bos>`` then the tokens shifted right by one; with rate
        ``word_dropout`` each input after ``<bos>`` that is a real token becomes ``<unk>``."""
        tokens = batch.tokens
        bos = torch.full_like(tokens[:, :1], self.ids.bos)
        inputs = torch.cat([bos, tokens[:, :-1]], 1)
        if word_dropout > 0:
            # positions 1 .. length-1 hold the sentence's words (position 0 is <bos>)
            real = batch.mask.clone()
            real[:, 0] = False
            drop = (torch.rand(inputs.shape, device=inputs.device) < word_dropout) & real
            inputs = inputs.masked_fill(drop, self.ids.unk)
        return inputs

    def _state(self, cond: Tensor | None, n: int) -> State | None:
        if cond is None or self.init_state is None:
            return None
        layers, hidden = self.cfg.layers, self.cfg.hidden_size
        hc = self.init_state(cond).reshape(n, 2, layers, hidden).permute(1, 2, 0, 3)  # (2, L, N, H)
        return hc[0].contiguous(), hc[1].contiguous()

    def _embed(self, inputs: Tensor, cond: Tensor | None) -> Tensor:
        e = self.drop(self.embedding(inputs))  # (N, T, E)
        if self.cond_every_step and cond is not None:
            e = torch.cat([e, cond[:, None, :].expand(-1, e.shape[1], -1)], -1)
        return e

    def project(self, h: Tensor) -> Tensor:
        """LSTM outputs (..., H) -> next-token logits (..., V)."""
        if self.out is None:
            return F.linear(h, self.embedding.weight, self.out_bias)
        return self.out(h)

    def logits(self, inputs: Tensor, cond: Tensor | None = None) -> Tensor:
        """inputs (N, T) ids, cond (N, cond_dim) or None -> next-token logits (N, T, V)."""
        h, _ = self.lstm(self._embed(inputs, cond), self._state(cond, inputs.shape[0]))
        return self.project(self.drop(h))

    def log_prob(self, batch: TokenBatch, cond: Tensor | None = None, word_dropout: float = 0.0) -> Tensor:
        """log p(x | c) per sentence (N,) nats: the token log-probabilities summed over the real
        positions (words and ``<eos>``) only, so padding never changes it. cond: (N, cond_dim)."""
        inputs = self.inputs(batch, word_dropout)
        h, _ = self.lstm(self._embed(inputs, cond), self._state(cond, inputs.shape[0]))  # (N, T, H)
        # the softmax over V words is most of a step's time: computed at the real positions only,
        # as (n, V) rows (several times faster on CPU than cross_entropy with the class dim in the middle)
        mask = batch.mask
        logits = self.project(self.drop(h[mask])).float()  # float32 (bf16 under autocast): the softmax
        nll = F.cross_entropy(logits, batch.tokens[mask], reduction="none")  # (n,)
        return -torch.zeros(mask.shape, dtype=nll.dtype, device=nll.device).masked_scatter_(mask, nll).sum(1)

    # ------------------------------------------------------------------ decoding, one step at a time
    def start(self, cond: Tensor | None, n: int, device: torch.device) -> tuple[Tensor, State | None]:
        """The first input (``<bos>``, (n,)) and state for n sequences."""
        bos = torch.full((n,), self.ids.bos, dtype=torch.long, device=device)
        return bos, self._state(cond, n)

    def step(self, token: Tensor, state: State | None, cond: Tensor | None) -> tuple[Tensor, State]:
        """One step: token (N,), state -> log-probabilities of the next token (N, V), new state.

        ``<pad>`` and ``<bos>`` are never targets in training; decoding gives them probability 0
        (renormalised over the other words) so that an untrained model cannot emit them either."""
        h, state = self.lstm(self._embed(token[:, None], cond), state)
        logits = self.project(h[:, 0]).float()
        logits[:, [self.ids.pad, self.ids.bos]] = -math.inf
        return torch.log_softmax(logits, -1), state

    @torch.no_grad()
    def decode(self, cond: Tensor | None, n: int, max_len: int, choose) -> list[list[int]]:
        """Generate n sequences, ``choose(logp (N, V)) -> ids (N,)`` at every step, stopping at
        ``<eos>`` or after ``max_len`` tokens; the ids without ``<eos>``."""
        device = self.embedding.weight.device
        token, state = self.start(cond, n, device)
        out = torch.full((n, max_len), self.ids.eos, dtype=torch.long, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        for t in range(max_len):
            logp, state = self.step(token, state, cond)
            token = choose(logp)
            out[:, t] = token.masked_fill(done, self.ids.eos)
            done |= token == self.ids.eos
            if bool(done.all()):
                break
        return [_until_eos(row, self.ids.eos) for row in out.tolist()]

    @torch.no_grad()
    def beam(self, cond: Tensor | None, n: int, beam_size: int, max_len: int) -> list[list[int]]:
        """Beam search: for each of the n sequences the most probable of ``beam_size`` hypotheses
        (summed log-probabilities, no length normalisation), ended by ``<eos>`` or ``max_len``."""
        device, k, eos = self.embedding.weight.device, beam_size, self.ids.eos
        rep = cond.repeat_interleave(k, 0) if cond is not None else None  # (n k, D)
        token, state = self.start(rep, n * k, device)
        scores = torch.full((n, k), -math.inf, device=device)
        scores[:, 0] = 0.0  # the k beams start identical: keep one
        history = torch.zeros((n, k, 0), dtype=torch.long, device=device)
        done = torch.zeros((n, k), dtype=torch.bool, device=device)
        for _ in range(max_len):
            logp, state = self.step(token, state, rep)
            logp = logp.view(n, k, -1)
            # a finished hypothesis continues only with <eos>, at no cost
            ended = torch.full_like(logp[0, 0], -math.inf)
            ended[eos] = 0.0
            logp = torch.where(done[..., None], ended, logp)
            total = (scores[..., None] + logp).view(n, -1)  # (n, k V)
            scores, flat = total.topk(k, -1)
            beam_idx, token = flat // logp.shape[-1], flat % logp.shape[-1]
            history = torch.cat([history.gather(1, beam_idx[..., None].expand(-1, -1, history.shape[2])),
                                 token[..., None]], 2)
            done = done.gather(1, beam_idx) | (token == eos)
            rows = (beam_idx + torch.arange(n, device=device)[:, None] * k).view(-1)
            state = (state[0][:, rows], state[1][:, rows])
            token = token.view(-1)
            if bool(done.all()):
                break
        best = history[torch.arange(n, device=device), scores.argmax(-1)]
        return [_until_eos(row, eos) for row in best.tolist()]


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


# ---------------------------------------------------------------------------------------------- p(x|z)
class SentenceDistribution(Distribution):
    """p(x|z) over token sequences: batch z.shape[:-1], no event shape (a sentence is a variable-length
    sequence, not a fixed tensor).

    ``log_prob(batch)`` takes a :class:`TokenBatch` of B sentences with z (..., B, latent_dim) and
    returns log p(x|z) (..., B): the masked sum of token log-probabilities. Drawing sentences is
    ``SentenceVAE.sample_tokens``; ``sample`` here raises NotImplementedError since a Distribution's
    samples are tensors of one shape and sentences are not.
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    # at most this many sentences decoded per pass: measured on the PTB model (K = 200 samples of 50
    # test sentences, 2 threads), 1,024 took 21 s where 4,096 took 30 s (the logits of 4,096
    # sentences, about 3.6 GB, go to and from memory) and 256 took 23 s; the results are identical
    def __init__(self, decoder: LSTMDecoder, z: Tensor, max_chunk: int = 1024):
        self.decoder, self.z, self.max_chunk = decoder, z, max_chunk
        super().__init__(batch_shape=z.shape[:-1], validate_args=False)

    def log_prob(self, value: TokenBatch) -> Tensor:
        z = self.z
        b = len(value)
        if z.shape[-2] != b:
            raise ValueError(f"z holds {z.shape[-2]} rows per sample but the batch {b} sentences")
        flat = z.reshape(-1, b, z.shape[-1])  # (S, B, Dz)
        # S copies of the batch decoded together, at most max_chunk sentences per pass
        per = max(1, self.max_chunk // b)
        out = []
        for zs in flat.split(per):
            s = zs.shape[0]
            rep = TokenBatch(value.tokens.repeat(s, 1), value.lengths.repeat(s), value.mask.repeat(s, 1))
            out.append(self.decoder.log_prob(rep, zs.reshape(s * b, -1)).view(s, b))
        return torch.cat(out).view(z.shape[:-1])

    def sample(self, sample_shape: tuple[int, ...] = ()):
        raise NotImplementedError("draw sentences with SentenceVAE.sample_tokens(z) (lists of ids of varying "
                                  "length), not with Distribution.sample")


# ---------------------------------------------------------------------------------------------- models
class _SentenceModel(Model, Sampling):
    """What both families share: the vocabulary, the decoder's settings and text sections."""

    data_kinds = frozenset({"tokens"})

    def __init__(self, config: LSTMDecoderConfig, spec: DataSpec):
        super().__init__(config, spec)
        self.ids = SpecialIds.of(spec)
        self._word_index = {w: i for i, w in enumerate(self.vocab)}

    @property
    def vocab(self) -> list[str]:
        """The words, index = token id."""
        return list(self.spec.extra["vocab"])

    def words(self, ids: list[int]) -> str:
        """Token ids joined into a sentence by spaces."""
        vocab = self.spec.extra["vocab"]
        return " ".join(vocab[i] for i in ids)

    def encode_sentences(self, sentences: list[str]) -> tuple[TokenBatch, int]:
        """Sentences as a TokenBatch on the model's device: lower-cased, split on whitespace, mapped
        through the vocabulary (unknown words -> ``<unk>``), ``<eos>`` appended; and how many words
        were unknown (the caller warns)."""
        seqs, unknown = [], 0
        for s in sentences:
            ids = []
            for w in s.lower().split():
                i = self._word_index.get(w)
                if i is None:
                    unknown += 1
                    i = self.ids.unk
                ids.append(i)
            seqs.append(ids + [self.ids.eos])
        store = Sequences.from_lists(seqs)
        batch = store.pad(torch.arange(len(seqs)), self.ids.pad)
        return batch.to(self.device), unknown

    def _max_len(self, max_len: int | None) -> int:
        if max_len is not None:
            return max_len
        return self.config.max_decode_length or int(self.spec.shape[0])

    def _word_dropout(self) -> float:
        return self.config.word_dropout if self.training else 0.0

    def check_data(self, examples: Sequences) -> None:
        if int(examples.flat.max()) >= self.spec.vocab_size:
            raise VaelabError(f"token ids up to {int(examples.flat.max())} but the vocabulary holds "
                              f"{self.spec.vocab_size} words; build the model from this data's spec")

    @torch.no_grad()
    def samples_section(self, n: int) -> TextSection:
        return TextSection(name="samples", title="Samples",
                           caption=f"{n} sentences sampled from the model (temperature 1).",
                           texts=self.sample(n))


@final
@register_model("lstm_lm")
class LSTMLanguageModel(_SentenceModel):
    """The LSTM language model baseline: the sentence VAE's decoder without z. ``loss().elbo`` is the
    exact log p(x) per sentence (nothing is bounded), so NLL and perplexity come out as for the VAE."""

    Config = LSTMLanguageModelConfig
    supports_bf16 = True
    exact_likelihood = True

    def __init__(self, config: LSTMLanguageModelConfig, spec: DataSpec):
        super().__init__(config, spec)
        self.decoder = LSTMDecoder(config, spec.vocab_size, self.ids)

    def loss(self, batch: TokenBatch) -> LossOutput:
        log_px = self.decoder.log_prob(batch, None, self._word_dropout())  # (B,)
        return LossOutput(loss=-log_px.mean(), elbo=log_px, reconstruction=log_px)

    @torch.no_grad()
    def sample(self, n: int) -> list[str]:
        """n sentences drawn from the model (temperature 1)."""
        ids = self.decoder.decode(None, n, self._max_len(None), _sampler(1.0))
        return [self.words(s) for s in ids]

    @torch.no_grad()
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        return [self.samples_section(inputs.n_samples)]


@final
@register_model("sentence_vae")
class SentenceVAE(_SentenceModel, LatentVariableModel, KLAnnealed):
    """The sentence VAE of Bowman et al. (2016): LSTM encoder -> q(z|x), LSTM decoder from z (module doc)."""

    Config = SentenceVAEConfig
    supports_bf16 = True

    def __init__(self, config: SentenceVAEConfig, spec: DataSpec):
        super().__init__(config, spec)
        v = spec.vocab_size
        self.enc_embedding = nn.Embedding(v, config.embedding_dim)
        self.enc_lstm = nn.LSTM(config.embedding_dim, config.hidden_size, config.layers, batch_first=True)
        self.to_posterior = nn.Linear(config.hidden_size, 2 * config.latent_dim)
        self.decoder = LSTMDecoder(config, v, self.ids, config.latent_dim, config.z_every_step)
        self.register_buffer("_zero", torch.zeros(()), persistent=False)

    # ------------------------------------------------------------------ the three pieces
    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def _posterior_params(self, batch: TokenBatch) -> tuple[Tensor, Tensor]:
        """(mu, logvar), each (B, latent_dim), from the top layer's output at each sentence's own last
        token. The LSTM reads left to right, so its output at position t depends on tokens <= t only:
        the padding after a sentence never reaches that output. Running over the padded batch (one
        fused kernel over all steps) instead of a packed sequence (a step-by-step loop on CPU) is
        about a quarter faster on CPU, and the batches are bucketed by length, so little is padding."""
        out, _ = self.enc_lstm(self.enc_embedding(batch.tokens))  # (B, T, H)
        last = out[torch.arange(out.shape[0], device=out.device), batch.lengths - 1]  # (B, H)
        mu, logvar = self.to_posterior(last).float().chunk(2, -1)  # float32 under bf16 autocast too
        return mu, logvar

    def encode(self, x: TokenBatch) -> Distribution:
        """q(z|x): x a TokenBatch of B sentences -> diagonal Gaussian, batch (B,), event (latent_dim,)."""
        return diag_gaussian(*self._posterior_params(x))

    def decode(self, z: Tensor) -> SentenceDistribution:
        """p(x|z): z (..., B, latent_dim) -> :class:`SentenceDistribution`, batch (..., B)."""
        return SentenceDistribution(self.decoder, z)

    def log_likelihood(self, x: TokenBatch, z: Tensor) -> Tensor:
        """log p(x|z): x a TokenBatch of B sentences, z (..., B, latent_dim) -> (..., B) nats."""
        return self.decode(z).log_prob(x)

    def prior(self) -> Distribution:
        """p(z) = N(0, I)."""
        return standard_normal(self.config.latent_dim, device=self._zero.device, dtype=self._zero.dtype)

    def log_importance_weights(self, x: TokenBatch, k: int) -> Tensor:
        """(k, B) log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x) (Burda et al. 2016, eq. 8):
        logmeanexp over k estimates log p(x) from below."""
        q = self.encode(x)
        z = q.sample((k,))  # (k, B, Dz)
        return self.log_likelihood(x, z) + self.prior().log_prob(z) - q.log_prob(z)

    # ------------------------------------------------------------------ the objective
    def kl_weight_at(self, step: int) -> float:
        """0 during autoencoder pretraining, then the schedule counted from its end."""
        pre = self.config.autoencoder_steps
        if step < pre:
            return 0.0
        return kl_weight(self.config.kl_schedule, step - pre, self.config.kl_warmup_steps)

    @property
    def pretraining(self) -> bool:
        """True in the autoencoder pretraining steps (training mode, step < ``autoencoder_steps``)."""
        return self.training and self.train_step < self.config.autoencoder_steps

    def free_bits_kl(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """The KL term trained with free bits: sum_j max(lambda, mean_b KL_j(b)), a scalar (Kingma et
        al. 2016, eq. 15, each latent dimension a group; the mean over the minibatch). mu, logvar:
        (B, latent_dim). With lambda = 0 it is the batch mean of the KL."""
        per_dim = DiagonalGaussianKL.to_standard_normal(mu[..., None], logvar[..., None])  # (B, Dz)
        return per_dim.mean(0).clamp(min=self.config.free_bits).sum()

    def loss(self, batch: TokenBatch) -> LossOutput:
        """-ELBO per sentence, batch mean (with KL annealing and free bits while training)."""
        mu, logvar = self._posterior_params(batch)
        kl = DiagonalGaussianKL.to_standard_normal(mu, logvar)  # (B,), Kingma & Welling App. B
        if self.pretraining:  # a plain autoencoder: z = mu, the loss is the reconstruction alone
            rec = self.decoder.log_prob(batch, mu, self._word_dropout())
            return LossOutput(loss=-rec.mean(), elbo=rec - kl, reconstruction=rec, kl=kl)
        std = torch.exp(0.5 * logvar)
        z = torch.addcmul(mu, std, torch.randn_like(mu))  # z = mu + sigma * eps (Kingma & Welling, eq. 4)
        rec = self.decoder.log_prob(batch, z, self._word_dropout())  # E_q[log p(x|z)], one sample (B,)
        elbo = rec - kl
        if self.training and (self.kl_weight_now != 1.0 or self.config.free_bits > 0):
            train_kl = self.free_bits_kl(mu, logvar) if self.config.free_bits > 0 else kl.mean()
            objective = rec.mean() - self._kl_weight * train_kl
        else:
            objective = elbo.mean()
        return LossOutput(loss=-objective, elbo=elbo, reconstruction=rec, kl=kl)

    # ------------------------------------------------------------------ decoding
    def greedy(self, z: Tensor, max_len: int | None = None) -> list[list[int]]:
        """The most probable next token at every step from z (B, latent_dim): B lists of ids without
        ``<eos>``, each stopped at ``<eos>`` or after ``max_len`` tokens (default: the config's
        ``max_decode_length``, else the data's longest sentence)."""
        return self.decoder.decode(z, z.shape[0], self._max_len(max_len), _argmax)

    def beam(self, z: Tensor, beam_size: int = 5, max_len: int | None = None) -> list[list[int]]:
        """Beam search from z (B, latent_dim): per row the hypothesis of highest log-probability among
        ``beam_size`` (no length normalisation); ids without ``<eos>``."""
        return self.decoder.beam(z, z.shape[0], beam_size, self._max_len(max_len))

    def sample_tokens(self, z: Tensor, temperature: float = 1.0, max_len: int | None = None
                      ) -> list[list[int]]:
        """Tokens drawn from p(x_t | x_<t, z) ** (1 / temperature), renormalised, from z (B, latent_dim);
        ids without ``<eos>``."""
        if temperature <= 0:
            raise VaelabError(f"temperature must be > 0 (greedy decoding is the limit 0), got {temperature}")
        return self.decoder.decode(z, z.shape[0], self._max_len(max_len), _sampler(temperature))

    @torch.no_grad()
    def sample(self, n: int) -> list[str]:
        """n sentences: z ~ p(z), then tokens drawn from p(x|z) (temperature 1)."""
        z = self.prior().sample((n,))
        return [self.words(s) for s in self.sample_tokens(z)]

    @torch.no_grad()
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        """Samples from the prior, and greedy decodes from the posterior mean of up to 10 held-out
        sentences (Bowman et al. Table 7's first column)."""
        out: list[Section] = [self.samples_section(inputs.n_samples)]
        if inputs.batches:
            batch = inputs.batches[0].split(10)[0]
            decoded = self.greedy(self.posterior_mean(batch))
            texts, labels = [], []
            for row, length, dec in zip(batch.tokens.tolist(), batch.lengths.tolist(), decoded):
                texts += [self.words(row[: length - 1]), self.words(dec)]
                labels += ["input", "reconstruction"]
            out.append(TextSection(
                name="reconstructions", title="Reconstructions",
                caption=f"{len(decoded)} held-out sentences and the greedy decode from their posterior mean.",
                texts=texts, labels=labels))
        return out


def _argmax(logp: Tensor) -> Tensor:
    return logp.argmax(-1)


def _sampler(temperature: float):
    def choose(logp: Tensor) -> Tensor:
        return torch.multinomial(torch.softmax(logp / temperature, -1), 1)[:, 0]

    return choose
