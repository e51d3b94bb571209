"""Classical (non-amortised) variational inference.

* :mod:`~vaelab.vi.kl_examples` - KL(q||p) on discrete distributions (Examples 1 and 2).
* :mod:`~vaelab.vi.gaussian2d` - mean-field fits to a correlated Gaussian, reverse vs forward KL (Example 3).
* :mod:`~vaelab.vi.cavi` - the generic coordinate-ascent loop with its ELBO-never-decreases check.
* :mod:`~vaelab.vi.lda`, :mod:`~vaelab.vi.corpus` - LDA by batch variational EM and online VB.
* :mod:`~vaelab.vi.ising` - naive mean field for a grid Ising model and exact log Z.
"""

from vaelab.vi.cavi import CaviTrace, ElboDecreaseError, cavi
from vaelab.vi.corpus import Corpus, from_token_lists, load_ldac, load_text
from vaelab.vi.gaussian2d import DiagonalGaussian, forward_kl_fit, reverse_kl_cavi, reverse_kl_closed_form
from vaelab.vi.ising import (
    IsingGrid,
    log_partition,
    log_partition_brute_force,
    log_partition_transfer_matrix,
    mean_field,
    mean_field_elbo,
)
from vaelab.vi.kl_examples import contribution_table, kl_argmin
from vaelab.vi.lda import (
    BatchLDA,
    LDAConfig,
    LDAFit,
    LDAModel,
    OnlineLDA,
    OnlineLDAConfig,
    completion_perplexity,
    perword_bound,
    unigram_perplexity,
)

__all__ = [
    "cavi",
    "CaviTrace",
    "ElboDecreaseError",
    "contribution_table",
    "kl_argmin",
    "DiagonalGaussian",
    "reverse_kl_cavi",
    "reverse_kl_closed_form",
    "forward_kl_fit",
    "Corpus",
    "load_ldac",
    "load_text",
    "from_token_lists",
    "LDAConfig",
    "OnlineLDAConfig",
    "LDAModel",
    "LDAFit",
    "BatchLDA",
    "OnlineLDA",
    "perword_bound",
    "completion_perplexity",
    "unigram_perplexity",
    "IsingGrid",
    "log_partition",
    "log_partition_brute_force",
    "log_partition_transfer_matrix",
    "mean_field",
    "mean_field_elbo",
]
