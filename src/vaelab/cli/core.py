"""Core subcommands: train, eval, sample, encode, report, demo."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from vaelab.cli import command
from vaelab.errors import VaelabError

DEMO_MNIST = {
    "name": "demo",
    "model": {"name": "vae", "latent_dim": 2, "hidden": [512, 256], "activation": "relu"},
    "data": {"name": "mnist", "binarize": "dynamic", "valid_size": 5000},
    "train": {
        "epochs": 20,
        "batch_size": 128,
        "lr": 2e-3,
        "lr_final": 3e-4,
        "schedule": "cosine",
        "log_every": 50,
    },
    "eval": {"is_samples": 100, "max_examples": 2000},
}
DEMO_DIGITS = {
    "name": "demo",
    "model": {"name": "vae", "latent_dim": 2, "hidden": [256, 128], "activation": "relu"},
    "data": {"name": "digits", "binarize": "dynamic"},
    "train": {
        "epochs": 300,
        "batch_size": 64,
        "lr": 2e-3,
        "lr_final": 2e-4,
        "schedule": "cosine",
        "log_every": 20,
    },
    "eval": {"is_samples": 1000},
}


def _common(p: argparse.ArgumentParser, seed: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    if seed:
        p.add_argument(
            "--seed", type=int, default=None, help="random seed (default: the config's train.seed)"
        )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always show progress bars"
    )
    g.add_argument("--quiet", dest="progress", action="store_false", help="never show progress bars")


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="a TOML preset, e.g. configs/vae_mnist.toml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.epochs=1 (repeatable)",
    )
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.add_argument("--no-eval", action="store_true", help="skip the test evaluation, figures and report")
    _common(p)


def _init_distributed(device_name: str):
    """Join the process group when started by torchrun (even with one process, so that a one-GPU
    torchrun runs the nccl path of a multi-GPU one); return the device."""
    import torch
    import torch.distributed as dist

    from vaelab.experiment import resolve_device

    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if not launched:
        return resolve_device(device_name)
    device = resolve_device(device_name)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


@command(
    "train",
    "train a model from a TOML config; writes runs/NAME with checkpoints, metrics and a report",
    _train_args,
)
def train_cmd(args: argparse.Namespace) -> int:
    import json

    import torch.distributed as dist

    from vaelab.config import apply_overrides, config_from_dict, parse_overrides, read_toml
    from vaelab.experiment import evaluate_run, format_eval, train_run
    from vaelab.runfolder import command_line

    if args.resume and args.out and (Path(args.out) / "config.json").is_file() and not args.config:
        base = json.loads((Path(args.out) / "config.json").read_text(encoding="utf-8"))
    elif args.config:
        base = read_toml(args.config)
    else:
        raise VaelabError("give a config file (vaelab train configs/vae_digits.toml) or --resume --out RUN")
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = config_from_dict(apply_overrides(base, parse_overrides(overrides)))
    name = cfg.name or (Path(args.config).stem if args.config else "run")
    run_dir = Path(args.out) if args.out else Path("runs") / name
    device = _init_distributed(args.device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        print(f"training {cfg.model.name} on {cfg.data.name} ({device}) -> {run_dir}", file=sys.stderr)
    trainer, prep = train_run(cfg, run_dir, device=device, resume=args.resume, progress=args.progress,
                              command=command_line(getattr(args, "_argv", None)))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        # Rank 0 writes everything; the others are done. Leave without the interpreter's teardown:
        # there a gloo thread still waiting on rank 0 is sometimes destroyed while running, and the
        # process dies of SIGABRT ("terminate called without an active exception", about 1 run in 40)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    reason = trainer.stop_reason or "finished"
    if prep.lr_search is not None:
        print(prep.lr_search.describe())
    print(
        f"{reason}: step {trainer.step}, {trainer.step / trainer.steps_per_epoch:.2f} epochs, "
        f"{trainer.elapsed:.1f} s; checkpoint {trainer.last_checkpoint}"
    )
    if trainer.stop_signal is not None:
        print(f"resume with: vaelab train --resume --out {run_dir}")
        return 128 + trainer.stop_signal  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM
    if not args.no_eval:
        result = evaluate_run(run_dir, device, progress=args.progress)
        print(format_eval(result))
        path = _build_report(run_dir)
        print(f"report: {path}")
    return 0


def _build_report(run_dir: Path) -> Path:
    from vaelab.report.build import build_report

    return build_report(run_dir)


def _run_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder written by vaelab train (e.g. runs/demo)")


def _eval_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--is-samples", type=int, default=None, help="importance samples K per example")
    p.add_argument("--is-nested", type=int, nargs="+", default=None, metavar="K",
                   help="also report the IS estimates from the first K of the same samples, e.g. 50 100 "
                        "(each below --is-samples; as eval.is_nested)")
    p.add_argument("--max-examples", type=int, default=None, help="evaluate only the first N test examples")
    p.add_argument("--ais", type=int, default=None, metavar="N",
                   help="estimate log p(x) by annealed importance sampling with N intermediate distributions "
                        "instead of importance sampling")
    p.add_argument("--ais-chains", type=int, default=None,
                   help="AIS chains per example (with --ais; default 4, as eval.ais_chains)")
    p.add_argument("--ais-leapfrog", type=int, default=None,
                   help="leapfrog steps per HMC transition (with --ais; default 10)")
    p.add_argument(
        "--checkpoint",
        choices=["best", "latest"],
        default="best",
        help="the best-validation checkpoint (default) or the latest one",
    )
    _common(p)


@command("eval", "evaluate a run: test ELBO, IS log p(x) ± s.e., bits/dim, KL, active units", _eval_args)
def eval_cmd(args: argparse.Namespace) -> int:
    from vaelab.evaluation.ais import AISSettings
    from vaelab.experiment import evaluate_run, format_eval, resolve_device

    if args.is_samples is not None and args.is_samples < 1:
        raise VaelabError(f"--is-samples must be >= 1, got {args.is_samples}")
    ais = None
    if args.ais is not None:
        from vaelab.config import EvalConfig

        ais = AISSettings(n_steps=args.ais, chains=args.ais_chains or EvalConfig.ais_chains,
                          leapfrog=args.ais_leapfrog or EvalConfig.ais_leapfrog)
        ais.validate()
    result = evaluate_run(
        args.run,
        resolve_device(args.device),
        k=args.is_samples,
        max_examples=args.max_examples,
        progress=args.progress,
        which=args.checkpoint,
        seed=args.seed,
        ais=ais,
        nested=args.is_nested,
    )
    print(format_eval(result))
    print(f"saved {Path(args.run) / 'eval.json'}; report: {_build_report(Path(args.run))}")
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", help="an evaluated run folder (vaelab eval writes its eval_examples.npz)")
    p.add_argument("run_b", help="another run evaluated on the same examples")


@command("compare", "paired per-example comparison of two evaluated runs: mean NLL difference ± s.e.",
         _compare_args)
def compare_cmd(args: argparse.Namespace) -> int:
    from vaelab.evaluation.paired import paired_difference, read_per_example

    a, b = read_per_example(args.run_a), read_per_example(args.run_b)
    d = paired_difference(a, b)
    tokens = a.count.sum()
    print(f"{d.n} {a.split} examples ({tokens:.0f} units); negative log-likelihood per example, nats:")
    for name, mean, kind in ((args.run_a, d.mean_a, a.kind), (args.run_b, d.mean_b, b.kind)):
        print(f"  {name}: {mean:.3f}  ({kind})")
    better = args.run_a if d.diff < 0 else args.run_b
    print(f"  A - B: {d.diff:+.3f} ± {d.stderr:.3f} (paired s.e.), {abs(d.z):.1f} s.e.: "
          f"{better} is lower" + ("" if abs(d.z) > 2 else " (within 2 s.e.: not a clear difference)"))
    return 0


def _sample_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--png", help="also draw image samples as a grid into this PNG file")
    _common(p)


@command("sample", "draw samples from a trained run (the report's samples section; --png: a grid as PNG)",
         _sample_args)
def sample_cmd(args: argparse.Namespace) -> int:
    from vaelab.experiment import resolve_device, sample_run

    if args.n < 1:
        raise VaelabError(f"-n must be >= 1, got {args.n}")
    section = sample_run(args.run, resolve_device(args.device), args.n, 0 if args.seed is None else args.seed,
                         png=args.png)
    where = f"section {section.name!r} of {Path(args.run) / 'sections.json'}"
    print(f"{args.n} samples: {where}" + (f" and {args.png}" if args.png else ""))
    return 0


def _encode_args(p: argparse.ArgumentParser) -> None:
    _run_arg(p)
    p.add_argument("--data", required=True, metavar="NAME_OR_PATH",
                   help="a dataset name, folder:PATH, npy:PATH, text:PATH or wav:PATH, read with the run's "
                        "data settings")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"], help="default test")
    p.add_argument("--out", required=True, metavar="FILE.npy",
                   help="where to write the latents (audio clips' codes: padded with -1 past each clip's)")
    _common(p, seed=False)


@command("encode", "write the latents of a dataset under a run's model (posterior means or codes) as .npy",
         _encode_args)
def encode_cmd(args: argparse.Namespace) -> int:
    from vaelab.experiment import encode_run, resolve_device

    path, shape = encode_run(args.run, args.data, args.out, resolve_device(args.device), split=args.split)
    print(f"latents {shape} of {args.data} ({args.split}): {path}")
    return 0


@command("report", "(re)build report.html of a run from its folder", _run_arg)
def report_cmd(args: argparse.Namespace) -> int:
    print(f"report: {_build_report(Path(args.run))}")
    return 0


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo; replaced if it exists)")
    p.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    _common(p)


@command(
    "demo",
    "train a small 2-D VAE (MNIST if present, else the bundled 8x8 digits) and write a report",
    _demo_args,
)
def demo_cmd(args: argparse.Namespace) -> int:
    import shutil

    from vaelab.config import config_from_dict
    from vaelab.data import load_dataset
    from vaelab.experiment import evaluate_run, format_eval, resolve_device, train_run
    from vaelab.runfolder import command_line

    device = resolve_device(args.device)
    try:
        cfg = config_from_dict(DEMO_MNIST)
        load_dataset(cfg.data)
        which = "MNIST"
    except VaelabError as exc:
        print(f"MNIST not available ({exc}); using the bundled 8x8 digits instead", file=sys.stderr)
        cfg = config_from_dict(DEMO_DIGITS)
        which = "scikit-learn's 8x8 digits"
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    if args.seed is not None:
        cfg.train.seed = args.seed
    run_dir = Path(args.out)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    print(
        f"demo: a VAE with a 2-D latent space on {which}, {cfg.train.epochs} epochs on {device} -> {run_dir}",
        file=sys.stderr,
    )
    trainer, _ = train_run(cfg, run_dir, device=device, progress=args.progress,
                           command=command_line(getattr(args, "_argv", None)))
    result = evaluate_run(run_dir, device, progress=args.progress)
    print(format_eval(result))
    path = _build_report(run_dir)
    print(f"done in {time.perf_counter() - t0:.0f} s. Open the report: {path.resolve()}")
    return 0
