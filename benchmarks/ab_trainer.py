"""Interleaved A/B of the trainer's fast paths: each mode switches one of them off.

Every mode's trainer trains the benchmark's network (784-400-20-400-784 ReLU VAE, batch 128,
dynamically binarized MNIST, Adam) from the same weights in one process, taking turns of ``--steps``
steps (rotating who goes first), so the shared machine's load hits all alike. Modes:

  numpy    the batch indices of the sparse first layer found with NumPy, the batch binarised with
           NumPy, no attached index (vaelab._sparse without numba)
  loops    the compiled loops for the indices, the binariser's pass without attaching its index
  modules  the loss and its gradient through the modules and autograd, not the fused step
           (vaelab.models.vae_fused off); the indices as in ``full``
  full     everything on: the compiled loops, the binariser's attached index, the fused step (the
           default path)

Prints each mode's median ms per step and the median of the per-turn ratios against the first mode.
Run: ``python benchmarks/ab_trainer.py --turns 24`` (needs $VAELAB_DATA with MNIST), or e.g.
``--modes modules,full``. (Until commit 14d08d1 this script was ``ab_sparse_indices.py``, with the
modes numpy, loops and full, and no fused step.)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_train import vaelab_model
from vaelab import _sparse
from vaelab.config import DataConfig, TrainConfig
from vaelab.data import load_dataset
from vaelab.models import vae_fused
from vaelab.train import TensorBatches, Trainer, dynamic_binarize

MODES = ("numpy", "loops", "modules", "full")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--turns", type=int, default=24)
    p.add_argument("--steps", type=int, default=40, help="steps per turn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, from {MODES}")
    args = p.parse_args()
    modes = args.modes.split(",")
    torch.set_num_threads(args.threads)
    bundle = load_dataset(DataConfig(name="mnist", valid_size=0))
    kernels = _sparse._kernels()
    if kernels is None:
        raise SystemExit("error: numba's compiled loops did not load; nothing to compare")
    attach = _sparse.attach

    def trainer() -> Trainer:
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=100, batch_size=128, lr=1e-3, seed=0, threads=args.threads, log_every=100)
        batches = TensorBatches(bundle.train, cfg.batch_size, seed=0, transform=dynamic_binarize)
        return Trainer(vaelab_model(bundle.spec), cfg, batches)

    trainers = {m: trainer() for m in modes}

    def turn(mode: str, steps: int) -> float:
        _sparse._KERNELS = None if mode == "numpy" else kernels
        _sparse.attach = (lambda t, index: None) if mode == "loops" else attach
        vae_fused.ENABLED = mode != "modules"
        tr = trainers[mode]
        tr.total_steps = tr.step + steps
        t = time.perf_counter()
        tr.fit()
        return (time.perf_counter() - t) / steps * 1e3

    for m in modes:  # warm-up
        turn(m, 20)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(args.turns):
        k = i % len(modes)
        for m in modes[k:] + modes[:k]:
            times[m].append(turn(m, args.steps))
    _sparse._KERNELS, _sparse.attach, vae_fused.ENABLED = kernels, attach, True
    base = modes[0]
    for m in modes:
        line = f"{m:7s} median {statistics.median(times[m]):.3f} ms/step"
        if m != base:
            ratios = sorted(a / b for a, b in zip(times[base], times[m]))
            q = len(ratios) // 4
            line += (f"   {base}/{m} per turn: median {statistics.median(ratios):.3f}"
                     f" (quartiles {ratios[q]:.3f}-{ratios[-q - 1]:.3f})")
        print(line)


if __name__ == "__main__":
    main()
