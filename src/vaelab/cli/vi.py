"""Classical variational inference subcommands: ``kl``, ``lda``, ``ising``.

Each parses its settings (``vaelab.vi_runs``: ``--config FILE``, then its flags and ``--set
key=value`` in the order given; every flag is a shorthand for one ``--set``), calls the experiment's
run function, which writes ``runs/<name>/`` and its report, and prints the numbers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli import command
from vaelab.cli.settings import add_settings_arguments, settings_from_args, shorthand


def _common(p: argparse.ArgumentParser, name: str, seed_key: str) -> None:
    from vaelab.vi_runs import EXPERIMENTS

    add_settings_arguments(p, EXPERIMENTS[name].preset)
    shorthand(p, "--seed", seed_key, "random seed")
    p.add_argument("--out", default=None, help="run folder (default runs/<name>)")


def _run(name: str, args: argparse.Namespace, first: list | None = None, **options) -> int:
    from vaelab.runfolder import command_line
    from vaelab.vi_runs import EXPERIMENTS

    exp = EXPERIMENTS[name]
    settings = settings_from_args(exp.settings, args, exp.preset, first)
    run_dir = Path(args.out) if args.out else Path("runs") / settings.name
    result = exp.run(
        settings, run_dir, command=command_line(getattr(args, "_argv", None)), **options
    )
    print(exp.format(settings, result))
    return 0


def _kl_args(p: argparse.ArgumentParser) -> None:
    shorthand(p, "--rho", "rho", "correlation of Example 3's Gaussian p (default 0.9)")
    shorthand(
        p,
        "--scales",
        "scales",
        "standard deviations of p's two coordinates, e.g. 1,2",
        parse="list",
    )
    _common(p, "kl", "seed")


@command(
    "kl",
    "KL(q||p) as an objective: contribution table, argmin over q, mean-field Gaussian fits",
    _kl_args,
)
def kl_cmd(args: argparse.Namespace) -> int:
    return _run("kl", args)


def _lda_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "corpus",
        nargs="?",
        default=None,
        help="'ap' (the AP corpus in $VAELAB_DATA/ap), an lda-c .dat file with vocab.txt beside it, or a "
        "text file with one document per line (--set data.name=...; default ap)",
    )
    shorthand(p, "--topics", "model.topics", "number of topics K")
    shorthand(p, "--mode", "train.mode", "batch (variational EM) or online (VB)")
    shorthand(p, "--passes", "train.passes", "passes over the corpus (default 20 batch, 10 online)")
    shorthand(p, "--batch-size", "train.batch_size", "online minibatch size")
    shorthand(p, "--tau0", "train.tau0", "online step size offset tau0")
    shorthand(p, "--kappa", "train.kappa", "online step size decay kappa")
    shorthand(p, "--alpha", "model.alpha", "initial symmetric alpha (default 1/K)")
    shorthand(p, "--eta", "model.eta", "topic prior eta (default 1/K)")
    shorthand(p, "--fixed-alpha", "model.estimate_alpha", "keep alpha fixed", const=False)
    shorthand(p, "--estimate-eta", "model.estimate_eta", "also estimate eta", const=True)
    shorthand(p, "--heldout", "data.heldout", "fraction of documents held out")
    shorthand(p, "--max-docs", "data.max_docs", "use only the first N documents")
    shorthand(p, "--top-words", "eval.top_words", "words shown per topic")
    shorthand(p, "--dtype", "train.dtype", "E-step arithmetic, float32 or float64")
    shorthand(p, "--threads", "train.threads", "torch threads (default 1; 0: torch's setting)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress",
        dest="progress",
        action="store_true",
        default=None,
        help="always show progress",
    )
    g.add_argument("--quiet", dest="progress", action="store_false", help="never show progress")
    _common(p, "lda", "train.seed")


@command(
    "lda",
    "LDA by mean-field VI (batch EM or online VB): topics, held-out bound and perplexity",
    _lda_args,
)
def lda_cmd(args: argparse.Namespace) -> int:
    first = [("data.name", args.corpus)] if args.corpus else []
    return _run("lda", args, first, progress=args.progress)


def _ising_args(p: argparse.ArgumentParser) -> None:
    shorthand(p, "--sizes", "sizes", "grids for the table, e.g. 3x3,4x4", parse="list")
    shorthand(
        p,
        "--couplings",
        "couplings",
        "uniform couplings J for the table, e.g. 0,0.5,1",
        parse="list",
    )
    shorthand(p, "--field", "field", "uniform field h")
    shorthand(
        p,
        "--strip",
        "strip",
        "a long grid for the figure, by transfer matrix, e.g. 4x40",
        parse="str",
    )
    _common(p, "ising", "seed")


@command(
    "ising",
    "Ising model on a grid: mean-field ELBO vs exact log Z (enumeration, transfer matrix)",
    _ising_args,
)
def ising_cmd(args: argparse.Namespace) -> int:
    return _run("ising", args)
