"""Kingma & Welling (2014), Figure 3: the marginal likelihood of AEVB, wake-sleep and Monte Carlo EM.

MNIST, 100 hidden units, 3 latent variables, training sets of N = 1,000 and N = 50,000 images. The
estimated marginal likelihood of 1,000 training and 1,000 test images (one fixed binarisation each)
is measured by annealed importance sampling (``vaelab.evaluation.ais``), which needs no encoder, so
the three methods are measured on one yardstick, at 8 points per curve spaced by half decades of
training samples (the last at the run's end). AEVB and wake-sleep train to 10^8 training samples,
MCEM to 10^7 (the paper's axes); the points of the three curves coincide where their ranges overlap,
so "at the same number of training samples" is an exact comparison.

Training samples evaluated = optimizer steps x M (M = 100). For MCEM each HMC sample serves 5 weight
updates (K&W Section 5), and each update counts M samples.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vaelab.reproduce import Context
from vaelab.reproduce.kingma2014 import BATCH, kw_config, train_child
from vaelab.sections import CurvesSection, Section, TableSection, TextSection
from vaelab.train.callbacks import Callback

__all__ = ["AISCurve", "run_fig3", "fig3_parts", "curve_points", "AIS_SETTINGS"]

HIDDEN, LATENT = 100, 3
METHODS = (("vae", "AEVB", 1e8), ("wake_sleep", "wake-sleep", 1e8), ("mcem", "MCEM", 1e7))
SIZES = (1_000, 50_000)
POINTS = 8
AIS_SETTINGS = {"n_steps": 100, "chains": 2, "leapfrog": 5}
"""AIS along the curves (``vaelab.evaluation.ais.AISSettings``): with 3 latent variables the posterior
is easy; REPRODUCTIONS.md shows doubling the distributions moves the estimate by less than 0.2 nats."""


def curve_points(steps: int, n: int = POINTS) -> list[int]:
    """``n`` steps spaced by half decades, ending at ``steps``: steps * 10^(-k/2), k = n-1 .. 0."""
    pts = sorted({max(1, round(steps * 10 ** (-k / 2))) for k in range(n)})
    return pts


class AISCurve(Callback):
    """At the given steps, the AIS estimate of log p(x) on fixed example sets, appended to
    ``<run>/ais.jsonl`` (one row per step: samples, and per set its mean and standard error).

    The random numbers AIS draws come from a forked generator seeded by the step, so measuring does
    not change the training run, and a resumed run measures the remaining points as an uninterrupted
    one would. Points already in the file (a resumed run) are not measured again."""

    def __init__(self, run_dir: Path, points: list[int], sets: dict[str, torch.Tensor],
                 settings: dict[str, int], seed: int = 0):
        self.path = run_dir / "ais.jsonl"
        self.points = set(points)
        self.sets = sets
        self.settings = settings
        self.seed = seed

    def _done(self) -> set[int]:
        if not self.path.is_file():
            return set()
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return {json.loads(line)["step"] for line in lines if line}

    def on_step_end(self, trainer: Any) -> None:
        if trainer.step not in self.points or trainer.step in self._done():
            return
        model = trainer.model
        was_training = model.training
        model.eval()
        row: dict[str, Any] = {"step": trainer.step, "samples": trainer.step * trainer.cfg.batch_size}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + trainer.step)
            for name, x in self.sets.items():
                res = ais_estimate(model, x.to(model.device), self.settings)
                row.update({name: res.mean, f"{name}_stderr": res.stderr,
                            f"{name}_chain_stderr": res.chain_stderr_of_mean, f"{name}_seconds": res.seconds,
                            f"{name}_per_example": [round(v, 4) for v in res.log_px.tolist()]})
        model.train(was_training)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")


def ais_estimate(model: Any, x: torch.Tensor, settings: dict[str, int]) -> Any:
    """The AIS estimates (``AISResult``) of log p(x) of the examples ``x``."""
    from vaelab.evaluation.ais import AISSettings, ais_log_likelihood

    return ais_log_likelihood(model, list(x.split(500)), AISSettings(**settings))


def _read_curve(run: Path) -> list[dict[str, Any]]:
    path = run / "ais.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])


def _fixed_sets(ctx: Context, n_train: int) -> dict[str, torch.Tensor]:
    from vaelab.config import DataConfig
    from vaelab.data import load_dataset

    bundle = load_dataset(DataConfig(name="mnist", binarize="dynamic", valid_size=0, limit=n_train))
    k = ctx.measured(1000, minimum=10)
    train, test = bundle.eval_images("train"), bundle.eval_images("test")
    return {"train": train[:k].contiguous(), "test": test[:k].contiguous()}


def _children(ctx: Context) -> list[tuple[int, int, str, dict[str, Any]]]:
    """(N, the training images used, method label, child config) of each of the six runs."""
    out = []
    for n_train in SIZES:
        n = n_train if ctx.budget >= 0.01 else min(n_train, ctx.scaled_log(n_train, minimum=200))
        for model, label, samples in METHODS:
            steps = ctx.scaled(samples / BATCH, minimum=4)
            cfg = kw_config(f"fig3-n{n_train}-{model}", model=model, dataset="mnist", latent_dim=LATENT,
                            hidden=HIDDEN, steps=steps, n_train=n, limit=n, valid_size=0, seed=ctx.seed,
                            eval_every=steps)
            out.append((n_train, n, label, cfg))
    return out


def fig3_parts(ctx: Context) -> list[str]:
    """The six child runs' names (``vaelab reproduce kingma2014-fig3 --part NAME``)."""
    return [cfg["name"] for _, _, _, cfg in _children(ctx)]


