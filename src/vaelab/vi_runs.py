"""The classical-VI experiments as runs: typed settings, and ``run_*(settings, run_dir) -> result``.

Each experiment has a settings dataclass (loaded from TOML and ``--set key=value`` by
:func:`vaelab.config.settings_from_dict`, saved in full as the run's ``config.json``), a run
function that computes, writes the run folder (``config.json``, ``command.txt``, ``metrics.jsonl``,
the report's sections and ``report.html``) and returns a result dataclass, and a ``format_*``
function giving the result as the text the command prints. :data:`EXPERIMENTS` names them.

The defaults are the settings BENCHMARKS.md measures.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vaelab.errors import VaelabError
from vaelab.runfolder import start_run_folder, write_json, write_metrics

__all__ = [
    "KLSettings",
    "KLResult",
    "run_kl",
    "format_kl",
    "CorpusSettings",
    "LDAModelSettings",
    "LDATrainSettings",
    "LDAEvalSettings",
    "LDASettings",
    "LDAResult",
    "run_lda",
    "format_lda",
    "IsingSettings",
    "IsingResult",
    "run_ising",
    "format_ising",
    "Experiment",
    "EXPERIMENTS",
    "text_table",
]


# ----------------------------------------------------------------------------------------------- shared


def text_table(header: list[str], rows: list[list[Any]], formats: list[str]) -> str:
    """Rows as aligned text: first column left-aligned, the others right-aligned; ``formats`` per column."""
    cells = [[f"{v:{f}}" if f else str(v) for v, f in zip(row, formats)] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def line(items: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(items, widths))
        )

    return "\n".join([line(header), *(line(r) for r in cells)])


def _finish(run: Path, sections: list) -> Path:
    """Write the run's report sections (``sections.json``, as data) and its page from the folder."""
    from vaelab.report.build import build_report
    from vaelab.sections import write_sections

    write_sections(run, sections)
    return build_report(run)


def _ellipse(mean, cov, k: float, n: int = 100) -> np.ndarray:
    """(n, 2) points of the k-sigma contour of N(mean, cov) in 2-D: mean + k L (cos t, sin t), L L^T = cov."""
    t = np.linspace(0.0, 2 * np.pi, n)
    chol = np.linalg.cholesky(np.asarray(cov, dtype=float))
    return np.asarray(mean, dtype=float) + k * np.stack([np.cos(t), np.sin(t)], 1) @ chol.T


def _padded(curves: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) arrays (M, N) of M curves of points (n_i, 2), NaN after a shorter curve's end."""
    n = max(len(c) for c in curves)
    out = np.full((len(curves), n, 2), np.nan)
    for i, c in enumerate(curves):
        out[i, : len(c)] = c
    return out[..., 0], out[..., 1]


# ---------------------------------------------------------------------------------------------------- kl


@dataclass
class KLSettings:
    """``vaelab kl``: Example 3's target p = N(0, Σ) with correlation ``rho`` and standard deviations
    ``scales``. Examples 1 and 2 have no settings. ``seed`` is accepted for uniformity (nothing is
    random). ``name``: the run folder's default name (runs/<name>)."""

    rho: float = 0.9
    scales: list[float] = field(default_factory=lambda: [1.0, 1.0])
    seed: int = 0
    name: str = "kl"

    def validate(self, prefix: str) -> None:
        if not -1 < self.rho < 1:
            raise VaelabError(f"{prefix}rho must be strictly between -1 and 1, got {self.rho}")
        if len(self.scales) != 2 or min(self.scales) <= 0:
            raise VaelabError(f"{prefix}scales must be two positive numbers, got {self.scales}")


@dataclass
class KLResult:
    contributions: list  # Example 1: ContributionRow (q, p, term)
    candidates: dict[str, tuple[float, ...]]  # Example 2: candidate q's
    p2: tuple[float, ...]
    kl2: dict[str, float]
    best: str
    fits: list[list]  # Example 3: [fit, mean_1, mean_2, var_1, var_2, KL(q||p), KL(p||q)]
    cavi_sweeps: int
    conditional_var: list[float]  # 1 / Λ_ii
    marginal_var: list[float]  # Σ_ii
    elbo_trace: list[float]
    report: Path


_KL_FIT_HEADER = ["fit", "mean_1", "mean_2", "var_1", "var_2", "KL(q||p)", "KL(p||q)"]


