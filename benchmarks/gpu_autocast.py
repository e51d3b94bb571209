"""bf16 autocast: the VAE's loss and gradients under ``torch.autocast`` against float32, and the training
throughput (images/s) of both, in a loop of its own (the trainer's path is ``train.precision = "bf16"``,
step 7 of gpu_check.sh).

The network is the MNIST preset's (784-500-500-50 tanh, Bernoulli decoder) on random binary images.
Pass: the loss is finite and within 2 % of float32's, every gradient is finite, and the flattened
gradient points the way float32's does (cosine >= 0.98), with the same noise draws in both.

    PYTHONPATH=src python benchmarks/gpu_autocast.py              # on CUDA
    PYTHONPATH=src python benchmarks/gpu_autocast.py --device cpu # the same check on the CPU (slow)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from vaelab.models import build_model
from vaelab.models.vae import VAEConfig
from vaelab.spec import DataSpec

SPEC = DataSpec((1, 28, 28), "binary")


def _loss_and_grad(model, x: torch.Tensor, seed: int, autocast: bool) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same eps in both precisions
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = model(x).loss
    loss.float().backward()
    grad = torch.cat([p.grad.float().reshape(-1) for p in model.parameters()])
    return loss.float().item(), grad


def _images_per_second(model, x: torch.Tensor, steps: int, autocast: bool) -> float:
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=x.device.type == "cuda")
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(x).loss
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    for _ in range(max(5, steps // 10)):  # warm-up: kernels chosen, memory pooled
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=300, help="timed training steps per precision")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to PyTorch; use --device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(VAEConfig(latent_dim=50, hidden=[500, 500], activation="tanh"), SPEC).to(device)
    x = (torch.rand(args.batch, *SPEC.shape, device=device) < 0.3).float()
    l32, g32 = _loss_and_grad(model, x, 1, autocast=False)
    l16, g16 = _loss_and_grad(model, x, 1, autocast=True)
    rel = abs(l16 - l32) / abs(l32)
    cos = torch.nn.functional.cosine_similarity(g32, g16, dim=0).item()
    finite = bool(torch.isfinite(g16).all()) and l16 == l16 and abs(l16) != float("inf")
    ok = finite and rel <= 0.02 and cos >= 0.98
    print(f"bf16 autocast on {device}: loss {l16:.3f} vs float32 {l32:.3f} nats (relative difference "
          f"{rel:.2e}, limit 2e-2); gradient cosine {cos:.4f} (limit 0.98); finite {finite}: "
          f"{'PASS' if ok else 'FAIL'}")
    for name, autocast in (("float32", False), ("bf16 autocast", True)):
        rate = _images_per_second(model, x, args.steps, autocast)
        print(f"throughput {name:13s} {rate:12,.0f} images/s "
              f"(train step, batch {args.batch}, {args.steps} steps)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
