"""vaelab's CIFAR-10 VQ-VAE measured three ways: training speed against a plain PyTorch loop, quality of
its quantizer's options and of a peer library's quantizer at equal steps, and the PixelCNN prior's
sampling speed.

The model is the one of ``configs/vqvae_cifar10.toml`` (K = 512 codes of D = 64, hidden 128, two
residual blocks of 32, EMA quantizer with decay 0.99, k-means initialisation and dead-code restarts,
discretized logistic likelihood, batches of 32, Adam 3e-4), on the preset's 49,000 training images.

``speed``: the two contenders train on the same batches (the same seeded shuffle of the training set,
each drawing its batches with the same ``TensorBatches``):

  vaelab  ``vaelab.train.Trainer`` (fused Adam) + ``VQVAE`` built from the preset's model config: what
          ``vaelab train configs/vqvae_cifar10.toml`` runs (without validation and checkpoints).
  plain   ``PlainVQVAE`` of benchmarks/vq_reference.py (the same network; EMA codebook, no k-means, no
          restarts) with its ``log_prob`` and ``Adam(fused=True)``, in the loop a PyTorch user writes;
          its weights start as the vaelab model's.

They advance in turns of ``--slice`` steps in one process, rotating who goes first; images/s per turn;
the speed-up is the median over turns (the first, with vaelab's k-means initialisation, left out) of
vaelab's rate over plain's in the same turn, with quartiles. Where a vaelab step's time goes:
``torch.profiler`` over ``--profile-steps`` steps, self CPU time grouped into convolutions, quantizer,
likelihood, optimizer and the rest. An operator counts under the first part found along its call
chain from the top: the quantizer's and the likelihood's forward calls are wrapped in
``record_function`` scopes for this (vaelab itself is unchanged), convolutions are recognised by name,
and a backward operator counts under the part of the forward operator that made it (matched by the
autograd sequence number).

``peers``: the same autoencoder trained ``--steps`` steps from the same initial weights, the same seed
and the same batches, with

  a  vaelab VectorQuantizerEMA, k-means init + restarts (the preset)
  b  restarts off (restart_after = 0)
  c  k-means off (kmeans_iters = 0: the N(0, 1) codebook)
  d  both off
  e  vector-quantize-pytorch ``VectorQuantize`` (EMA, decay 0.99, kmeans_init, threshold_ema_dead_code
     ``--peer-dead-code``, commitment weight 0.25, straight-through gradient: rotation trick off unless
     ``--peer-rotation-trick``) through
     the adapter of benchmarks/vq_peer.py.
  f  the preset with rare codes re-seeded too (restart_below = ``--peer-dead-code``: a code whose
     moving-average use falls below that many vectors a step, the peer's rule)

Each is then measured with ``vq_reference.evaluate`` on the 10,000 test images (its weights copied into
``PlainVQVAE``): codebook usage and perplexity over every code position of the test set, MSE of the
decoded mean (clipped to [0, 1]), bits/dim with the uniform prior over codes; and the training wall
time (the runs go one after the other, so other load on the machine shifts the times).

``sampling``: codes per second of the class-conditional gated PixelCNN prior of
``configs/pixelcnn_prior_cifar10.toml`` (64 channels, 12 layers, 8x8 maps of K = 512 codes), untrained,
drawing whole maps (``PixelCNNPrior.sample``, 64 network passes a map) in batches of 1, 16 and 64, the
batch sizes taken in rotating order ``--reps`` times; median.

Run (each writes ``benchmarks/results/vqvae_<part>_<threads>threads.md`` unless ``--out``):
    python benchmarks/bench_vqvae.py speed --threads 2 --steps 600
    python benchmarks/bench_vqvae.py peers --threads 2 --steps 3000
    python benchmarks/bench_vqvae.py sampling --threads 2
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from interleave import interleave, quartiles, speed_lines  # noqa: E402
from vaelab.config import TrainConfig, load_config  # noqa: E402
from vaelab.data import load_dataset  # noqa: E402
from vaelab.models import build_model  # noqa: E402
from vaelab.spec import DataSpec  # noqa: E402
from vaelab.train.batching import TensorBatches  # noqa: E402
from vaelab.train.loop import Trainer  # noqa: E402
from vq_reference import PlainVQVAE, evaluate, log_prob  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "configs" / "vqvae_cifar10.toml"
PRIOR_PRESET = ROOT / "configs" / "pixelcnn_prior_cifar10.toml"


# ----------------------------------------------------------------------------- shared
def machine(args, command: str) -> str:
    cpu = platform.processor() or platform.machine()
    return (f"`{command}` · {time.strftime('%Y-%m-%d %H:%M')} · {cpu}, "
            f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads · load average at "
            f"the end {os.getloadavg()[0]:.1f}")


def write(text: str, args, part: str) -> None:
    print(text)
    out = Path(args.out or Path(__file__).parent / "results" / f"vqvae_{part}_{args.threads}threads.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)


def preset():
    cfg = load_config(PRESET)
    bundle = load_dataset(cfg.data)
    return cfg, bundle


def train_config(cfg, args, steps: int) -> TrainConfig:
    """The preset's optimizer settings (Adam 3e-4, fused, batches of 32), no logging, ``steps`` steps."""
    return replace(cfg.train, epochs=1, max_steps=steps, log_every=10**9, eval_every=0, checkpoint_every=0,
                   time_limit_min=0, threads=args.threads, seed=args.seed)