def run_kl(settings: KLSettings, run_dir: str | Path, *, command: str | None = None) -> KLResult:
    """Examples 1-3 of KL(q‖p) as an objective; writes the run folder and returns the numbers."""
    import torch

    from vaelab import sections as sec
    from vaelab.divergences import kl_gaussian
    from vaelab.vi import gaussian2d as g2
    from vaelab.vi.kl_examples import EXAMPLE2_P, contribution_table, example2_candidates, kl_argmin

    torch.manual_seed(settings.seed)  # nothing here is random
    run = start_run_folder(run_dir, settings, command)
    rows1 = contribution_table()
    cands = example2_candidates()
    res2 = kl_argmin(EXAMPLE2_P, cands)
    mu, cov = g2.correlated_gaussian(settings.rho, tuple(settings.scales))
    start = mu + torch.tensor([-2.0, 2.0], dtype=torch.float64)
    q_rev, trace, path = g2.reverse_kl_cavi(mu, cov, init_mean=start)
    q_fwd = g2.forward_kl_fit(mu, cov)
    prec = torch.linalg.inv(cov)

    def kls(q) -> list[float]:
        return [float(kl_gaussian(q.mean, q.cov, mu, cov)), float(kl_gaussian(mu, cov, q.mean, q.cov))]

    fits = [
        ["p (marginal)", *mu.tolist(), *torch.diagonal(cov).tolist(), math.nan, math.nan],
        ["reverse KL(q||p), CAVI", *q_rev.mean.tolist(), *q_rev.var.tolist(), *kls(q_rev)],
        ["forward KL(p||q)", *q_fwd.mean.tolist(), *q_fwd.var.tolist(), *kls(q_fwd)],
    ]
    write_metrics(
        run,
        [{"example": 1, "q": r.q, "p": r.p, "term": r.term} for r in rows1]
        + [{"example": 2, "candidate": k, "kl": v} for k, v in res2.kl.items()]
        + [{"example": 3, "sweep": i, "elbo": e} for i, e in enumerate(trace.elbo)],
    )
    # the figure as data: p's 1- and 2-sigma contours, both fits' ellipses, the CAVI path of the means
    curves, labels, styles = [], [], []
    for label, m, c in (
        ("p (1σ, 2σ)", mu.numpy(), cov.numpy()),
        ("reverse KL(q‖p), CAVI", q_rev.mean.numpy(), np.diag(q_rev.var.numpy())),
        ("forward KL(p‖q)", q_fwd.mean.numpy(), np.diag(q_fwd.var.numpy())),
    ):
        for k, style in ((1.0, "-"), (2.0, "--")):
            curves.append(_ellipse(m, c, k))
            labels.append(label)
            styles.append(style)
    curves.append(torch.stack(path).numpy())
    labels.append("CAVI path of the means")
    styles.append(".-")
    x, y = _padded(curves)
    rows2 = [[name, ", ".join(f"{v:.3f}" for v in q), res2.kl[name]] for name, q in cands.items()]
    sections = [
        sec.TableSection(
            name="example1", title="Example 1: contributions to KL(q‖p)",
            header=["q_i", "p_i", "q_i log(q_i/p_i) (nats)"], rows=[[r.q, r.p, r.term] for r in rows1],
            caption="Terms where q puts mass that p does not are large; terms where q has less mass than p "
            "are negative. Only the sum is non-negative.",
        ),
        sec.TableSection(
            name="example2", title=f"Example 2: argmin over candidates, p = {EXAMPLE2_P}",
            header=["candidate", "q", "KL(q||p) (nats)"], rows=rows2, caption=f"Smallest: {res2.best}.",
        ),
        sec.TableSection(
            name="example3", title="Example 3: mean-field fits to a correlated Gaussian",
            header=_KL_FIT_HEADER, rows=[[r[0], *(round(v, 4) for v in r[1:])] for r in fits],
            caption="The reverse-KL fit (CAVI, Bishop eqs. 10.12-10.13) has the conditional variances "
            "1/Λ_ii and under-covers p; the forward-KL fit keeps the marginals and over-covers it.",
        ),
        sec.CurvesSection(
            name="example3_fits", title="Example 3: the fits drawn", x=x, y=y, labels=labels, styles=styles,
            xlabel="z_1", ylabel="z_2", equal_aspect=True,
            caption="p's 1σ (solid) and 2σ (dashed) contours, the reverse-KL fit with the CAVI path of its "
            "means, the forward-KL fit.",
        ),
    ]
    page = _finish(run, sections)
    return KLResult(
        contributions=rows1, candidates=cands, p2=EXAMPLE2_P, kl2=res2.kl, best=res2.best, fits=fits,
        cavi_sweeps=trace.n_sweeps, conditional_var=(1 / torch.diagonal(prec)).tolist(),
        marginal_var=torch.diagonal(cov).tolist(), elbo_trace=list(trace.elbo), report=page,
    )


