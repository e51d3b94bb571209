"""The interface every vaelab model implements, its typed loss output, and the model registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vaelab import plugins
from vaelab.errors import VaelabError
from vaelab.spec import DataSpec

__all__ = [
    "LossOutput", "ModelConfig", "Model", "MODELS", "register_model", "model_class", "model_names",
    "build_model",
]


@dataclass
class LossOutput:
    """What ``Model.loss`` returns. ``loss`` is the scalar minimised (nats per example, batch mean).

    The other fields are per-example (B,) tensors in nats where they apply, ``None`` otherwise:
    ``elbo`` the bound being maximised (with KL weight 1 it is a lower bound on log p(x)),
    ``reconstruction`` E_q[log p(x|z)], ``kl`` KL(q(z|x)||p(z)); VQ models fill ``commitment`` and
    ``codebook``.
    """

    loss: Tensor
    elbo: Tensor | None = None
    reconstruction: Tensor | None = None
    kl: Tensor | None = None
    commitment: Tensor | None = None
    codebook: Tensor | None = None

    def scalars(self) -> dict[str, Tensor]:
        """Batch means of every term present, detached (no host sync until the caller asks)."""
        names, values = self.scalar_vector()
        return dict(zip(names, values.unbind()))

    def scalar_vector(self) -> tuple[tuple[str, ...], Tensor]:
        """The names of the terms present and their batch means as one float32 vector, detached.

        The training loop accumulates this vector every step: when the per-example terms share a
        shape it costs one stack and one mean, instead of a mean and a sum per term.
        """
        present = [(f.name, getattr(self, f.name)) for f in fields(self)]
        present = [(k, v) for k, v in present if v is not None]
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


class Model(nn.Module, ABC):
    """A trainable generative model. The trainer calls only ``loss`` (through ``forward``).

    ``train_step`` is set by the trainer before every step so that schedules inside the loss
    (KL annealing) are pure functions of the step, and is saved in checkpoints by the trainer.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, config: ModelConfig, spec: DataSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        self.train_step = 0

    @abstractmethod
    def loss(self, batch: Any) -> LossOutput:
        """The training loss on one batch."""

    def forward(self, batch: Any) -> LossOutput:
        # forward is the loss so that DistributedDataParallel's hooks see the computation.
        return self.loss(batch)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} cannot sample")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


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
    return model_class(config.name)(config, spec)
