"""A VQ-VAE run and a prior run over its codes, together (van den Oord et al. 2017, Sections 4.1-4.2):
the codes as data, samples of the prior decoded to images, and the VQ-VAE's bound with the prior.

The two-stage workflow::

    vaelab train configs/vqvae_cifar10.toml                    # runs/vqvae_cifar10
    vaelab vq extract-codes runs/vqvae_cifar10                 # runs/vqvae_cifar10/codes.npz
    vaelab train configs/pixelcnn_prior_cifar10.toml           # data codes:..., parent.run = the VQ run
    vaelab vq sample runs/vqvae_cifar10 --prior runs/pixelcnn_prior_cifar10 --class 3 --png s.png
    vaelab vq eval runs/vqvae_cifar10 --prior runs/pixelcnn_prior_cifar10

The codes are written once into a file (:func:`extract_codes`), a dataset like any other
(``codes:PATH``, ``vaelab.data.codes``), which records the run and the checkpoint hash they came from;
the prior run names the same run as its ``parent`` (its hash recorded when it starts), and
``experiment.prepare`` refuses codes of another run or checkpoint. Extraction is deterministic and
written atomically, so it can simply be run again; a prior run resumes like any run.

Sits beside ``experiment`` (it loads runs through it); the CLI (``vaelab vq``) only prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaelab.config import RunConfig
from vaelab.data import load_dataset, write_codes
from vaelab.errors import VaelabError
from vaelab.evaluation.units import Units, units
from vaelab.experiment import load_run_model, ordered_batches
from vaelab.models import Model
from vaelab.models.base import AutoregressivePrior, DiscreteCodeModel
from vaelab.runfolder import checkpoint_sha256
from vaelab.sections import ImagesSection, TableSection, write_sections

__all__ = [
    "CODES_FILE",
    "ExtractedCodes",
    "extract_codes",
    "load_pair",
    "PriorSamples",
    "sample_with_prior",
    "PriorBound",
    "prior_bound",
    "bound_section",
]

CODES_FILE = "codes.npz"
"""Where :func:`extract_codes` writes in the VQ-VAE's run folder unless told otherwise."""


