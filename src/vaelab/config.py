"""Run configuration: typed dataclasses owned by their components, loaded from TOML.

A run config has four sections, ``model``, ``data``, ``train`` and ``eval``, and a fifth,
``parent``, when the run builds on another run (``ParentConfig``). The ``model`` section
names a registered model (``model.name = "vae"``) whose own ``Config`` dataclass types the rest of
the section. Overrides are dotted, ``--set train.lr=3e-4``, with values parsed as TOML
(``--set model.hidden=[256,256]``); bare words are strings. Unknown keys and values of the wrong
type are :class:`~vaelab.errors.VaelabError` naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import tomllib

from vaelab.errors import VaelabError

T = TypeVar("T")

__all__ = [
    "DataConfig",
    "TrainConfig",
    "EvalConfig",
    "ParentConfig",
    "RunConfig",
    "from_dict",
    "to_dict",
    "load_config",
    "parse_overrides",
    "apply_overrides",
    "config_from_dict",
    "parse_override",
    "nest_overrides",
    "read_settings_file",
    "settings_from_dict",
]


@dataclass
class DataConfig:
    """Which data, and how it is turned into tensors.

    name: a registered dataset (``vaelab data list``), ``folder:PATH`` (a folder of images),
        ``npy:PATH`` (a NumPy array file of shape (N, H, W), (N, H, W, C) or (N, D)),
        ``text:PATH`` (sentences, one per line: a folder with train/valid/test .txt, or one file),
        ``wav:PATH`` (a folder of .wav files, with labels from its ``labels.csv`` if any) or
        ``codes:PATH`` (discrete code maps with their labels, ``vaelab vq extract-codes``).
    binarize: ``dynamic`` draws x ~ Bernoulli(pixel) afresh for every batch; ``fixed`` draws once
        with ``split_seed``; ``threshold`` rounds at 0.5; ``none`` keeps grey levels in [0, 1].
    valid_size: held-out part of the training set for validation: a fraction (< 1) or a count,
        used when the dataset has no official validation split.
    image_size: [H, W] that folder images are resized to (empty: keep the first image's size).
    channels: 1 (grey) or 3 (RGB) for folder images; 0 keeps what the files hold.
    limit: use only the first N training examples (0: all) - for quick runs.
    max_vocab: text: keep at most this many words, the most frequent, besides ``<pad>``, ``<unk>``,
        ``<bos>`` and ``<eos>`` (0: every word); the others become ``<unk>``.
    min_count: text: words seen fewer times in the training split become ``<unk>``.
    sample_rate: waveforms: the rate in Hz every clip is resampled to (default 8000, the rate of
        the Free Spoken Digit Dataset; ``wav:`` files at other rates are resampled to it).
    max_seconds: waveforms: clips longer than this keep their first ``max_seconds`` (0: no limit).
    crop: waveforms: training batches are random crops of this many samples (default 4096, 0.51 s
        at 8 kHz, a power of two so strided encoders divide it evenly; shorter clips are
        zero-padded, with a mask); evaluation batches hold whole clips, padded likewise.
    """

    name: str = "digits"
    binarize: Literal["dynamic", "fixed", "threshold", "none"] = "dynamic"
    valid_size: float = 0.1
    split_seed: int = 0
    image_size: list[int] = field(default_factory=list)
    channels: int = 0
    limit: int = 0
    max_vocab: int = 0
    min_count: int = 1
    sample_rate: int = 8000
    max_seconds: float = 0.0
    crop: int = 4096

    def validate(self, prefix: str) -> None:
        if self.valid_size < 0:
            raise VaelabError(
                f"{prefix}.valid_size must be >= 0 (a fraction < 1 or a count), got {self.valid_size}"
            )
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise VaelabError(
                f"{prefix}.image_size must be [height, width] with positive sizes, got {self.image_size}"
            )
        if self.channels not in (0, 1, 3):
            raise VaelabError(f"{prefix}.channels must be 0 (as stored), 1 or 3, got {self.channels}")
        if self.limit < 0:
            raise VaelabError(f"{prefix}.limit must be >= 0, got {self.limit}")
        if self.max_vocab < 0 or self.min_count < 1:
            raise VaelabError(
                f"{prefix}.max_vocab must be >= 0 and {prefix}.min_count >= 1, "
                f"got {self.max_vocab} and {self.min_count}"
            )
        if self.sample_rate < 1 or self.crop < 1:
            raise VaelabError(f"{prefix}.sample_rate and {prefix}.crop must be >= 1, "
                              f"got {self.sample_rate} and {self.crop}")
        if not self.max_seconds >= 0 or (self.max_seconds and self.max_seconds * self.sample_rate < 1):
            raise VaelabError(f"{prefix}.max_seconds must be 0 (no limit) or hold at least one sample, "
                              f"got {self.max_seconds}")


@dataclass
class TrainConfig:
    """The optimisation. Schedules are pure functions of the step (``vaelab.train.schedules``).

    schedule: ``constant``, ``cosine`` or ``exponential`` decay from ``lr`` to ``lr_final`` over
        the run, after ``warmup_steps`` of linear warm-up.
    eval_every / checkpoint_every: in steps; 0 means once per epoch.
    patience: early stopping after this many evaluations without improvement (0: off).
    time_limit_min: stop (with a checkpoint) after this many minutes of training (0: no limit).
    compile: run the model's loss through torch.compile.
    precision: ``fp32``, or ``bf16``: the training loss's forward pass runs under ``torch.autocast``
        with bfloat16 (matrix products and convolutions in bf16, losses and reductions in float32;
        weights, gradients and the optimizer's state stay float32). It pays on GPUs from Ampere on
        and on CPUs with AVX512-BF16 or AMX; validation, evaluation and sampling stay float32.
    threads: torch intra-op threads (0: PyTorch's default).
    ema_decay: keep an exponential moving average of the weights with this decay per step and use
        it for validation, checkpoints and everything after training (0: off; 0.999-0.9999 is
        typical). ``ema_every``: update the average every this many steps (``vaelab.train.averaging``).
    lr_search: step sizes to choose ``lr`` from before training, each tried for ``lr_search_steps``
        steps from the same initialisation, keeping the best training-set lower bound (Kingma &
        Welling 2014 Section 5: [0.01, 0.02, 0.1] with Adagrad; ``vaelab.tuning``). Empty: off.
    weight_decay: the optimizer's L2 term; with the loss in nats per example (a batch mean), a
        N(0, I) prior on the parameters (K&W's MAP criterion) is ``weight_decay = 1/N`` for N
        training examples: the gradient of -log p(theta) / N = |theta|^2 / (2N) is theta / N.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_final: float = 1e-3
    schedule: Literal["constant", "cosine", "exponential"] = "constant"
    warmup_steps: int = 0
    optimizer: Literal["adam", "adamw", "adagrad"] = "adam"
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 0.0
    seed: int = 0
    eval_every: int = 0
    log_every: int = 50
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    patience: int = 0
    max_steps: int = 0
    time_limit_min: float = 0.0
    compile: bool = False
    precision: Literal["fp32", "bf16"] = "fp32"
    threads: int = 0
    ema_decay: float = 0.0
    ema_every: int = 1
    lr_search: list[float] = field(default_factory=list)
    lr_search_steps: int = 200

    def validate(self, prefix: str) -> None:
        for key in ("epochs", "batch_size", "ema_every"):
            if getattr(self, key) < 1:
                raise VaelabError(f"{prefix}.{key} must be >= 1, got {getattr(self, key)}")
        if self.lr <= 0 or self.lr_final <= 0:
            raise VaelabError(f"{prefix}.lr and {prefix}.lr_final must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise VaelabError(f"{prefix}.betas must be two numbers in [0, 1), got {self.betas}")
        for key in ("warmup_steps", "eval_every", "checkpoint_every", "patience", "max_steps", "threads"):
            if getattr(self, key) < 0:
                raise VaelabError(f"{prefix}.{key} must be >= 0, got {getattr(self, key)}")
        if self.keep_checkpoints < 1:
            raise VaelabError(f"{prefix}.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        if any(not lr > 0 for lr in self.lr_search) or self.lr_search_steps < 1:
            raise VaelabError(f"{prefix}.lr_search must list step sizes > 0 and {prefix}.lr_search_steps "
                              f"be >= 1, got {self.lr_search} and {self.lr_search_steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise VaelabError(f"{prefix}.ema_decay must be in [0, 1) (0 turns weight averaging off), "
                              f"got {self.ema_decay}")


@dataclass
class EvalConfig:
    """Evaluation after training and in ``vaelab eval``.

    is_samples: K importance samples for log p(x) (Burda et al. use 5000).
    batch_size: test examples per evaluation batch.
    max_examples: evaluate on the first N test examples only (0: all).
    n_samples: images in the samples figure.
    ais_steps: if > 0, estimate log p(x) by annealed importance sampling with this many intermediate
        distributions instead of importance sampling (``vaelab.evaluation.ais``). A model without an
        encoder (``mcem``) is always evaluated by AIS, with 500 distributions when this is 0.
    ais_chains, ais_leapfrog: AIS chains per example and leapfrog steps per HMC transition.
    is_nested: smaller sample counts K' < is_samples also reported, each from the first K' of the same
        samples (one pass), to show whether the estimate has converged in K, e.g. [50, 100] with 200.
    """

    is_samples: int = 1000
    is_nested: list[int] = field(default_factory=list)
    batch_size: int = 100
    max_examples: int = 0
    n_samples: int = 64
    seed: int = 1234
    ais_steps: int = 0
    ais_chains: int = 4
    ais_leapfrog: int = 10

    def validate(self, prefix: str) -> None:
        if self.is_samples < 1:
            raise VaelabError(f"{prefix}.is_samples must be >= 1, got {self.is_samples}")
        if any(not isinstance(m, int) or not 1 <= m < self.is_samples for m in self.is_nested):
            raise VaelabError(f"{prefix}.is_nested must hold sample counts between 1 and is_samples - 1 "
                              f"({self.is_samples - 1}), got {self.is_nested}")
        if self.ais_steps < 0 or self.ais_chains < 1 or self.ais_leapfrog < 1:
            raise VaelabError(f"{prefix}.ais_steps must be >= 0 (0: importance sampling), "
                              f"{prefix}.ais_chains and {prefix}.ais_leapfrog >= 1; got {self.ais_steps}, "
                              f"{self.ais_chains}, {self.ais_leapfrog}")
        if self.batch_size < 1 or self.n_samples < 1 or self.max_examples < 0:
            raise VaelabError(f"{prefix}.batch_size and {prefix}.n_samples must be >= 1")


@dataclass
class ParentConfig:
    """The run this one builds on (e.g. a prior over the codes a VQ-VAE run extracts).

    run: the parent's run folder ("" when the run stands alone); recorded as an absolute path when
        this run starts, so the run loads from any directory.
    sha256: the sha256 of the parent checkpoint's weights, recorded when this run starts and checked
        whenever it is loaded or resumed (leave it empty in a preset; ``vaelab.runfolder``). A child
        whose recorded hash is empty is refused on load.
    """

    run: str = ""
    sha256: str = ""

    def validate(self, prefix: str) -> None:
        if self.sha256 and not self.run:
            raise VaelabError(f"{prefix}.sha256 is set but {prefix}.run is empty; name the parent run folder")


@dataclass
class RunConfig:
    """The whole run. ``model`` is the registered model's own Config dataclass."""

    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parent: ParentConfig = field(default_factory=ParentConfig)
    name: str = ""


# ----------------------------------------------------------------------------- typed conversion


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise VaelabError(
                f"{key} must be one of {', '.join(map(repr, typing.get_args(tp)))}; got {value!r}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, key)
            except VaelabError as exc:
                errors.append(str(exc))
        raise VaelabError(errors[0] if errors else f"{key} has the wrong type")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise VaelabError(f"{key} must be a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return [_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise VaelabError(f"{key} must be a table of settings, got {value!r}")
        return from_dict(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise VaelabError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise VaelabError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise VaelabError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise VaelabError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def from_dict(cls: type, data: dict, prefix: str) -> Any:
    """Build dataclass ``cls`` from a dict; unknown keys and wrong types raise with the key named."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        known = ", ".join(sorted(names))
        where = f"in [{prefix}]" if prefix else "at the top level"
        raise VaelabError(f"unknown config key {_dotted(prefix, unknown[0])}; known keys {where}: {known}")
    kwargs = {k: _convert(v, hints[k], _dotted(prefix, k)) for k, v in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(prefix)
    return obj


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def to_dict(obj: Any) -> dict:
    """A dataclass tree as plain JSON/TOML-able data."""
    return dataclasses.asdict(obj)


def config_from_dict(data: dict) -> RunConfig:
    """Build a RunConfig; ``data['model']['name']`` selects the model's Config class."""
    from vaelab.models import model_class

    data = dict(data)
    unknown = sorted(set(data) - {"model", "data", "train", "eval", "parent", "name"})
    if unknown and not isinstance(data[unknown[0]], dict):  # e.g. a file of `vaelab lda` options
        raise VaelabError(
            f"{unknown[0]!r} is a top-level setting, not a section, so this is not a run config (sections "
            "are [model], [data], [train], [eval]); a file of a command's options goes to "
            "`vaelab kl|lda|ising --config FILE`"
        )
    if unknown:
        raise VaelabError(
            f"unknown config section [{unknown[0]}]; sections are [model], [data], [train], [eval], [parent]"
        )
    model = dict(data.get("model", {}))
    if "name" not in model:
        raise VaelabError('the config has no model.name; add name = "vae" to the [model] section')
    cls = model_class(model["name"])
    return RunConfig(
        model=from_dict(cls.Config, model, "model"),
        data=from_dict(DataConfig, data.get("data", {}), "data"),
        train=from_dict(TrainConfig, data.get("train", {}), "train"),
        eval=from_dict(EvalConfig, data.get("eval", {}), "eval"),
        parent=from_dict(ParentConfig, data.get("parent", {}), "parent"),
        name=_convert(data.get("name", ""), str, "name"),
    )


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ``("train.lr", 0.0003)``: the value parsed as TOML, a bare word as a string."""
    if "=" not in item:
        raise VaelabError(f"--set needs key=value, got {item!r} (e.g. --set train.epochs=1)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise VaelabError(f"--set key {key!r} is not a dotted name like train.lr")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def nest_overrides(pairs: Iterable[tuple[str, Any]]) -> dict:
    """``[("train.lr", 3e-4), ("model.hidden", [256])]`` -> nested dict; a later pair wins."""
    out: dict = {}
    for key, value in pairs:
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise VaelabError(f"--set {key}: {part} is a value, not a section")
        node[last] = value
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=3e-4", "model.hidden=[256,256]"]`` -> nested dict of parsed values."""
    return nest_overrides(parse_override(item) for item in items)


def apply_overrides(base: dict, overrides: dict) -> dict:
    """Deep-merge ``overrides`` into a copy of ``base``."""
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = apply_overrides(out[k], v)
        else:
            out[k] = v
    return out


def read_toml(path: str | Path, example: str = "configs/vae_digits.toml") -> dict:
    """A TOML file as a dict; a missing or malformed file is a VaelabError (``example`` names a good one)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise VaelabError(f"config file {path} {what}; pass a TOML file such as {example}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VaelabError(f"config file {path} is not valid TOML ({exc}); fix the syntax") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML preset, apply ``--set`` overrides, and validate it all."""
    data = apply_overrides(read_toml(path), parse_overrides(overrides or []))
    return config_from_dict(data)


def read_settings_file(path: str | Path, example: str) -> dict:
    """Settings from a TOML file, or from a run's saved ``config.json`` (to repeat that run)."""
    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise VaelabError(f"config file {path} is not valid JSON ({exc}); fix the syntax") from None
        if not isinstance(data, dict):
            raise VaelabError(f"config file {path} holds no table of settings; pass a file such as {example}")
        return data
    return read_toml(path, example=example)


def settings_from_dict(cls: type[T], data: dict, overrides: Iterable[tuple[str, Any]] = ()) -> T:
    """The typed settings ``cls`` (a dataclass tree) from ``data`` with dotted ``overrides`` applied.

    The same conversion and validation as a run config: unknown keys and values of the wrong type are
    a :class:`~vaelab.errors.VaelabError` naming the key and the keys that exist.
    """
    if not isinstance(data, dict):
        raise VaelabError(f"settings must be a table, got {data!r}")
    return from_dict(cls, apply_overrides(data, nest_overrides(overrides)), "")


def dump_json(cfg: RunConfig) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
