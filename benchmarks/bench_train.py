"""Training throughput of vaelab against a plain PyTorch loop (with torch.optim.Adam's default and with
``fused=True``) and Pyro SVI, where a step's time goes, and the speed of the K = 5000 importance-sampled
log p(x) evaluation, as fractions of this machine's float32 matmul peak.

The four contenders train the same network with the same work per step: a 784-400-20-400-784
ReLU MLP VAE, Bernoulli decoder (logits), batch 128, a fresh binarisation draw x ~ Bernoulli(grey
level) for every batch, one z sample per image, Adam with lr 1e-3, float32, on the 60,000 MNIST
training images. All three start from the same initial weights and train the same number of epochs;
each one's test ELBO is then measured by one shared evaluator (the trained weights loaded into a
vaelab VAE, the 10,000 test images binarised once with a fixed seed, one z sample per image, the
same seed), so the speed-up is shown at the same quality.

  vaelab  ``vaelab.train.Trainer`` + ``VAE`` + ``TensorBatches(transform=dynamic_binarize)``.
  plain   the loop a PyTorch user writes: index slices of an in-memory tensor, ``torch.bernoulli``,
          BCE-with-logits summed, the analytic KL, ``torch.optim.Adam`` with its defaults.
  plain_fused  the same loop with ``torch.optim.Adam(fused=True)``: the loop an expert writes.
  pyro    ``SVI`` with ``Trace_ELBO``: ``pyro.plate`` over the batch, Normal prior and guide
          ``.to_event(1)``, ``Bernoulli(logits).to_event(1)`` likelihood, ``pyro.optim.Adam`` lr 1e-3.
          Pyro's argument validation is switched off (``pyro.enable_validation(False)``): the faster
          Pyro, so the comparison is the harder one for vaelab.

Timing: ``--runs`` runs; in every run each contender trains ``--epochs`` epochs from the same
initial weights, and the four advance in turns of ``--slice`` steps (rotating who goes first), all
in one process, so a burst of load on a shared machine hits all three alike; images/s is the median
over the runs. The speed-up is the median over all turns of vaelab's rate over the other's in the
same turn (the ratio of the median rates, and each run's ratio, are printed beside it): on this
machine other tenants' load comes and goes within seconds and slows them unequally (memory-
bound work, such as the optimizer step, slows most), so per-turn pairs are the fair comparison. With
one thread the process's CPU time is reported beside the wall-clock time: on a shared machine it
leaves out the time other processes held the core. Peak memory: each contender once more in a fresh
subprocess; the peak resident set size while it trains (the kernel's peak mark is reset after the
data are loaded) and its growth over the size when training starts. FLOPs: a dense layer (i -> o)
costs 2*i*o per example forward; training is counted as 3x forward (forward, input gradient, weight
gradient: the usual convention; the first layer's input gradient is not computed, so the GEMMs
actually executed are 16% fewer). The IS evaluation is counted as the encoder once per image plus
the decoder once per sample. The matmul peak is the best rate of square float32 GEMMs (512, 1024,
2048) at the same thread count. Where a step goes: vaelab's trainer is timed over whole steps, then
the same model, batches and optimizer are driven by hand with a clock around each phase (the batch,
the loss, the backward pass, the optimizer step); the trainer's own bookkeeping is the difference.

Run: ``make bench`` (2 threads, the issue's setting), or e.g.
``taskset -c 0 python benchmarks/bench_train.py --threads 1 --is-examples 500``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vaelab.config import DataConfig, TrainConfig
from vaelab.data import binarize, load_dataset
from vaelab.evaluation import importance_sampled_log_likelihood
from vaelab.models import build_model
from vaelab.models.vae import VAEConfig
from vaelab.train import TensorBatches, Trainer, dynamic_binarize

D, H, Z = 784, 400, 20
# encoder 784-400-(20 means, 20 log-variances), decoder 20-400-784
LAYERS = [(D, H), (H, 2 * Z), (Z, H), (H, D)]
CONTENDERS = ("vaelab", "plain", "plain_fused", "pyro")
HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- the network
class Net(nn.Module):
    """The same layers as vaelab's VAE, under the same parameter names, for the other contenders."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(D, H), nn.ReLU(), nn.Linear(H, 2 * Z))
        self.decoder = nn.Sequential(nn.Linear(Z, H), nn.ReLU(), nn.Linear(H, D))


