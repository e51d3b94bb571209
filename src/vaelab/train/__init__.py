from vaelab.train.batching import TensorBatches, dynamic_binarize
from vaelab.train.callbacks import Callback, Checkpointer, EarlyStopping, JsonlLogger, ProgressBar
from vaelab.train.loop import NonFiniteLoss, Trainer, build_optimizer

__all__ = [
    "TensorBatches",
    "dynamic_binarize",
    "Callback",
    "Checkpointer",
    "EarlyStopping",
    "JsonlLogger",
    "ProgressBar",
    "NonFiniteLoss",
    "Trainer",
    "build_optimizer",
]
