"""What the run code relies on in a model, declared as abstract base classes; the typed loss output;
and the model registry.

Every family subclasses :class:`Model` (trainable: ``loss``; declares the data kinds it accepts and
the report sections it writes) and, as mixins, the capabilities it has:

* :class:`GenerativeLatentModel`: ``decode(z)`` -> p(x|z), ``prior()`` -> p(z), ``latent_dim``, and
  the concrete ``log_joint(x, z)``, ``log_likelihood(x, z)`` (a model without an encoder: MCEM).
* :class:`LatentVariableModel` (a ``GenerativeLatentModel``): ``encode(x)`` -> q(z|x),
  ``log_importance_weights(x, k)`` (importance-sampled log p(x)), ``posterior_mean(x)`` (latents).
* :class:`Reconstructing`: ``reconstruct(x)``, an example of the data's own form.
* :class:`Sampling`: ``sample(n)``, n examples of the data's own form; ``samples_section(n)``.
* :class:`DiscreteCodeModel`: ``encode_codes(x)`` -> integer codes, ``decode_codes(codes)``,
  ``codebook_size`` (VQ-VAE).
* :class:`AutoregressivePrior`: ``log_prob(codes, condition=None)``, ``sample(n, condition=None)``
  over discrete codes (a PixelCNN prior on a VQ-VAE's codes).

The pipeline (``experiment``, ``evaluation``) asks ``isinstance(model, Interface)`` and never probes
for attributes. Capability mixins are plain ABCs (not modules); a concrete family lists
``Model`` first: ``class VAE(Model, LatentVariableModel, Reconstructing, Sampling)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaelab import plugins
from vaelab.errors import VaelabError
from vaelab.sections import Section
from vaelab.spec import DataSpec

__all__ = [
    "LossOutput",
    "ModelConfig",
    "ReportInputs",
    "Model",
    "GenerativeLatentModel",
    "LatentVariableModel",
    "Reconstructing",
    "Sampling",
    "DiscreteCodeModel",
    "AutoregressivePrior",
    "KLAnnealed",
    "MODELS",
    "register_model",
    "model_class",
    "model_names",
    "build_model",
]


@dataclass
class LossOutput:
    """What ``Model.loss`` returns. ``loss`` is the scalar minimised (nats per example, batch mean).

    The other fields are per-example (B,) tensors in nats where they apply, ``None`` otherwise:
    ``elbo`` the bound being maximised (with KL weight 1 it is a lower bound on log p(x)),
    ``reconstruction`` E_q[log p(x|z)], ``kl`` KL(q(z|x)||p(z)); VQ models fill ``commitment`` and
    ``codebook``. ``extras``: a family's own monitored terms by name (per-example (B,) tensors or
    scalars, e.g. MCEM's HMC ``accept_rate``), logged and averaged like the named fields; a name
    must not repeat a field's.
    """

    loss: Tensor
    elbo: Tensor | None = None
    reconstruction: Tensor | None = None
    kl: Tensor | None = None
    commitment: Tensor | None = None
    codebook: Tensor | None = None
    extras: dict[str, Tensor] | None = None

    def scalars(self) -> dict[str, Tensor]:
        """Batch means of every term present, detached (no host sync until the caller asks)."""
        names, values = self.scalar_vector()
        return dict(zip(names, values.unbind()))

    def scalar_vector(self) -> tuple[tuple[str, ...], Tensor]:
        """The names of the terms present and their batch means as one float32 vector, detached.

        The training loop accumulates this vector every step: when the per-example terms share a
        shape it costs one stack and one mean, instead of a mean and a sum per term.
        """
        present = [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "extras"]
        present = [(k, v) for k, v in present if v is not None] + list((self.extras or {}).items())
        names = tuple(k for k, _ in present)
        with torch.no_grad():
            loss, terms = present[0][1], [v for _, v in present[1:]]
            if terms and all(t.shape == terms[0].shape and t.dtype == terms[0].dtype for t in terms):
                means = torch.stack(terms).flatten(1).mean(1)
                values = torch.cat([loss.reshape(1).to(means.dtype), means]).float()
            else:
                values = torch.stack([v.float().mean() for _, v in present])
        return names, values


@dataclass
class ModelConfig:
    """Base of every model's Config: ``name`` selects the registered model."""

    name: str = ""

    def validate(self, prefix: str) -> None:  # overridden by models with constraints
        pass


@dataclass
class ReportInputs:
    """What a model gets to write its report sections from.

    batches: held-out examples, as batches of the form ``loss`` takes (at most a few thousand
        examples in all), on the model's device.
    labels: (N,) labels of those examples in order, or None.
    n_samples: how many samples a samples section shows.
    """

    batches: Sequence[Any]
    labels: Tensor | None
    n_samples: int


