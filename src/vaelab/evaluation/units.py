"""The units a likelihood is reported in, fitted to the kind of data, with the counts they are per.

A model's loss is in nats per example (DESIGN.md). Examples of different kinds are compared per
what they hold, so the evaluation also reports, from the per-example negative log-likelihoods
``nll_i = -log p(x_i)`` (nats) and per-example counts ``n_i``:

- images: bits per dimension, ``sum_i nll_i / (ln 2 * sum_i n_i)`` with n_i = C*H*W;
- tokens: nats per sequence, ``mean_i nll_i``, and perplexity per token,
  ``exp(sum_i nll_i / sum_i n_i)`` with n_i the sequence's tokens *including* its ``<eos>``
  (the convention of Mikolov et al. and Bowman et al.: predicting the end is part of the text);
- codes (a prior over the discrete codes of a VQ-VAE): bits per code, with n_i codes per map;
- waveforms: bits per sample.

Sums over examples, not means of per-example ratios: the corpus perplexity weights each sentence by
its length. With ``nll`` from -ELBO the numbers are upper bounds (``bound=True`` says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import singledispatch

import torch
from torch import Tensor, nn

from vaelab.codes import CodeBatch
from vaelab.tokens import TokenBatch
from vaelab.waves import WaveBatch

__all__ = ["Units", "UnitRule", "UNIT_RULES", "units", "example_counts", "negative_elbo_per_example"]


@dataclass(frozen=True)
class UnitRule:
    """How one data kind reports a likelihood.

    per_example: the name of the mean nats per example (``nats_per_sequence`` for text).
    name: the name of the per-count figure (``bits_per_dim``, ``perplexity_per_token``, ...).
    counted: what one count is, as said in the output (``tokens (words and <eos>)``).
    per_count: ``f(total nats, total count) -> figure``.
    """

    per_example: str
    name: str
    counted: str
    per_count: Callable[[float, float], float]


def _bits(nats: float, count: float) -> float:
    return nats / (count * math.log(2))


def _perplexity(nats: float, count: float) -> float:
    return math.exp(nats / count)


UNIT_RULES: dict[str, UnitRule] = {
    "images": UnitRule("nats_per_example", "bits_per_dim", "dimensions", _bits),
    "tokens": UnitRule("nats_per_sequence", "perplexity_per_token", "tokens (words and <eos>)", _perplexity),
    "codes": UnitRule("nats_per_example", "bits_per_code", "codes", _bits),
    "waveforms": UnitRule("nats_per_example", "bits_per_sample", "samples", _bits),
}
"""Kind -> rule; a new kind registers its rule here."""


@dataclass(frozen=True)
class Units:
    """A likelihood in the units of its data kind (see the module docstring).

    nats_per_example: mean negative log-likelihood per example (nats).
    value: the per-count figure named ``rule.name``.
    n_examples / n_counted: examples, and counts summed over them.
    bound: the nats come from -ELBO, so both numbers are upper bounds.
    """

    kind: str
    rule: UnitRule
    nats_per_example: float
    value: float
    n_examples: int
    n_counted: int
    bound: bool = False

    def as_dict(self, prefix: str = "") -> dict:
        """JSON facts, keys prefixed by ``prefix`` (e.g. ``elbo_`` for the bound's figures)."""
        return {
            f"{prefix}{self.rule.per_example}": self.nats_per_example,
            f"{prefix}{self.rule.name}": self.value,
            f"{prefix}counted": f"{self.n_counted} {self.rule.counted} in {self.n_examples} examples",
        }

    def describe(self) -> str:
        """One line, e.g. ``perplexity per token 141.2, 95.3 nats per sequence (82430 tokens (words
        and <eos>) in 3761 examples; upper bound from the ELBO)``."""
        name, per_example = (s.replace("_", " ") for s in (self.rule.name, self.rule.per_example))
        how = "; upper bound from the ELBO" if self.bound else ""
        return (
            f"{name} {self.value:.4g}, {self.nats_per_example:.2f} {per_example} "
            f"({self.n_counted} {self.rule.counted} in {self.n_examples} examples{how})"
        )


def units(kind: str, nats_per_example: Tensor, counts: Tensor, *, bound: bool = False) -> Units:
    """The likelihood of N examples in the units of ``kind``.

    nats_per_example: (N,) -log p(x_i) in nats (or -ELBO, with ``bound=True``).
    counts: (N,) what each example's figure is per: dimensions, tokens (with ``<eos>``), codes.
    """
    try:
        rule = UNIT_RULES[kind]
    except KeyError:
        raise ValueError(f"no units for data kind {kind!r}; known: {', '.join(UNIT_RULES)}") from None
    nll = torch.as_tensor(nats_per_example, dtype=torch.float64).reshape(-1)
    n = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if nll.shape != n.shape or nll.numel() == 0:
        raise ValueError(f"need one count per example, got {nll.numel()} values and {n.numel()} counts")
    total, count = float(nll.sum()), float(n.sum())
    n_examples = nll.numel()
    return Units(kind, rule, total / n_examples, rule.per_count(total, count), n_examples, int(count), bound)


@singledispatch
def example_counts(batch) -> Tensor:
    """(B,) what each example of ``batch`` holds: dimensions of a tensor's rows, tokens of a
    :class:`~vaelab.tokens.TokenBatch` (its lengths, ``<eos>`` included), samples of a
    :class:`~vaelab.waves.WaveBatch` (its lengths), code positions H*W of a
    :class:`~vaelab.codes.CodeBatch`. New batch types register."""
    raise TypeError(f"no example counts for a batch of type {type(batch).__name__}")


@example_counts.register
def _(batch: Tensor) -> Tensor:
    return torch.full((batch.shape[0],), batch[0].numel(), dtype=torch.int64)


@example_counts.register
def _(batch: TokenBatch) -> Tensor:
    return batch.lengths.cpu()


@example_counts.register
def _(batch: WaveBatch) -> Tensor:
    return batch.lengths.cpu()  # the real samples of each row, padding excluded


@example_counts.register
def _(batch: CodeBatch) -> Tensor:
    return torch.full((len(batch),), batch.codes[0].numel(), dtype=torch.int64)


@torch.no_grad()
def negative_elbo_per_example(model: nn.Module, batches: Iterable) -> tuple[Tensor, Tensor]:
    """(-ELBO (N,), counts (N,)) over ``batches``, model in eval mode: the per-example bound of
    ``model(batch).elbo`` (nats) and :func:`example_counts`."""
    was_training = model.training
    model.eval()
    nll, counts = [], []
    try:
        for batch in batches:
            out = model(batch)
            if out.elbo is None:
                raise ValueError(f"{type(model).__name__}.loss gives no per-example elbo")
            nll.append(-out.elbo.detach().double().cpu())
            counts.append(example_counts(batch))
    finally:
        model.train(was_training)
    return torch.cat(nll), torch.cat(counts)