def train_batches(cfg, bundle, args, images: int = 0) -> TensorBatches:
    data = bundle.train[:images] if images else bundle.train
    return TensorBatches(data, cfg.train.batch_size, shuffle=True, seed=args.seed)


def to_plain(model) -> PlainVQVAE:
    """A vaelab VQ-VAE's weights and codebook in ``PlainVQVAE`` (layers in the same order), as
    ``vq_reference.from_vaelab_run`` does for a run folder."""
    plain = PlainVQVAE(k=model.config.codebook_size, d=model.config.code_dim)
    src = [v for k, v in model.state_dict().items() if k.startswith(("encoder.", "decoder."))]
    dst = [k for k in plain.state_dict() if k.startswith(("encoder.", "decoder."))]
    assert len(src) == len(dst), (len(src), len(dst))
    state = plain.state_dict()
    for v, k in zip(src, dst, strict=True):
        assert state[k].shape == v.shape, (k, state[k].shape, v.shape)
        state[k] = v.detach().clone()
    state["codebook"] = model.quantizer.codebook.detach().clone()
    state["sums"] = state["codebook"].clone()
    plain.load_state_dict(state)
    return plain


# ----------------------------------------------------------------------------- speed
def run_vaelab(trainer: Trainer, slice_steps: int):
    while trainer.step < trainer.cfg.max_steps:
        before = trainer.step
        trainer.total_steps = min(trainer.cfg.max_steps, before + slice_steps)
        trainer.fit()
        yield trainer.step - before


def run_plain(net: PlainVQVAE, batches: TensorBatches, steps: int, slice_steps: int):
    opt = torch.optim.Adam(net.parameters(), lr=3e-4, fused=True)
    net.train()
    stream = itertools.chain.from_iterable(batches.epoch(e) for e in itertools.count())
    for done, x in enumerate(itertools.islice(stream, steps), 1):
        out, commitment, _ = net(x)
        loss = (-log_prob(out, x) + net.beta * commitment).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if done % slice_steps == 0 or done == steps:
            yield slice_steps if done % slice_steps == 0 else done % slice_steps


PARTS = ("convolutions", "quantizer", "likelihood", "optimizer")


def _scoped(fn, name: str):
    @functools.wraps(fn)
    def wrapped(*a, **kw):
        with torch.profiler.record_function(name):
            return fn(*a, **kw)
    return wrapped


def _part_of(chain: list[str]) -> str | None:
    for name in chain:
        if name.startswith("vq::"):
            return name[4:]
        if "conv" in name:
            return "convolutions"
        if "adam" in name or "optimizer" in name:
            return "optimizer"
    return None


def profile_breakdown(model, cfg, bundle, args) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    trainer = Trainer(model, train_config(cfg, args, 5 + args.profile_steps),
                      train_batches(cfg, bundle, args))
    model.quantizer.forward = _scoped(model.quantizer.forward, "vq::quantizer")
    model.likelihood.log_prob = _scoped(model.likelihood.log_prob, "vq::likelihood")
    try:
        trainer.total_steps = 5
        trainer.fit()  # warm-up (and the k-means initialisation)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.total_steps = 5 + args.profile_steps
            trainer.fit()
    finally:
        del model.quantizer.forward, model.likelihood.log_prob
    events = list(prof.events())
    chains = {}
    for ev in events:
        chain, node = [], ev
        while node is not None:
            chain.append(node.name)
            node = node.cpu_parent
        chains[id(ev)] = chain[::-1]
    # forward operators: the part of each autograd sequence number (the node a backward op runs)
    seq_part: dict[int, str] = {}
    for ev in events:
        chain = chains[id(ev)]
        if ev.sequence_nr >= 0 and not any("backward" in n.lower() for n in chain):
            part = _part_of(chain)
            if part is not None:
                seq_part.setdefault(ev.sequence_nr, part)
    totals: dict[str, float] = {}
    for ev in events:
        chain = chains[id(ev)]
        part = _part_of(chain)
        if part is None:
            # a backward operator: the part of the forward op whose node it runs, found through the
            # sequence number on its chain (the autograd engine's evaluate_function event)
            seqs = [e.sequence_nr for e in _ancestors(ev) if e.sequence_nr >= 0]
            part = next((seq_part[s] for s in seqs if s in seq_part), "other (activations, adds, trainer)")
        totals[part] = totals.get(part, 0.0) + ev.self_cpu_time_total
    all_us = sum(totals.values())
    return sorted(((c, 100 * t / all_us) for c, t in totals.items()), key=lambda x: -x[1])


