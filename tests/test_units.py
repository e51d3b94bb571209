"""Likelihood units per data kind, against values computed by hand."""

import math

import pytest
import torch

from vaelab.evaluation.units import example_counts, negative_elbo_per_example, units
from vaelab.tokens import Sequences


def test_images_bits_per_dim():
    u = units("images", torch.tensor([100.0, 200.0]), torch.tensor([784, 784]))
    # mean 150 nats over 784 dims: 150 / (784 ln 2) = 150 / 543.4273 = 0.2760258
    assert u.value == pytest.approx(0.2760258, abs=1e-6) and u.nats_per_example == 150.0
    assert u.as_dict()["bits_per_dim"] == u.value and u.as_dict()["nats_per_example"] == 150.0


def test_text_perplexity_is_per_token_over_the_corpus():
    # two sentences of 3 and 5 words, each with <eos>: 4 and 6 tokens, 10 nats and 20 nats
    u = units("tokens", torch.tensor([10.0, 20.0]), torch.tensor([4, 6]))
    # exp(30 / 10), not a mean of the sentences' own perplexities exp(2.5) and exp(3.33)
    assert u.value == pytest.approx(math.exp(3.0))
    assert u.value == pytest.approx(20.085537, abs=1e-6)
    d = u.as_dict()
    assert d["nats_per_sequence"] == 15.0 and d["perplexity_per_token"] == u.value
    assert d["counted"] == "10 tokens (words and <eos>) in 2 examples"
    assert "<eos>" in u.describe()


def test_codes_bits_per_code_and_bound_flag():
    u = units("codes", torch.tensor([8 * math.log(2), 16 * math.log(2)]), torch.tensor([4, 8]), bound=True)
    assert u.value == pytest.approx(2.0) and "upper bound" in u.describe()


def test_units_refuse_mismatched_counts_and_unknown_kinds():
    with pytest.raises(ValueError, match="one count per example"):
        units("tokens", torch.tensor([1.0, 2.0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="no units for data kind 'video'"):
        units("video", torch.tensor([1.0]), torch.tensor([1]))


def test_example_counts_of_each_batch_type():
    assert example_counts(torch.zeros(3, 1, 4, 5)).tolist() == [20, 20, 20]
    batch = Sequences.from_lists([[5, 6, 3], [7, 3]]).pad(torch.tensor([0, 1]), 0)
    assert example_counts(batch).tolist() == [3, 2]


def test_negative_elbo_per_example_with_counts():
    from vaelab.models import LossOutput

    class Fixed(torch.nn.Module):
        def forward(self, batch):
            elbo = -batch.lengths.double() * 2.0  # 2 nats per token
            return LossOutput(loss=-elbo.mean(), elbo=elbo)

    seqs = Sequences.from_lists([[5, 6, 3], [7, 3], [8, 8, 8, 3]])
    batches = [seqs.pad(torch.tensor([0, 1]), 0), seqs.pad(torch.tensor([2]), 0)]
    nll, counts = negative_elbo_per_example(Fixed(), batches)
    assert nll.tolist() == [6.0, 4.0, 8.0] and counts.tolist() == [3, 2, 4]
    assert units("tokens", nll, counts).value == pytest.approx(math.exp(2.0))
