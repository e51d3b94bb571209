"""A plain PyTorch reference of vaelab's CIFAR-10 VQ-VAE, trained for a fixed wall time, and one
evaluator that measures it and a vaelab run on the same yardstick.

The network is the one of ``configs/vqvae_cifar10.toml``, written here in plain PyTorch: two 4x4
stride-2 convolutions (64 and 128 channels), a 3x3 convolution, two residual blocks (ReLU, 3x3 conv to
32, ReLU, 1x1 conv back to 128) and a ReLU, a 1x1 convolution to D = 64; a codebook of K = 512
vectors updated by exponential moving averages (decay 0.99, Laplace-smoothed counts, as in the
paper's Appendix A.1; codebook drawn from N(0, 1)); the mirror-image decoder to a mean and a
log-scale per colour channel of a discretized logistic over the 256 levels (Salimans et al. 2017,
with the usual fallback to the density at the bin's centre when the bin's mass underflows). Loss per
image, averaged over the batch: -log p(x|z_q) + 0.25 ||z_e - sg[e]||^2 (sums over the image). Adam
with ``fused=True``, lr 3e-4, batches of 32, on the same 49,000 training images as the vaelab run
(vaelab's loader is used only to read the file and split it identically). What the reference leaves
out, as a plain loop would: k-means initialisation and dead-code restarts.

Evaluation (``evaluate``), applied to the reference and to a vaelab run's final checkpoint alike (its
weights are loaded into this module, whose layers are in the same order): on the 10,000 test images,
the bound with the uniform prior over codes, -log p(x|z_q) + 64 log 512 nats per image, in bits per
dimension (/ 3,072 ln 2); the mean squared error of the decoded mean of the logistic, clipped to
[0, 1] (pixels in [0, 1]); and the codebook's perplexity and usage over the test set and over one
pass of the training set (every code position counted, not per batch).

    python benchmarks/vq_reference.py train --minutes 60 --out /tmp/vq_ref.pt
    python benchmarks/vq_reference.py eval --reference /tmp/vq_ref.pt --run runs/vqvae_cifar10
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    def __init__(self, channels: int = 128, hidden: int = 32, blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden, channels, 1)) for _ in range(blocks))

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return F.relu(x)


class PlainVQVAE(nn.Module):
    def __init__(self, k: int = 512, d: int = 64, decay: float = 0.99, beta: float = 0.25):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 64, 4, 2, 1), nn.ReLU(), nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(128, 128, 3, padding=1), Residual(), nn.Conv2d(128, d, 1))
        self.decoder = nn.Sequential(
            nn.Conv2d(d, 128, 3, padding=1), Residual(), nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 6, 4, 2, 1))
        self.k, self.decay, self.beta = k, decay, beta
        self.register_buffer("codebook", torch.randn(k, d))
        self.register_buffer("counts", torch.ones(k))
        self.register_buffer("sums", self.codebook.clone())

    def codes(self, z_e):
        z = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
        d = (z * z).sum(1, keepdim=True) - 2 * z @ self.codebook.t() + (self.codebook ** 2).sum(1)
        return z, d.argmin(1)

    def forward(self, x):
        z_e = self.encoder(x)
        z, idx = self.codes(z_e)
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(idx, self.k).type_as(z)
                self.counts.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.sums.mul_(self.decay).add_(onehot.t() @ z, alpha=1 - self.decay)
                n = self.counts.sum()
                smoothed = (self.counts + 1e-5) / (n + self.k * 1e-5) * n
                self.codebook.copy_(self.sums / smoothed[:, None])
        e = self.codebook[idx].view(z_e.shape[0], z_e.shape[2], z_e.shape[3], -1).permute(0, 3, 1, 2)
        commitment = ((z_e - e.detach()) ** 2).flatten(1).sum(1)
        z_q = z_e + (e - z_e).detach()
        out = self.decoder(z_q)
        return out, commitment, idx


def log_prob(out, x, min_log_scale: float = -9.0):
    """log p(x) per image of the discretized logistic: out (B, 6, H, W) -> (B,)."""
    loc, raw = out[:, :3], out[:, 3:]
    log_s = min_log_scale + F.softplus(raw - min_log_scale)
    inv_s = torch.exp(-log_s)
    c = x - loc
    plus, minus = inv_s * (c + 0.5 / 255), inv_s * (c - 0.5 / 255)
    log_cdf_plus = plus - F.softplus(plus)           # log sigmoid(plus): the x = 0 bin
    log_sf_minus = -F.softplus(minus)                # log (1 - sigmoid(minus)): the x = 1 bin
    mass = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = inv_s * c
    log_pdf_mid = mid - log_s - 2 * F.softplus(mid) - math.log(127.5)
    inner = torch.where(mass > 1e-5, torch.log(mass.clamp_min(1e-12)), log_pdf_mid)
    lp = torch.where(x < 0.001, log_cdf_plus, torch.where(x > 0.999, log_sf_minus, inner))
    return lp.flatten(1).sum(1)


def logistic_mean(out, min_log_scale: float = -9.0, levels: int = 256):
    """E[x] under the discretized logistic: sum over the 256 levels of level * mass, in chunks."""
    loc, raw = out[:, :3], out[:, 3:]
    s = torch.exp(min_log_scale + F.softplus(raw - min_log_scale))
    edges = (torch.arange(1, levels, dtype=out.dtype) - 0.5) / (levels - 1)  # the 255 inner edges
    cdf = torch.sigmoid((edges.view(-1, 1, 1, 1, 1) - loc) / s)  # (255, B, 3, H, W)
    zero = torch.zeros_like(cdf[:1])
    one = torch.ones_like(cdf[:1])
    cdf = torch.cat([zero, cdf, one])
    mass = cdf[1:] - cdf[:-1]
    values = torch.arange(levels, dtype=out.dtype).view(-1, 1, 1, 1, 1) / (levels - 1)
    return (mass * values).sum(0)


def load_cifar():
    from vaelab.config import DataConfig
    from vaelab.data import load_dataset
    b = load_dataset(DataConfig(name="cifar10", binarize="none", valid_size=1000))
    return b.train, b.test


def train(args) -> int:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_x, _ = load_cifar()
    model = PlainVQVAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, fused=True)
    g = torch.Generator().manual_seed(args.seed)
    step, start, log = 0, time.perf_counter(), []
    limit = args.minutes * 60
    done = False
    while not done:
        perm = torch.randperm(len(train_x), generator=g)
        for i in range(0, len(perm) - args.batch_size + 1, args.batch_size):
            x = train_x[perm[i:i + args.batch_size]]
            out, commitment, _ = model(x)
            loss = (-log_prob(out, x) + model.beta * commitment).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 500 == 0:
                el = time.perf_counter() - start
                log.append({"step": step, "time": el, "loss": loss.item()})
                print(f"step {step} {el:.0f}s loss {loss.item():.1f}", flush=True)
            if time.perf_counter() - start >= limit or (args.steps and step >= args.steps):
                done = True
                break
    elapsed = time.perf_counter() - start
    tmp = Path(str(args.out) + ".tmp")
    torch.save({"state": model.state_dict(), "steps": step, "seconds": elapsed, "log": log}, tmp)
    tmp.replace(args.out)
    print(json.dumps({"steps": step, "seconds": round(elapsed, 1),
                      "images_per_s": step * args.batch_size / elapsed}))
    return 0


def from_vaelab_run(run: Path) -> tuple[PlainVQVAE, dict]:
    """The reference module with a vaelab VQ-VAE run's final weights (layers in the same order)."""
    from vaelab.experiment import load_run_model
    model, cfg = load_run_model(run, torch.device("cpu"), which="latest")[:2]
    plain = PlainVQVAE(k=cfg.model.codebook_size, d=cfg.model.code_dim)
    src = [(k, v) for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))]
    dst = [k for k in plain.state_dict() if k.startswith(("encoder.", "decoder."))]
    assert len(src) == len(dst), (len(src), len(dst))
    state = plain.state_dict()
    for (_, v), k in zip(src, dst, strict=True):
        assert state[k].shape == v.shape, (k, state[k].shape, v.shape)
        state[k] = v
    state["codebook"] = model.quantizer.codebook.detach().clone()
    plain.load_state_dict(state)
    return plain, {"run": str(run)}