def _ancestors(ev):
    out = []
    while ev is not None:
        out.append(ev)
        ev = ev.cpu_parent
    return out[::-1]


def speed(args) -> int:
    cfg, bundle = preset()
    torch.manual_seed(args.seed)
    model = build_model(cfg.model, bundle.spec)
    plain = to_plain(model)
    plain.codebook.copy_(model.quantizer.codebook)
    batch = cfg.train.batch_size
    if args.against == "plain":
        trainer = Trainer(model, train_config(cfg, args, args.steps), train_batches(cfg, bundle, args))
        runs = {"vaelab": run_vaelab(trainer, args.slice),
                "plain": run_plain(plain, train_batches(cfg, bundle, args), args.steps, args.slice)}
    else:  # a generic speed path of the trainer against the preset's float32, the same weights
        option = {"compile": {"compile": True}, "bf16": {"precision": "bf16"}}[args.against]
        base = copy.deepcopy(model)
        trainer = Trainer(model, replace(train_config(cfg, args, args.steps), **option),
                          train_batches(cfg, bundle, args))
        runs = {"vaelab": run_vaelab(trainer, args.slice),
                "plain": run_vaelab(Trainer(base, train_config(cfg, args, args.steps),
                                            train_batches(cfg, bundle, args)), args.slice)}
    # the first turn (left out of the ratios) also holds vaelab's k-means initialisation
    rates, ratios = interleave(runs, lambda name, n: n * batch)
    if not ratios:
        raise SystemExit("too few turns: raise --steps or lower --slice (the first turn is left out)")
    med = {k: statistics.median(v[1:]) for k, v in rates.items()}
    if args.against != "plain":
        label = {"compile": "train.compile = true", "bf16": "train.precision = bf16"}[args.against]
        lines = [
            f"# VQ-VAE (CIFAR-10) training throughput, {label} against the preset ({args.threads} threads)",
            "",
            machine(args, f"python benchmarks/bench_vqvae.py speed --threads {args.threads} "
                          f"--steps {args.steps} --against {args.against}"),
            "",
            f"{len(ratios)} interleaved turns of {args.slice} steps (the first, with k-means and any "
            "compilation, left out); the same initial weights and batches.",
            "",
            "| contender | median images/s |",
            "|---|---|",
            f"| vaelab, {label} | {med['vaelab']:,.1f} |",
            f"| vaelab, the preset (eager, float32) | {med['plain']:,.1f} |",
            "",
            f"**{label} / preset: {statistics.median(ratios):.2f}x** (median of per-turn ratios; quartiles "
            f"{quartiles(ratios)[0]:.2f}-{quartiles(ratios)[1]:.2f}).",
            "",
        ]
        write("\n".join(lines), args, f"speed_{args.against}")
        return 0
    torch.manual_seed(args.seed)
    breakdown = profile_breakdown(build_model(cfg.model, bundle.spec), cfg, bundle, args)
    m = cfg.model
    lines = [
        f"# VQ-VAE (CIFAR-10) training throughput ({args.threads} threads)",
        "",
        machine(args, f"python benchmarks/bench_vqvae.py speed --threads {args.threads} "
                      f"--steps {args.steps}"),
        "",
        f"configs/vqvae_cifar10.toml: K {m.codebook_size}, D {m.code_dim}, hidden {m.hidden}, "
        f"{m.quantizer} quantizer (k-means {m.kmeans_iters} iterations, restart after {m.restart_after}), "
        f"{m.likelihood}; batch {batch}, fused Adam {cfg.train.lr}. "
        f"{len(ratios)} interleaved turns of {args.slice} steps (the first left out). "
        "plain: PlainVQVAE of benchmarks/vq_reference.py (no k-means, no restarts).",
        "",
        "| contender | median images/s |",
        "|---|---|",
        *(f"| {k} | {v:,.1f} |" for k, v in med.items()),
        "",
        *speed_lines(ratios, breakdown, args.profile_steps),
    ]
    write("\n".join(lines), args, "speed")
    return 0


