"""Kingma & Welling (2014), "Auto-Encoding Variational Bayes": Figures 2, 3, 4 and 5.

Every model is trained through the ordinary pipeline (``experiment.train_run``) as a child run under
``<out>/runs/``, with its own checkpoints, metrics and report; a reproduction that is stopped (Ctrl-C,
SIGTERM, a crash) resumes every child from its last checkpoint when the same command is run again,
and children that finished are not trained again.

The paper's settings (Section 5 and Appendix C) that every child follows unless its docstring says
otherwise: minibatches of M = 100 with L = 1 sample of z per datapoint; tanh MLPs; Adagrad with its
global step size chosen from {0.01, 0.02, 0.1} by a short trial on the training set; weights drawn
from N(0, 0.01^2); weight decay 1/N, which is the N(0, I) prior on the parameters when the loss is
in nats per example; MNIST binarised afresh for every batch (tested on one fixed binarisation);
Frey Face with a Gaussian decoder whose means are squashed into (0, 1).

The x-axis of the paper's figures is the number of training samples evaluated: optimizer steps x M.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.reproduce import Context, reproduction
from vaelab.sections import CurvesSection, Section, TableSection, read_sections

__all__ = ["fig2", "fig3", "fig4", "fig5", "KW_LR_GRID"]

KW_LR_GRID = [0.01, 0.02, 0.1]  # K&W Section 5: Adagrad's global step size, chosen from these
BATCH = 100  # M = 100
MNIST_HIDDEN = 500  # Figure 2 and the manifolds/samples: 500 hidden units on MNIST
FREY_HIDDEN = 200  # and 200 on Frey Face


# ----------------------------------------------------------------------------- children


def kw_config(
    name: str,
    *,
    model: str,
    dataset: str,
    latent_dim: int,
    hidden: int,
    steps: int,
    n_train: int,
    limit: int = 0,
    valid_size: float = 0.1,
    eval_every: int = 0,
    seed: int = 0,
    extra_model: dict[str, Any] | None = None,
    lr_search_steps: int = 200,
    is_samples: int = 1000,
    eval_examples: int = 2000,
) -> dict[str, Any]:
    """A child run's config (a dict, as a TOML preset would give) with the paper's settings.

    ``model``: the family (``vae`` = AEVB, ``wake_sleep``, ``mcem``); ``steps`` optimizer steps of
    M = 100; ``n_train`` the training-set size N (for the weight decay 1/N); ``limit`` > 0 keeps the
    first ``limit`` training images (Figure 3's N = 1,000); the test numbers are importance-sampled
    log p(x) with ``is_samples`` samples on the first ``eval_examples`` test images."""
    frey = dataset == "frey"
    cfg: dict[str, Any] = {
        "name": name,
        "model": {
            "name": model,
            "latent_dim": latent_dim,
            "hidden": [hidden],
            "activation": "tanh",
            "likelihood": "gaussian_sigmoid" if frey else "bernoulli",
            "init_std": 0.1,  # N(0, 0.01) read as a variance (models/vae.py)
            **(extra_model or {}),
        },
        "data": {"name": dataset, "binarize": "none" if frey else "dynamic", "valid_size": valid_size,
                 "limit": limit},
        "train": {
            "epochs": 10**9,  # the budget is max_steps
            "max_steps": steps,
            "batch_size": BATCH,
            "optimizer": "adagrad",
            "lr": 0.02,
            "lr_search": list(KW_LR_GRID),
            "lr_search_steps": min(lr_search_steps, max(1, steps // 4)),
            "weight_decay": 1.0 / n_train,
            "eps": 1e-10,
            "seed": seed,
            "log_every": max(1, min(200, steps // 50)),
            "eval_every": eval_every or max(1, steps // 25),
            "checkpoint_every": max(1, min(20_000, steps // 4)),
        },
        "eval": {"is_samples": is_samples, "n_samples": 100, "max_examples": eval_examples},
    }
    return cfg


def train_child(
    ctx: Context, cfg: dict[str, Any], callbacks: Sequence[Any] = (), evaluate: bool = True
) -> Path:
    """Train (or resume, or reuse when finished) the child run ``cfg['name']`` and evaluate it.

    A finished child holds ``eval.json`` (written only after its training ended): it is reused as it
    is. Ctrl-C or SIGTERM during training leaves a resumable checkpoint and ends the reproduction
    (KeyboardInterrupt, exit status 130); running the same command again continues it. An unfinished
    child that ``--part`` does not name is left as it is and recorded in ``ctx.missing``."""
    from vaelab.config import config_from_dict
    from vaelab.experiment import evaluate_run, train_run
    from vaelab.report.build import build_report
    from vaelab.train import checkpoint as ckpt

    run_dir = ctx.child(cfg["name"])
    if (run_dir / "eval.json").is_file() or (not evaluate and (run_dir / "done").is_file()):
        return run_dir
    if not ctx.selected(cfg["name"]):  # --part names other children: leave this one to its own call
        ctx.skip(cfg["name"])
        return run_dir
    resume = bool(ckpt.list_checkpoints(run_dir / "checkpoints"))
    run_cfg = config_from_dict(cfg)
    torch.manual_seed(run_cfg.train.seed)
    trainer, _ = train_run(run_cfg, run_dir, device=ctx.device, resume=resume, progress=ctx.progress,
                           extra_callbacks=list(callbacks), command=f"vaelab reproduce (child {cfg['name']})")
    if trainer.stop_signal is not None:
        raise KeyboardInterrupt
    if evaluate:
        evaluate_run(run_dir, ctx.device, progress=ctx.progress)
        build_report(run_dir)
    else:
        (run_dir / "done").write_text("finished\n", encoding="utf-8")
    return run_dir


def child_section(run_dir: Path, name: str, new_name: str, title: str, caption: str | None = None) -> Section:
    """The child's report section ``name``, renamed for the reproduction's page."""
    found = {s.name: s for s in read_sections(run_dir)}
    if name not in found:
        raise KeyError(f"{run_dir} has no section {name!r}")
    s = found[name]
    return dataclasses.replace(s, name=new_name, title=title,
                               caption=caption if caption is not None else s.caption)


def child_eval(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _steps(ctx: Context, samples: float) -> int:
    return ctx.scaled(samples / BATCH, minimum=4)


def _eval(ctx: Context) -> dict[str, int]:
    """The test evaluation: K = 1000 on 2,000 test images (scaled down below a budget of 0.01)."""
    return {"is_samples": ctx.measured(1000, minimum=10), "eval_examples": ctx.measured(2000, minimum=100)}


def _fmt(v: float, se: float | None = None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.2f}" if se is None else f"{v:.2f} ± {se:.2f}"


# ----------------------------------------------------------------------------- Figure 4


FIG4_DATA = (("mnist", MNIST_HIDDEN, 54_000), ("frey", FREY_HIDDEN, 1_591))


def _fig4_children(ctx: Context) -> list[dict[str, Any]]:
    return [kw_config(f"fig4-{dataset}", model="vae", dataset=dataset, latent_dim=2, hidden=hidden,
                      steps=_steps(ctx, 1e7), n_train=n_train, seed=ctx.seed, **_eval(ctx))
            for dataset, hidden, n_train in FIG4_DATA]


def _train_all(ctx: Context, children: list[dict[str, Any]]) -> list[Path] | None:
    """Train (or reuse) every child that ``ctx`` selects; None while any is still to train."""
    runs = [train_child(ctx, cfg) for cfg in children]
    return None if ctx.missing else runs


def _names(children: Callable[[Context], list[dict[str, Any]]]) -> Callable[[Context], list[str]]:
    return lambda ctx: [cfg["name"] for cfg in children(ctx)]


@reproduction(
    "kingma2014-fig4",
    "Kingma & Welling (2014), Figure 4: learned 2-D latent manifolds of MNIST and Frey Face (AEVB)",
    "10^7 training samples per dataset (MNIST 500 hidden, Frey Face 200 hidden); budget 0.3 took 16 min "
    "here (one thread, beside other jobs)",
    parts=_names(_fig4_children),
)
def fig4(ctx: Context) -> list[Section]:
    """AEVB with a 2-D latent space on MNIST and Frey Face; the decoder means over a 20x20 grid of z
    through the inverse Gaussian CDF, as the paper draws them (and the interactive explorer in each
    child's report)."""
    runs = _train_all(ctx, _fig4_children(ctx))
    if runs is None:
        return []
    out: list[Section] = []
    rows = []
    for (dataset, _, _), run in zip(FIG4_DATA, runs):
        label = "MNIST" if dataset == "mnist" else "Frey Face"
        out.append(child_section(run, "manifold", f"manifold-{dataset}", f"{label}: the learned manifold"))
        ev = child_eval(run)
        rows.append([label, ev.get("step", 0) * BATCH, _fmt(ev.get("elbo")),
                     _fmt(ev.get("log_px"), ev.get("log_px_stderr"))])
    out.append(TableSection(
        name="fig4-numbers", title="The two models",
        caption="Test-set ELBO and importance-sampled log p(x) (nats per example) of the 2-D models.",
        header=["data", "training samples", "test ELBO", "test log p(x) (IS)"], rows=rows))
    return out


# ----------------------------------------------------------------------------- Figure 5


FIG5_SIZES = (2, 5, 10, 20)


def _fig5_children(ctx: Context) -> list[dict[str, Any]]:
    return [kw_config(f"fig5-z{d}", model="vae", dataset="mnist", latent_dim=d, hidden=MNIST_HIDDEN,
                      steps=_steps(ctx, 1e7), n_train=54_000, seed=ctx.seed, **_eval(ctx))
            for d in FIG5_SIZES]


@reproduction(
    "kingma2014-fig5",
    "Kingma & Welling (2014), Figure 5: random MNIST samples for latent sizes 2, 5, 10 and 20 (AEVB)",
    "10^7 training samples per latent size (MNIST, 500 hidden units); budget 0.3 took 33 min here",
    parts=_names(_fig5_children),
)
def fig5(ctx: Context) -> list[Section]:
    """Samples E[x|z], z ~ N(0, I), from AEVB models with 2, 5, 10 and 20 latent variables."""
    runs = _train_all(ctx, _fig5_children(ctx))
    if runs is None:
        return []
    out: list[Section] = []
    rows = []
    for d, run in zip(FIG5_SIZES, runs):
        s = child_section(run, "samples", f"samples-z{d}", f"{d}-D latent space",
                          caption=f"100 random samples (decoder means), {d} latent variables.")
        out.append(s)
        ev = child_eval(run)
        rows.append([d, _fmt(ev.get("elbo")), _fmt(ev.get("log_px"), ev.get("log_px_stderr")),
                     ev.get("active_units", "-")])
    out.append(TableSection(
        name="fig5-numbers", title="The four models",
        caption="Test-set ELBO, importance-sampled log p(x) (nats) and active latent units.",
        header=["latent size", "test ELBO", "test log p(x) (IS)", "active units"], rows=rows))
    return out


# ----------------------------------------------------------------------------- Figure 2


def _bound_curves(runs: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[str]]:
    """Train and held-out lower bound against training samples, one curve each per run (one colour
    per run)."""
    xs, ys, labels, styles, colors = [], [], [], [], []
    for i, (label, run) in enumerate(runs.items()):
        rows = metric_rows(run)
        for split, style in (("train", "-"), ("valid", "--")):
            pts = [(r["step"] * BATCH, r["elbo"]) for r in rows if r.get("split") == split and "elbo" in r]
            if not pts:
                continue
            xs.append(np.array([p[0] for p in pts], float))
            ys.append(np.array([p[1] for p in pts], float))
            labels.append(f"{label} ({'train' if split == 'train' else 'held out'})")
            styles.append(style)
            colors.append(f"C{i}")
    n = max((len(x) for x in xs), default=1)
    pad = lambda a: np.concatenate([a, np.full(n - len(a), np.nan)])  # noqa: E731
    return (np.stack([pad(x) for x in xs]) if xs else np.zeros((0, 1)),
            np.stack([pad(y) for y in ys]) if ys else np.zeros((0, 1)), labels, styles, colors)


FIG2_GRIDS = (("mnist", MNIST_HIDDEN, 54_000, (3, 5, 10, 20, 200)),
              ("frey", FREY_HIDDEN, 1_591, (2, 5, 10, 20)))
FIG2_METHODS = (("vae", "AEVB"), ("wake_sleep", "wake-sleep"))


def _fig2_grid(ctx: Context) -> list[tuple[str, str, int, str, dict[str, Any]]]:
    """(dataset, its label, latent size, method label, child config) of every run."""
    out = []
    for dataset, hidden, n_train, sizes in FIG2_GRIDS:
        if ctx.budget < 0.01:  # a quick look: two latent sizes per dataset
            sizes = sizes[:2]
        label = "MNIST" if dataset == "mnist" else "Frey Face"
        for d in sizes:
            for model, name in FIG2_METHODS:
                cfg = kw_config(f"fig2-{dataset}-z{d}-{model}", model=model, dataset=dataset, latent_dim=d,
                                hidden=hidden, steps=_steps(ctx, 1e7), n_train=n_train, seed=ctx.seed,
                                **_eval(ctx))
                out.append((dataset, label, d, name, cfg))
    return out


def _fig2_children(ctx: Context) -> list[dict[str, Any]]:
    return [cfg for *_, cfg in _fig2_grid(ctx)]


@reproduction(
    "kingma2014-fig2",
    "Kingma & Welling (2014), Figure 2: the lower bound against training samples, AEVB and wake-sleep",
    "10^7 training samples per run; MNIST latent sizes 3, 5, 10, 20, 200 (500 hidden) and Frey Face "
    "2, 5, 10, 20 (200 hidden), AEVB and wake-sleep: 18 runs; budget 0.03 took 27 min here",
    parts=_names(_fig2_children),
)
def fig2(ctx: Context) -> list[Section]:
    """AEVB against wake-sleep: the lower bound of the training set (the logged window means) and of
    a held-out set, against the number of training samples evaluated, per latent size."""
    grid = _fig2_grid(ctx)
    trained = _train_all(ctx, [cfg for *_, cfg in grid])
    if trained is None:
        return []
    out: list[Section] = []
    rows = []
    by_size: dict[tuple[str, str, int], dict[str, Path]] = {}
    for (dataset, label, d, name, _), run in zip(grid, trained):
        by_size.setdefault((dataset, label, d), {})[name] = run
        ev = child_eval(run)
        rows.append([label, d, name, ev.get("step", 0) * BATCH, _fmt(ev.get("elbo")),
                     _fmt(ev.get("log_px"), ev.get("log_px_stderr"))])
    for (dataset, label, d), runs in by_size.items():
        x, y, labels, styles, colors = _bound_curves(runs)
        out.append(CurvesSection(
            name=f"fig2-{dataset}-z{d}", title=f"{label}, {d} latent variables",
            caption="Lower bound (nats per example) against training samples evaluated: solid the "
                    "training set (window means while training), dashed the held-out set.",
            x=x, y=y, labels=labels, styles=styles, colors=colors, xlabel="training samples evaluated",
            ylabel="lower bound (nats)", logx=True))
    out.append(TableSection(
        name="fig2-numbers", title="Final test numbers",
        caption="Test-set ELBO and importance-sampled log p(x) (nats per example) of each run's "
                "best-validation checkpoint; 'training samples' is where that checkpoint was taken.",
        header=["data", "latent size", "method", "training samples", "test ELBO", "test log p(x) (IS)"],
        rows=rows))
    return out


# ----------------------------------------------------------------------------- Figure 3


def _fig3_parts(ctx: Context) -> list[str]:
    from vaelab.reproduce.fig3 import fig3_parts

    return fig3_parts(ctx)


@reproduction(
    "kingma2014-fig3",
    "Kingma & Welling (2014), Figure 3: estimated marginal likelihood of AEVB, wake-sleep and Monte "
    "Carlo EM against training samples (MNIST, 3 latent variables, N = 1,000 and 50,000)",
    "AEVB and wake-sleep to 10^8 training samples, MCEM to 10^7; AIS on 1,000 training and 1,000 test "
    "images at 8 points per curve; budget 0.03 took 43 min here; at the full budget each part is a "
    "command of its own (--part): AEVB 74 min, wake-sleep 1 h 45 min, MCEM 48 min here (one thread each)",
    parts=_fig3_parts,
)
def fig3(ctx: Context) -> list[Section]:
    from vaelab.reproduce.fig3 import run_fig3

    return run_fig3(ctx)
