"""Choosing the global step size by short trials, as Kingma & Welling (2014, Section 5) chose
Adagrad's: "the Adagrad global stepsize parameters were chosen from {0.01, 0.02, 0.1} based on
performance on the training set in the first few iterations".

:func:`search_learning_rate` trains a copy of the model for a few hundred steps with each
candidate, every copy from the same initialisation and with the same random draws (batches,
binarisation, noise), and keeps the candidate whose copy has the highest lower bound on (a part of) the
training set (the mean per-example ``elbo`` of the loss, nats; ``-loss`` for a model that reports
no ELBO). The model itself is not touched and the caller's random streams are left as they were,
so the run that follows starts from the initialisation the trials started from.

It stands above ``train/`` (it drives the generic ``Trainer``) and knows no model or dataset: the
pipeline (``experiment.train_run``) calls it when ``train.lr_search`` is not empty.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.train.batching import TensorBatches
from vaelab.train.loop import NonFiniteLoss, Trainer

__all__ = ["LrSearch", "search_learning_rate", "LR_SEARCH_FILE", "write_lr_search", "read_lr_search"]

LR_SEARCH_FILE = "lr_search.json"
"""Where a run folder records its search (``experiment.train_run``)."""


@dataclass
class LrSearch:
    """The outcome of :func:`search_learning_rate`.

    candidates: the step sizes tried, in the order given. bounds: for each, the training-set
    lower bound (nats per example) after ``steps`` steps; -inf where the trial's loss became
    non-finite. chosen: the candidate with the highest bound (the first of equals).
    """

    candidates: list[float]
    bounds: list[float]
    chosen: float
    steps: int

    def describe(self) -> str:
        """One line for a person: every candidate's bound, and the choice."""
        tried = ", ".join(f"{lr:g}: {b:.2f}" for lr, b in zip(self.candidates, self.bounds))
        return (f"lr search: chose train.lr = {self.chosen:g} (training-set lower bound after "
                f"{self.steps} steps, nats: {tried})")


def search_learning_rate(
    model: nn.Module,
    cfg: TrainConfig,
    train_batches: TensorBatches,
    candidates: list[float],
    steps: int,
    score_examples: int = 10_000,
) -> LrSearch:
    """The candidate step size whose short trial reaches the best training-set lower bound.

    Each trial is ``steps`` optimizer steps of a deep copy of ``model`` (its initialisation) with
    ``cfg``'s optimizer, batch size and weight decay, at a constant step size (no schedule,
    warm-up, averaging, time limit or compilation: a trial measures the step size alone), the
    global generator seeded with ``cfg.seed`` first. It is then scored in eval mode on the first
    batches of ``train_batches``' first epoch, about ``score_examples`` examples (the same ones for
    every candidate; all processes together in a data-parallel run, so all choose alike): the mean
    of the loss's ``elbo``. Scoring on a part of the training set keeps the search's cost near
    that of its trials (a pass over MNIST's 60,000 images costs more than 200 steps).

    Args:
        model: a module whose ``forward(batch)`` returns a ``LossOutput`` (what ``Trainer`` takes).
        candidates: step sizes > 0, e.g. [0.01, 0.02, 0.1].
        steps: optimizer steps per trial (>= 1).
        score_examples: how many training examples (at least one batch) score a trial.
    """
    if not candidates or any(not lr > 0 for lr in candidates):
        raise VaelabError(f"train.lr_search must list step sizes > 0, got {candidates}")
    if steps < 1:
        raise VaelabError(f"train.lr_search_steps must be >= 1, got {steps}")
    trial_cfg = replace(cfg, schedule="constant", warmup_steps=0, max_steps=steps, ema_decay=0.0,
                        time_limit_min=0.0, patience=0, log_every=steps, eval_every=0, compile=False)
    device = next(model.parameters()).device
    score = _FirstBatches(train_batches, max(1, -(-score_examples // cfg.batch_size)))
    bounds: list[float] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for lr in candidates:
            trial = copy.deepcopy(model)
            torch.manual_seed(cfg.seed)
            trainer = Trainer(trial, replace(trial_cfg, lr=lr, lr_final=lr), train_batches)
            try:
                trainer.fit()
                terms = trainer.evaluate(score)
                bound = terms["elbo"] if "elbo" in terms else -terms["loss"]
            except NonFiniteLoss:
                bound = -math.inf
            bounds.append(bound if math.isfinite(bound) else -math.inf)
            del trainer, trial
    best = max(range(len(candidates)), key=lambda i: bounds[i])  # the first of equals
    if math.isinf(bounds[best]):
        raise VaelabError(f"train.lr_search: the loss became non-finite with every step size of "
                          f"{candidates}; try smaller ones")
    return LrSearch(list(candidates), bounds, candidates[best], steps)


@dataclass
class _FirstBatches:
    """The first ``n`` batches of each epoch of ``batches`` (what ``Trainer.evaluate`` iterates)."""

    batches: TensorBatches
    n: int

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator:
        return itertools.islice(self.batches.epoch(epoch, start), max(0, self.n - start))

    def __len__(self) -> int:
        return min(self.n, len(self.batches))


def write_lr_search(run_dir: str | Path, search: LrSearch) -> Path:
    """``run_dir/lr_search.json``: the search's candidates, bounds (-inf as null), choice, steps."""
    path = Path(run_dir) / LR_SEARCH_FILE
    payload = asdict(search)
    payload["bounds"] = [b if math.isfinite(b) else None for b in search.bounds]
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def read_lr_search(run_dir: str | Path) -> LrSearch | None:
    """The search a run folder recorded, or None when it has none."""
    path = Path(run_dir) / LR_SEARCH_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        bounds = [-math.inf if b is None else float(b) for b in d["bounds"]]
        return LrSearch([float(c) for c in d["candidates"]], bounds, float(d["chosen"]), int(d["steps"]))
    except (ValueError, KeyError, TypeError):
        raise VaelabError(f"{path} is damaged; delete it to search again, or restore it") from None