def format_kl(settings: KLSettings, r: KLResult) -> str:
    rows2 = [
        [name, ", ".join(f"{v:.3f}" for v in q), r.kl2[name]] for name, q in r.candidates.items()
    ]
    return "\n".join(
        [
            "Example 1: contributions q_i log(q_i/p_i) to KL(q||p), nats",
            text_table(
                ["q_i", "p_i", "q log(q/p)"],
                [[c.q, c.p, c.term] for c in r.contributions],
                [".1f", ".1f", "+.2f"],
            ),
            f"\nExample 2: p = {r.p2}; KL(q||p) for each candidate q, nats",
            text_table(["candidate", "q", "KL(q||p)"], rows2, ["", "", ".4f"]),
            f"argmin: {r.best}",
            f"\nExample 3: p = N(0, Sigma), rho = {settings.rho}, scales = {settings.scales}; "
            "mean-field fits q = N(m1,v1) N(m2,v2)",
            text_table(_KL_FIT_HEADER, r.fits, ["", "+.4f", "+.4f", ".4f", ".4f", ".4f", ".4f"]),
            f"CAVI: {r.cavi_sweeps} sweeps to converge; variances 1/Lambda_ii = "
            f"{', '.join(f'{v:.4f}' for v in r.conditional_var)} (conditional) "
            f"vs Sigma_ii = {', '.join(f'{v:.4f}' for v in r.marginal_var)} (marginal)",
            f"\nreport: {r.report}",
        ]
    )


# --------------------------------------------------------------------------------------------------- lda


def _lda_classes():
    from vaelab.vi.lda import BatchLDA, LDAConfig, OnlineLDA, OnlineLDAConfig

    return {"batch": (BatchLDA, LDAConfig), "online": (OnlineLDA, OnlineLDAConfig)}


@dataclass
class CorpusSettings:
    """``name``: ``ap`` (the AP corpus in $VAELAB_DATA/ap), an lda-c .dat file with vocab.txt beside
    it, or a text file with one document per line. ``heldout``: fraction of documents held out
    (a seeded split, ``train.seed``). ``max_docs``: use only the first N documents (0: all)."""

    name: str = "ap"
    heldout: float = 0.1
    max_docs: int = 0

    def validate(self, prefix: str) -> None:
        if not self.name:
            raise VaelabError(
                f"{prefix}.name is empty: give 'ap', an lda-c .dat file or a text file"
            )
        if not 0 < self.heldout < 1:
            raise VaelabError(f"{prefix}.heldout must be a fraction in (0, 1), got {self.heldout}")
        if self.max_docs == 1 or self.max_docs < 0:
            raise VaelabError(
                f"{prefix}.max_docs must be 0 (all) or at least 2, got {self.max_docs}"
            )