def vaelab_model(spec, state=None):
    model = build_model(VAEConfig(latent_dim=Z, hidden=[H], activation="relu", likelihood="bernoulli"), spec)
    if state is not None:
        model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------- contenders
# Each contender is a generator: built from the initial weights, it runs one training step per
# ``next()`` and, when exhausted (``epochs`` epochs done), returns its trained weights. The timing loop
# advances the contenders in short interleaved slices, so a burst of load on a shared machine hits all alike.


def train_vaelab(data, spec, state, epochs, seed, threads, slice_steps):
    torch.manual_seed(seed)
    model = vaelab_model(spec, state)
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=seed, threads=threads, log_every=100)
    trainer = Trainer(model, cfg, TensorBatches(data, cfg.batch_size, seed=seed, transform=dynamic_binarize))
    total = trainer.total_steps
    while trainer.step < total:  # fit() in slices: it continues from trainer.step each time
        before = trainer.step
        trainer.total_steps = min(total, before + slice_steps)
        trainer.fit()
        yield trainer.step - before
    return model.state_dict()


def train_plain(data, spec, state, epochs, seed, threads, slice_steps, fused=False):
    torch.manual_seed(seed)
    net = Net()
    net.load_state_dict(state)
    enc, dec = net.encoder, net.decoder
    x_all = data.flatten(1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused)
    for _ in range(epochs):
        perm = torch.randperm(x_all.shape[0])
        for i in range(0, x_all.shape[0], 128):
            x = torch.bernoulli(x_all[perm[i : i + 128]])
            mu, logvar = enc(x).chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            rec = F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            loss = rec + kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield 1
    return net.state_dict()


_PYRO_RUNS = itertools.count()


def train_pyro(data, spec, state, epochs, seed, threads, slice_steps):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    pyro.enable_validation(False)
    torch.manual_seed(seed)
    net = Net()
    net.load_state_dict(state)
    zeros, ones = torch.zeros(Z), torch.ones(Z)
    # Pyro keeps parameters in a global store, by name: a run must not find an earlier run's there
    # (pyro.module would then train that run's tensors). One Pyro run is in flight at a time.
    pyro.clear_param_store()
    prefix = f"pyro{next(_PYRO_RUNS)}"

    def model(x):
        pyro.module(prefix + "decoder", net.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=net.decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module(prefix + "encoder", net.encoder)
        with pyro.plate("data", x.shape[0]):
            mu, logvar = net.encoder(x).chunk(2, dim=1)
            pyro.sample("z", dist.Normal(mu, torch.exp(0.5 * logvar)).to_event(1))

    x_all = data.flatten(1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), loss=Trace_ELBO())
    for _ in range(epochs):
        perm = torch.randperm(x_all.shape[0])
        for i in range(0, x_all.shape[0], 128):
            svi.step(torch.bernoulli(x_all[perm[i : i + 128]]))
            yield 1
    return net.state_dict()


def train_plain_fused(data, spec, state, epochs, seed, threads, slice_steps):
    return (yield from train_plain(data, spec, state, epochs, seed, threads, slice_steps, fused=True))


TRAIN = {"vaelab": train_vaelab, "plain": train_plain, "plain_fused": train_plain_fused, "pyro": train_pyro}


def advance(run, steps: int) -> tuple[float, dict | None]:
    """Advance a contender by about ``steps`` steps: (seconds, trained weights once it has finished)."""
    done = 0
    t0 = time.perf_counter()
    try:
        while done < steps:
            done += next(run)
    except StopIteration as stop:
        return time.perf_counter() - t0, stop.value
    return time.perf_counter() - t0, None


def run_to_end(run) -> dict:
    while True:
        _, state = advance(run, 1 << 30)
        if state is not None:
            return state


