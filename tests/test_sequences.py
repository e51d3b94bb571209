"""Token sequences and their batching: padding, masks, lengths, bucketing, resume, data-parallel shards."""

from __future__ import annotations

import pytest
import torch

from vaelab.tokens import Sequences, TokenBatch
from vaelab.train.sequences import SequenceBatches

PAD = 0


def corpus(n: int = 403, seed: int = 0, max_len: int = 40) -> Sequences:
    """n sequences of lengths 1..max_len whose first id is their own index + 1 (so every batch row
    says which sequence it is) and whose other ids are random."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    seqs = [[i + 1, *torch.randint(1, 50, (int(k) - 1,), generator=g).tolist()]
            for i, k in enumerate(lengths)]
    return Sequences.from_lists(seqs)


def ids(batch: TokenBatch) -> list[int]:
    return (batch.tokens[:, 0] - 1).tolist()


def test_padding_mask_and_lengths_hold_the_sequences():
    seqs = Sequences.from_lists([[5, 6, 7], [8], [9, 10]])
    batch = seqs.pad(torch.tensor([2, 0, 1]), pad_id=PAD)
    assert batch.tokens.tolist() == [[9, 10, 0], [5, 6, 7], [8, 0, 0]]
    assert batch.lengths.tolist() == [2, 3, 1]
    assert batch.mask.tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert batch.tokens.dtype == torch.int64 and batch.mask.dtype == torch.bool and len(batch) == 3


def test_every_batch_reproduces_its_sequences_exactly():
    seqs = corpus()
    for batch in SequenceBatches(seqs, 32, pad_id=PAD, seed=3).epoch(1):
        assert batch.tokens.shape[1] == int(batch.lengths.max())
        assert torch.equal(batch.mask, torch.arange(batch.tokens.shape[1]) < batch.lengths[:, None])
        assert bool((batch.tokens[~batch.mask] == PAD).all())
        for row, i in enumerate(ids(batch)):
            assert batch.tokens[row, : batch.lengths[row]].tolist() == seqs[i].tolist()


def test_every_sequence_once_per_epoch_and_epochs_differ():
    seqs = corpus()
    batches = SequenceBatches(seqs, 32, pad_id=PAD, seed=1)
    seen = [sorted(i for b in batches.epoch(e) for i in ids(b)) for e in range(2)]
    assert seen[0] == seen[1] == list(range(len(seqs)))
    assert len(batches) == 13 == len(list(batches.epoch(0)))
    first = [ids(b) for b in batches.epoch(0)]
    assert first != [ids(b) for b in batches.epoch(1)]


def test_bucketing_reduces_padding_against_random_batches():
    seqs = corpus(n=2000)
    bucketed = SequenceBatches(seqs, 32, pad_id=PAD, bucket_batches=20).padding_fraction(0)
    random = SequenceBatches(seqs, 32, pad_id=PAD, bucket_batches=0).padding_fraction(0)
    # lengths uniform on 1..40: random batches of 32 pad to about the maximum, ~50% padding;
    # sorted chunks of 640 leave batches whose lengths span about 40 / 20 = 2
    assert random > 0.4 and bucketed < 0.1


def test_resume_from_batch_k_reproduces_the_rest_of_the_epoch():
    seqs = corpus()
    full = [b.tokens for b in SequenceBatches(seqs, 32, pad_id=PAD, seed=7).epoch(2)]
    for k in (0, 1, 5, 12):
        fresh = SequenceBatches(seqs, 32, pad_id=PAD, seed=7)  # as a resumed process builds it
        rest = [b.tokens for b in fresh.epoch(2, k)]
        assert len(rest) == len(full) - k and all(torch.equal(a, b) for a, b in zip(rest, full[k:]))
    other_seed = [b.tokens for b in SequenceBatches(seqs, 32, pad_id=PAD, seed=8).epoch(2)]
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(other_seed, full))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_equal_and_cover_the_epoch(world):
    seqs = corpus(n=402)
    shards = [SequenceBatches(seqs, 16, pad_id=PAD, seed=5, rank=r, world=world) for r in range(world)]
    for epoch in (0, 1):
        seen = [[i for b in s.epoch(epoch) for i in ids(b)] for s in shards]
        assert len({len(s) for s in shards}) == 1  # the same number of steps on every rank
        assert all(len(x) == 402 // world for x in seen)
        flat = [i for x in seen for i in x]
        assert len(set(flat)) == len(flat) == 402  # disjoint, and together every sequence once
    # resuming one rank mid-epoch gives that rank's own remaining batches
    rank1 = [ids(b) for b in shards[1].epoch(1)]
    again = SequenceBatches(seqs, 16, pad_id=PAD, seed=5, rank=1, world=world)
    assert [ids(b) for b in again.epoch(1, 3)] == rank1[3:]


def test_drop_last_and_no_shuffle():
    seqs = corpus(n=100)
    dropped = SequenceBatches(seqs, 32, pad_id=PAD, drop_last=True)
    assert len(dropped) == 3 and all(len(b) == 32 for b in dropped.epoch(0))
    fixed = SequenceBatches(seqs, 32, pad_id=PAD, shuffle=False, bucket_batches=0)
    assert [i for b in fixed.epoch(0) for i in ids(b)] == list(range(100))
    assert [ids(b) for b in fixed.epoch(0)] == [ids(b) for b in fixed.epoch(4)]


def test_too_few_sequences_for_the_processes_is_one_line():
    from vaelab.errors import VaelabError

    with pytest.raises(VaelabError, match="3 sequences cannot be shared among 4 processes; use fewer"):
        SequenceBatches(corpus(n=3), 2, pad_id=PAD, rank=0, world=4)


def test_batch_to_device_keeps_fields():
    batch = Sequences.from_lists([[1, 2], [3]]).pad(torch.tensor([0, 1]), PAD)
    moved = batch.to("cpu")
    assert isinstance(moved, TokenBatch) and torch.equal(moved.tokens, batch.tokens)
    assert torch.equal(moved.mask, batch.mask) and torch.equal(moved.lengths, batch.lengths)


def test_token_batch_split_trims_each_piece_to_its_longest():
    batch = Sequences.from_lists([[5, 6, 7], [8], [9, 10], [11]]).pad(torch.arange(4), PAD)
    pieces = batch.split(2)
    assert [p.tokens.tolist() for p in pieces] == [[[5, 6, 7], [8, 0, 0]], [[9, 10], [11, 0]]]
    assert [p.lengths.tolist() for p in pieces] == [[3, 1], [2, 1]]
    assert torch.equal(pieces[1].mask, torch.tensor([[True, True], [True, False]]))


def test_importance_sampled_likelihood_takes_token_batches():
    """IS log p(x) over TokenBatches: with weights p(x, z) / q(z|x) = exp(-3 * length) whatever z,
    log p(x) is exactly -3 * length for every sequence, in order, however the batches are cut."""
    from types import SimpleNamespace

    from vaelab.evaluation.likelihood import importance_sampled_log_likelihood

    class Exact(torch.nn.Module):
        spec = SimpleNamespace(n_dims=40)

        def log_importance_weights(self, x: TokenBatch, s: int) -> torch.Tensor:
            return (-3.0 * x.lengths.double()).expand(s, len(x))

    seqs = corpus(n=50)
    batches = SequenceBatches(seqs, 16, pad_id=PAD, shuffle=False).epoch(0)
    lengths = torch.cat([b.lengths for b in SequenceBatches(seqs, 16, pad_id=PAD, shuffle=False).epoch(0)])
    result = importance_sampled_log_likelihood(Exact(), batches, k=300, max_elements=40 * 300 * 4)
    assert torch.allclose(result.log_px, -3.0 * lengths.double()) and result.log_px.numel() == 50


def test_training_on_sequences_resumes_mid_epoch_exactly(tmp_path):
    """The trainer over SequenceBatches: stopped at step 7 (mid-epoch), resumed from its checkpoint,
    it ends with the weights of an uninterrupted run, bit for bit."""
    from torch import nn

    from vaelab.config import TrainConfig
    from vaelab.models import LossOutput, Model, ModelConfig
    from vaelab.spec import DataSpec
    from vaelab.train.callbacks import Callback, Checkpointer
    from vaelab.train.loop import Trainer

    class BagOfWords(Model):  # z ~ q(z|x) = N(mean embedding, 1); p(x_t|z) = softmax(W z)
        data_kinds = frozenset({"tokens"})

        def __init__(self, config, spec):
            super().__init__(config, spec)
            self.embed = nn.Embedding(200, 4, padding_idx=PAD)
            self.out = nn.Linear(4, 200)

        def loss(self, batch):
            h = (self.embed(batch.tokens) * batch.mask[..., None]).sum(1) / batch.lengths[:, None]
            z = h + torch.randn_like(h)
            rec = (self.out(z).log_softmax(-1).gather(1, batch.tokens) * batch.mask).sum(1)
            return LossOutput(loss=-rec.mean(), elbo=rec)

        def report_sections(self, inputs):
            return []

    seqs = corpus(n=150, max_len=12)

    def trainer(run_dir, callbacks):
        torch.manual_seed(0)
        model = BagOfWords(ModelConfig(), DataSpec((12,), "tokens"))
        cfg = TrainConfig(epochs=2, batch_size=16, log_every=3, seed=4)
        batches = SequenceBatches(seqs, cfg.batch_size, pad_id=PAD, seed=cfg.seed)
        return Trainer(model, cfg, batches, None, run_dir=run_dir, callbacks=callbacks)

    class StopAt(Callback):
        def on_step_end(self, t):
            if t.step == 7:
                t.stop_reason = "interrupted"

    full = trainer(tmp_path / "full", [Checkpointer(5)])
    full.fit()
    part = trainer(tmp_path / "part", [Checkpointer(5), StopAt()])
    part.fit()
    assert part.step == 7
    resumed = trainer(tmp_path / "part", [Checkpointer(5)])
    resumed.fit(resume=tmp_path / "part")
    assert resumed.step == full.step == 20  # 10 batches per epoch
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