@dataclass
class LDAModelSettings:
    """K topics; symmetric Dirichlet priors ``alpha`` on θ_d and ``eta`` on β_k (unset: 1/K), each
    estimated by Newton's method when ``estimate_*`` is true."""

    topics: int = 20
    alpha: float | None = None
    eta: float | None = None
    estimate_alpha: bool = True
    estimate_eta: bool = False

    def validate(self, prefix: str) -> None:
        if self.topics < 1:
            raise VaelabError(f"{prefix}.topics must be >= 1, got {self.topics}")
        for key in ("alpha", "eta"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise VaelabError(f"{prefix}.{key} must be > 0, got {v}")


def _default(cls_name: str, key: str):
    from vaelab.vi import lda

    return getattr(getattr(lda, cls_name), key)


@dataclass
class LDATrainSettings:
    """How the topics are fitted: ``mode`` batch variational EM or online VB (Hoffman et al. 2010).

    passes: over the training documents (unset: the mode's default, 20 batch / 10 online).
    batch_size, tau0, kappa, shuffle: online VB's minibatches and step size rho_t = (tau0 + t)^-kappa.
    tol: batch EM stops at this relative change of the ELBO (0: exactly ``passes``).
    dtype: arithmetic of the E-step's sparse products. threads: torch threads while fitting and
    evaluating (0: torch's setting); 1, as BENCHMARKS.md measures, because on a busy CPU an OpenMP
    team waiting for a descheduled thread makes the small products of a minibatch many times slower.
    """

    mode: Literal["batch", "online"] = "batch"
    passes: int | None = None
    batch_size: int = field(default_factory=lambda: _default("OnlineLDAConfig", "batch_size"))
    tau0: float = field(default_factory=lambda: _default("OnlineLDAConfig", "tau0"))
    kappa: float = field(default_factory=lambda: _default("OnlineLDAConfig", "kappa"))
    shuffle: bool = True
    tol: float = field(default_factory=lambda: _default("LDAConfig", "tol"))
    e_step_max_iter: int = 100
    e_step_tol: float = 1e-3
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    threads: int = 1

    def validate(self, prefix: str) -> None:
        if self.passes is not None and self.passes < 1:
            raise VaelabError(f"{prefix}.passes must be >= 1, got {self.passes}")
        if self.batch_size < 1:
            raise VaelabError(f"{prefix}.batch_size must be >= 1, got {self.batch_size}")
        if not 0.5 < self.kappa <= 1.0:
            raise VaelabError(
                f"{prefix}.kappa must be in (0.5, 1] (Robbins-Monro), got {self.kappa}"
            )
        if self.tau0 < 0 or self.tol < 0 or self.e_step_tol < 0:
            raise VaelabError(f"{prefix}.tau0, {prefix}.tol and {prefix}.e_step_tol must be >= 0")
        if self.e_step_max_iter < 1 or self.threads < 0:
            raise VaelabError(f"{prefix}.e_step_max_iter must be >= 1 and {prefix}.threads >= 0")


@dataclass
class LDAEvalSettings:
    """``top_words``: words shown per topic; ``theta_docs``: held-out documents in the θ figure."""

    top_words: int = 10
    theta_docs: int = 40

    def validate(self, prefix: str) -> None:
        if self.top_words < 1 or self.theta_docs < 1:
            raise VaelabError(f"{prefix}.top_words and {prefix}.theta_docs must be >= 1")


@dataclass
class LDASettings:
    """``vaelab lda``: the corpus (``data``), the model, its fitting (``train``) and the report (``eval``).
    ``name``: the run folder's default name (empty: lda-<corpus>)."""

    data: CorpusSettings = field(default_factory=CorpusSettings)
    model: LDAModelSettings = field(default_factory=LDAModelSettings)
    train: LDATrainSettings = field(default_factory=LDATrainSettings)
    eval: LDAEvalSettings = field(default_factory=LDAEvalSettings)
    name: str = ""

    def validate(self, prefix: str) -> None:
        if not self.name:
            self.name = "lda-" + (Path(self.data.name).stem if self.data.name != "ap" else "ap")
        if self.train.passes is None:
            self.train.passes = _lda_classes()[self.train.mode][1].passes

    def fitter(self):
        """The library's fitter (BatchLDA or OnlineLDA) with these settings."""
        fitter_cls, config_cls = _lda_classes()[self.train.mode]
        m, t = self.model, self.train
        values = dict(
            n_topics=m.topics,
            passes=t.passes,
            alpha=m.alpha,
            eta=m.eta,
            estimate_alpha=m.estimate_alpha,
            estimate_eta=m.estimate_eta,
            tol=t.tol,
            e_step_max_iter=t.e_step_max_iter,
            e_step_tol=t.e_step_tol,
            seed=t.seed,
            n_threads=t.threads or None,
            dtype=t.dtype,
            batch_size=t.batch_size,
            tau0=t.tau0,
            kappa=t.kappa,
            shuffle=t.shuffle,
        )
        names = {f.name for f in dataclasses.fields(config_cls)}
        return fitter_cls(config_cls(**{k: v for k, v in values.items() if k in names}))


@dataclass
class LDAResult:
    corpus: str
    n_docs: int
    n_terms: int
    n_tokens: int
    n_train: int
    n_heldout: int
    topics: list[tuple[int, float, list[str]]]  # (topic, alpha_k, top words), by alpha_k descending
    summary: dict[str, float]
    completion_tokens: int
    model_dir: Path
    report: Path


def run_lda(
    settings: LDASettings, run_dir: str | Path, *, progress: bool | None = None, command: str | None = None
) -> LDAResult:
    """Fit LDA, evaluate it on held-out documents, and write the run folder (with ``model/``)."""
    from tqdm import tqdm

    from vaelab import sections as sec
    from vaelab.data.ap import resolve_corpus
    from vaelab.threads import torch_threads
    from vaelab.vi.lda import unigram_perplexity

    d, t = settings.data, settings.train
    corpus = resolve_corpus(d.name)
    if d.max_docs:
        corpus = corpus.subset(np.arange(min(d.max_docs, corpus.n_docs)))
    if corpus.n_docs < 2:
        raise VaelabError(f"{d.name} has {corpus.n_docs} document(s); LDA with a held-out split needs >= 2")
    train, test = corpus.train_test_split(d.heldout, seed=t.seed)
    fitter = settings.fitter()
    run = start_run_folder(run_dir, settings, command)
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=t.passes, desc=f"lda {t.mode}", disable=not show, file=sys.stderr)
    history: list[dict] = []

    def on_pass(i: int, elbo: float) -> None:
        history.append({"pass": i, "elbo_per_word": elbo})
        bar.set_postfix(elbo_per_word=f"{elbo:.4f}")
        bar.update(1)

    try:
        fit = fitter.fit(train, callback=on_pass)
    finally:
        bar.close()
    model = fit.model
    with torch_threads(t.threads or None):
        bound = model.perword_bound(test)
        completion = model.completion_perplexity(test, seed=t.seed)
        unigram = unigram_perplexity(train, test, seed=t.seed)
        theta = model.transform(test)
    model.save(run / "model")
    top = model.top_words(settings.eval.top_words)
    topics = [(int(k), float(model.alpha[k]), list(top[k])) for k in np.argsort(-model.alpha)]
    summary = {
        "passes": fit.passes,
        "seconds": fit.seconds,
        "docs_per_second": fit.docs_per_second,
        "train_elbo_per_word": fit.elbo_per_word[-1],
        "heldout_bound_per_word": bound.log_lik_per_word,
        "heldout_bound_perplexity": bound.perplexity,
        "completion_log_lik_per_word": completion.log_lik_per_word,
        "completion_perplexity": completion.perplexity,
        "unigram_log_lik_per_word": unigram.log_lik_per_word,
        "unigram_perplexity": unigram.perplexity,
    }
    write_metrics(run, [*history, {"final": summary}])
    write_json(run, "results.json", summary)
    np.savetxt(run / "heldout_theta.csv", theta, delimiter=",", fmt="%.6f")
    first = 0 if t.mode == "batch" else 1  # batch records the ELBO at initialisation too
    scores = [("held-out per-word bound", bound), ("held-out document completion", completion),
              ("unigram (Laplace) on the same tokens", unigram)]
    sections = [
        sec.TableSection(
            name="heldout", title="Held-out evaluation", header=["measure", "nats per word", "perplexity"],
            rows=[[what, round(sc.log_lik_per_word, 4), round(sc.perplexity, 1)] for what, sc in scores],
            caption="Per-word bound: the ELBO of each held-out document with the topics fixed, summed and "
            "divided by its tokens. Document completion: θ fitted on a seeded random half of each held-out "
            "document's tokens, the other half scored under p(w) = Σ_k θ_k β_kw.",
        ),
        sec.TableSection(
            name="topics", title="Topics", header=["topic", "alpha_k", "top words"],
            rows=[[k, round(a, 4), " ".join(w)] for k, a, w in topics],
        ),
        sec.LinesSection(
            name="elbo", title="Training", x=np.arange(first, first + len(fit.elbo_per_word)),
            y=np.asarray(fit.elbo_per_word), xlabel="pass", ylabel="ELBO per word (nats)",
            caption=f"{t.mode} LDA, K = {settings.model.topics}: {fit.passes} passes, {fit.seconds:.1f} s, "
            f"{fit.docs_per_second:.0f} documents/s"
            + (" (online: a running estimate of the ELBO)." if t.mode == "online" else "."),
        ),
        sec.HeatmapSection(
            name="theta", title="Topic proportions of held-out documents",
            values=theta[: settings.eval.theta_docs].T, xlabel="held-out document", ylabel="topic",
            colorbar="E_q[θ_dk]",
        ),
    ]
    page = _finish(run, sections)
    return LDAResult(
        corpus=corpus.name, n_docs=corpus.n_docs, n_terms=corpus.n_terms, n_tokens=corpus.n_tokens,
        n_train=train.n_docs, n_heldout=test.n_docs, topics=topics, summary=summary,
        completion_tokens=completion.n_tokens, model_dir=run / "model", report=page,
    )