@dataclass(frozen=True)
class ExtractedCodes:
    """What :func:`extract_codes` wrote: ``path``; per split the codes' shape (N, H', W') and
    whether it has labels; K; the number of classes (0 without labels)."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    labelled: dict[str, bool]
    codebook_size: int
    n_classes: int


def _load_vq(run: str | Path, device: torch.device) -> tuple[Model, RunConfig]:
    model, cfg, _ = load_run_model(run, device)
    if not isinstance(model, DiscreteCodeModel):
        raise VaelabError(f"run {run} holds model {cfg.model.name!r}, which has no discrete codes; give a "
                          "VQ-VAE run")
    return model, cfg


@torch.no_grad()
def extract_codes(run_dir: str | Path, device: torch.device, out: str | Path | None = None, *,
                  batch_size: int = 500) -> ExtractedCodes:
    """The codes (N, H', W') of a VQ-VAE run's train, valid and test splits, as the run's data config
    makes them (in the dataset's order; dynamically binarised images as the evaluation's fixed
    draw), with their class labels when the dataset has them, -> ``out`` (default
    ``RUN/codes.npz``; format in ``vaelab.data.codes``), recording the run folder (absolute) and
    the sha256 of the checkpoint that encoded them."""
    run = Path(run_dir)
    model, cfg = _load_vq(run, device)
    assert isinstance(model, DiscreteCodeModel)
    bundle = load_dataset(cfg.data)
    codes: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray | None] = {}
    for split in ("train", "valid", "test"):
        batches = ordered_batches(bundle, split, batch_size, device)
        if batches is None:
            continue
        codes[split] = torch.cat([model.encode_codes(x).cpu() for x in batches]).numpy()
        y = bundle.split(split)[1]
        labels[split] = None if y is None else y.cpu().numpy()
    if "train" not in codes:
        raise VaelabError(f"run {run}'s data {cfg.data.name} have no training split to extract codes from")
    path = Path(out) if out is not None else run / CODES_FILE
    write_codes(path, codes, labels, codebook_size=model.codebook_size, n_classes=bundle.spec.n_classes,
                parent_run=str(run.resolve()), parent_sha256=checkpoint_sha256(run))
    return ExtractedCodes(path, {s: tuple(c.shape) for s, c in codes.items()},
                          {s: labels[s] is not None for s in codes}, model.codebook_size,
                          bundle.spec.n_classes if any(y is not None for y in labels.values()) else 0)


def load_pair(vq_run: str | Path, prior_run: str | Path, device: torch.device
              ) -> tuple[Model, Model, RunConfig]:
    """(VQ-VAE, prior, the VQ run's config), both models in eval mode. The prior's recorded parent
    must be ``vq_run`` (its checkpoint hash is checked when the prior loads); a mismatch of either
    is one line."""
    prior, prior_cfg, _ = load_run_model(prior_run, device)
    if not isinstance(prior, AutoregressivePrior):
        raise VaelabError(f"--prior {prior_run} holds model {prior_cfg.model.name!r}, not a prior over "
                          "codes; give a run trained on codes (e.g. pixelcnn_prior)")
    parent = prior_cfg.parent.run
    if not parent or Path(parent).resolve() != Path(vq_run).resolve():
        raise VaelabError(f"prior {prior_run} was trained on the codes of "
                          f"{parent or 'no recorded parent run'}, not of {vq_run}; give the VQ-VAE run the "
                          "prior was trained on")
    vq, vq_cfg = _load_vq(vq_run, device)
    assert isinstance(vq, DiscreteCodeModel)
    if prior.spec.extra.get("codebook_size") != vq.codebook_size:  # the hash check makes this unlikely
        raise VaelabError(f"prior {prior_run} models {prior.spec.extra.get('codebook_size')} codes but "
                          f"{vq_run} has {vq.codebook_size}; retrain the prior on this run's codes")
    return vq, prior, vq_cfg


@dataclass(frozen=True)
class PriorSamples:
    """codes (n, H', W') long drawn from the prior; labels (n,) long they were drawn for (None for an
    unconditional prior); images (n, C, H, W) their decodings E[x | z_q]; the section written."""

    codes: Tensor
    labels: Tensor | None
    images: Tensor
    section: ImagesSection


def _sample_labels(prior: AutoregressivePrior, n: int, label: int | None) -> Tensor | None:
    """The labels to draw for: ``label`` n times; each class in turn when the prior is conditional
    and no label is given; None for an unconditional prior."""
    k = prior.n_classes
    if not k:
        if label is not None:
            raise VaelabError(f"--class {label}: this prior is unconditional (trained without labels); leave "
                              "--class out")
        return None
    if label is None:
        return torch.arange(n) % k
    if not 0 <= label < k:
        raise VaelabError(f"--class must be between 0 and {k - 1} (the prior knows {k} classes), got {label}")
    return torch.full((n,), label, dtype=torch.long)


@torch.no_grad()
def sample_with_prior(vq_run: str | Path, prior_run: str | Path, device: torch.device, n: int, *,
                      label: int | None = None, temperature: float = 1.0, seed: int = 0,
                      png: str | Path | None = None) -> PriorSamples:
    """n code maps from the prior (for class ``label``, or each class in turn), decoded by the VQ-VAE,
    written as the VQ run's ``prior_samples`` images section; ``png``: also a grid in that file."""
    if n < 1:
        raise VaelabError(f"-n must be >= 1, got {n}")
    if not temperature > 0:
        raise VaelabError(f"--temperature must be > 0, got {temperature}")
    vq, prior, _ = load_pair(vq_run, prior_run, device)
    assert isinstance(vq, DiscreteCodeModel) and isinstance(prior, AutoregressivePrior)
    labels = _sample_labels(prior, n, label)
    torch.manual_seed(seed)
    codes = prior.sample(n, None if labels is None else labels.to(device), temperature=temperature)
    images = vq.decode_codes(codes).clamp(0, 1)
    which = (f"class {label}" if label is not None else "each class in turn") if labels is not None else ""
    caption = (f"{n} code maps drawn from the prior {prior_run} (temperature {temperature:g}, seed {seed}"
               f"{', ' + which if which else ''}), decoded by this VQ-VAE (E[x | z_q]).")
    section = ImagesSection(name="prior_samples", title="Samples with the learned prior", caption=caption,
                            images=images.cpu().numpy())
    write_sections(vq_run, [section])
    if png is not None:
        from vaelab.report.html import figure_png
        from vaelab.report.plots import image_grid

        png = Path(png)
        png.parent.mkdir(parents=True, exist_ok=True)
        png.write_bytes(figure_png(image_grid(section.images, title=f"{n} samples, learned prior")))
    return PriorSamples(codes.cpu(), labels, images.cpu(), section)


@dataclass(frozen=True)
class PriorBound:
    """The VQ-VAE's bounds on -log p(x) over a held-out split (nats per example and bits/dim):

    uniform: -log p(x | z_q(x)) + H'W' log K, the prior the VQ-VAE is trained with (Section 3.1);
    learned: -log p(x | z_q(x)) - log p_prior(z_q(x) [| y]), with the prior run in its place (with a
        class-conditional prior, a bound on -log p(x | y)).
    reconstruction: the mean -log p(x | z_q(x)) (nats); split: which split; n_examples.
    """

    uniform: Units
    learned: Units
    reconstruction: float
    split: str
    n_examples: int
    conditional: bool


@torch.no_grad()
def prior_bound(vq_run: str | Path, prior_run: str | Path, device: torch.device, *,
                max_examples: int = 0, batch_size: int = 100) -> PriorBound:
    """:class:`PriorBound` on the VQ run's test split (its validation split when it has no test
    split), as the run's data config makes it; the first ``max_examples`` only when > 0."""
    vq, prior, cfg = load_pair(vq_run, prior_run, device)
    assert isinstance(vq, DiscreteCodeModel) and isinstance(prior, AutoregressivePrior)
    bundle = load_dataset(cfg.data)
    test = bundle.split("test")[0]
    split = "test" if test is not None and len(test) else "valid"
    batches = ordered_batches(bundle, split, batch_size, device)
    if batches is None:
        raise VaelabError(f"the data of {vq_run} have no test or validation split to evaluate on")
    labels = bundle.split(split)[1]
    if prior.n_classes and labels is None:
        raise VaelabError(f"prior {prior_run} is class-conditional but the {split} split of {vq_run}'s data "
                          "has no labels")
    rec, uniform, learned = [], [], []
    seen = 0
    for x in batches:
        if max_examples:
            x = x[: max_examples - seen]
        if not len(x):
            break
        y = None if not prior.n_classes else labels[seen : seen + len(x)].to(device)
        out = vq.loss(x)  # eval mode: the nearest codes, and the uniform prior's bound as ``elbo``
        rec.append(-out.reconstruction.double().cpu())
        uniform.append(-out.elbo.double().cpu())
        nll_prior = -prior.log_prob(vq.encode_codes(x), y).double().cpu()
        learned.append(rec[-1] + nll_prior)  # -log p(x|z_q) - log p_prior(z_q)
        seen += len(x)
    nats_u, nats_l = torch.cat(uniform), torch.cat(learned)
    counts = torch.full(nats_u.shape, math.prod(vq.spec.shape), dtype=torch.int64)
    return PriorBound(units("images", nats_u, counts, bound=True),
                      units("images", nats_l, counts, bound=True), float(torch.cat(rec).mean()), split,
                      len(nats_u), bool(prior.n_classes))


def bound_section(bound: PriorBound, prior_run: str | Path) -> TableSection:
    """The bounds of :func:`prior_bound` as the VQ run's ``prior_bound`` table section (bits/dim and
    nats per example, with the uniform prior and with the learned one)."""
    given = " | y" if bound.conditional else ""
    rows = [
        ["uniform over the K^(H'W') code maps", f"{bound.uniform.value:.4f}",
         f"{bound.uniform.nats_per_example:.2f}"],
        [f"learned: {Path(prior_run).name}", f"{bound.learned.value:.4f}",
         f"{bound.learned.nats_per_example:.2f}"],
    ]
    caption = (f"-log p(x{given}) <= -log p(x | z_q(x)) - log p(z_q(x){given}) on the {bound.n_examples} "
               f"{bound.split} examples; -log p(x | z_q) = {bound.reconstruction:.2f} nats per example. "
               "Bits per dimension divide the nats by the dimensions and ln 2.")
    return TableSection(name="prior_bound", title="Bound with the learned prior", caption=caption,
                        header=["prior", "bits/dim", "nats per example"], rows=rows)
