"""The training loop of the small plain-PyTorch classifiers that score generated data
(benchmarks/vq_mnist_classes.py on MNIST samples, benchmarks/vq_speech_eval.py on FSDD audio):
cross-entropy, Adam, the learning rate decaying by cosine from lr to lr / 10 (the last epochs settle
the weights), a seeded shuffle every epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fit_classifier(clf: nn.Module, x: Tensor, y: Tensor, *, epochs: int, batch_size: int, lr: float,
                   seed: int, after_epoch: Callable[[int, float], None]) -> float:
    """Train ``clf`` on x (N, ...) and labels y (N,) for ``epochs``; ``after_epoch(epoch, seconds)``
    is called after each epoch (1-based, seconds since the start). Returns the training time in s."""
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    total = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        clf.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        after_epoch(epoch + 1, time.perf_counter() - start)
    return time.perf_counter() - start
