"""Classical variational inference subcommands: ``kl``, ``lda``, ``ising``.

Each writes one run folder, ``runs/<name>/{config.json, command.txt, metrics.jsonl, figures/, report.html}``
(``lda`` also ``model/``), and prints its numbers.
"""

from __future__ import annotations

import argparse
import html
import json
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

from vaelab.cli import command
from vaelab.errors import VaelabError

# ----------------------------------------------------------------------------------------------------
# shared helpers


def _seed_out(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", default=None, help=f"run folder (default {default_out})")
    p.add_argument("--config", dest="config_file", default=None, metavar="FILE.toml",
                   help="read settings from a TOML file (keys are the option names, e.g. topics = 20); "
                   "options given here override it")


def _command_line(name: str, args: argparse.Namespace) -> str:
    """The command as a user would type it, rebuilt from the parsed arguments."""
    parts = ["vaelab", name]
    for key, value in vars(args).items():
        if key.startswith("_") or key in ("command", "config_file") or value is None or (
            value is False and key != "progress"
        ):
            continue
        if key == "corpus":
            parts.insert(2, str(value))
            continue
        if key == "progress":  # tri-state: None (auto), True (--progress), False (--quiet)
            parts.append("--progress" if value else "--quiet")
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _start_run(name: str, args: argparse.Namespace, default_out: str, config: dict) -> Path:
    run = Path(args.out or default_out)
    try:
        (run / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaelabError(f"cannot create run folder {run}: {exc.strerror}; pass a writable --out") from None
    (run / "config.json").write_text(
        json.dumps({"name": run.name, **config}, indent=1) + "\n", encoding="utf-8"
    )
    (run / "command.txt").write_text(_command_line(name, args) + "\n", encoding="utf-8")
    return run


def _write_metrics(run: Path, rows: list[dict]) -> None:
    with open(run / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def _save_figure(run: Path, fig, stem: str) -> bytes:
    from vaelab.report.html import figure_png

    png = figure_png(fig)
    (run / "figures" / f"{stem}.png").write_bytes(png)
    return png


def _text_table(header: list[str], rows: list[list], formats: list[str]) -> str:
    cells = [[f"{v:{f}}" if f else str(v) for v, f in zip(row, formats)] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def fmt(items):  # first column left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(items, widths)))

    line, body = fmt(header), [fmt(r) for r in cells]
    return "\n".join([line, *body])


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise VaelabError(f"{what} must be comma-separated numbers, got {text!r}") from None


# ----------------------------------------------------------------------------------------------------
# kl


def _kl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rho", type=float, default=0.9, help="correlation of Example 3's Gaussian p (default 0.9)"
    )
    p.add_argument(
        "--scales", default="1,1", help="standard deviations of p's two coordinates, e.g. 1,2 (default 1,1)"
    )
    _seed_out(p, "runs/kl")


@command(
    "kl", "KL(q||p) as an objective: contribution table, argmin over q, mean-field Gaussian fits", _kl_args
)
def kl_cmd(args: argparse.Namespace) -> int:
    import torch

    from vaelab.divergences import kl_gaussian
    from vaelab.report.html import Section, table_html, write_run_page
    from vaelab.vi import gaussian2d as g2
    from vaelab.vi.kl_examples import EXAMPLE2_P, contribution_table, example2_candidates, kl_argmin

    scales = _floats(args.scales, "--scales")
    if len(scales) != 2 or min(scales) <= 0:
        raise VaelabError(f"--scales needs two positive numbers, got {args.scales!r}")
    if not -1 < args.rho < 1:
        raise VaelabError(f"--rho must be strictly between -1 and 1, got {args.rho}")
    torch.manual_seed(args.seed)  # nothing here is random; the flag is accepted for uniformity
    run = _start_run("kl", args, "runs/kl", {"rho": args.rho, "scales": scales, "seed": args.seed})

    # Example 1
    rows1 = contribution_table()
    print("Example 1: contributions q_i log(q_i/p_i) to KL(q||p), nats")
    print(
        _text_table(["q_i", "p_i", "q log(q/p)"], [[r.q, r.p, r.term] for r in rows1], [".1f", ".1f", "+.2f"])
    )

    # Example 2
    cands = example2_candidates()
    res2 = kl_argmin(EXAMPLE2_P, cands)
    print(f"\nExample 2: p = {EXAMPLE2_P}; KL(q||p) for each candidate q, nats")
    rows2 = [[name, ", ".join(f"{v:.3f}" for v in q), res2.kl[name]] for name, q in cands.items()]
    print(_text_table(["candidate", "q", "KL(q||p)"], rows2, ["", "", ".4f"]))
    print(f"argmin: {res2.best}")

    # Example 3
    mu, cov = g2.correlated_gaussian(args.rho, tuple(scales))
    q_rev, trace, path = g2.reverse_kl_cavi(
        mu, cov, init_mean=mu + torch.tensor([-2.0, 2.0], dtype=torch.float64)
    )
    q_fwd = g2.forward_kl_fit(mu, cov)
    prec = torch.linalg.inv(cov)
    kl_rev = lambda q: float(kl_gaussian(q.mean, q.cov, mu, cov))  # noqa: E731
    kl_fwd = lambda q: float(kl_gaussian(mu, cov, q.mean, q.cov))  # noqa: E731
    rows3 = [
        ["p (marginal)", *mu.tolist(), *torch.diagonal(cov).tolist(), float("nan"), float("nan")],
        ["reverse KL(q||p), CAVI", *q_rev.mean.tolist(), *q_rev.var.tolist(), kl_rev(q_rev), kl_fwd(q_rev)],
        ["forward KL(p||q)", *q_fwd.mean.tolist(), *q_fwd.var.tolist(), kl_rev(q_fwd), kl_fwd(q_fwd)],
    ]
    header3 = ["fit", "mean_1", "mean_2", "var_1", "var_2", "KL(q||p)", "KL(p||q)"]
    print(
        f"\nExample 3: p = N(0, Sigma), rho = {args.rho}, scales = {scales}; "
        "mean-field fits q = N(m1,v1) N(m2,v2)"
    )
    print(_text_table(header3, rows3, ["", "+.4f", "+.4f", ".4f", ".4f", ".4f", ".4f"]))
    print(
        f"CAVI: {trace.n_sweeps} sweeps to converge; variances 1/Lambda_ii = "
        f"{', '.join(f'{v:.4f}' for v in (1 / torch.diagonal(prec)).tolist())} (conditional) "
        f"vs Sigma_ii = {', '.join(f'{v:.4f}' for v in torch.diagonal(cov).tolist())} (marginal)"
    )

    fig = g2.plot_fits(mu, cov, q_rev, q_fwd, path)
    png = _save_figure(run, fig, "example3_fits")
    _write_metrics(
        run,
        [{"example": 1, "q": r.q, "p": r.p, "term": r.term} for r in rows1]
        + [{"example": 2, "candidate": k, "kl": v} for k, v in res2.kl.items()]
        + [{"example": 3, "sweep": i, "elbo": e} for i, e in enumerate(trace.elbo)],
    )
    sections = [
        Section(
            "Example 1: contributions to KL(q||p)",
            table_html(
                ["q_i", "p_i", "q_i log(q_i/p_i) (nats)"], [[r.q, r.p, round(r.term, 4)] for r in rows1]
            )
            + "<p>Terms where q puts mass that p does not are large; terms where q has less mass than p are "
            "negative. Only the sum is non-negative.</p>",
        ),
        Section(
            f"Example 2: argmin over candidates, p = {EXAMPLE2_P}",
            table_html(["candidate", "q", "KL(q||p) (nats)"], [[a, b, round(c, 6)] for a, b, c in rows2])
            + f"<p>Smallest: <b>{html.escape(res2.best)}</b>.</p>",
        ),
        Section(
            "Example 3: mean-field fits to a correlated Gaussian",
            table_html(header3, [[r[0], *[round(v, 4) for v in r[1:]]] for r in rows3])
            + "<p>The reverse-KL fit (CAVI, Bishop eqs. 10.12-10.13) has the conditional variances "
            "1/Λ<sub>ii</sub> and under-covers p; the forward-KL fit keeps the marginals and over-covers "
            "it.</p>",
            [
                (
                    png,
                    "p's 1σ/2σ contours (grey), the reverse-KL fit (red) with the CAVI path, "
                    "the forward-KL fit (blue)",
                )
            ],
        ),
    ]
    page = write_run_page(
        run, "KL(q‖p) as an objective", sections, subtitle=_command_line("kl", args)
    )
    print(f"\nreport: {page}")
    return 0


# ----------------------------------------------------------------------------------------------------
# lda


def _lda_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "corpus",
        nargs="?",
        help="'ap' (the AP corpus in $VAELAB_DATA/ap), an lda-c .dat file with vocab.txt beside it, "
        "or a text file with one document per line (or corpus = ... in --config)",
    )
    p.add_argument("--topics", type=int, default=20, help="number of topics K (default 20)")
    p.add_argument(
        "--mode", choices=["batch", "online"], default="batch", help="batch variational EM or online VB"
    )
    p.add_argument(
        "--passes", type=int, default=None, help="passes over the corpus (default 50 batch, 10 online)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="online minibatch size (default 256)")
    p.add_argument("--tau0", type=float, default=64.0, help="online step size offset tau0 (default 64)")
    p.add_argument("--kappa", type=float, default=0.7, help="online step size decay kappa (default 0.7)")
    p.add_argument("--alpha", type=float, default=None, help="initial symmetric alpha (default 1/K)")
    p.add_argument("--eta", type=float, default=None, help="topic prior eta (default 1/K)")
    p.add_argument("--fixed-alpha", action="store_true", help="keep alpha fixed instead of estimating it")
    p.add_argument("--estimate-eta", action="store_true", help="also estimate eta")
    p.add_argument("--heldout", type=float, default=0.1, help="fraction of documents held out (default 0.1)")
    p.add_argument("--max-docs", type=int, default=None, help="use only the first N documents")
    p.add_argument("--top-words", type=int, default=10, help="words printed per topic (default 10)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="E-step arithmetic")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's setting)")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="always show progress"
    )
    g.add_argument("--quiet", dest="progress", action="store_false", help="never show progress")
    _seed_out(p, "runs/lda-<corpus>")


@command(
    "lda", "LDA by mean-field VI (batch EM or online VB): topics, held-out bound and perplexity", _lda_args
)
def lda_cmd(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from vaelab.data.ap import resolve_corpus
    from vaelab.report.html import Section, table_html, write_run_page
    from vaelab.vi.lda import (
        BatchLDA,
        LDAConfig,
        OnlineLDA,
        OnlineLDAConfig,
        torch_threads,
        unigram_perplexity,
    )

    if not args.corpus:
        raise VaelabError(
            'no corpus: name one (e.g. `vaelab lda ap`) or set corpus = "ap" in the --config file'
        )
    corpus = resolve_corpus(args.corpus)
    if args.max_docs is not None:
        if args.max_docs < 2:
            raise VaelabError(f"--max-docs must be at least 2, got {args.max_docs}")
        corpus = corpus.subset(np.arange(min(args.max_docs, corpus.n_docs)))
    if corpus.n_docs < 2:
        raise VaelabError(
            f"{args.corpus} has {corpus.n_docs} document(s); LDA with a held-out split needs >= 2"
        )
    train, test = corpus.train_test_split(args.heldout, seed=args.seed)
    common = dict(
        n_topics=args.topics,
        alpha=args.alpha,
        eta=args.eta,
        estimate_alpha=not args.fixed_alpha,
        estimate_eta=args.estimate_eta,
        seed=args.seed,
        dtype=args.dtype,
        n_threads=args.threads,
    )
    if args.mode == "batch":
        cfg = LDAConfig(passes=args.passes or 50, **common)
        fitter = BatchLDA(cfg)
    else:
        cfg = OnlineLDAConfig(
            passes=args.passes or 10, batch_size=args.batch_size, tau0=args.tau0, kappa=args.kappa, **common
        )
        fitter = OnlineLDA(cfg)
    name = Path(args.corpus).stem if args.corpus != "ap" else "ap"
    run = _start_run(
        "lda",
        args,
        f"runs/lda-{name}",
        {"corpus": args.corpus, "mode": args.mode, "heldout": args.heldout, "lda": asdict(cfg)},
    )
    print(
        f"corpus {corpus.name}: {corpus.n_docs} documents, {corpus.n_terms} terms, {corpus.n_tokens} tokens; "
        f"train {train.n_docs} / held-out {test.n_docs} documents (seeded split, seed {args.seed})"
    )
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = tqdm(total=cfg.passes, desc=f"lda {args.mode}", disable=not show, file=sys.stderr)
    history: list[dict] = []

    def on_pass(i: int, elbo: float) -> None:
        history.append({"pass": i, "elbo_per_word": elbo})
        bar.set_postfix(elbo_per_word=f"{elbo:.4f}")
        bar.update(1)

    fit = fitter.fit(train, callback=on_pass)
    bar.close()
    model = fit.model
    with torch_threads(args.threads):
        bound = model.perword_bound(test)
        completion = model.completion_perplexity(test, seed=args.seed)
        unigram = unigram_perplexity(train, test, seed=args.seed)
    model.save(run / "model")

    top = model.top_words(args.top_words)
    order = np.argsort(-model.alpha)
    print(
        f"\n{args.mode} LDA, K = {args.topics}: {fit.passes} passes in {fit.seconds:.1f} s "
        f"({fit.docs_per_second:.0f} docs/s)"
    )
    print("topics (alpha_k, top words):")
    for k in order:
        print(f"  {k:3d}  {model.alpha[k]:.3f}  {' '.join(top[k])}")
    elbo_word = fit.elbo_per_word[-1]
    print(
        f"\ntraining ELBO per word: {elbo_word:.4f} nats"
        + (" (running estimate)" if args.mode == "online" else "")
    )
    print(
        f"held-out per-word bound:          {bound.log_lik_per_word:.4f} nats "
        f"(perplexity {bound.perplexity:.1f})"
    )
    print(
        f"held-out document completion:     {completion.log_lik_per_word:.4f} nats "
        f"(perplexity {completion.perplexity:.1f}, {completion.n_tokens} tokens)"
    )
    print(
        f"unigram on the same tokens:       {unigram.log_lik_per_word:.4f} nats "
        f"(perplexity {unigram.perplexity:.1f})"
    )

    summary = {
        "passes": fit.passes,
        "seconds": fit.seconds,
        "docs_per_second": fit.docs_per_second,
        "train_elbo_per_word": elbo_word,
        "heldout_bound_per_word": bound.log_lik_per_word,
        "heldout_bound_perplexity": bound.perplexity,
        "completion_log_lik_per_word": completion.log_lik_per_word,
        "completion_perplexity": completion.perplexity,
        "unigram_perplexity": unigram.perplexity,
    }
    _write_metrics(run, [*history, {"final": summary}])
    (run / "results.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    start = 0 if args.mode == "batch" else 1
    ax.plot(range(start, start + len(fit.elbo_per_word)), fit.elbo_per_word, ".-")
    ax.set_xlabel("pass")
    ax.set_ylabel("ELBO per word (nats)")
    ax.set_title(f"{args.mode} LDA on {corpus.name}, K = {args.topics}")
    png_elbo = _save_figure(run, fig, "elbo")
    theta = model.transform(test)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    n_show = min(40, theta.shape[0])
    ax.imshow(theta[:n_show].T, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("held-out document")
    ax.set_ylabel("topic")
    ax.set_title("topic proportions E_q[θ_d]")
    png_theta = _save_figure(run, fig, "theta")
    np.savetxt(run / "heldout_theta.csv", theta, delimiter=",", fmt="%.6f")

    metrics_rows = [
        ["held-out per-word bound", round(bound.log_lik_per_word, 4), round(bound.perplexity, 1)],
        [
            "held-out document completion",
            round(completion.log_lik_per_word, 4),
            round(completion.perplexity, 1),
        ],
        [
            "unigram (Laplace) on the same tokens",
            round(unigram.log_lik_per_word, 4),
            round(unigram.perplexity, 1),
        ],
    ]
    sections = [
        Section(
            "Held-out evaluation",
            table_html(["measure", "nats per word", "perplexity"], metrics_rows)
            + "<p>Per-word bound: the ELBO of each held-out document with the topics fixed, summed and "
            "divided by its tokens. Document completion: θ fitted on a seeded random half of each held-out "
            "document's tokens, the other half scored under p(w) = Σ<sub>k</sub> θ<sub>k</sub> "
            "β<sub>kw</sub>.</p>",
        ),
        Section(
            "Topics",
            table_html(
                ["topic", "alpha_k", "top words"],
                [[int(k), round(float(model.alpha[k]), 4), " ".join(top[k])] for k in order],
            ),
        ),
        Section(
            "Training",
            f"<p>{fit.passes} passes, {fit.seconds:.1f} s, {fit.docs_per_second:.0f} documents/s.</p>",
            [(png_elbo, "ELBO per word after every pass"), (png_theta, "held-out topic proportions")],
        ),
    ]
    page = write_run_page(
        run, f"LDA on {corpus.name}", sections, subtitle=_command_line("lda", args)
    )
    print(f"\nmodel: {run / 'model'}\nreport: {page}")
    return 0


# ----------------------------------------------------------------------------------------------------
# ising


def _sizes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            h, w = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise VaelabError(f"grid sizes look like 3x3,4x4; got {part!r}") from None
        if h < 1 or w < 1:
            raise VaelabError(f"grid sides must be >= 1, got {part!r}")
        out.append((h, w))
    return out


def _ising_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", default="3x3,4x4", help="grids for the table (default 3x3,4x4)")
    p.add_argument("--couplings", default="0,0.1,0.3,0.5,1.0", help="uniform couplings J for the table")
    p.add_argument("--field", type=float, default=0.0, help="uniform field h (default 0)")
    p.add_argument(
        "--strip", default="4x40", help="a long grid for the figure, by transfer matrix (default 4x40)"
    )
    _seed_out(p, "runs/ising")


@command(
    "ising",
    "Ising model on a grid: mean-field ELBO vs exact log Z (enumeration, transfer matrix)",
    _ising_args,
)
def ising_cmd(args: argparse.Namespace) -> int:
    import numpy as np

    from vaelab.report.html import Section, table_html, write_run_page
    from vaelab.vi.ising import MAX_TRANSFER_WIDTH, ising_table, plot_bound_vs_coupling

    sizes = _sizes(args.sizes)
    strip = _sizes(args.strip) if args.strip else []
    couplings = _floats(args.couplings, "--couplings")
    for h, w in sizes + strip:
        if h * w > 16 and min(h, w) > MAX_TRANSFER_WIDTH:
            raise VaelabError(
                f"{h}x{w} is too large for exact log Z: use at most 16 spins or a short side <= 16"
            )
    run = _start_run(
        "ising",
        args,
        "runs/ising",
        {"sizes": sizes, "couplings": couplings, "field": args.field, "strip": strip, "seed": args.seed},
    )
    rows = ising_table(sizes, couplings, field=args.field, seed=args.seed)
    header = ["grid", "J", "exact log Z", "mean-field ELBO", "gap", "gap/spin", "log Z by"]
    table = [
        [f"{r.height}x{r.width}", r.coupling, r.log_z, r.bound, r.gap, r.gap / (r.height * r.width), r.method]
        for r in rows
    ]
    print(f"Ising model, free boundaries, uniform coupling J and field h = {args.field:g}; nats")
    print(_text_table(header, table, ["", ".2f", ".4f", ".4f", ".4f", ".4f", ""]))
    fig, data = plot_bound_vs_coupling(
        sizes + strip, np.linspace(0.0, max([1.0, *couplings]), 21), field=args.field, seed=args.seed
    )
    png = _save_figure(run, fig, "logz_vs_coupling")
    _write_metrics(
        run,
        [
            {"grid": t[0], "coupling": r.coupling, "log_z": r.log_z, "elbo": r.bound, "gap": r.gap}
            for t, r in zip(table, rows)
        ],
    )
    sections = [
        Section(
            "Exact log Z and the mean-field bound",
            table_html(header, [[t[0], t[1], *(round(v, 4) for v in t[2:6]), t[6]] for t in table])
            + "<p>Naive mean field q(s) = Π q<sub>i</sub>(s<sub>i</sub>), CAVI on the magnetisations "
            "m<sub>i</sub> = tanh(h<sub>i</sub> + Σ<sub>j</sub> J<sub>ij</sub> m<sub>j</sub>); the ELBO is a "
            "lower bound on log Z and the gap is KL(q‖p).</p>",
        ),
        Section("Bound against coupling strength", "", [(png, "log Z (solid) and ELBO (dashed) per spin")]),
    ]
    page = write_run_page(
        run, "Ising model: mean field vs exact", sections, _command_line("ising", args)
    )
    print(f"\nfigure: {run / 'figures' / 'logz_vs_coupling.png'}\nreport: {page}")
    return 0
