"""One run, end to end: config -> data -> model -> trainer -> evaluation -> figures -> report.

This is the layer the CLI calls and that library users can call too (``train_run``,
``evaluate_run``). It is the only place below the CLI that knows models *and* datasets.

A run folder holds ``run.json`` (its schema version, ``vaelab.runfolder``), ``config.json``,
``command.txt``, ``metrics.jsonl``, ``checkpoints/``, ``eval.json``, ``sections.json`` with
``sections/`` (the report's sections as data, ``vaelab.sections``) and ``report.html``.

What a model can do is read from the interfaces it declares (``vaelab.models.base``): the
importance-sampled log p(x) and active units for a :class:`LatentVariableModel`, samples for a
:class:`Sampling` model, latents for ``vaelab encode`` from a latent-variable or discrete-code
model; the report's figures come from the model's own ``report_sections``.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import singledispatch
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vaelab.config import RunConfig, config_from_dict, dump_json
from vaelab.data import Bundle, CodeBundle, DataBundle, SequenceBundle, WaveformBundle, load_dataset
from vaelab.errors import VaelabError
from vaelab.evaluation.ais import AISSettings
from vaelab.evaluation.likelihood import LogLikelihoodEstimate
from vaelab.evaluation.paired import PER_EXAMPLE_FILE
from vaelab.models import Model, build_model
from vaelab.models.base import (
    DiscreteCodeModel,
    GenerativeLatentModel,
    LatentVariableModel,
    ReportInputs,
    Sampling,
)
from vaelab.runfolder import (
    RUN_VERSION,
    check_parent,
    checkpoint_sha256,
    run_lock,
    run_version,
    start_run_folder,
    write_run_file,
)
from vaelab.sections import Section, evaluation_section, write_sections
from vaelab.spec import DataSpec
from vaelab.train import checkpoint as ckpt
from vaelab.train.batching import RepeatedBatches, TensorBatches, dynamic_binarize
from vaelab.train.callbacks import Callback, Checkpointer, EarlyStopping, JsonlLogger, ProgressBar
from vaelab.train.codes import CodeBatches
from vaelab.train.loop import Trainer
from vaelab.train.sequences import SequenceBatches
from vaelab.train.waveforms import WaveformBatches
from vaelab.tuning import LrSearch, read_lr_search, search_learning_rate, write_lr_search

__all__ = [
    "resolve_device",
    "Prepared",
    "prepare",
    "train_run",
    "load_run_model",
    "evaluate_run",
    "write_report_sections",
    "sample_run",
    "encode_run",
]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VaelabError(
                "--device cuda was asked for but no CUDA GPU is visible to PyTorch; use --device cpu"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise VaelabError(f"unknown device {name!r}; use auto, cpu or cuda")


Batches = TensorBatches | SequenceBatches | WaveformBatches | CodeBatches | RepeatedBatches
"""What the trainer and the evaluation iterate: ``epoch(e, start)`` and ``len``."""


@dataclass
class Prepared:
    """A model with its data, ready to train or evaluate."""

    cfg: RunConfig
    model: Model
    spec: DataSpec
    bundle: Bundle
    train: Batches
    valid: Batches | None
    test: Batches | None
    test_labels: Tensor | None
    device: torch.device
    valid_labels: Tensor | None = None
    lr_search: LrSearch | None = None  # the step-size search train_run ran (train.lr_search), if any


@dataclass
class SplitBatches:
    """A dataset's splits as batches.

    train: shuffled, this rank's shard; valid: this rank's shard; test: every example (rank 0
    evaluates), the first ``eval.max_examples``. valid_labels / test_labels: (N,) or None.
    check: training examples for ``Model.check_data``, or None to skip the check.
    """

    train: Batches
    valid: Batches | None
    test: Batches | None
    valid_labels: Tensor | None = None
    test_labels: Tensor | None = None
    check: Any = None


@singledispatch
def split_batches(
    bundle: Bundle, cfg: RunConfig, device: torch.device, *, rank: int, world: int
) -> SplitBatches:
    """The batches of each split of ``bundle``, by the bundle's type (a new kind of data registers
    its own batching here)."""
    raise VaelabError(f"dataset {bundle.name!r} holds {type(bundle).__name__}, which vaelab cannot batch")


@split_batches.register
def _image_batches(bundle: DataBundle, cfg: RunConfig, device: torch.device, *, rank: int, world: int
                   ) -> SplitBatches:
    transform = dynamic_binarize if bundle.dynamic else None
    train = TensorBatches(
        bundle.train,
        cfg.train.batch_size,
        shuffle=True,
        seed=cfg.train.seed,
        transform=transform,
        device=device,
        rank=rank,
        world=world,
    )
    # with dynamic binarisation, validation and test images are binarised once with a fixed seed,
    # so every evaluation scores the same binary images
    valid_x = bundle.eval_images("valid")
    test_x = bundle.eval_images("test")
    ebs = cfg.eval.batch_size
    valid = (
        TensorBatches(valid_x, ebs, shuffle=False, device=device, rank=rank, world=world)
        if valid_x is not None and len(valid_x)
        else None
    )
    test_labels = bundle.test_labels
    if test_x is not None and cfg.eval.max_examples:
        test_x = test_x[: cfg.eval.max_examples]
        test_labels = test_labels[: cfg.eval.max_examples] if test_labels is not None else None
    test = (
        TensorBatches(test_x, ebs, shuffle=False, device=device)
        if test_x is not None and len(test_x)
        else None
    )
    check = None if bundle.dynamic else bundle.train
    return SplitBatches(train, valid, test, bundle.valid_labels, test_labels, check)


@split_batches.register
def _sequence_batches(bundle: SequenceBundle, cfg: RunConfig, device: torch.device, *, rank: int, world: int
                      ) -> SplitBatches:
    pad, ebs = bundle.pad_id, cfg.eval.batch_size
    train = SequenceBatches(bundle.train, cfg.train.batch_size, pad_id=pad, shuffle=True, seed=cfg.train.seed,
                            device=device, rank=rank, world=world)
    valid = (
        SequenceBatches(bundle.valid, ebs, pad_id=pad, shuffle=False, device=device, rank=rank, world=world)
        if bundle.valid is not None and len(bundle.valid) >= world
        else None
    )
    test_seqs = bundle.test
    if test_seqs is not None and cfg.eval.max_examples and cfg.eval.max_examples < len(test_seqs):
        test_seqs = test_seqs.subset(torch.arange(cfg.eval.max_examples))
    test = (
        SequenceBatches(test_seqs, ebs, pad_id=pad, shuffle=False, device=device)
        if test_seqs is not None and len(test_seqs)
        else None
    )
    return SplitBatches(train, valid, test)


@split_batches.register
def _waveform_batches(bundle: WaveformBundle, cfg: RunConfig, device: torch.device, *, rank: int, world: int
                      ) -> SplitBatches:
    # training sees random crops of data.crop samples; validation and test score whole clips; every
    # batch carries its clips' label sets (a speaker-conditioned decoder needs the speaker)
    ebs = cfg.eval.batch_size
    train = WaveformBatches(bundle.train, cfg.train.batch_size, crop=cfg.data.crop, shuffle=True,
                            seed=cfg.train.seed, device=device, rank=rank, world=world,
                            labels=bundle.label_sets("train"))
    valid = (
        WaveformBatches(bundle.valid, ebs, shuffle=False, device=device, rank=rank, world=world,
                        labels=bundle.label_sets("valid"))
        if bundle.valid is not None and len(bundle.valid) >= world
        else None
    )
    test_clips, test_labels = bundle.split("test")
    test_sets = bundle.label_sets("test")
    if test_clips is not None and cfg.eval.max_examples and cfg.eval.max_examples < len(test_clips):
        test_clips = test_clips.subset(torch.arange(cfg.eval.max_examples))
        test_labels = test_labels[: cfg.eval.max_examples] if test_labels is not None else None
        test_sets = {k: v[: cfg.eval.max_examples] for k, v in test_sets.items()}
    test = (
        WaveformBatches(test_clips, ebs, shuffle=False, device=device, labels=test_sets)
        if test_clips is not None and len(test_clips)
        else None
    )
    return SplitBatches(train, valid, test, bundle.split("valid")[1], test_labels)


@split_batches.register
def _code_batches(bundle: CodeBundle, cfg: RunConfig, device: torch.device, *, rank: int, world: int
                  ) -> SplitBatches:
    ebs = cfg.eval.batch_size
    train = CodeBatches(bundle.train, bundle.train_labels, cfg.train.batch_size, shuffle=True,
                        seed=cfg.train.seed, device=device, rank=rank, world=world)
    valid = (
        CodeBatches(bundle.valid, bundle.valid_labels, ebs, shuffle=False, device=device, rank=rank,
                    world=world)
        if bundle.valid is not None and len(bundle.valid) >= world
        else None
    )
    test_codes, test_labels = bundle.test, bundle.test_labels
    if test_codes is not None and cfg.eval.max_examples:
        test_codes = test_codes[: cfg.eval.max_examples]
        test_labels = test_labels[: cfg.eval.max_examples] if test_labels is not None else None
    test = (
        CodeBatches(test_codes, test_labels, ebs, shuffle=False, device=device)
        if test_codes is not None and len(test_codes)
        else None
    )
    return SplitBatches(train, valid, test, bundle.valid_labels, test_labels)


@singledispatch
def ordered_batches(bundle: Bundle, split: str, batch_size: int, device: torch.device) -> Batches | None:
    """Every example of ``split`` in the dataset's order, as the model is evaluated on it (None when
    the split is empty): the per-example outputs of a pass line up with the dataset."""
    raise VaelabError(f"dataset {bundle.name!r} holds {type(bundle).__name__}, which vaelab cannot batch")


@ordered_batches.register
def _ordered_images(bundle: DataBundle, split: str, batch_size: int, device: torch.device
                    ) -> TensorBatches | None:
    # dynamically binarised data (the train split too) is binarised once, with the fixed seeded draw
    # evaluation uses: the model sees binary images, and the same ones on every call
    x = bundle.eval_images(split)
    return TensorBatches(x, batch_size, shuffle=False, device=device) if x is not None and len(x) else None


@ordered_batches.register
def _ordered_sequences(bundle: SequenceBundle, split: str, batch_size: int, device: torch.device
                       ) -> SequenceBatches | None:
    seqs, _ = bundle.split(split)
    if seqs is None or not len(seqs):
        return None
    return SequenceBatches(seqs, batch_size, pad_id=bundle.pad_id, shuffle=False, bucket_batches=0,
                           device=device)


@ordered_batches.register
def _ordered_waveforms(bundle: WaveformBundle, split: str, batch_size: int, device: torch.device
                       ) -> WaveformBatches | None:
    clips, _ = bundle.split(split)
    if clips is None or not len(clips):
        return None
    return WaveformBatches(clips, batch_size, shuffle=False, device=device, labels=bundle.label_sets(split))


@ordered_batches.register
def _ordered_codes(bundle: CodeBundle, split: str, batch_size: int, device: torch.device
                   ) -> CodeBatches | None:
    codes, labels = bundle.split(split)
    if codes is None or not len(codes):
        return None
    return CodeBatches(codes, labels, batch_size, shuffle=False, device=device)


def check_codes_parent(bundle: CodeBundle, cfg: RunConfig) -> None:
    """Refuse (one line) codes extracted from another run, or another checkpoint, than the run's
    ``parent``: a prior over codes names the VQ-VAE run they came from (``parent.run``, whose hash
    ``train_run`` records before calling ``prepare``), and the codes file records the same run and
    checkpoint hash (``vaelab vq extract-codes``)."""
    if not bundle.parent_run:
        return
    if not cfg.parent.run:
        raise VaelabError(f"data {bundle.name} are the codes of run {bundle.parent_run}; set parent.run = "
                          f"{bundle.parent_run!r} so that the prior names the run it builds on")
    if Path(cfg.parent.run).resolve() != Path(bundle.parent_run).resolve():
        raise VaelabError(f"data {bundle.name} are the codes of run {bundle.parent_run}, but parent.run is "
                          f"{cfg.parent.run}; extract the codes of the parent (vaelab vq extract-codes "
                          f"{cfg.parent.run}) or name their run as the parent")
    if cfg.parent.sha256 and bundle.parent_sha256 != cfg.parent.sha256:
        raise VaelabError(f"data {bundle.name} were extracted from checkpoint sha256 "
                          f"{bundle.parent_sha256[:12]} of {bundle.parent_run}, but the parent's checkpoint "
                          f"is {cfg.parent.sha256[:12]}; extract the codes again (vaelab vq extract-codes "
                          f"{bundle.parent_run})")


def prepare(cfg: RunConfig, device: torch.device, *, rank: int = 0, world: int = 1) -> Prepared:
    bundle = load_dataset(cfg.data)
    spec = bundle.spec
    if isinstance(bundle, CodeBundle):
        check_codes_parent(bundle, cfg)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, spec).to(device)
    if cfg.train.precision == "bf16" and not model.supports_bf16:
        raise VaelabError(f"model {model.name} does not support train.precision = 'bf16' (its probabilities "
                          "would be computed in bf16); set train.precision = 'fp32'")
    b = split_batches(bundle, cfg, device, rank=rank, world=world)
    if b.check is not None:
        model.check_data(b.check)
    # a model that takes several consecutive steps on each batch (Monte Carlo EM) sees each one repeated
    train = RepeatedBatches(b.train, model.steps_per_batch) if model.steps_per_batch > 1 else b.train
    return Prepared(cfg, model, spec, bundle, train, b.valid, b.test, b.test_labels, device, b.valid_labels)


def run_meta(cfg: RunConfig, spec: DataSpec) -> dict:
    return {
        "model": json.loads(dump_json(cfg))["model"],
        "config": json.loads(dump_json(cfg)),
        "spec": spec.to_dict(),
    }


def train_run(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    device: torch.device,
    resume: bool = False,
    progress: bool | None = None,
    extra_callbacks: list[Callback] | None = None,
    command: str | None = None,
) -> tuple[Trainer, Prepared]:
    """Train ``cfg`` into ``run_dir``. With ``resume`` continue from its latest checkpoint.

    ``command``: the line recorded in ``command.txt`` (``runfolder.command_line``; default this
    process's arguments). A resumed version 1 folder (no ``run.json``) stays version 1 until
    ``evaluate_run`` gives it its sections.

    With ``train.lr_search`` set, the step size is chosen before training (``vaelab.tuning``):
    ``config.json`` keeps the config as given, ``lr_search.json`` records the search and its
    choice, which the checkpoints' config holds as ``train.lr`` and ``prep.lr_search`` returns; a
    resumed run takes the recorded choice and does not search again."""
    import torch.distributed as dist

    run_dir = Path(run_dir)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    has_ckpt = bool(ckpt.list_checkpoints(run_dir / "checkpoints"))
    if has_ckpt and not resume:
        raise VaelabError(
            f"run folder {run_dir} already holds checkpoints; pass --resume to continue it "
            "or --out to start a new run elsewhere"
        )
    if resume and not has_ckpt:
        raise VaelabError(f"--resume: no checkpoint in {run_dir}; start the run without --resume")
    version = run_version(run_dir) if resume else RUN_VERSION
    with ExitStack() as held:  # the run folder's lock, released however training ends
        _link_parent(cfg, run_dir, resume)
        prep = prepare(cfg, device, rank=rank, world=world)
        if rank == 0:
            # the data and model are valid: from here on this process writes into the folder, alone
            held.enter_context(run_lock(run_dir))
            # config.json as dump_json writes it (keys sorted)
            start_run_folder(run_dir, json.loads(dump_json(cfg)), command, version_file=version >= 2)
        recorded = read_lr_search(run_dir) if resume else None
        if recorded is not None:
            cfg.train.lr = recorded.chosen
        elif cfg.train.lr_search and not resume:
            prep.lr_search = search_learning_rate(prep.model, cfg.train, prep.train, cfg.train.lr_search,
                                                  cfg.train.lr_search_steps)
            cfg.train.lr = prep.lr_search.chosen
            if rank == 0:
                write_lr_search(run_dir, prep.lr_search)
        callbacks: list[Callback] = [
            ProgressBar(progress),
            JsonlLogger(run_dir / "metrics.jsonl"),
            Checkpointer(cfg.train.checkpoint_every),
        ]
        if cfg.train.patience:
            callbacks.append(EarlyStopping(cfg.train.patience))
        try:
            from vaelab.train.callbacks import TensorBoardLogger

            callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
        except ImportError:
            pass
        callbacks += extra_callbacks or []
        trainer = Trainer(
            prep.model,
            cfg.train,
            prep.train,
            prep.valid,
            run_dir=run_dir,
            callbacks=callbacks,
            meta=run_meta(cfg, prep.spec),
        )
        trainer.fit(resume=run_dir if resume else None)
        return trainer, prep


def _link_parent(cfg: RunConfig, run_dir: Path, resume: bool) -> None:
    """Record the parent when a child run starts: its folder as an absolute path (so the child loads
    from any directory) and its checkpoint's hash. On resume the parent and hash are the ones the run
    recorded when it started (a config file's empty ``parent.sha256`` records nothing new), checked."""
    if resume:
        # the config the run's latest checkpoint holds: what it recorded when it started
        state = ckpt.resolve_checkpoint(run_dir) / "state.json"
        recorded = config_from_dict(json.loads(state.read_text(encoding="utf-8"))["config"]).parent
        if cfg.parent.run and not recorded.run:
            raise VaelabError(f"--resume: run {run_dir} was started without a parent; resume it without "
                              "parent.run, or start a new run on the parent")
        if not recorded.run:
            return
        if cfg.parent.run and Path(cfg.parent.run).resolve() != Path(recorded.run).resolve():
            raise VaelabError(f"--resume: run {run_dir} was started on parent {recorded.run}, not "
                              f"{cfg.parent.run}; resume it on its own parent or start a new run")
        if cfg.parent.sha256 and cfg.parent.sha256 != recorded.sha256:
            raise VaelabError(f"--resume: parent.sha256 {cfg.parent.sha256[:12]} is not the hash run "
                              f"{run_dir} recorded ({recorded.sha256[:12] or 'none'})")
        cfg.parent.run, cfg.parent.sha256 = recorded.run, recorded.sha256
        check_parent(run_dir, cfg.parent.run, cfg.parent.sha256)
        return
    if not cfg.parent.run:
        return
    if not Path(cfg.parent.run).is_dir():
        raise VaelabError(f"parent.run: no run folder at {cfg.parent.run}; train the parent run first")
    cfg.parent.run = str(Path(cfg.parent.run).resolve())
    if cfg.parent.sha256:  # a hash given with the config: the parent must still be that checkpoint
        check_parent(run_dir, cfg.parent.run, cfg.parent.sha256)
    else:
        cfg.parent.sha256 = checkpoint_sha256(cfg.parent.run)


def load_run_model(
    run_dir: str | Path, device: torch.device, which: str = "best"
) -> tuple[Model, RunConfig, Path]:
    """Rebuild a run's model from its checkpoint (``best`` when present, else the latest).

    A run folder newer than this vaelab is refused, and a child whose parent's checkpoint changed
    since it started (``parent.sha256``), each in one line."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and (run_dir / "config.json").is_file():
        run_version(run_dir)
    path = run_dir
    if which == "best" and (run_dir / "checkpoints" / "best" / "state.json").is_file():
        path = run_dir / "checkpoints" / "best"
    c = ckpt.load_checkpoint(path)
    meta = c.meta
    if "config" not in meta or "spec" not in meta:
        raise VaelabError(f"checkpoint {c.path} has no run config; it was not written by vaelab train")
    cfg = config_from_dict(meta["config"])
    if cfg.parent.run:
        check_parent(run_dir, cfg.parent.run, cfg.parent.sha256)
    model = build_model(cfg.model, DataSpec.from_dict(meta["spec"]))
    ckpt.load_model_weights(model, c)
    return model.to(device).eval(), cfg, c.path


@torch.no_grad()
def write_report_sections(
    run_dir: str | Path,
    model: Model,
    batches: list,
    labels: Tensor | None,
    *,
    n_samples: int = 64,
    seed: int = 0,
) -> Path:
    """The model's report sections (``Model.report_sections``) into ``run_dir/sections.json``."""
    torch.manual_seed(seed)
    model.eval()
    return write_sections(run_dir, model.report_sections(ReportInputs(batches, labels, n_samples)))


def evaluate_run(
    run_dir: str | Path,
    device: torch.device,
    *,
    k: int | None = None,
    max_examples: int | None = None,
    progress: bool | None = None,
    which: str = "best",
    seed: int | None = None,
    ais: AISSettings | None = None,
    nested: list[int] | None = None,
) -> dict:
    """Test ELBO, IS log p(x) +- s.e., bits/dim, KL, active units -> eval.json; the model's report
    sections and the evaluation -> sections.json. ``k``, ``max_examples`` and ``seed`` replace the
    run's ``eval.is_samples``, ``eval.max_examples`` and ``eval.seed`` when given, ``nested`` its
    ``eval.is_nested``.

    ``ais``: estimate log p(x) by annealed importance sampling with these settings instead of IS
    (default: the run's ``eval.ais_*`` settings when ``eval.ais_steps`` > 0); a model with a prior and
    decoder but no encoder (a ``GenerativeLatentModel`` that is not a ``LatentVariableModel``, e.g.
    MCEM) is always evaluated by AIS."""
    from vaelab.evaluation import active_units, importance_sampled_log_likelihood, mean_loss_terms
    from vaelab.evaluation.ais import ais_log_likelihood
    from vaelab.evaluation.units import example_counts, negative_elbo_per_example, units

    run_dir = Path(run_dir)
    model, cfg, used = load_run_model(run_dir, device, which)
    if k is not None:
        cfg.eval.is_samples = k
    if max_examples is not None:
        cfg.eval.max_examples = max_examples
    if seed is not None:
        cfg.eval.seed = seed
    if nested is not None:
        if any(not 1 <= m < cfg.eval.is_samples for m in nested):
            raise VaelabError(f"--is-nested {' '.join(map(str, nested))}: each must be between 1 and "
                              f"{cfg.eval.is_samples - 1} (below K = {cfg.eval.is_samples})")
        cfg.eval.is_nested = list(nested)
    else:  # the config's nested counts that fit under a K given here
        cfg.eval.is_nested = [m for m in cfg.eval.is_nested if m < cfg.eval.is_samples]
    prep = prepare(cfg, device)
    prep.model = model
    split, batches = ("test", prep.test) if prep.test is not None else ("valid", prep.valid)
    if batches is None:
        raise VaelabError(f"dataset {cfg.data.name!r} has no test or validation split to evaluate on")
    torch.manual_seed(cfg.eval.seed)
    t0 = time.perf_counter()
    weights = f"averaged (EMA, decay {cfg.train.ema_decay})" if cfg.train.ema_decay else "as trained"
    result = {"split": split, "checkpoint": str(used), "step": _checkpoint_step(used), "weights": weights}
    terms = mean_loss_terms(model, batches.epoch(0))
    result.update({k2: v for k2, v in terms.items() if k2 != "loss"})
    encoder_free = isinstance(model, GenerativeLatentModel) and not isinstance(model, LatentVariableModel)
    if ais is None and (cfg.eval.ais_steps or encoder_free):  # no encoder to importance-sample with
        ais = AISSettings(n_steps=cfg.eval.ais_steps or AISSettings.n_steps, chains=cfg.eval.ais_chains,
                          leapfrog=cfg.eval.ais_leapfrog)
    if ais is not None:
        if not isinstance(model, GenerativeLatentModel):
            raise VaelabError(f"--ais: model {cfg.model.name!r} has no prior and decoder to anneal between; "
                              "evaluate it without --ais")
        ll = ais_log_likelihood(model, batches.epoch(0), ais, progress=bool(progress))
        result.update(ll.as_dict())
    elif isinstance(model, LatentVariableModel):
        ll = importance_sampled_log_likelihood(
            model, batches.epoch(0), cfg.eval.is_samples, progress=bool(progress),
            nested=tuple(cfg.eval.is_nested),
        )
        result.update(ll.as_dict())
    # the likelihood in the units of the data kind (bits/dim, perplexity per token, ...): from the
    # importance-sampled (or AIS) log p(x) where there is one, else from the loss's per-example -ELBO
    fitted = per_example = None
    if isinstance(model, GenerativeLatentModel):
        counts = torch.cat([example_counts(b) for b in batches.epoch(0)])
        per_example = (-ll.log_px, counts, "estimate")
        fitted = units(prep.spec.kind, -ll.log_px, counts)
    elif "elbo" in terms:
        nats, counts = negative_elbo_per_example(model, batches.epoch(0))
        exact = model.exact_likelihood
        per_example = (nats, counts, "exact" if exact else "bound")
        fitted = units(prep.spec.kind, nats, counts, bound=not exact)
        if exact:
            result["log_px"] = -nats.double().mean().item()
            result["log_px_stderr"] = LogLikelihoodEstimate(-nats).stderr
            result["n_examples"] = nats.numel()
            result["method"] = "exact"
    if fitted is not None:
        result.update(fitted.as_dict())
        result["units"] = fitted.describe()
    if per_example is not None:  # for paired comparisons between runs (vaelab compare)
        nats, counts, kind = per_example
        write_per_example(run_dir, nats, counts, kind=kind, split=split)
    if isinstance(model, LatentVariableModel):
        from vaelab.evaluation import mutual_information, posterior_means, posterior_parameters

        codes = posterior_means(model, batches.epoch(0))
        result["active_units"], _ = active_units(codes)
        result["latent_dim"] = codes.shape[1]
        params = posterior_parameters(model, batches.epoch(0))
        if params is not None:
            gen = torch.Generator().manual_seed(cfg.eval.seed)
            result["mutual_information"] = mutual_information(*params, generator=gen)
    result["seconds"] = time.perf_counter() - t0
    if prep.spec.kind == "images":  # for tokens the spec's shape is the longest sentence, no dimension
        result["n_dims"] = prep.spec.n_dims
    tmp = run_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / "eval.json")
    labels = prep.test_labels if split == "test" else prep.valid_labels
    shown = list(batches.epoch(0))[: max(1, -(-_REPORT_EXAMPLES // cfg.eval.batch_size))]
    if run_version(run_dir) < 2:  # a version 1 folder becomes version 2 by gaining its sections
        write_run_file(run_dir)
    write_report_sections(run_dir, model, shown, labels, n_samples=cfg.eval.n_samples, seed=cfg.eval.seed)
    write_sections(run_dir, [evaluation_section(result)])
    return result


_REPORT_EXAMPLES = 5000  # held-out examples a model's report sections see at most

def write_per_example(run_dir: Path, nats: Tensor, counts: Tensor, *, kind: str, split: str) -> Path:
    """Per-example negative log-likelihoods (nats) and unit counts (tokens, dims) of the last
    evaluation, in evaluation order, to ``eval_examples.npz`` (atomically). ``kind`` says what the
    figure is: "estimate" (IS/AIS of -log p(x)), "bound" (a negative ELBO) or "exact" (a model whose
    loss is its exact -log p(x), e.g. a language model)."""
    tmp = run_dir / (".tmp." + PER_EXAMPLE_FILE)
    with open(tmp, "wb") as f:
        np.savez(f, nll=nats.double().cpu().numpy(), count=counts.double().cpu().numpy(),
                 kind=np.array(kind), split=np.array(split))
    os.replace(tmp, run_dir / PER_EXAMPLE_FILE)
    return run_dir / PER_EXAMPLE_FILE


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(json.loads((path / "state.json").read_text(encoding="utf-8")).get("step"))
    except (OSError, ValueError, TypeError):
        return None


def sample_run(run_dir: str | Path, device: torch.device, n: int, seed: int, *,
               png: str | Path | None = None) -> Section:
    """n samples of a run's model, written as its report's samples section, which is returned.

    ``png``: also draw image samples as a grid into this file (samples that are not images are
    refused in one line, before anything is written)."""
    from vaelab.sections import ImagesSection

    model, cfg, _ = load_run_model(run_dir, device)
    if not isinstance(model, Sampling):
        raise VaelabError(f"model {cfg.model.name!r} cannot draw samples (it is not a Sampling model)")
    torch.manual_seed(seed)
    with torch.no_grad():
        section = model.samples_section(n)
    if png is not None and not isinstance(section, ImagesSection):
        raise VaelabError(f"--png: the samples of model {cfg.model.name!r} are not images "
                          f"({type(section).__name__}); leave --png out")
    write_sections(run_dir, [section])
    if png is not None:
        from vaelab.report.html import figure_png
        from vaelab.report.plots import image_grid

        assert isinstance(section, ImagesSection)
        png = Path(png)
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(figure_png(image_grid(section.images, title=f"{n} samples")))
    return section


@torch.no_grad()
def encode_run(
    run_dir: str | Path, data: str, out: str | Path, device: torch.device, *, split: str = "test",
    batch_size: int = 500,
) -> tuple[Path, tuple[int, ...]]:
    """The latents of a dataset under a run's model -> ``out`` (.npy): posterior means E_q[z|x]
    (N, latent_dim) for a latent-variable model, codes (N, *code_shape) for a discrete-code model;
    for audio clips, whose lengths differ, codes (N, T') with T' the longest clip's code positions
    and -1 past each clip's own (ceil(length / stride) of them).

    ``data`` is a dataset name or ``folder:PATH`` / ``npy:PATH``, read with the run's data settings
    (binarisation, image size); ``split`` is ``train``, ``valid`` or ``test``. Returns the path and shape.
    """
    from dataclasses import replace

    from vaelab.data import load_dataset

    model, cfg, _ = load_run_model(run_dir, device)
    if isinstance(model, LatentVariableModel):
        latents = model.posterior_mean
    elif isinstance(model, DiscreteCodeModel):
        latents = model.encode_codes
    else:
        raise VaelabError(f"model {cfg.model.name!r} has no latents to encode (it is neither a "
                          "latent-variable nor a discrete-code model)")
    if split not in ("train", "valid", "test"):
        raise VaelabError(f"--split must be train, valid or test, got {split!r}")
    bundle = load_dataset(replace(cfg.data, name=data))
    got, want = bundle.spec, model.spec
    if got.kind != want.kind:
        raise VaelabError(f"{data} holds {got.kind} but run {run_dir} models {want.kind}; "
                          f"give {want.kind} data")
    if got.kind == "tokens" and got.extra.get("vocab") != want.extra.get("vocab"):
        raise VaelabError(f"{data} has another vocabulary ({got.vocab_size} words) than run {run_dir} "
                          f"({want.vocab_size}); token ids mean words only under the run's vocabulary")
    if got.kind == "waveforms" and got.extra.get("sample_rate") != want.extra.get("sample_rate"):
        raise VaelabError(f"{data} is sampled at {got.extra.get('sample_rate')} Hz but run {run_dir} models "
                          f"{want.extra.get('sample_rate')} Hz; set data.sample_rate to the run's rate")
    if got.kind not in ("tokens", "waveforms") and tuple(got.shape) != tuple(want.shape):
        raise VaelabError(f"{data} holds examples of shape {tuple(got.shape)} but run {run_dir} "
                          f"models {tuple(want.shape)}; give data of the run's shape")
    batches = ordered_batches(bundle, split, batch_size, device)
    if batches is None:
        raise VaelabError(f"{data} has no {split} split; pass --split with one it has (train, valid, test)")
    if got.kind == "waveforms":  # clips of different lengths: codes padded with -1 past each clip's own
        rows = []
        for b in batches:
            c = latents(b).cpu()
            n = model.code_lengths(b.lengths.cpu())
            rows += [c[i, : int(n[i])] for i in range(len(c))]
        codes = torch.full((len(rows), max(len(r) for r in rows)), -1, dtype=torch.long)
        for i, r in enumerate(rows):
            codes[i, : len(r)] = r
    else:
        codes = torch.cat([latents(b).cpu() for b in batches])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, codes.numpy())
    return out, tuple(codes.shape)


def format_eval(result: dict) -> str:
    """A short human table of an eval.json."""
    lines = []
    if result.get("method") == "ais":
        lines.append(
            f"AIS log p(x) {result['log_px']:.2f} ± {result['log_px_stderr']:.2f} nats  "
            f"(T={result['ais_n_steps']}, {result['ais_chains']} chains, chain s.e. "
            f"{result['log_px_chain_stderr']:.2f}, {result['n_examples']} {result['split']} examples, "
            f"acceptance {result['ais_accept_rate']:.2f})"
        )
    elif result.get("method") == "exact":
        lines.append(f"log p(x)     {result['log_px']:.2f} ± {result['log_px_stderr']:.2f} nats  (exact, "
                     f"{result['n_examples']} {result['split']} examples)")
    elif "log_px" in result:
        lines.append(
            f"IS log p(x)  {result['log_px']:.2f} ± {result['log_px_stderr']:.2f} nats  "
            f"(K={result['is_samples']}, {result['n_examples']} {result['split']} examples, "
            f"ESS mean {result['ess_mean']:.0f})"
        )
        nested = sorted((k2 for k2 in result if re.fullmatch(r"log_px_k\d+", k2)), key=lambda k2: int(k2[8:]))
        for key in nested:
            m = key[len("log_px_k"):]
            lines.append(f"  at K={m:<6} {result[key]:.2f} ± {result[key + '_stderr']:.2f} nats "
                         f"(the first {m} of the same samples)")
        if result.get("is_warning"):
            lines.append(f"warning: {result['is_warning']}")
    if "units" in result:
        lines.append(f"per unit     {result['units']}")
    if "elbo" in result:
        lines.append(f"ELBO         {result['elbo']:.2f} nats")
    if "kl" in result:
        lines.append(f"KL           {result['kl']:.2f} nats")
    if "reconstruction" in result:
        lines.append(f"E_q log p(x|z) {result['reconstruction']:.2f} nats")
    if "active_units" in result:
        lines.append(f"active units {result['active_units']} / {result['latent_dim']}  "
                     "(variance over the data of E_q[z_u|x] > 0.01)")
    if "mutual_information" in result:
        lines.append(f"I(x; z)      {result['mutual_information']:.2f} nats  "
                     "(aggregate posterior, He et al. 2019)")
    if "weights" in result:
        lines.append(f"weights      {result['weights']}, step {result.get('step')}")
    if not math.isnan(result.get("seconds", float("nan"))):
        lines.append(f"time         {result['seconds']:.1f} s")
    return "\n".join(lines)
