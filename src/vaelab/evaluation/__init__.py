from vaelab.evaluation.likelihood import LikelihoodResult, importance_sampled_log_likelihood
from vaelab.evaluation.metrics import (
    active_units,
    mean_loss_terms,
    mutual_information,
    posterior_means,
    posterior_parameters,
)

__all__ = [
    "LikelihoodResult",
    "importance_sampled_log_likelihood",
    "active_units",
    "mean_loss_terms",
    "posterior_means",
    "posterior_parameters",
    "mutual_information",
]
