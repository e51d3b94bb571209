"""Callbacks: everything around the optimisation step that is not the step itself.

The trainer calls, in order: ``on_train_start``; per step ``on_step_end``; ``on_log`` for each
metrics row (train and valid); ``on_eval_end`` after each validation; ``on_train_end``. A callback
stops the run by setting ``trainer.stop_reason``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vaelab.train.loop import Trainer

__all__ = ["Callback", "ProgressBar", "JsonlLogger", "TensorBoardLogger", "Checkpointer", "EarlyStopping"]


class Callback:
    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_log(self, trainer: Trainer, row: dict) -> None: ...

    def on_eval_end(self, trainer: Trainer, metrics: dict) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar over all steps with the live loss; off in non-interactive runs unless ``enabled``."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None

    def on_train_start(self, trainer: Trainer) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.step,
            unit="step",
            dynamic_ncols=True,
            desc="train",
            file=sys.stderr,
        )

    def on_step_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_log(self, trainer: Trainer, row: dict) -> None:
        if self.bar is None:
            return
        key = "valid_loss" if row["split"] == "valid" else "loss"
        self.postfix = getattr(self, "postfix", {})
        self.postfix[key] = f"{row['loss']:.2f}"
        self.postfix["epoch"] = f"{row['epoch']:.1f}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JsonlLogger(Callback):
    """Appends every metrics row to ``metrics.jsonl`` (one JSON object a line, flushed)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if trainer.step > 0 and self.path.exists():
            self._truncate_after(trainer.step)
        self.fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the run

    def _truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so the file matches one clean run."""
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def on_log(self, trainer: Trainer, row: dict) -> None:
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.fh.close()


class TensorBoardLogger(Callback):
    """TensorBoard event files (needs the optional ``tensorboard`` extra)."""

    def __init__(self, log_dir: str | Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def on_log(self, trainer: Trainer, row: dict) -> None:
        for k, v in row.items():
            if k not in ("split", "step", "epoch") and isinstance(v, int | float):
                self.writer.add_scalar(f"{row['split']}/{k}", v, row["step"])

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.close()


class Checkpointer(Callback):
    """Saves every ``every`` steps (0: at each epoch end) and when training ends or is stopped."""

    def __init__(self, every: int = 0):
        self.every = every

    def on_step_end(self, trainer: Trainer) -> None:
        every = self.every or trainer.steps_per_epoch
        if trainer.step % every == 0 and trainer.step < trainer.total_steps:
            trainer.save_checkpoint()

    def on_train_end(self, trainer: Trainer) -> None:
        if trainer.failure is None:
            trainer.save_checkpoint()


class EarlyStopping(Callback):
    """Stops when the validation objective (``vaelab.train.loop.selection_value``: -elbo where the
    model reports it, else the loss) has not improved for ``patience`` evaluations.

    The count lives in the trainer's state (saved in checkpoints), so it survives a resume.
    """

    def __init__(self, patience: int):
        self.patience = patience

    def on_eval_end(self, trainer: Trainer, metrics: dict) -> None:
        if trainer.evals_without_improvement >= self.patience:
            trainer.stop_reason = (
                f"early stopping: the validation objective has not improved for "
                f"{self.patience} evaluations (best {trainer.best_valid:.4f})"
            )