def run_fig3(ctx: Context) -> list[Section]:
    settings = dict(AIS_SETTINGS)
    settings["n_steps"] = ctx.measured(settings["n_steps"], minimum=10)
    curves: dict[tuple[int, str], list[dict[str, Any]]] = {}
    sets: dict[int, dict[str, torch.Tensor]] = {}
    for n_train, n, label, cfg in _children(ctx):
        run_dir = ctx.child(cfg["name"])
        if ctx.selected(cfg["name"]) and n_train not in sets:
            sets[n_train] = _fixed_sets(ctx, n)
        steps = cfg["train"]["max_steps"]
        cb = AISCurve(run_dir, curve_points(steps), sets.get(n_train, {}), settings, seed=ctx.seed)
        train_child(ctx, cfg, callbacks=[cb], evaluate=False)
        curves[(n_train, label)] = _read_curve(run_dir)
    if ctx.missing:
        return []
    return _fig3_sections(curves, settings, ctx)


def _fig3_sections(curves: dict[tuple[int, str], list[dict[str, Any]]], settings: dict[str, int],
                   ctx: Context) -> list[Section]:
    out: list[Section] = []
    table = []
    for n_train in SIZES:
        xs, ys, labels, styles, colors = [], [], [], [], []
        for i, (_, label, _) in enumerate(METHODS):
            rows = curves.get((n_train, label), [])
            for split, style in (("train", "-o"), ("test", "--o")):
                pts = [(r["samples"], r[split]) for r in rows if split in r]
                if pts:
                    xs.append([p[0] for p in pts])
                    ys.append([p[1] for p in pts])
                    labels.append(f"{label} ({split})")
                    styles.append(style)
                    colors.append(f"C{i}")
            if rows:
                last = rows[-1]
                table.append([f"{n_train:,}", label, f"{last['samples']:.3g}",
                              f"{last['train']:.2f} ± {last['train_stderr']:.2f}",
                              f"{last['test']:.2f} ± {last['test_stderr']:.2f}"])
        width = max((len(x) for x in xs), default=1)

        def pad(a: list[float], width: int = width) -> np.ndarray:
            return np.array(list(a) + [np.nan] * (width - len(a)), float)

        out.append(CurvesSection(
            name=f"fig3-n{n_train}", title=f"N = {n_train:,} training images",
            caption="Estimated marginal likelihood log p(x) (AIS, nats per example) of 1,000 training "
                    "(solid) and 1,000 test (dashed) images against training samples evaluated.",
            x=np.stack([pad(x) for x in xs]) if xs else np.zeros((0, 1)),
            y=np.stack([pad(y) for y in ys]) if ys else np.zeros((0, 1)),
            labels=labels, styles=styles, colors=colors, xlabel="training samples evaluated",
            ylabel="marginal log-likelihood (nats)", logx=True))
    out.append(TableSection(
        name="fig3-table", title="Final estimated marginal likelihood",
        caption=f"AIS with {settings['n_steps']} distributions, {settings['chains']} chains, "
                f"{settings['leapfrog']} leapfrog steps; ± one standard error over the examples.",
        header=["N", "method", "training samples", "train log p(x)", "test log p(x)"], rows=table))
    out.append(TextSection(name="fig3-verdict", title="The paper's finding, checked",
                           caption="Computed from the curves above.", texts=verdict(curves)))
    return out


def _at(rows: list[dict[str, Any]], samples: float) -> dict[str, Any] | None:
    for r in rows:
        if math.isclose(r["samples"], samples, rel_tol=1e-6):
            return r
    return None


def _ahead(a: dict[str, Any], b: dict[str, Any], split: str) -> tuple[float, float, float]:
    """a - b on ``split``; the standard error of the difference treating the two means as
    independent, and the paired one (the same examples: the spread of the per-example differences)."""
    diff = a[split] - b[split]
    se = math.hypot(a[f"{split}_stderr"], b[f"{split}_stderr"])
    pa, pb = a.get(f"{split}_per_example"), b.get(f"{split}_per_example")
    paired = float("nan")
    if pa and pb and len(pa) == len(pb) > 1:
        d = np.asarray(pa) - np.asarray(pb)
        paired = float(d.std(ddof=1) / math.sqrt(len(d)))
    return diff, se, paired


def verdict(curves: dict[tuple[int, str], list[dict[str, Any]]]) -> list[str]:
    """Lines saying whether K&W's Figure 3 findings hold in these curves: at N = 50,000 AEVB ahead of
    wake-sleep (at its last point) and of MCEM (at MCEM's last point) by more than 2 standard errors,
    on the test set, at the same number of training samples; MCEM competitive only at N = 1,000."""
    lines = []
    big, small = SIZES[1], SIZES[0]
    for other in ("wake-sleep", "MCEM"):
        for n in (big, small):
            aevb, rows = curves.get((n, "AEVB"), []), curves.get((n, other), [])
            if not aevb or not rows:
                continue
            b = rows[-1]
            a = _at(aevb, b["samples"])
            if a is None:
                continue
            diff, se, paired = _ahead(a, b, "test")
            holds = "AEVB ahead by more than 2 s.e." if diff > 2 * se else "not ahead by 2 s.e."
            also = "" if math.isnan(paired) else f"; paired s.e. {paired:.2f} (same images): " + (
                "ahead by more than 2 paired s.e." if diff > 2 * paired else "not ahead by 2 paired s.e.")
            lines.append(f"N = {n:,}, at {b['samples']:.3g} training samples: AEVB - {other} = {diff:+.2f} "
                         f"nats (test), s.e. {se:.2f}: {holds}{also}")
    return lines or ["(no overlapping points to compare)"]