# ----------------------------------------------------------------------------- measurements
def step_breakdown(data, spec, state, seed, threads, steps) -> list[tuple[str, float]]:
    """Where one of vaelab's training steps goes, in ms per step (medians over turns of 50 steps).

    The trainer runs whole steps; then the same model, batches and optimizer are driven by hand with
    a clock around each phase. 'trainer bookkeeping' is the trainer's step time less the phases
    (learning-rate setting, term accumulation, logging and callbacks)."""
    torch.manual_seed(seed)
    model = vaelab_model(spec, state)
    cfg = TrainConfig(epochs=1000, batch_size=128, lr=1e-3, seed=seed, threads=threads, log_every=100)
    trainer = Trainer(model, cfg, TensorBatches(data, cfg.batch_size, seed=seed, transform=dynamic_binarize))
    batches = TensorBatches(data, cfg.batch_size, seed=seed + 1, transform=dynamic_binarize)
    opt = trainer.optimizer
    params = [q for q in model.parameters() if q.requires_grad]
    phases = {"batch (slice + dynamic binarisation)": [], "loss (forward)": [], "backward": [],
              "optimizer step (Adam, fused)": []}
    whole = []
    it = iter(())
    turns = max(4, steps // 50)
    for turn in range(turns + 1):  # turn 0 warms up
        trainer.total_steps = trainer.step + 50
        t0 = time.perf_counter()
        trainer.fit()
        if turn:
            whole.append((time.perf_counter() - t0) / 50)
        model.train()
        acc = dict.fromkeys(phases, 0.0)
        for _ in range(50):
            t0 = time.perf_counter()
            batch = next(it, None)
            if batch is None:
                it = batches.epoch(turn)
                batch = next(it)
            t1 = time.perf_counter()
            out = model(batch)
            t2 = time.perf_counter()
            for q in params:
                q.grad = None
            out.loss.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                acc[name] += dt / 50
        if turn:
            for name in phases:
                phases[name].append(acc[name])
    rows = [(name, 1e3 * statistics.median(v)) for name, v in phases.items()]
    total = 1e3 * statistics.median(whole)
    rows.append(("trainer bookkeeping (the rest)", total - sum(ms for _, ms in rows)))
    rows.append(("whole step (trainer)", total))
    return rows


def matmul_peak(threads: int) -> tuple[float, dict[int, float]]:
    """Best float32 GEMM rate (GFLOP/s) over square sizes, best of several repeats each."""
    torch.set_num_threads(threads)
    rates = {}
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)
        reps = max(3, int(2e10 / (2 * n**3)))  # about 20 GFLOP per size
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
        rates[n] = 2 * n**3 / best / 1e9
    return max(rates.values()), rates


@torch.no_grad()
def test_elbo(spec, state, test_x, seed) -> float:
    """Mean test ELBO (nats per image) of trained weights, one shared evaluator for every contender."""
    model = vaelab_model(spec, state).eval()
    torch.manual_seed(seed)
    total = 0.0
    for batch in TensorBatches(test_x, 500, shuffle=False).epoch(0):
        total += model.loss(batch).elbo.double().sum().item()
    return total / test_x.shape[0]


def train_flops_per_image() -> int:
    return 3 * sum(2 * i * o for i, o in LAYERS)


def is_flops(n_images: int, k: int) -> int:
    encoder = sum(2 * i * o for i, o in LAYERS[:2])
    decoder = sum(2 * i * o for i, o in LAYERS[2:])
    return n_images * encoder + n_images * k * decoder


