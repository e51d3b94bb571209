"""Model families. Importing this package registers every built-in model."""

from vaelab.models import mcem as _mcem  # noqa: F401  (registers "mcem")
from vaelab.models import pixelcnn_prior as _pixelcnn_prior  # noqa: F401  (registers "pixelcnn_prior")
from vaelab.models import sentence_vae as _sentence_vae  # noqa: F401  (registers "sentence_vae", "lstm_lm")
from vaelab.models import vae as _vae  # noqa: F401  (registers "vae")
from vaelab.models import vqvae as _vqvae  # noqa: F401  (registers "vqvae")
from vaelab.models import vqvae_speech as _vqvae_speech  # noqa: F401  (registers "vqvae_speech")
from vaelab.models import wake_sleep as _wake_sleep  # noqa: F401  (registers "wake_sleep")
from vaelab.models.base import (
    MODELS,
    AutoregressivePrior,
    DiscreteCodeModel,
    GenerativeLatentModel,
    LatentVariableModel,
    LossOutput,
    Model,
    ModelConfig,
    Reconstructing,
    ReportInputs,
    Sampling,
    build_model,
    model_class,
    model_names,
    register_model,
)

__all__ = [
    "MODELS",
    "AutoregressivePrior",
    "DiscreteCodeModel",
    "GenerativeLatentModel",
    "LatentVariableModel",
    "LossOutput",
    "Model",
    "ModelConfig",
    "Reconstructing",
    "ReportInputs",
    "Sampling",
    "build_model",
    "model_class",
    "model_names",
    "register_model",
]