# ----------------------------------------------------------------------------- peers
VARIANTS = {
    "a": ("vaelab EMA, k-means + restarts (preset)", {}),
    "b": ("vaelab EMA, restarts off", {"restart_after": 0}),
    "c": ("vaelab EMA, k-means off", {"kmeans_iters": 0}),
    "d": ("vaelab EMA, both off", {"restart_after": 0, "kmeans_iters": 0}),
    "e": ("vector-quantize-pytorch VectorQuantize", None),
    "f": ("vaelab EMA, k-means + restarts + rare-code restarts", {"restart_below": "peer"}),
}


def build_variant(cfg, spec, key: str, args):
    label, changes = VARIANTS[key]
    torch.manual_seed(args.seed)  # the same encoder and decoder weights in every variant
    changes = None if changes is None else {  # "peer": the peer's dead-code threshold, for a like rule
        k: args.peer_dead_code if v == "peer" else v for k, v in changes.items()}
    model = build_model(replace(cfg.model, **(changes or {})), spec)
    if changes is None:
        from vq_peer import PeerQuantizer

        m = cfg.model
        model.quantizer = PeerQuantizer(m.codebook_size, m.code_dim, beta=m.beta, decay=m.ema_decay,
                                        kmeans_init=True, kmeans_iters=m.kmeans_iters or 10,
                                        threshold_ema_dead_code=args.peer_dead_code,
                                        rotation_trick=args.peer_rotation_trick)
    return label, model