def _rss_mib() -> tuple[float, float]:
    """(current RSS, peak RSS since the last reset) in MiB, from /proc; peak falls back to ru_maxrss."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0), so that loading the data does not count."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_probe(name: str, threads: int, epochs: int, seed: int) -> dict:
    """Run one contender in this (fresh) process; its peak RSS during training, and the growth over
    the RSS when training started (data, imports and initial weights already loaded), in MiB."""
    torch.set_num_threads(threads)
    if name == "pyro":
        import pyro  # noqa: F401  (its import belongs to the baseline, not to training)
    bundle = load_dataset(DataConfig(name="mnist", valid_size=0))
    torch.manual_seed(seed)
    state = vaelab_model(bundle.spec).state_dict()
    reset = _reset_peak_rss()
    base, _ = _rss_mib()
    run_to_end(TRAIN[name](bundle.train, bundle.spec, state, epochs, seed, threads, 100))
    _, peak = _rss_mib()
    return {"peak_mib": peak, "growth_mib": peak - base, "peak_reset": reset}


def run_memory_probe(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--memory-probe", name, "--threads", str(args.threads),
           "--seed", str(args.seed), "--probe-epochs", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--epochs", type=int, default=2, help="epochs each contender trains per round")
    p.add_argument("--runs", type=int, default=3, help="timed rounds (median reported; at least 3)")
    p.add_argument("--is-examples", type=int, default=10000,
                   help="test images for the IS timing (fewer: the 10,000-image time is extrapolated)")
    p.add_argument("--is-k", type=int, default=5000, help="importance samples per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slice", type=int, default=50, help="steps a contender runs before the next one's turn")
    p.add_argument("--skip", nargs="*", default=[], choices=CONTENDERS, help="contenders to leave out")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--out", default=None,
                   help="markdown file ('' for none; default benchmarks/results/train_<threads>threads.md)")
    p.add_argument("--breakdown-steps", type=int, default=400,
                   help="steps timed for where a step goes (0: skip)")
    p.add_argument("--memory-probe", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--probe-epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.memory_probe:
        print(json.dumps(memory_probe(args.memory_probe, args.threads, args.probe_epochs, args.seed)))
        return 0
    if args.runs < 3:
        p.error("--runs must be at least 3 (the median of at least three runs is reported)")
    contenders = [c for c in CONTENDERS if c not in args.skip]
    if "vaelab" not in contenders:
        p.error("vaelab cannot be skipped")
    # With one thread the process's CPU time is the time it actually ran: on a shared machine it
    # leaves out the time other processes held the core, which wall-clock time counts.
    cpu_too = args.threads == 1

    torch.set_num_threads(args.threads)
    load_start = _load()
    print(f"torch {torch.__version__}, {args.threads} thread(s), {machine()}", flush=True)
    bundle = load_dataset(DataConfig(name="mnist", valid_size=0))
    train_x, spec = bundle.train, bundle.spec
    test_x = binarize(bundle.test, "fixed", seed=args.seed, split="test")
    n_train = train_x.shape[0]

    peak, peak_by_size = matmul_peak(args.threads)
    sizes = ", ".join(f"{n}^3: {r:.1f}" for n, r in peak_by_size.items())
    print(f"float32 matmul peak {peak:.1f} GFLOP/s (best of {sizes})", flush=True)

    torch.manual_seed(args.seed)
    init = vaelab_model(spec).state_dict()
    rate = {c: [] for c in contenders}
    cpu_rate = {c: [] for c in contenders}
    elbo = {c: [] for c in contenders}
    turn_ratio = {c: [] for c in contenders}  # vaelab's rate / c's, turn by turn (slices run back to back)
    trained = None
    for r in range(args.runs):
        runs = {c: TRAIN[c](train_x, spec, init, args.epochs, args.seed + r, args.threads, args.slice)
                for c in contenders}
        wall = dict.fromkeys(contenders, 0.0)
        cpu = dict.fromkeys(contenders, 0.0)
        states = {}
        turn = 0
        while len(states) < len(contenders):
            turn += 1
            turn_rate = {}
            for c in contenders[turn % len(contenders):] + contenders[: turn % len(contenders)]:
                if c not in states:
                    c0 = time.process_time()
                    dt, state = advance(runs[c], args.slice)
                    cpu[c] += time.process_time() - c0
                    wall[c] += dt
                    if state is not None:
                        states[c] = state
                    else:  # a full slice: its rate, to set beside the others' in the same turn
                        turn_rate[c] = args.slice / dt
            for c in contenders:
                if c != "vaelab" and c in turn_rate and "vaelab" in turn_rate:
                    turn_ratio[c].append(turn_rate["vaelab"] / turn_rate[c])
        for c in contenders:
            rate[c].append(args.epochs * n_train / wall[c])
            cpu_rate[c].append(args.epochs * n_train / cpu[c])
            elbo[c].append(test_elbo(spec, states[c], test_x, args.seed))
            print(f"run {r + 1}/{args.runs} {c:11s} {rate[c][-1]:7.0f} images/s"
                  + (f" ({cpu_rate[c][-1]:.0f} by CPU time)" if cpu_too else "")
                  + f"  test ELBO {elbo[c][-1]:8.2f}  ({wall[c]:.1f} s)", flush=True)
        trained = states["vaelab"]
        torch.set_num_threads(args.threads)

    breakdown = []
    if args.breakdown_steps:
        print("where a step goes ...", flush=True)
        breakdown = step_breakdown(train_x, spec, init, args.seed, args.threads, args.breakdown_steps)
        torch.set_num_threads(args.threads)

    memory = {}
    if not args.no_memory:
        for c in contenders:
            memory[c] = run_memory_probe(c, args)

    med = {c: statistics.median(rate[c]) for c in contenders}
    cmed = {c: statistics.median(cpu_rate[c]) for c in contenders}
    flops_img = train_flops_per_image()
    header = ["contender", "images/s", "runs"]
    header += ["images/s by CPU time"] if cpu_too else []
    header += ["vaelab is (median of per-turn ratios)", f"test ELBO after {args.epochs} ep", "GFLOP/s",
               "of peak", "peak RSS MiB (+training)"]
    rows = []
    for c in contenders:
        mem = memory.get(c)
        # The headline is the median over turns of vaelab's rate / c's rate in the same turn: slices
        # run back to back, so a burst of load from other tenants (they come and go within seconds
        # here) hits both sides of each ratio. The ratio of the median rates and each run's own
        # ratio are shown beside it.
        ratio = (f"{statistics.median(turn_ratio[c]):.2f}x" if turn_ratio[c] else "-") + (
            f" (ratio of medians {med['vaelab'] / med[c]:.2f}x; runs: "
            + " / ".join(f"{v / w:.2f}" for v, w in zip(rate["vaelab"], rate[c])) + ")")
        if cpu_too:
            ratio += f" (CPU time: {cmed['vaelab'] / cmed[c]:.2f}x)"
        row = [c, f"{med[c]:,.0f}", " / ".join(f"{v:,.0f}" for v in rate[c])]
        row += [f"{cmed[c]:,.0f}"] if cpu_too else []
        best = cmed[c] if cpu_too else med[c]
        row += [
            "-" if c == "vaelab" else ratio,
            f"{statistics.median(elbo[c]):.2f} (" + " / ".join(f"{v:.2f}" for v in elbo[c]) + ")",
            f"{best * flops_img / 1e9:.1f}",
            f"{best * flops_img / 1e9 / peak:.0%}",
            f"{mem['peak_mib']:.0f} (+{mem['growth_mib']:.0f})" if mem else "-",
        ]
        rows.append(row)

    # the importance-sampled log-likelihood of the last vaelab model (--is-examples 0 skips it)
    n_is = min(args.is_examples, test_x.shape[0])
    is_lines = []
    if n_is > 0:
        model = vaelab_model(spec, trained)
        torch.manual_seed(args.seed)
        print(f"IS log p(x), K = {args.is_k}, on {n_is} test images ...", flush=True)
        c0 = time.process_time()
        is_batches = TensorBatches(test_x[:n_is], 100, shuffle=False)
        res = importance_sampled_log_likelihood(model, is_batches, k=args.is_k)
        is_cpu = time.process_time() - c0
        fl = is_flops(n_is, args.is_k)
        scale = test_x.shape[0] / n_is
        label = "" if n_is == test_x.shape[0] else f" EXTRAPOLATED from {n_is} images"
        is_lines += [
            f"IS log p(x), K = {args.is_k}: {n_is} test images in {res.seconds:.1f} s, "
            f"{fl / 1e12:.2f} TFLOP (decoder per sample + encoder per image), "
            f"{fl / res.seconds / 1e9:.1f} GFLOP/s = {fl / res.seconds / 1e9 / peak:.0%} of peak",
            f"all {test_x.shape[0]} test images: {res.seconds * scale / 60:.1f} min{label}",
        ]
        if cpu_too:
            is_lines.append(f"by CPU time: {is_cpu:.1f} s, {fl / is_cpu / 1e9:.1f} GFLOP/s = "
                            f"{fl / is_cpu / 1e9 / peak:.0%} of peak; all {test_x.shape[0]} images: "
                            f"{is_cpu * scale / 60:.1f} min{label}")
        is_lines.append(f"log p(x) of the {args.epochs}-epoch vaelab model: {res.mean:.2f} "
                        f"+- {res.stderr:.2f} nats (on these {n_is} images)")

    table = _markdown(header, rows)
    total_ms = breakdown[-1][1] if breakdown else 0.0
    step_table = _markdown(["phase of a vaelab training step", "ms per step", "share"],
                           [[name, f"{ms:.3f}", "" if name.startswith("whole") else f"{ms / total_ms:.0%}"]
                            for name, ms in breakdown]) if breakdown else ""
    notes = [
        f"float32 matmul peak: {peak:.1f} GFLOP/s ({args.threads} thread(s); best of {sizes})",
        f"training FLOPs per image: {flops_img / 1e6:.2f} MFLOP (3x forward); 'of peak' uses "
        + ("CPU-time images/s" if cpu_too else "images/s"),
        *is_lines,
    ]
    notes.append("load average (1 min) at the start / end of the run: " + " / ".join(
        f"{v:.2f}" for v in (load_start, _load())) + f" on {os.cpu_count()} logical CPUs")
    if any(not m.get("peak_reset", True) for m in memory.values()):
        notes.append("the peak-RSS mark could not be reset here: peak RSS includes loading the data")
    print()
    print(table)
    print()
    if step_table:
        print(step_table)
        print()
    print("\n".join("- " + n for n in notes))
    if args.out is None:
        args.out = str(HERE / "results" / f"train_{args.threads}threads.md")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        cmd = "python benchmarks/bench_train.py " + " ".join(argv if argv is not None else sys.argv[1:])
        pin = _affinity()
        text = "\n".join([
            "# Training throughput and IS evaluation speed",
            "",
            f"Command: `{(f'taskset -c {pin} ' if pin else '') + cmd.strip()}`",
            "",
            f"Machine: {machine()}, {os.cpu_count()} logical CPUs; threads used: {args.threads}; "
            f"torch {torch.__version__}{_pyro_version()}",
            "",
            f"Date: {time.strftime('%Y-%m-%d')}",
            "",
            "Work: MNIST, 784-400-20-400-784 ReLU VAE, Bernoulli decoder, batch 128, dynamic binarisation, "
            f"one z sample, Adam lr 1e-3, float32; {args.epochs} epoch(s) per run from the same initial "
            f"weights, {args.runs} runs interleaved in slices of {args.slice} steps; medians. "
            "Test ELBO: one evaluator for all (the 10,000 test images binarised once with a fixed seed, "
            "one z sample)."
            + (" With one thread the process's CPU time is reported too: on a shared machine it leaves "
               "out the time other processes held the core." if cpu_too else ""),
            "",
            table,
            "",
            *([step_table, ""] if step_table else []),
            *("- " + n for n in notes),
            "",
        ])
        Path(args.out).write_text(text)
        print(f"\nwrote {args.out}")
    return 0


def _markdown(header, rows) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _affinity() -> str:
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return ""
    return "" if len(cpus) == os.cpu_count() else ",".join(map(str, cpus))


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def _pyro_version() -> str:
    try:
        import pyro

        return f", pyro {pyro.__version__}"
    except ImportError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
