"""The extension point works: a separate package adds a family of another data kind (token
sequences with padding) through the ``vaelab.models`` entry point, and ``vaelab train``, ``eval``
and ``report`` run it as they run vaelab's own families, with nothing in vaelab naming it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_plugins import write_distribution

SRC = Path(__file__).resolve().parents[1] / "src"

TOYSEQ = '''
"""toyseq: a bag-of-words VAE over padded token sequences (a vaelab plugin, for tests).

q(z|x) = N(mu, sigma^2) from the mean embedding of the tokens; p(x|z) = prod_t Cat(x_t; softmax(W z + b))
over the real tokens (mask), <eos> included; ELBO = E_q[log p(x|z)] - KL(q || N(0, I)).
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from vaelab.models import LossOutput, Model, ModelConfig
from vaelab.sections import TableSection, TextSection


@dataclass
class ToySeqConfig(ModelConfig):
    latent_dim: int = 3
    embed: int = 8


class ToySeq(Model):
    Config = ToySeqConfig
    data_kinds = frozenset({"tokens"})

    def __init__(self, config, spec):
        super().__init__(config, spec)
        self.embed = nn.Embedding(spec.vocab_size, config.embed, padding_idx=spec.extra["pad_id"])
        self.to_q = nn.Linear(config.embed, 2 * config.latent_dim)
        self.to_logits = nn.Linear(config.latent_dim, spec.vocab_size)

    def loss(self, batch):
        mask = batch.mask
        h = (self.embed(batch.tokens) * mask[..., None]).sum(1) / batch.lengths[:, None]
        mu, logvar = self.to_q(h).chunk(2, -1)
        q = Normal(mu, (0.5 * logvar).exp())
        z = q.rsample() if self.training else mu
        logp = self.to_logits(z).log_softmax(-1)  # (B, V)
        rec = (logp.gather(1, batch.tokens) * mask).sum(1)
        kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
        elbo = rec - kl
        return LossOutput(loss=-elbo.mean(), elbo=elbo, reconstruction=rec, kl=kl)

    @torch.no_grad()
    def report_sections(self, inputs):
        vocab = self.spec.extra["vocab"]
        z = torch.randn(5, self.config.latent_dim, device=self.embed.weight.device)
        words = torch.multinomial(self.to_logits(z).softmax(-1), 6, replacement=True)
        texts = [" ".join(vocab[int(i)] for i in row) for row in words]
        top = self.to_logits.bias.topk(3).indices.tolist()
        return [
            TextSection(name="toyseq_samples", title="Toy bag-of-words samples", texts=texts),
            TableSection(name="toyseq_words", title="Toy most likely words", header=["word"],
                         rows=[[vocab[i]] for i in top]),
        ]
'''

CONFIG = """
name = "toy"
[model]
name = "toyseq"
latent_dim = 3
[data]
name = "text:{corpus}"
[train]
epochs = 8
batch_size = 8
lr = 0.05
[eval]
batch_size = 16
"""


def vaelab(args: list[str], env: dict, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "vaelab", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"vaelab {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def toy(tmp_path) -> tuple[dict, list[str]]:
    """The toyseq package installed by hand into tmp_path/site, a text corpus in tmp_path/corpus and
    the run config tmp_path/toy.toml; returns the environment of the subprocesses and the lines."""
    site = tmp_path / "site"
    write_distribution(site, "toyseq", {"vaelab.models": {"toyseq": "toyseq:ToySeq"}},
                       {"toyseq/__init__.py": TOYSEQ})
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    animals, verbs = ["cat", "dog", "bird", "fish"], ["runs", "sleeps", "eats", "sings", "sits"]
    lines = [f"the {animals[i % 4]} {verbs[i % 5]}" + " fast" * (i % 3) for i in range(60)]
    (corpus / "train.txt").write_text("\n".join(lines[:48]) + "\n")
    (corpus / "test.txt").write_text("\n".join(lines[48:]) + "\n")
    (tmp_path / "toy.toml").write_text(CONFIG.format(corpus=corpus))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC)]), "VAELAB_DATA": str(tmp_path)}
    return env, lines


def test_a_plugin_family_on_token_sequences_trains_evaluates_and_reports(tmp_path, toy):
    env, lines = toy
    run = tmp_path / "runs" / "toy"

    vaelab(["train", "toy.toml", "--out", str(run), "--no-eval", "--device", "cpu", "--quiet"], env, tmp_path)
    out = vaelab(["eval", str(run), "--device", "cpu", "--quiet"], env, tmp_path)
    report = vaelab(["report", str(run)], env, tmp_path)

    result = json.loads((run / "eval.json").read_text())
    n_tokens = sum(len(line.split()) + 1 for line in lines[48:])  # words and <eos>
    assert result["counted"] == f"{n_tokens} tokens (words and <eos>) in 12 examples"
    # perplexity per token from the per-sequence nats: exp(sum nats / sum tokens)
    expected = math.exp(result["nats_per_sequence"] * 12 / n_tokens)
    assert abs(result["perplexity_per_token"] - expected) < 1e-6 * expected
    # 15 ids: guessing uniformly gives 15; the training split's unigram frequencies give 9.1 here
    assert 1 < result["perplexity_per_token"] < 11
    # no bits/dim or dimensions for token sequences (n_dims would be the longest sentence)
    assert "bits_per_dim" not in result and "n_dims" not in result
    assert "perplexity per token" in out and "<eos>" in out
    page = (run / "report.html").read_text()
    assert "report:" in report
    assert "Toy bag-of-words samples" in page and "Toy most likely words" in page
    assert "perplexity_per_token" in page

    # nothing below the CLI that runs it names the family
    for folder in ("experiment.py", "evaluation", "report"):
        path = SRC / "vaelab" / folder
        files = [path] if path.is_file() else sorted(path.rglob("*.py"))
        assert all("toyseq" not in f.read_text() for f in files)


def test_the_plugin_family_trains_data_parallel(tmp_path, toy):
    """Two processes (torchrun, gloo): each rank takes its own shard of the bucketed sequences."""
    env, _ = toy
    run = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547"]
    args = ["train", "toy.toml", "--out", str(run), "--quiet", "--no-eval", "--device", "cpu"]
    done = subprocess.run([*torchrun, "-m", "vaelab.cli", *args, "--set", "train.threads=1"],
                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[:6000] + "\n...\n" + done.stderr[-1500:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # 43 training sentences (48 less a validation set of 5): 21 per rank, 3 batches of 8, 8 epochs
    assert rows[-1]["step"] == 24 and rows[-1]["epoch"] == 8.0 and "finished" in done.stdout