def peers(args) -> int:
    cfg, bundle = preset()
    test_x = bundle.test[: args.test_images] if args.test_images else bundle.test
    train_eval_x = bundle.train[: args.train_eval_images]
    keys = [k for k in args.variants if k in VARIANTS]
    rows = []
    for key in keys:
        label, model = build_variant(cfg, bundle.spec, key, args)
        trainer = Trainer(model, train_config(cfg, args, args.steps),
                          train_batches(cfg, bundle, args, args.train_images))
        torch.manual_seed(args.seed)  # the same random stream for k-means++ and restarts
        trainer.fit()
        t0 = time.perf_counter()
        with torch.no_grad(), torch_threads(args.threads):
            metrics = evaluate(to_plain(model), test_x, train_eval_x, batch=args.eval_batch)
            metrics["vaelab_bits_per_dim"] = vaelab_bits_per_dim(model, test_x, args.eval_batch)
        rows.append((key, label, trainer.step, trainer.elapsed, metrics))
        print(f"{key} {label}: {trainer.step} steps, trained {trainer.elapsed:.0f}s, evaluated "
              f"{time.perf_counter() - t0:.0f}s {metrics}", file=sys.stderr, flush=True)
    lines = [
        f"# VQ-VAE (CIFAR-10) quantizers at equal steps ({args.threads} threads)",
        "",
        machine(args, f"python benchmarks/bench_vqvae.py peers --threads {args.threads} "
                      f"--steps {args.steps}"),
        "",
        f"configs/vqvae_cifar10.toml's autoencoder, {args.steps} steps of batch {cfg.train.batch_size}, "
        f"the same initial weights, seed {args.seed} and batches for every quantizer; measured on "
        f"{len(test_x):,} test images (usage and perplexity over every code position). Peer: "
        f"vector-quantize-pytorch, decay {cfg.model.ema_decay}, kmeans_init, threshold_ema_dead_code "
        f"{args.peer_dead_code}, commitment weight {cfg.model.beta} (scaled to vaelab's per-example sum), "
        f"rotation trick {'on' if args.peer_rotation_trick else 'off (straight-through, as vaelab)'}.",
        "",
        "| quantizer | test bits/dim | (vaelab's likelihood) | test MSE | codes used | perplexity | "
        "train-pass perplexity "
        f"(first {len(train_eval_x):,}) | training s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, label, _steps, seconds, mt in rows:
        k = cfg.model.codebook_size
        lines.append(f"| {key}: {label} | {mt['test_bits_per_dim']:.3f} | "
                     f"{mt['vaelab_bits_per_dim']:.3f} | {mt['test_mse']:.5f} | "
                     f"{round(mt['test_codes']['usage'] * k)} / {k} | {mt['test_codes']['perplexity']:.1f} | "
                     f"{mt['train_epoch_codes']['perplexity']:.1f} | {seconds:.0f} |")
    lines.append("")
    write("\n".join(lines), args, "peers")
    return 0


@torch.no_grad()
def vaelab_bits_per_dim(model, x, batch: int) -> float:
    """-ELBO (uniform prior over codes) per dimension in bits, by vaelab's own loss in eval mode: the
    cross-check of ``vq_reference.evaluate``'s figure (the two likelihood codes differ in the last digits)."""
    model.eval()
    total = sum(-model.loss(x[i:i + batch]).elbo.double().sum().item() for i in range(0, len(x), batch))
    return total / (len(x) * x[0].numel() * math.log(2))


class torch_threads:
    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        if self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


# ----------------------------------------------------------------------------- sampling
def sampling(args) -> int:
    from vaelab.models.pixelcnn_prior import PixelCNNPrior

    cfg = load_config(PRIOR_PRESET)
    k = load_config(PRESET).model.codebook_size
    spec = DataSpec(shape=(8, 8), kind="codes", n_classes=10, extra={"codebook_size": k})
    torch.manual_seed(args.seed)
    prior = build_model(cfg.model, spec)
    assert isinstance(prior, PixelCNNPrior)
    prior.eval()
    sizes = args.batch_sizes
    times: dict[int, list[float]] = {b: [] for b in sizes}
    with torch.no_grad():
        prior.sample(1, torch.zeros(1, dtype=torch.long))  # warm-up
        for rep in range(args.reps):
            shift = rep % len(sizes)
            for b in sizes[shift:] + sizes[:shift]:
                labels = torch.arange(b) % spec.n_classes
                t0 = time.perf_counter()
                prior.sample(b, labels)
                times[b].append(time.perf_counter() - t0)
    m = cfg.model
    positions = spec.shape[0] * spec.shape[1]
    lines = [
        f"# PixelCNN prior sampling speed ({args.threads} threads)",
        "",
        machine(args, f"python benchmarks/bench_vqvae.py sampling --threads {args.threads} "
                      f"--reps {args.reps}"),
        "",
        f"configs/pixelcnn_prior_cifar10.toml: {m.channels} channels, {m.layers} layers, kernel {m.kernel}, "
        f"class-conditional; 8x8 maps of K = {k} codes, untrained weights; {positions} network passes a map; "
        f"median of {args.reps} timings per batch size (sizes in rotating order).",
        "",
        "| batch | s per batch of maps | maps/s | codes/s |",
        "|---|---|---|---|",
    ]
    for b in sizes:
        t = statistics.median(times[b])
        lines.append(f"| {b} | {t:.3f} | {b / t:,.1f} | {b * positions / t:,.0f} |")
    lines.append("")
    write("\n".join(lines), args, "sampling")
    return 0


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=2)
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--out", default=None,
                        help="markdown file (default benchmarks/results/vqvae_<part>_<threads>threads.md)")
    s = sub.add_parser("speed", parents=[common], help="vaelab's training step against the plain loop")
    s.add_argument("--steps", type=int, default=600, help="training steps per contender")
    s.add_argument("--slice", type=int, default=20, help="steps per turn")
    s.add_argument("--profile-steps", type=int, default=40)
    s.add_argument("--against", choices=["plain", "compile", "bf16"], default="plain",
                   help="plain: the plain loop; compile / bf16: vaelab with train.compile / "
                        "train.precision = bf16 against the preset's eager float32")
    p = sub.add_parser("peers", parents=[common], help="quantizer options and the peer at equal steps")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--variants", default="abcdef", help="which of a-f to run (default all)")
    p.add_argument("--peer-dead-code", type=float, default=2.0, help="the peer's threshold_ema_dead_code")
    p.add_argument("--peer-rotation-trick", action="store_true",
                   help="the peer's rotation-trick gradient (its default) instead of straight-through")
    p.add_argument("--test-images", type=int, default=0, help="evaluate on the first N test images (0: all)")
    p.add_argument("--train-images", type=int, default=0, help="train on the first N images (0: all 49,000)")
    p.add_argument("--train-eval-images", type=int, default=10000,
                   help="training images of the train-pass perplexity")
    p.add_argument("--eval-batch", type=int, default=100)
    g = sub.add_parser("sampling", parents=[common], help="PixelCNN prior sampling speed")
    g.add_argument("--batch-sizes", type=lambda v: [int(b) for b in v.split(",")], default=[1, 16, 64])
    g.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return {"speed": speed, "peers": peers, "sampling": sampling}[args.part](args)


if __name__ == "__main__":
    raise SystemExit(main())