class Model(nn.Module, ABC):
    """A trainable generative model. The trainer calls only ``loss`` (through ``forward``).

    A family declares ``data_kinds``, the ``DataSpec.kind`` values it accepts (``build_model``
    refuses others in one line), and ``report_sections``, what it shows in the run's report.

    ``train_step`` is set by the trainer before every step so that schedules inside the loss
    (KL annealing) are pure functions of the step, and is saved in checkpoints by the trainer.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig
    data_kinds: ClassVar[frozenset[str]] = frozenset()
    exact_likelihood: ClassVar[bool] = False
    """True when the per-example ``elbo`` of ``loss`` (in eval mode) is the exact log p(x), not a
    bound (an autoregressive model such as the LSTM language model): evaluation then reports it as
    the model's log-likelihood, without "upper bound" labels."""
    supports_bf16: ClassVar[bool] = False
    """True when ``loss`` may run under bf16 autocast (``train.precision = "bf16"``): the family casts
    its networks' outputs to float32 where the probabilities start (likelihoods, KL terms, code
    assignments), so that only the matrix products run in bf16. Others are refused in one line."""

    def __init__(self, config: ModelConfig, spec: DataSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        self.train_step = 0

    @abstractmethod
    def loss(self, batch: Any) -> LossOutput:
        """The training loss on one batch."""

    @abstractmethod
    def report_sections(self, inputs: ReportInputs) -> list[Section]:
        """The sections of the run's report this model can write (figures, tables, text, audio),
        as data (``vaelab.sections``), computed from ``inputs``. Called in eval mode, without
        gradients, after the caller seeded the random generators."""

    def check_data(self, examples: Any) -> None:  # noqa: B027 - accepting everything is the default
        """Raise VaelabError (naming the fix) when training examples cannot come from this model,
        e.g. grey levels for a Bernoulli decoder. The default accepts all."""

    @property
    def steps_per_batch(self) -> int:
        """Consecutive training steps each training batch is used for (the pipeline repeats every
        batch this many times, ``train.batching.RepeatedBatches``); 1 for most models, more for
        Monte Carlo EM (several weight updates per posterior sample)."""
        return 1

    def validation_metrics(self, batches: Iterable) -> dict[str, float]:
        """Quantities of the whole validation set beyond the loss terms' means, logged with every
        validation (and so drawn in the report's curves). Called in eval mode without gradients.
        The default: the active units of a :class:`LatentVariableModel` (Burda et al. 2016), since
        a posterior collapsing unit by unit is what one watches while a VAE trains."""
        if isinstance(self, LatentVariableModel):
            from vaelab.evaluation.metrics import active_units

            codes = torch.cat([self.posterior_mean(x) for x in batches])
            return {"active_units": float(active_units(codes)[0])}
        return {}

    def forward(self, batch: Any) -> LossOutput:
        # forward is the loss so that DistributedDataParallel's hooks see the computation.
        return self.loss(batch)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class GenerativeLatentModel(ABC):
    """A model p(x, z) = p(z) p(x|z): a prior and a decoder, with or without an encoder.

    What encoder-free evaluation needs (annealed importance sampling, ``vaelab.evaluation.ais``).
    Shapes: x is a batch (B, ...) as ``loss`` takes it; z is (..., B, latent_dim) with any sample
    dims in front.
    """

    @property
    @abstractmethod
    def latent_dim(self) -> int:
        """Size of z."""

    @abstractmethod
    def decode(self, z: Tensor) -> Distribution:
        """p(x|z): batch z.shape[:-1], event the example's (flattened or own) shape."""

    @abstractmethod
    def prior(self) -> Distribution:
        """p(z): event (latent_dim,)."""

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z): x (B, ...), z (..., B, latent_dim) -> (..., B) nats."""
        px = self.decode(z)
        return px.log_prob(x.reshape(x.shape[0], *px.event_shape))

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) = log p(z) + log p(x|z): x (B, ...), z (..., B, latent_dim) -> (..., B) nats."""
        return self.prior().log_prob(z) + self.log_likelihood(x, z)


class LatentVariableModel(GenerativeLatentModel):
    """A model p(x, z) = p(z) p(x|z) with an amortised posterior q(z|x).

    Shapes: x is a batch (B, ...) as ``loss`` takes it; z is (..., B, latent_dim) with any sample
    dims in front.
    """

    @abstractmethod
    def encode(self, x: Tensor) -> Distribution:
        """q(z|x): batch (B,), event (latent_dim,)."""

    @abstractmethod
    def log_importance_weights(self, x: Tensor, k: int) -> Tensor:
        """(k, B) log p(x, z_k) - log q(z_k|x), z_k ~ q(z|x): for importance-sampled log p(x)."""

    def posterior_mean(self, x: Tensor) -> Tensor:
        """E_q[z|x]: (B, latent_dim). The latents ``vaelab encode`` writes."""
        return self.encode(x).mean


class Reconstructing(ABC):
    """A model that maps an example to its reconstruction."""

    @abstractmethod
    def reconstruct(self, x: Any) -> Any:
        """Reconstructions of the batch ``x``, in the same form (shape) as ``x``."""


class Sampling(ABC):
    """A model that draws new examples, and shows them (``vaelab sample`` writes that section)."""

    @abstractmethod
    def sample(self, n: int) -> Any:
        """n examples in the data's own form (images: (n, *spec.shape))."""

    @abstractmethod
    def samples_section(self, n: int) -> Section:
        """n samples as a report section named ``samples`` (images as an ImagesSection, text as a
        TextSection, audio as an AudioSection)."""


