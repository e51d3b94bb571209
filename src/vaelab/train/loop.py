"""The training loop: small, generic, and ignorant of what is being trained.

It sees a model whose ``forward(batch)`` returns a ``LossOutput`` (``loss`` plus named per-example
terms) and whose ``train_step`` (declared on ``Model``) it sets before every step, an iterable
of batches, and a ``TrainConfig``. Schedules are pure functions of the step;
logging, checkpointing and early stopping are callbacks. A non-finite loss stops the run with a
clear message and writes no checkpoint, so the last good one stays. Ctrl-C or SIGTERM finishes the
current step, writes a resumable checkpoint and stops; a second signal stops at once.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vaelab.config import TrainConfig
from vaelab.errors import VaelabError
from vaelab.evaluation.metrics import loss_term_sums
from vaelab.threads import torch_threads
from vaelab.train import checkpoint as ckpt
from vaelab.train.averaging import ParameterAverage, raw_weight_tensors, raw_weights
from vaelab.train.batching import TensorBatches, batch_seed
from vaelab.train.callbacks import Callback
from vaelab.train.schedules import learning_rate

__all__ = ["Trainer", "build_optimizer", "NonFiniteLoss", "noise_seed"]


class NonFiniteLoss(VaelabError):
    pass


def build_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW with the fused kernel (one pass over all parameters), Adagrad with foreach."""
    params = list(params)
    if cfg.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                   fused=True)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(
            params, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True
        )
    raise VaelabError(f"unknown optimizer {cfg.optimizer!r}")


