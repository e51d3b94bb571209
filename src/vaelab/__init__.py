"""vaelab: variational autoencoders and variational inference on PyTorch.

The public API, re-exported here; everything else is reachable through its module.
"""

from vaelab._version import __version__
from vaelab.config import DataConfig, EvalConfig, RunConfig, TrainConfig, load_config  # noqa: E402
from vaelab.divergences import kl, kl_categorical, kl_gaussian, kl_monte_carlo, kl_terms  # noqa: E402
from vaelab.errors import VaelabError  # noqa: E402
from vaelab.estimators import ElboTerms, elbo, iwae, log_importance_weights, logmeanexp  # noqa: E402
from vaelab.evaluation import LikelihoodResult, importance_sampled_log_likelihood  # noqa: E402
from vaelab.models import MODELS, LossOutput, Model, build_model, register_model  # noqa: E402
from vaelab.models.vae import VAE, VAEConfig  # noqa: E402
from vaelab.spec import DataSpec  # noqa: E402
from vaelab.train import Trainer  # noqa: E402

__all__ = [
    "__version__",
    "DataConfig",
    "EvalConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "kl",
    "kl_categorical",
    "kl_gaussian",
    "kl_monte_carlo",
    "kl_terms",
    "VaelabError",
    "ElboTerms",
    "elbo",
    "iwae",
    "log_importance_weights",
    "logmeanexp",
    "LikelihoodResult",
    "importance_sampled_log_likelihood",
    "MODELS",
    "LossOutput",
    "Model",
    "build_model",
    "register_model",
    "VAE",
    "VAEConfig",
    "DataSpec",
    "Trainer",
]