class DiscreteCodeModel(ABC):
    """A model with a discrete latent code per example (VQ-VAE): codes are integers in
    [0, codebook_size), a tensor (B, *code_shape) per batch."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Number of code values K."""

    @abstractmethod
    def encode_codes(self, x: Tensor) -> Tensor:
        """Codes of a batch: (B, *code_shape), dtype long. The latents ``vaelab encode`` writes."""

    @abstractmethod
    def decode_codes(self, codes: Tensor) -> Tensor:
        """Examples decoded from codes (B, *code_shape), in the data's own form."""


class AutoregressivePrior(ABC):
    """A prior p(c) = prod_i p(c_i | c_<i [, condition]) over discrete codes (PixelCNN), trained on
    codes extracted by a parent run (see ``RunConfig.parent``). ``condition`` is (B,) long class
    labels for a class-conditional prior (``n_classes`` > 0), None for an unconditional one."""

    @property
    @abstractmethod
    def n_classes(self) -> int:
        """Number of class labels the prior is conditioned on (0: unconditional)."""

    @abstractmethod
    def log_prob(self, codes: Tensor, condition: Tensor | None = None) -> Tensor:
        """log p(codes [| condition]): codes (B, *code_shape) long -> (B,) nats."""

    @abstractmethod
    def sample(self, n: int, condition: Tensor | None = None) -> Tensor:
        """n code maps (n, *code_shape), drawn in the autoregressive order."""


class KLAnnealed(ABC):
    """A model whose training loss weighs its KL term by a schedule of the step (Bowman et al. 2016
    annealing): ``kl_weight_at(step)`` is a pure function of the step, so resuming is exact.

    Setting ``train_step`` (the trainer does, before every step) keeps the step's weight in
    ``self._kl_weight``, a 0-dim buffer that changes value but not identity (a compiled loss takes it
    as an input instead of compiling again every step; after the warm-up it is not written again),
    and ``self.kl_weight_now`` as a float (1.0: no annealing this step)."""

    @abstractmethod
    def kl_weight_at(self, step: int) -> float:
        """The KL term's weight at ``step`` (1.0 once annealing is over)."""

    @property
    def train_step(self) -> int:
        return self._train_step

    @train_step.setter
    def train_step(self, step: int) -> None:
        self._train_step = step
        beta = float(self.kl_weight_at(step))
        if "_kl_weight" not in self._buffers:
            self.register_buffer("_kl_weight", torch.tensor(beta), persistent=False)
        elif beta != self.kl_weight_now:
            self._kl_weight.fill_(beta)
        self.kl_weight_now = beta


MODELS: dict[str, type[Model]] = {}
"""Families registered so far: vaelab's own when ``vaelab.models`` is imported, plugins (the
``vaelab.models`` entry point, see :mod:`vaelab.plugins`) when first looked up or listed."""


def register_model(name: str):
    """Class decorator registering a model family under ``name`` (used by configs and the CLI)."""

    def register(cls: type[Model]) -> type[Model]:
        if name in MODELS and MODELS[name] is not cls:
            raise RuntimeError(f"model {name!r} registered twice")
        cls.name = name
        MODELS[name] = cls
        return cls

    return register


def _register_plugin(name: str, cls: type[Model]) -> None:
    if MODELS.get(name, cls) is not cls:
        ep = plugins.declared(plugins.MODELS_GROUP)[name]
        raise VaelabError(
            f"{plugins.describe(ep)} names a model already registered by {MODELS[name].__module__}; "
            "rename one of the two entry points"
        )
    register_model(name)(cls)


def model_names() -> list[str]:
    """Every model family: registered ones and those declared by entry points (imported now)."""
    for name, cls in plugins.load_all(plugins.MODELS_GROUP, Model, skip=set(MODELS)).items():
        _register_plugin(name, cls)
    return sorted(MODELS)


def model_class(name: str) -> type[Model]:
    """The family ``name``: registered, else loaded from its ``vaelab.models`` entry point."""
    if name not in MODELS:
        cls = plugins.load(plugins.MODELS_GROUP, name, Model)
        if cls is not None:
            _register_plugin(name, cls)
    try:
        return MODELS[name]
    except KeyError:
        known = sorted(set(MODELS) | set(plugins.declared(plugins.MODELS_GROUP)))
        raise VaelabError(f"unknown model {name!r}; registered models: {', '.join(known)}") from None


def build_model(config: ModelConfig, spec: DataSpec) -> Model:
    """The registered family ``config.name`` built for data ``spec``; a data kind the family does not
    declare in ``data_kinds`` is a one-line error."""
    cls = model_class(config.name)
    if spec.kind not in cls.data_kinds:
        raise VaelabError(
            f"model {config.name!r} does not accept {spec.kind!r} data (it takes "
            f"{', '.join(sorted(cls.data_kinds)) or 'none'}); choose data of those kinds or another model"
        )
    return cls(config, spec)
