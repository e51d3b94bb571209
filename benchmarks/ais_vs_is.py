"""AIS against importance sampling on a trained VAE's test images: is the IS estimate of log p(x) tight?

Runs annealed importance sampling (``vaelab.evaluation.ais``) with T = 500, 1000, 2000, ... intermediate
distributions on the first N test images, doubling T until the estimate moves by less than
``--tol`` nats (0.2), and importance sampling with K = 5000 on the same images; prints both with
their standard errors (over examples; for AIS also over chains) and wall times, and appends a
markdown table to ``--results`` (default benchmarks/results/ais_vs_is.md).

    python benchmarks/ais_vs_is.py runs/vae_mnist --n 100
    python benchmarks/ais_vs_is.py runs/smoke --n 4 --t0 10 --max-t 40 --k 100   # a quick check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from vaelab.errors import VaelabError
from vaelab.evaluation import importance_sampled_log_likelihood
from vaelab.evaluation.ais import AISSettings, ais_log_likelihood
from vaelab.experiment import load_run_model, prepare, resolve_device
from vaelab.models.base import LatentVariableModel
from vaelab.threads import torch_threads


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained VAE run folder")
    p.add_argument("--n", type=int, default=100, help="test images")
    p.add_argument("--k", type=int, default=5000, help="importance samples K")
    p.add_argument("--t0", type=int, default=500, help="first number of AIS intermediate distributions")
    p.add_argument("--max-t", type=int, default=64000, help="stop doubling T here")
    p.add_argument("--tol", type=float, default=0.2,
                   help="stop when doubling T moves the estimate less (nats)")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: unchanged)")
    p.add_argument("--results", default=str(Path(__file__).parent / "results" / "ais_vs_is.md"))
    args = p.parse_args(argv)
    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        device = resolve_device(args.device)
        model, cfg, path = load_run_model(args.run, device)
    except VaelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(model, LatentVariableModel):
        print(f"error: {args.run} is a {cfg.model.name!r} run without an encoder; IS needs one",
              file=sys.stderr)
        return 2
    cfg.eval.max_examples = args.n
    prep = prepare(cfg, device)
    batches = prep.test if prep.test is not None else prep.valid
    x = list(batches.epoch(0))
    n = sum(len(b) for b in x)
    rows = []
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    by_is = importance_sampled_log_likelihood(model, x, args.k)
    rows.append((f"IS, K = {args.k}", by_is.mean, by_is.stderr, None, time.perf_counter() - t0))
    print(f"IS  K={args.k:<6d} {by_is.mean:9.3f} ± {by_is.stderr:.3f}  ({rows[-1][-1]:.1f} s, ESS mean "
          f"{by_is.ess_mean:.0f})", flush=True)
    t, last = args.t0, None
    while t <= args.max_t:
        torch.manual_seed(args.seed)
        res = ais_log_likelihood(model, x, AISSettings(n_steps=t, chains=args.chains, leapfrog=args.leapfrog))
        rows.append((f"AIS, T = {t}", res.mean, res.stderr, res.chain_stderr_of_mean, res.seconds))
        print(f"AIS T={t:<6d} {res.mean:9.3f} ± {res.stderr:.3f} (chains ± {res.chain_stderr_of_mean:.3f}, "
              f"acceptance {res.accept_rate.mean():.2f}, {res.seconds:.1f} s)", flush=True)
        if last is not None and abs(res.mean - last) < args.tol:
            break
        last, t = res.mean, 2 * t
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"\n## {Path(args.run).name}: {n} {cfg.data.name} test images, checkpoint {path.name}, "
        f"{device.type}, {torch.get_num_threads()} threads\n",
        f"AIS: {args.chains} chains, {args.leapfrog} leapfrog steps, sigmoid schedule, step size adapted to "
        f"0.65 acceptance; stop when doubling T moves the estimate by < {args.tol} nats.\n",
        "| estimator | log p(x) (nats) | s.e. over examples | s.e. over chains | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, mean, se, chain_se, secs in rows:
        chain = "" if chain_se is None else f"{chain_se:.3f}"
        lines.append(f"| {name} | {mean:.3f} | {se:.3f} | {chain} | {secs:.1f} |")
    with out.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