@torch.no_grad()
def evaluate(model: PlainVQVAE, x_test, x_train, batch: int = 250) -> dict:
    model.eval()
    nll, sq, counts = 0.0, 0.0, torch.zeros(model.k)
    for i in range(0, len(x_test), batch):
        x = x_test[i:i + batch]
        out, _, idx = model(x)
        nll -= log_prob(out, x).double().sum().item()
        sq += ((logistic_mean(out).clamp(0, 1) - x) ** 2).double().sum().item()
        counts += torch.bincount(idx, minlength=model.k).float()
    n, dims = len(x_test), x_test[0].numel()
    positions = out.shape[-1] // 4 * out.shape[-2] // 4
    kl = positions * math.log(model.k)
    train_counts = torch.zeros(model.k)
    for i in range(0, len(x_train), batch):
        z, idx = model.codes(model.encoder(x_train[i:i + batch]))
        train_counts += torch.bincount(idx, minlength=model.k).float()

    def usage(c):
        p = c / c.sum()
        return {"perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())),
                "usage": float((c > 0).float().mean())}

    return {"test_bits_per_dim": (nll / n + kl) / (dims * math.log(2)),
            "test_nll_nats_x|z": nll / n, "test_mse": sq / (n * dims),
            "test_codes": usage(counts), "train_epoch_codes": usage(train_counts)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    t = sub.add_parser("train")
    t.add_argument("--minutes", type=float, default=60)
    t.add_argument("--steps", type=int, default=0, help="stop after this many steps too (0: time only)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("eval")
    e.add_argument("--reference", type=Path, action="append", default=[])
    e.add_argument("--run", type=Path, action="append", default=[])
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images (0: all)")
    args = p.parse_args(argv)
    if args.action == "train":
        return train(args)
    torch.set_num_threads(args.threads)
    train_x, test_x = load_cifar()
    if args.limit:
        test_x, train_x = test_x[:args.limit], train_x[:args.limit]
    for path in args.reference:
        ck = torch.load(path, weights_only=True)
        m = PlainVQVAE()
        m.load_state_dict(ck["state"])
        print(json.dumps({"reference": str(path), "steps": ck["steps"], "seconds": round(ck["seconds"]),
                          **evaluate(m, test_x, train_x)}), flush=True)
    for run in args.run:
        m, info = from_vaelab_run(run)
        print(json.dumps({**info, **evaluate(m, test_x, train_x)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