def format_lda(settings: LDASettings, r: LDAResult) -> str:
    s, t = r.summary, settings.train
    return "\n".join(
        [
            f"corpus {r.corpus}: {r.n_docs} documents, {r.n_terms} terms, {r.n_tokens} tokens; "
            f"train {r.n_train} / held-out {r.n_heldout} documents (seeded split, seed {t.seed})",
            f"\n{t.mode} LDA, K = {settings.model.topics}: {s['passes']} passes in {s['seconds']:.1f} s "
            f"({s['docs_per_second']:.0f} docs/s)",
            "topics (alpha_k, top words):",
            *(f"  {k:3d}  {a:.3f}  {' '.join(words)}" for k, a, words in r.topics),
            f"\ntraining ELBO per word: {s['train_elbo_per_word']:.4f} nats"
            + (" (running estimate)" if t.mode == "online" else ""),
            f"held-out per-word bound:          {s['heldout_bound_per_word']:.4f} nats "
            f"(perplexity {s['heldout_bound_perplexity']:.1f})",
            f"held-out document completion:     {s['completion_log_lik_per_word']:.4f} nats "
            f"(perplexity {s['completion_perplexity']:.1f}, {r.completion_tokens} tokens)",
            f"unigram on the same tokens:       {s['unigram_log_lik_per_word']:.4f} nats "
            f"(perplexity {s['unigram_perplexity']:.1f})",
            f"\nmodel: {r.model_dir}\nreport: {r.report}",
        ]
    )