class _Interrupt:
    """SIGINT (Ctrl-C) and SIGTERM (what a cluster scheduler or ``docker stop`` sends) set a flag that
    the loop checks between steps: the step finishes, a resumable checkpoint is written, and the run
    stops. A second signal stops at once (KeyboardInterrupt); the checkpoint before it stays."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        try:
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._restore()
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    def __exit__(self, *exc):
        self._restore()
        return False


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def noise_seed(seed: int, step: int, rank: int) -> int:
    """The seed of the global generator for ``step`` on process ``rank`` of a multi-process run
    (an index of its own, -3, apart from the batches' binarisation seeds)."""
    return batch_seed(seed, step, -3, rank)


def collective_device(model_device: torch.device) -> torch.device:
    """Where the tensors of this process group's collectives must live: nccl reduces only CUDA
    tensors (the model's device); gloo and the others reduce CPU tensors. Needs an initialised group."""
    return model_device if dist.get_backend() == dist.Backend.NCCL else torch.device("cpu")


def selection_value(metrics: dict[str, float]) -> float:
    """What the ``best`` checkpoint (and early stopping) minimises over validations: the negative
    bound, -elbo, when the model reports one, else the loss. The bound is what evaluation reports; the
    training loss may weigh in a KL schedule, free bits or a VQ-VAE's commitment term (which grows
    with the scale of the encoder's outputs), so its minimum need not be the best model."""
    elbo = metrics.get("elbo")
    return metrics["loss"] if elbo is None or not math.isfinite(elbo) else -elbo


class Trainer:
    """Fits ``model`` on ``train_batches``; evaluates on ``valid_batches``.

    Args:
        model: an ``nn.Module`` whose ``forward(batch)`` returns an object with a scalar ``loss``
            and a ``scalar_vector()`` method (``vaelab.models.LossOutput``). Its ``train_step``
            (declared on ``vaelab.models.Model``) is set to the global step before every step, for
            the schedules inside the loss.
        cfg: the ``[train]`` section.
        train_batches / valid_batches: ``TensorBatches`` (anything with ``epoch(e, start)`` and
            ``len``).
        run_dir: where ``checkpoints/`` go (None: no checkpoints).
        meta: JSON facts stored in every checkpoint (run config, data spec) - the trainer does not
            read them.
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        train_batches: TensorBatches,
        valid_batches: TensorBatches | None = None,
        *,
        run_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
        meta: dict[str, Any] | None = None,
    ):
        self.model = model
        self.cfg = cfg
        self.train_batches = train_batches
        self.valid_batches = valid_batches
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.meta = meta or {}
        self.rank, self.world = _distributed()
        # in a process group (torchrun), even of one process: DDP, and stop and metrics reductions
        self.distributed = dist.is_available() and dist.is_initialized()
        self.callbacks = list(callbacks) if self.rank == 0 else []
        self.optimizer = build_optimizer(model.parameters(), cfg)
        self.average = None
        if cfg.ema_decay:
            self.average = ParameterAverage(model.named_parameters(), cfg.ema_decay, cfg.ema_every)
        self.steps_per_epoch = len(train_batches)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.step = 0
        self.best_valid = math.inf
        self.evals_without_improvement = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self.stop_reason: str | None = None
        self.stop_signal: int | None = None  # the signal (SIGINT, SIGTERM) that stopped the run
        self.failure: str | None = None
        self.last_checkpoint: Path | None = None
        self._ddp = None
        self._step_fn = None

    # ----------------------------------------------------------------------------- state
    def _trainer_tensors(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors, info = ckpt.flatten_optimizer_state(self.optimizer.state_dict())
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        return tensors, info

    def save_checkpoint(self) -> Path | None:
        if self.run_dir is None or self.rank != 0:
            return None
        if self.last_checkpoint is not None and self.last_checkpoint.name == f"step_{self.step:08d}":
            return self.last_checkpoint
        self._assert_healthy()
        tensors, optim_info = self._trainer_tensors()
        if self.average is not None:  # the raw training weights: what a resumed run continues from
            tensors.update(raw_weight_tensors(self.average.training_state()))
        meta = {
            **self.meta,
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "elapsed": self.elapsed + (time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0),
            "best_valid": None if math.isinf(self.best_valid) else self.best_valid,
            "evals_without_improvement": self.evals_without_improvement,
            "optimizer": optim_info,
            "ema_updates": self.average.updates if self.average is not None else None,
        }
        folder = self.run_dir / "checkpoints" / f"step_{self.step:08d}"
        self.last_checkpoint = ckpt.save_checkpoint(folder, self.weights_for_use(), meta, tensors)
        for old in ckpt.list_checkpoints(self.run_dir / "checkpoints")[: -self.cfg.keep_checkpoints]:
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        return self.last_checkpoint

    def weights_for_use(self) -> dict[str, torch.Tensor]:
        """The model's state_dict, with the averaged weights when ``train.ema_decay`` is on."""
        state = self._raw_model().state_dict()
        if self.average is not None:
            state.update(self.average.averaged_state())
        return state

    @staticmethod
    def _window_means(sums: dict[tuple[str, ...], torch.Tensor], n: int) -> dict[str, float]:
        """Means over the logging window of the accumulated term vectors (one host sync each)."""
        row: dict[str, float] = {}
        for names, total in sums.items():
            row.update(zip(names, (total / n).tolist()))
        return row

    def _assert_healthy(self) -> None:
        """Never checkpoint a state that went non-finite: pending losses and every parameter."""
        sums = getattr(self, "_sums", {})
        if sums and self._n_sum:
            self._check_finite(self._window_means(sums, self._n_sum)["loss"])
        # the largest |value| of each parameter (NaN and inf propagate through it), one host sync:
        # a seventh of the time of an isfinite pass per parameter
        peaks = [p.detach().abs().amax() for p in self._raw_model().parameters() if p.numel()]
        if peaks and not bool(torch.isfinite(torch.stack(peaks)).all()):
            self._check_finite(float("nan"))

    def _save_best(self) -> None:
        if self.run_dir is None or self.rank != 0:
            return
        meta = {**self.meta, "step": self.step, "epoch": self.step / self.steps_per_epoch,
                "best_valid": self.best_valid}
        ckpt.save_checkpoint(self.run_dir / "checkpoints" / "best", self.weights_for_use(), meta,
                             update_latest=False)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore weights, optimizer, step, RNG and early-stopping state: training continues exactly."""
        c = ckpt.load_checkpoint(path, with_trainer_state=True)
        if self.average is not None:
            self.average.unswap()
        ckpt.load_model_weights(self._raw_model(), c)  # the weights for use: averaged, if averaging was on
        assert c.trainer_state is not None
        raw = raw_weights(c.trainer_state)
        if self.average is not None:  # without a saved average it starts from the checkpoint's weights
            self.average.load(c.model_state, (c.meta.get("ema_updates") or 0) if raw else 0)
        if raw:
            params = dict(self._raw_model().named_parameters())
            if set(raw) != {n for n, p in params.items() if p.requires_grad}:
                raise VaelabError(f"checkpoint {c.path} has training weights that do not fit this model; "
                                  "resume with the run's own config")
            with torch.no_grad():
                for n, v in raw.items():
                    params[n].copy_(v)
        state = ckpt.unflatten_optimizer_state(c.trainer_state, c.meta["optimizer"])
        try:
            self.optimizer.load_state_dict(state)
        except (ValueError, KeyError) as exc:
            raise VaelabError(f"checkpoint {c.path} has optimizer state that does not fit train.optimizer="
                              f"{self.cfg.optimizer!r} ({exc}); resume with the run's own config") from None
        torch.set_rng_state(c.trainer_state["rng.cpu"])
        cuda_states = [c.trainer_state[k] for k in sorted(c.trainer_state) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        self.step = int(c.meta["step"])
        self.elapsed = float(c.meta.get("elapsed", 0.0))
        best = c.meta.get("best_valid")
        self.best_valid = math.inf if best is None else float(best)
        self.evals_without_improvement = int(c.meta.get("evals_without_improvement", 0))
        self.last_checkpoint = c.path

    # ----------------------------------------------------------------------------- the loop
    def _raw_model(self) -> nn.Module:
        return self.model

    def _forward_model(self) -> nn.Module:
        if self.distributed and self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            self._ddp = DistributedDataParallel(self.model)
        return self._ddp if self._ddp is not None else self.model

    def _loss_fn(self):
        fwd = self._forward_model()
        if self.cfg.compile and self._step_fn is None:
            self._step_fn = torch.compile(fwd)
        fn = self._step_fn if self._step_fn is not None else fwd
        if self.cfg.precision == "fp32":
            return fn
        device_type = next(self.model.parameters()).device.type

        def autocast_loss(batch):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                return fn(batch)

        return autocast_loss

    def _emit(self, row: dict) -> None:
        for cb in self.callbacks:
            cb.on_log(self, row)

    def _set_lr(self) -> float:
        lr = learning_rate(self.step, self.total_steps, self.cfg.lr, self.cfg.lr_final, self.cfg.schedule,
                           self.cfg.warmup_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            where = f"; the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else ""
            raise NonFiniteLoss(f"training stopped at step {self.step}: the loss became {value}{where}; "
                                "lower train.lr or set train.grad_clip (e.g. --set train.grad_clip=10)")

    def fit(self, resume: str | Path | None = None) -> Trainer:
        """Train until ``total_steps``, a time limit, early stopping, Ctrl-C/SIGTERM or a failure.

        ``train.threads`` holds only while fitting: torch's thread count is restored on the way out.
        """
        with torch_threads(self.cfg.threads):
            return self._fit(resume)

    def _fit(self, resume: str | Path | None) -> Trainer:
        if self.average is not None:  # fit() after fit(): train the raw weights
            self.average.unswap()
        if resume is not None:
            self.load_checkpoint(resume)
        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        loss_fn = self._loss_fn()
        eval_every = self.cfg.eval_every or self.steps_per_epoch
        log_every = max(1, self.cfg.log_every)
        sums: dict[tuple[str, ...], torch.Tensor] = {}  # term names -> summed batch means
        n_sum = 0
        self._sums, self._n_sum = sums, n_sum
        self._t0 = time.perf_counter()
        deadline = self._t0 + self.cfg.time_limit_min * 60 - self.elapsed if self.cfg.time_limit_min else None
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            with _Interrupt() as interrupt:
                while self.step < self.total_steps and self.stop_reason is None:
                    epoch, start = divmod(self.step, self.steps_per_epoch)
                    for batch in self.train_batches.epoch(epoch, start):
                        lr = self._set_lr()
                        if not model.training:  # a walk over every submodule: only after evaluation
                            model.train()
                        model.train_step = self.step  # the step, for schedules inside the loss
                        if self.world > 1:
                            # each process its own noise (the reparameterisation's eps, dropout): a
                            # pure function of (seed, step, rank), so a resumed run draws it again
                            # exactly without every rank's generator state in the checkpoint; one
                            # process keeps the stream torch.manual_seed(train.seed) started
                            torch.manual_seed(noise_seed(self.cfg.seed, self.step, self.rank))
                        out = loss_fn(batch)
                        for p in params:  # zero_grad(set_to_none=True) without its per-step wrapper
                            p.grad = None
                        out.loss.backward()
                        if self.cfg.grad_clip:
                            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip, foreach=True)
                        self.optimizer.step()
                        self.step += 1
                        if self.average is not None:
                            self.average.update(self.step, last=self.step == self.total_steps)
                        names, values = out.scalar_vector()
                        sums[names] = sums[names] + values if names in sums else values
                        n_sum += 1
                        self._sums, self._n_sum = sums, n_sum
                        if self.step % log_every == 0 or self.step == self.total_steps:
                            row = self._window_means(sums, n_sum)
                            self._check_finite(row["loss"])
                            self._emit({"split": "train", "step": self.step,
                                        "epoch": round(self.step / self.steps_per_epoch, 4),
                                        "time": round(self.elapsed + time.perf_counter() - self._t0, 3),
                                        "lr": lr, **row})
                            sums, n_sum = {}, 0
                            self._sums, self._n_sum = sums, n_sum
                        if self.valid_batches is not None and (
                            self.step % eval_every == 0 or self.step == self.total_steps
                        ):
                            self._validate()
                        if interrupt.requested:
                            self.stop_signal = interrupt.signum
                            name = "Ctrl-C" if interrupt.signum == signal.SIGINT else "SIGTERM"
                            self.stop_reason = f"interrupted ({name})"
                        if deadline is not None and time.perf_counter() > deadline:
                            self.stop_reason = f"time limit of {self.cfg.time_limit_min} min reached"
                        # after validation, so a checkpoint holds the RNG state the next step sees
                        for cb in self.callbacks:
                            cb.on_step_end(self)
                        if self._should_stop(log_every):
                            break
            self._assert_healthy()  # a partial logging window: check it before the final checkpoint
        except (NonFiniteLoss, ckpt.CheckpointWriteError) as exc:  # no final checkpoint on the way out
            self.failure = str(exc)
            raise
        finally:
            self.elapsed += time.perf_counter() - self._t0
            del self._t0
            # the DDP wrapper (its gradient buckets, and a reference to the process group) goes with
            # the training: fit() builds it again when called again
            if self._ddp is not None:
                self._ddp = self._step_fn = None
            for cb in self.callbacks:
                cb.on_train_end(self)
            if self.average is not None and self.failure is None:
                self.average.swap()  # the model now holds the averaged weights, as the checkpoints do
        return self

    def _should_stop(self, every: int) -> bool:
        """Whether to leave the loop after this step.

        One process stops as soon as a stop is asked for. The processes of a data-parallel run must
        all stop after the same step (each step's gradient reduction needs all of them), but a stop
        can be asked for on one alone (its Ctrl-C, its clock, rank 0's early stopping). So they share
        their requests at steps all of them agree on, every ``every`` steps and at each epoch's end,
        and stop there together: a request waits at most ``every`` steps.
        """
        if self.step >= self.total_steps:
            return True
        if not self.distributed:
            return self.stop_reason is not None
        if self.step % every and self.step % self.steps_per_epoch:
            return False
        self._sync_stop()
        return self.stop_reason is not None

    def _sync_stop(self) -> None:
        """Every process learns whether any asked to stop (one all-reduce, on the group's device)."""
        device = collective_device(next(self.model.parameters()).device)
        flag = torch.tensor([1.0 if self.stop_reason else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and not self.stop_reason:
            self.stop_reason = "stopped on another process"

    def evaluate(self, batches: TensorBatches) -> dict[str, float]:
        """Mean of every loss term over all batches (all processes together), model in eval mode."""
        sums, count = loss_term_sums(self.model, batches.epoch(0))
        keys = sorted(sums)
        cpu = torch.device("cpu")
        device = collective_device(next(self.model.parameters()).device) if self.distributed else cpu
        count_t = torch.tensor(float(count), device=device)
        vec = torch.stack([sums[k].float().to(device) for k in keys] + [count_t])
        if self.distributed:
            dist.all_reduce(vec)
        metrics = {k: (vec[i] / vec[-1]).item() for i, k in enumerate(keys)}
        extra = getattr(self.model, "validation_metrics", None)  # vaelab.models.Model declares it
        if extra is not None and not self.distributed:  # whole-set figures need all the data
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    metrics.update(extra(batches.epoch(0)))
            finally:
                self.model.train(was_training)
        return metrics

    def _validate(self) -> None:
        if self.average is None:
            return self._validate_current()
        self.average.swap()  # validate (and keep as best) the averaged weights
        try:
            self._validate_current()
        finally:
            self.average.swap()

    def _validate_current(self) -> None:
        metrics = self.evaluate(self.valid_batches)
        self._check_finite(metrics["loss"])
        value = selection_value(metrics)
        if value < self.best_valid:
            self.best_valid = value
            self.evals_without_improvement = 0
            self._save_best()
        else:
            self.evals_without_improvement += 1
        self._emit({"split": "valid", "step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
                    "time": round(self.elapsed + time.perf_counter() - self._t0, 3), **metrics})
        for cb in self.callbacks:
            cb.on_eval_end(self, metrics)
