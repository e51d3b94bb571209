"""Validation ELBO of a run's averaged weights against its raw training weights (latest checkpoint).

A run trained with ``train.ema_decay`` stores the average as the checkpoint's weights
(``model.safetensors``) and the raw training weights in the trainer state (``raw.*`` in
``trainer.safetensors``). This evaluates both on the validation split with the same seed: it
measures a recipe decision (whether to average), and those are made on validation data, never on
the test split, which is kept for the final figure alone.

    python benchmarks/averaging_gain.py runs/vae_mnist_v3
"""

from __future__ import annotations

import argparse
import sys

import torch

from vaelab.errors import VaelabError
from vaelab.evaluation import mean_loss_terms
from vaelab.experiment import load_run_model, prepare
from vaelab.train import checkpoint as ckpt
from vaelab.train.averaging import raw_weights


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run folder trained with train.ema_decay > 0")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        model, cfg, path = load_run_model(args.run, torch.device("cpu"), which="latest")
        c = ckpt.load_checkpoint(path, with_trainer_state=True)
    except VaelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    raw = raw_weights(c.trainer_state)
    if not raw:
        print(f"error: {path} holds no raw training weights; was it trained with train.ema_decay?",
              file=sys.stderr)
        return 2
    prep = prepare(cfg, torch.device("cpu"))
    split, batches = "valid", prep.valid
    if batches is None:
        print(f"error: {args.run} has no validation split (data.valid_size = 0); the averaging gain is "
              "measured on validation data only, so train with data.valid_size > 0", file=sys.stderr)
        return 2
    for name, state in [("averaged", c.model_state), ("raw", raw)]:
        model.load_state_dict(state, strict=False)
        torch.manual_seed(args.seed)
        terms = mean_loss_terms(model, batches.epoch(0))
        print(f"{path.name} {name:8s} {split} ELBO {terms['elbo']:.3f}  KL {terms['kl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