# ------------------------------------------------------------------------------------------------- ising

_GRID = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_grid(text: str, key: str) -> tuple[int, int]:
    """``"4x40"`` -> (4, 40); anything else is a VaelabError naming ``key``."""
    m = _GRID.match(text)
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise VaelabError(
            f"{key}: grid sizes look like 3x3 or 4x40 (height x width, >= 1); got {text!r}"
        )
    return int(m[1]), int(m[2])


@dataclass
class IsingSettings:
    """``vaelab ising``: uniform coupling J and field h on grids with free boundaries.

    sizes: grids for the table ("HxW"); couplings: the J's of the table; field: h;
    strip: a long grid added to the figure, by transfer matrix ("" for none); seed: mean-field starts.
    """

    sizes: list[str] = field(default_factory=lambda: ["3x3", "4x4"])
    couplings: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5, 1.0])
    field: float = 0.0
    strip: str = "4x40"
    seed: int = 0
    name: str = "ising"

    def validate(self, prefix: str) -> None:
        from vaelab.vi.ising import MAX_BRUTE_FORCE_SPINS, MAX_TRANSFER_WIDTH

        if not self.sizes or not self.couplings:
            raise VaelabError(f"{prefix}sizes and {prefix}couplings need at least one entry each")
        for h, w in self.grids(prefix) + self.strip_grids(prefix):
            if h * w > MAX_BRUTE_FORCE_SPINS and min(h, w) > MAX_TRANSFER_WIDTH:
                raise VaelabError(
                    f"{h}x{w} is too large for exact log Z: use at most {MAX_BRUTE_FORCE_SPINS} spins or a "
                    f"short side <= {MAX_TRANSFER_WIDTH}"
                )

    def grids(self, prefix: str = "") -> list[tuple[int, int]]:
        return [parse_grid(s, f"{prefix}sizes[{i}]") for i, s in enumerate(self.sizes)]

    def strip_grids(self, prefix: str = "") -> list[tuple[int, int]]:
        return [parse_grid(self.strip, f"{prefix}strip")] if self.strip else []


