"""Training throughput of vaelab's sentence VAE against the plain PyTorch loop of the same model, in
tokens per second, and where a step's time goes.

Both contenders train the same network on the Penn Treebank training split with the same batches:
an embedding (256) and a one-layer LSTM (256) encoding each sentence to a diagonal Gaussian over 32
latent dimensions (from the last state at each sentence's own end, packed sequences); z gives the
initial state (h_0, c_0) of a one-layer LSTM decoder (256) through one linear map; word dropout 0.25
on the decoder inputs; a 10,000-word softmax; -ELBO per sentence (summed over the real tokens and
<eos>), batch mean, with the full KL (no annealing: both would pay the same); Adam(fused=True),
lr 1e-3, gradient norm clipped at 5; float32.

  vaelab  ``vaelab.train.Trainer`` + ``SentenceVAE`` + ``SequenceBatches`` (length-bucketed batches
          of 32 sentences): what ``vaelab train configs/sentence_vae_ptb.toml`` runs.
  plain   the loop a PyTorch expert writes: ``nn.Embedding``, ``nn.LSTM`` with
          ``pack_padded_sequence`` in the encoder, ``F.cross_entropy(..., ignore_index=pad)`` over the
          padded (B*T, V) logits, the analytic KL, ``clip_grad_norm_``, ``Adam(fused=True)``; it reads
          the same padded batches as tensors (taken from one epoch of the same bucketed batcher, so the
          work per step is identical).

Timing: the two advance in turns of ``--slice`` steps in one process, rotating who goes first, so
load from other processes hits both alike; tokens/s counts each sentence's words and <eos>; the
speed-up is the median over turns of vaelab's rate over plain's in the same turn. Where the time goes:
``torch.profiler`` over ``--profile-steps`` vaelab steps, self CPU time grouped by operator family
(LSTM forward/backward, the softmax and its loss, embeddings, the optimizer, the output layer's
matmuls, the rest), each operator counted under the first family found along its call chain from
the top (so the matmuls an LSTM runs count as LSTM).

Run: ``python benchmarks/bench_text.py --threads 2`` (about 10 minutes), writes
``benchmarks/results/text_<threads>threads.md``.

``--against fp32``: instead, vaelab with ``train.precision = "bf16"`` (the LSTMs and linear maps under
bf16 autocast, the softmax and losses in float32) against vaelab in float32, the same weights and
batches, interleaved the same way; writes ``text_bf16_<threads>threads.md``. bf16 pays on CPUs with
AVX512-BF16 or AMX.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from vaelab.config import DataConfig, TrainConfig
from vaelab.data import load_dataset
from vaelab.models import build_model
from vaelab.models.sentence_vae import SentenceVAEConfig
from vaelab.train.loop import Trainer
from vaelab.train.sequences import SequenceBatches

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks/interleave.py
from interleave import interleave, speed_lines  # noqa: E402

E, H, Z, P_DROP, BATCH = 256, 256, 32, 0.25, 32


class PlainSentenceVAE(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.enc_emb = nn.Embedding(vocab, E)
        self.enc = nn.LSTM(E, H, batch_first=True)
        self.to_q = nn.Linear(H, 2 * Z)
        self.dec_emb = nn.Embedding(vocab, E)
        self.dec = nn.LSTM(E, H, batch_first=True)
        self.init = nn.Linear(Z, 2 * H)
        self.out = nn.Linear(H, vocab)


def copy_weights(plain: PlainSentenceVAE, model) -> None:
    """The vaelab model's initial weights into the plain one (same shapes, same start)."""
    pairs = [(plain.enc_emb, model.enc_embedding), (plain.enc, model.enc_lstm),
             (plain.to_q, model.to_posterior), (plain.dec_emb, model.decoder.embedding),
             (plain.dec, model.decoder.lstm),
             (plain.init, model.decoder.init_state), (plain.out, model.decoder.out)]
    with torch.no_grad():
        for a, b in pairs:
            for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
                pa.copy_(pb)


def train_vaelab(model, batches: SequenceBatches, steps: int, slice_steps: int, precision: str = "fp32"):
    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-3, grad_clip=5.0, optimizer="adam", log_every=10**9,
                      precision=precision)
    trainer = Trainer(model, cfg, batches)
    total = min(steps, trainer.total_steps)
    while trainer.step < total:
        before = trainer.step
        trainer.total_steps = min(total, before + slice_steps)
        trainer.fit()
        yield trainer.step - before


def train_plain(net: PlainSentenceVAE, batches: list, ids: dict, slice_steps: int):
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    pad, unk, bos = ids["pad_id"], ids["unk_id"], ids["bos_id"]
    for done, (tokens, lengths) in enumerate(batches, 1):
        b = tokens.shape[0]
        e = net.enc_emb(tokens)
        _, (h, _) = net.enc(pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False))
        mu, logvar = net.to_q(h[-1]).chunk(2, -1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        inputs = torch.cat([torch.full_like(tokens[:, :1], bos), tokens[:, :-1]], 1)
        real = tokens != pad
        real[:, 0] = False
        inputs = inputs.masked_fill((torch.rand(inputs.shape) < P_DROP) & real, unk)
        h0, c0 = net.init(z).chunk(2, -1)
        out, _ = net.dec(net.dec_emb(inputs), (h0[None].contiguous(), c0[None].contiguous()))
        logits = net.out(out)
        rec = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1), ignore_index=pad,
                              reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.square() - logvar.exp())
        loss = (rec + kl) / b
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        if done % slice_steps == 0:
            yield slice_steps


CATEGORIES = [
    ("LSTM", ("lstm", "rnn", "_thnn_fused", "mkldnn_rnn")),
    ("softmax + loss", ("softmax", "nll_loss", "cross_entropy", "logsumexp")),
    ("embedding", ("embedding",)),
    ("optimizer", ("adam", "_foreach", "clip", "norm")),
    ("matmul (output layer, linear maps)", ("addmm", "::mm", "linear", "matmul", "bmm")),
]


def profile_breakdown(model, batches, steps: int, precision: str = "fp32") -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    cfg = TrainConfig(epochs=1, batch_size=BATCH, lr=1e-3, grad_clip=5.0, optimizer="adam", log_every=10**9,
                      precision=precision)
    trainer = Trainer(model, cfg, batches)
    trainer.total_steps = 5
    trainer.fit()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.total_steps = 5 + steps
        trainer.fit()
    # each operator's self time goes to the first category matched along its call chain from the top
    # (the matmuls inside an LSTM count as LSTM; the backward of a node counts as its forward's family)
    totals: dict[str, float] = {}
    for ev in prof.events():
        chain, node = [], ev
        while node is not None:
            chain.append(node.name.lower())
            node = node.cpu_parent
        chain.reverse()
        cat = next((c for c, keys in CATEGORIES for name in chain if any(k in name for k in keys)), "other")
        totals[cat] = totals.get(cat, 0.0) + ev.self_cpu_time_total
    all_us = sum(totals.values())
    return sorted(((c, 100 * t / all_us) for c, t in totals.items()), key=lambda x: -x[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600, help="training steps per contender")
    ap.add_argument("--slice", type=int, default=20, help="steps per turn")
    ap.add_argument("--profile-steps", type=int, default=40)
    ap.add_argument("--against", choices=["plain", "fp32"], default="plain",
                    help="plain: the plain PyTorch loop; fp32: vaelab bf16 against vaelab float32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_dataset(DataConfig(name="ptb"))
    spec, ids = bundle.spec, bundle.spec.extra
    torch.manual_seed(0)
    model = build_model(SentenceVAEConfig(embedding_dim=E, hidden_size=H, latent_dim=Z, word_dropout=P_DROP,
                                          kl_schedule="none"), spec)
    plain = PlainSentenceVAE(spec.vocab_size)
    copy_weights(plain, model)
    batches = SequenceBatches(bundle.train, BATCH, pad_id=ids["pad_id"], seed=0)
    # the plain loop's batches: the same bucketed epoch, as padded tensors and CPU lengths
    plain_batches = [(b.tokens, b.lengths.cpu()) for _, b in zip(range(args.steps), batches.epoch(0))]
    tokens_per_step = [int(lens.sum()) for _, lens in plain_batches]
    if args.against == "plain":
        runs = {"vaelab": train_vaelab(model, batches, args.steps, args.slice),
                "plain": train_plain(plain, plain_batches, ids, args.slice)}
    else:
        batches_fp32 = SequenceBatches(bundle.train, BATCH, pad_id=ids["pad_id"], seed=0)
        runs = {"vaelab": train_vaelab(model, batches, args.steps, args.slice, "bf16"),
                "plain": train_vaelab(copy.deepcopy(model), batches_fp32, args.steps, args.slice)}
    pos = {"vaelab": 0, "plain": 0}

    def tokens(name: str, n: int) -> int:  # the tokens of each contender's next n steps
        pos[name] += n
        return sum(tokens_per_step[pos[name] - n : pos[name]])

    rates, ratios = interleave(runs, tokens)
    med = {k: statistics.median(v[1:]) for k, v in rates.items()}
    bf16 = args.against == "fp32"
    breakdown = profile_breakdown(model, batches, args.profile_steps, "bf16" if bf16 else "fp32")
    names = {"vaelab": "vaelab, train.precision = bf16", "plain": "vaelab, float32"} if bf16 else {}
    ratio_lines = speed_lines(ratios, breakdown, args.profile_steps)
    if bf16:
        ratio_lines[0] = ratio_lines[0].replace("vaelab / plain", "bf16 / float32")
    lines = [
        f"# Sentence VAE training throughput{', bf16 against float32' if bf16 else ''} "
        f"({args.threads} threads)",
        "",
        f"`python benchmarks/bench_text.py --threads {args.threads} --steps {args.steps}"
        f"{' --against fp32' if bf16 else ''}` · "
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} · load average at the end "
        f"{os.getloadavg()[0]:.1f}",
        "",
        f"PTB, batch {BATCH}, embedding {E}, LSTM {H}, latent {Z}, word dropout {P_DROP}, fused Adam; "
        f"{len(ratios)} interleaved turns of {args.slice} steps.",
        "",
        "| contender | median tokens/s |",
        "|---|---|",
        *(f"| {names.get(k, k)} | {v:,.0f} |" for k, v in med.items()),
        "",
        *ratio_lines,
    ]
    text = "\n".join(lines)
    print(text)
    stem = "text_bf16" if bf16 else "text"
    out = Path(args.out or Path(__file__).parent / "results" / f"{stem}_{args.threads}threads.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