@dataclass
class IsingResult:
    rows: list  # IsingRow: height, width, coupling, field, log_z, bound, method
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # "HxW" -> (J, log Z, bound)
    report: Path


_ISING_HEADER = ["grid", "J", "exact log Z", "mean-field ELBO", "gap", "gap/spin", "log Z by"]


def _ising_table_rows(rows) -> list[list]:
    return [
        [
            f"{r.height}x{r.width}",
            r.coupling,
            r.log_z,
            r.bound,
            r.gap,
            r.gap / (r.height * r.width),
            r.method,
        ]
        for r in rows
    ]


def run_ising(settings: IsingSettings, run_dir: str | Path, *, command: str | None = None) -> IsingResult:
    """Exact log Z against the mean-field bound, as a table and as curves over J; writes the run folder."""
    from vaelab import sections as sec
    from vaelab.vi.ising import bound_vs_coupling, ising_table

    run = start_run_folder(run_dir, settings, command)
    rows = ising_table(settings.grids(), settings.couplings, field=settings.field, seed=settings.seed)
    js = np.linspace(0.0, max([1.0, *settings.couplings]), 21)
    grids = settings.grids() + settings.strip_grids()
    curves = bound_vs_coupling(grids, js, field=settings.field, seed=settings.seed)
    table = _ising_table_rows(rows)
    write_metrics(
        run,
        [{"grid": t[0], "coupling": r.coupling, "log_z": r.log_z, "elbo": r.bound, "gap": r.gap}
         for t, r in zip(table, rows)],
    )
    per_spin = {label: (exact / (h * w), bound / (h * w))
                for (h, w), (label, (_, exact, bound)) in zip(grids, curves.items())}
    sections = [
        sec.TableSection(
            name="table", title="Exact log Z and the mean-field bound", header=_ISING_HEADER,
            rows=[[t[0], t[1], *(round(v, 4) for v in t[2:6]), t[6]] for t in table],
            caption="Naive mean field q(s) = Π_i q_i(s_i), CAVI on the magnetisations "
            "m_i = tanh(h_i + Σ_j J_ij m_j); the ELBO is a lower bound on log Z and the gap is KL(q‖p). "
            f"Free boundaries, uniform coupling J, field h = {settings.field:g}; nats.",
        ),
        sec.CurvesSection(
            name="logz_vs_coupling", title="log Z and the bound against coupling strength",
            x=np.tile(js, (2 * len(per_spin), 1)),
            y=np.stack([v for pair in per_spin.values() for v in pair]),
            labels=[f"{g} {what}" for g in per_spin for what in ("exact log Z", "mean-field bound")],
            styles=["-", "--"] * len(per_spin),
            colors=[f"C{k}" for k in range(len(per_spin)) for _ in range(2)],
            xlabel="coupling J", ylabel="nats per spin",
            caption="Exact log Z per spin (solid) and the mean-field ELBO per spin (dashed).",
        ),
        sec.LinesSection(
            name="gap_vs_coupling", title="The gap KL(q‖p) per spin", x=js,
            y=np.stack([exact - bound for exact, bound in per_spin.values()]), labels=list(per_spin),
            xlabel="coupling J", ylabel="(log Z − ELBO) per spin, nats",
        ),
    ]
    page = _finish(run, sections)
    return IsingResult(rows=rows, curves=curves, report=page)


def format_ising(settings: IsingSettings, r: IsingResult) -> str:
    return "\n".join(
        [
            f"Ising model, free boundaries, uniform coupling J and field h = {settings.field:g}; nats",
            text_table(
                _ISING_HEADER,
                _ising_table_rows(r.rows),
                ["", ".2f", ".4f", ".4f", ".4f", ".4f", ""],
            ),
            f"\nreport: {r.report}",
        ]
    )


# ---------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Experiment:
    """One classical-VI experiment: its settings class, run function and printed summary."""

    name: str
    settings: type
    run: Callable[..., Any]
    format: Callable[[Any, Any], str]
    preset: str  # a preset of its settings, for error messages


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("kl", KLSettings, run_kl, format_kl, "configs/vi/kl.toml"),
        Experiment("lda", LDASettings, run_lda, format_lda, "configs/vi/lda_ap.toml"),
        Experiment("ising", IsingSettings, run_ising, format_ising, "configs/vi/ising.toml"),
    )
}
