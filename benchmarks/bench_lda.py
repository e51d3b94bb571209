"""LDA on the AP corpus: vaelab vs scikit-learn's LatentDirichletAllocation vs gensim's LdaModel.

    make bench-lda                      # or: python benchmarks/bench_lda.py [--quick] [--repeats N]

Same data, model and schedule for all three, in batch and in online mode:

* AP corpus of lda-c (2246 documents, 10473 terms), split by documents into 90% train / 10% held out
  with a seeded permutation (``Corpus.train_test_split(0.1, seed=0)``: 2021 / 225 documents).
* K = 20 topics, alpha = eta = 1/K fixed (every library's default prior; no hyperparameter estimation
  in the comparison rows), at most 100 E-step iterations per document, stopping at a mean absolute
  change of gamma below 1e-3 (scikit-learn's defaults; gensim's ``iterations``/``gamma_threshold`` set
  to match).
* batch: the same number of passes of batch variational EM (gensim with ``update_every=0`` and
  ``decay=0`` so that rho = 1, i.e. plain batch EM rather than its default damped blend).
  online: minibatches of 256 documents, rho_t = (tau0 + t)^-kappa with tau0 = 64, kappa = 0.7, the same
  number of passes, documents in file order.
* One thread everywhere (OMP/MKL/OpenBLAS = 1, torch.set_num_threads(1)): the machine has two cores and
  the other one may be busy.

Every fit runs in its own subprocess (so peak memory is that fit's alone). Timing covers the fit only
(not loading or converting the corpus); each configuration runs ``--repeats`` times, interleaved, and
the fastest run counts. All topic matrices are then scored by vaelab's functions on one yardstick:
document-completion perplexity (theta from a seeded random half of each held-out document's tokens,
the other half scored) and the held-out per-word bound, both with beta = the library's normalised topics
and alpha = 1/K; the Laplace-smoothed unigram model is scored on the same tokens as the floor.

Held-out perplexity moves with the random initialisation by more than the libraries differ, so every
library is also fitted with further seeds (``--seeds``, default 0,1,2,3; the first one is the timed
fit) and the verdict compares the seed means: vaelab's mean must be lower, or higher by at most two
standard errors of the difference ("equal within seed noise").
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

K = 20
SEED = 0
HELDOUT = 0.1
BATCH_SIZE = 256
TAU0 = 64.0
KAPPA = 0.7
MAX_DOC_ITER = 100
DOC_TOL = 1e-3
ROOT = Path(__file__).resolve().parent.parent


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_split():
    from vaelab.data.ap import load_ap

    return load_ap().train_test_split(HELDOUT, seed=SEED)


# ------------------------------------------------------------------------------------------- workers


def _fit_vaelab(train, mode, passes, seed, estimate_alpha):
    import torch

    from vaelab.vi.lda import BatchLDA, LDAConfig, OnlineLDA, OnlineLDAConfig

    torch.set_num_threads(1)
    common = dict(
        n_topics=K,
        passes=passes,
        alpha=1.0 / K,
        eta=1.0 / K,
        estimate_alpha=estimate_alpha,
        e_step_max_iter=MAX_DOC_ITER,
        e_step_tol=DOC_TOL,
        seed=seed,
        dtype="float32",
        n_threads=1,
    )
    before = _rss_mib()
    c0 = time.process_time()
    t0 = time.perf_counter()
    if mode == "batch":
        fit = BatchLDA(LDAConfig(tol=0.0, **common)).fit(train)
    else:
        cfg = OnlineLDAConfig(batch_size=BATCH_SIZE, tau0=TAU0, kappa=KAPPA, shuffle=False, **common)
        fit = OnlineLDA(cfg).fit(train)
    seconds = time.perf_counter() - t0
    return fit.model.topic_word(), fit.model.alpha, (seconds, time.process_time() - c0), before


def _fit_sklearn(train, mode, passes, seed):
    from sklearn.decomposition import LatentDirichletAllocation

    x = train.counts.astype(np.float64)
    kw = dict(
        n_components=K,
        doc_topic_prior=1.0 / K,
        topic_word_prior=1.0 / K,
        max_iter=passes,
        evaluate_every=-1,
        max_doc_update_iter=MAX_DOC_ITER,
        mean_change_tol=DOC_TOL,
        random_state=seed,
    )
    if mode == "batch":
        lda = LatentDirichletAllocation(learning_method="batch", **kw)
    else:
        lda = LatentDirichletAllocation(
            learning_method="online",
            batch_size=BATCH_SIZE,
            learning_offset=TAU0,
            learning_decay=KAPPA,
            total_samples=x.shape[0],
            **kw,
        )
    before = _rss_mib()
    c0 = time.process_time()
    t0 = time.perf_counter()
    lda.fit(x)
    seconds = time.perf_counter() - t0
    topics = lda.components_ / lda.components_.sum(1, keepdims=True)
    return topics, np.full(K, 1.0 / K), (seconds, time.process_time() - c0), before


def _fit_gensim(train, mode, passes, seed):
    import logging

    from gensim.models import LdaModel

    logging.getLogger("gensim").setLevel(logging.ERROR)
    x = train.counts
    corpus = [
        list(zip(x.indices[a:b].tolist(), x.data[a:b].tolist())) for a, b in zip(x.indptr[:-1], x.indptr[1:])
    ]
    id2word = dict(enumerate(train.vocab))
    kw = dict(
        num_topics=K,
        id2word=id2word,
        passes=passes,
        alpha="symmetric",  # 1/K
        eta=1.0 / K,
        iterations=MAX_DOC_ITER,
        gamma_threshold=DOC_TOL,
        eval_every=None,
        random_state=seed,
    )
    if mode == "batch":
        kw.update(update_every=0, chunksize=len(corpus), decay=0.0)  # rho = 1: plain batch EM
    else:
        kw.update(update_every=1, chunksize=BATCH_SIZE, decay=KAPPA, offset=TAU0)
    before = _rss_mib()
    c0 = time.process_time()
    t0 = time.perf_counter()
    lda = LdaModel(corpus, **kw)
    seconds = time.perf_counter() - t0
    return (
        lda.get_topics(),
        np.asarray(lda.alpha, dtype=np.float64),
        (seconds, time.process_time() - c0),
        before,
    )


def worker(lib: str, mode: str, passes: int, seed: int, out: str) -> None:
    train, _ = _load_split()
    if lib == "vaelab":
        topics, alpha, seconds, before = _fit_vaelab(train, mode, passes, seed, estimate_alpha=False)
    elif lib == "vaelab-alpha":
        topics, alpha, seconds, before = _fit_vaelab(train, mode, passes, seed, estimate_alpha=True)
    elif lib == "sklearn":
        topics, alpha, seconds, before = _fit_sklearn(train, mode, passes, seed)
    elif lib == "gensim":
        topics, alpha, seconds, before = _fit_gensim(train, mode, passes, seed)
    else:
        raise SystemExit(f"unknown library {lib}")
    np.savez(out, topics=np.asarray(topics, dtype=np.float64), alpha=alpha)
    print(
        json.dumps(
            {
                "seconds": seconds[0],
                "cpu_seconds": seconds[1],
                "rss_before_fit_mib": before,
                "peak_rss_mib": _peak_mib(),
                "n_docs": train.n_docs,
                "passes": passes,
            }
        )
    )


# ------------------------------------------------------------------------------------------- driver


def _versions() -> dict:
    import scipy
    import sklearn
    import torch

    out = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__}
    out.update(torch=torch.__version__, sklearn=sklearn.__version__)
    try:
        import gensim

        out["gensim"] = gensim.__version__
    except ImportError:
        out["gensim"] = "not installed"
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _run_worker(lib, mode, passes, seed, tmp) -> dict:
    out = Path(tmp) / f"{lib}-{mode}-{seed}.npz"
    cmd = [sys.executable, __file__, "--worker", lib, mode, str(passes), str(seed), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"{lib} {mode} failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    arr = np.load(out)
    res["topics"], res["alpha"] = arr["topics"], arr["alpha"]
    return res


def _verdict(mode: str, results: dict, key: str, what: str) -> str | None:
    others = [(x, results[(mode, x)]) for x in ("sklearn", "gensim") if (mode, x) in results]
    ours = results.get((mode, "vaelab"))
    if not ours or not others:
        return None
    name, fastest = max(others, key=lambda item: item[1][key])
    ratio = ours[key] / fastest[key]
    best_name, best = min(others, key=lambda item: item[1]["ppl_mean"])
    diff = ours["ppl_mean"] - best["ppl_mean"]
    se = float(np.hypot(ours["ppl_se"], best["ppl_se"]))
    if diff <= 0:
        quality, same = "lower", True
    elif diff <= 2 * se:
        quality, same = (
            f"higher by {diff:.1f}, within 2 standard errors ({2 * se:.1f}): equal within seed noise",
            True,
        )
    else:
        quality, same = f"higher by {diff:.1f}, more than 2 standard errors ({2 * se:.1f})", False
    ok = "met" if ratio >= 2.0 and same else "NOT met"
    return (
        f"- **{mode}, {what}**: vaelab {ours[key]:.0f} docs/s = **{ratio:.2f}x** the faster of scikit-learn "
        f"and gensim ({name}, {fastest[key]:.0f} docs/s); mean completion perplexity over seeds "
        f"{ours['ppl_mean']:.1f} vs best other {best['ppl_mean']:.1f} ({best_name}): {quality}. "
        f"Target (>= 2x at equal or lower perplexity): **{ok}**."
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--worker", nargs=5, metavar=("LIB", "MODE", "PASSES", "SEED", "OUT"), help=argparse.SUPPRESS
    )
    p.add_argument("--passes-batch", type=int, default=20)
    p.add_argument("--passes-online", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per configuration; the fastest counts")
    p.add_argument("--libs", default="vaelab,vaelab-alpha,sklearn,gensim")
    p.add_argument(
        "--seeds",
        default="0,1,2,3",
        help="initialisation seeds: the first is timed --repeats times, the others fitted once",
    )
    p.add_argument("--modes", default="batch,online")
    p.add_argument("--quick", action="store_true", help="3 batch / 2 online passes, 1 repeat (a smoke run)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "lda.md"),
                   help="markdown output")
    args = p.parse_args(argv)
    if args.worker:
        lib, mode, passes, seed, out = args.worker
        worker(lib, mode, int(passes), int(seed), out)
        return 0
    if args.quick:
        args.passes_batch, args.passes_online, args.repeats, args.seeds = 3, 2, 1, "0,1"
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]

    import torch

    from vaelab.threads import torch_threads
    from vaelab.vi.lda import completion_perplexity, perword_bound, unigram_perplexity

    torch.set_num_threads(1)
    train, test = _load_split()
    vocab = np.array(train.vocab)
    versions = _versions()
    libs = [
        x for x in args.libs.split(",") if x and not (x == "gensim" and versions["gensim"] == "not installed")
    ]
    modes = [x for x in args.modes.split(",") if x]
    load0 = os.getloadavg()
    print(
        f"AP: train {train.n_docs} docs / {train.n_tokens} tokens, held out {test.n_docs} docs / "
        f"{test.n_tokens} tokens (seeded 90/10 split, seed {SEED}); K = {K}; load average {load0[0]:.2f}"
    )
    with torch_threads(1):
        uni = unigram_perplexity(train, test, seed=SEED)
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            passes = args.passes_batch if mode == "batch" else args.passes_online
            for rep in range(args.repeats):
                for lib in libs:
                    res = _run_worker(lib, mode, passes, seeds[0], tmp)
                    print(
                        f"  {mode:6s} {lib:13s} seed {seeds[0]} run {rep + 1}: {res['seconds']:.2f} s wall, "
                        f"{res['cpu_seconds']:.2f} s CPU",
                        flush=True,
                    )
                    best = results.setdefault((mode, lib), {**res, "walls": [], "cpus": [], "ppl": {}})
                    best["walls"].append(res["seconds"])
                    best["cpus"].append(res["cpu_seconds"])
                    best["peak_rss_mib"] = max(best["peak_rss_mib"], res["peak_rss_mib"])
            for seed in seeds[1:]:
                for lib in libs:
                    res = _run_worker(lib, mode, passes, seed, tmp)
                    with torch_threads(1):
                        ppl = completion_perplexity(test, res["topics"], res["alpha"], seed=SEED).perplexity
                    results[(mode, lib)]["ppl"][seed] = ppl
                    print(f"  {mode:6s} {lib:13s} seed {seed}: completion perplexity {ppl:.1f}", flush=True)
            for lib in libs:
                r = results[(mode, lib)]
                r["seconds"], r["cpu_seconds"] = min(r["walls"]), min(r["cpus"])
                with torch_threads(1):
                    r["completion"] = completion_perplexity(test, r["topics"], r["alpha"], seed=SEED)
                    r["bound"] = perword_bound(test, r["topics"], r["alpha"])
                r["ppl"][seeds[0]] = r["completion"].perplexity
                vals = np.array([r["ppl"][x] for x in seeds])
                r["ppl_mean"] = float(vals.mean())
                r["ppl_se"] = float(vals.std(ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else float("nan")
                r["docs_per_s"] = r["n_docs"] * r["passes"] / r["seconds"]
                r["docs_per_cpu_s"] = r["n_docs"] * r["passes"] / r["cpu_seconds"]
                r["top"] = [" ".join(vocab[np.argsort(-row)[:8]]) for row in r["topics"][:3]]
    load1 = os.getloadavg()

    header = (
        "| mode | library | passes | wall s (min) | CPU s (min) | docs/s (wall) | docs/CPU-s | "
        "completion perplexity | per-word bound (nats) | bound perplexity | peak RSS MiB | fit RSS +MiB |"
    )
    lines = [header, "|" + "---|" * 12]
    for mode in modes:
        for lib in libs:
            r = results[(mode, lib)]
            lines.append(
                f"| {mode} | {lib} | {r['passes']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                f"{r['docs_per_s']:.0f} | {r['docs_per_cpu_s']:.0f} | {r['completion'].perplexity:.1f} | "
                f"{r['bound'].log_lik_per_word:.4f} | {r['bound'].perplexity:.1f} | "
                f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - r['rss_before_fit_mib']:.0f} |"
            )
    table = "\n".join(lines)
    ppl_lines = [
        "| mode | library | " + " | ".join(f"seed {x}" for x in seeds) + " | mean | std. error |",
        "|" + "---|" * (len(seeds) + 4),
    ]
    for mode in modes:
        for lib in libs:
            r = results[(mode, lib)]
            cells = " | ".join(f"{r['ppl'][x]:.1f}" for x in seeds)
            ppl_lines.append(f"| {mode} | {lib} | {cells} | {r['ppl_mean']:.1f} | {r['ppl_se']:.1f} |")
    ppl_table = "\n".join(ppl_lines)
    verdicts = [
        v
        for mode in modes
        for v in (
            _verdict(mode, results, "docs_per_s", "wall clock"),
            _verdict(mode, results, "docs_per_cpu_s", "CPU time"),
        )
        if v
    ]
    tops = [f"- {mode} / {lib}: " + " | ".join(results[(mode, lib)]["top"]) for mode in modes for lib in libs]
    runs = [
        f"- {mode} / {lib}: wall "
        + ", ".join(f"{w:.2f}" for w in results[(mode, lib)]["walls"])
        + " s; CPU "
        + ", ".join(f"{c:.2f}" for c in results[(mode, lib)]["cpus"])
        + " s"
        for mode in modes
        for lib in libs
    ]
    print("\n" + table)
    print("\ncompletion perplexity by initialisation seed:\n" + ppl_table)
    print(f"\nunigram (Laplace) perplexity on the same held-out tokens: {uni.perplexity:.1f} (the floor)")
    print("\n".join(verdicts))
    print("\ntop words of topics 0-2:\n" + "\n".join(tops))

    cmd = "python benchmarks/bench_lda.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    vers = ", ".join(f"{k} {x}" for k, x in versions.items())
    make_note = "" if sys.argv[1:] else " (what `make bench-lda` runs)"
    md = f"""# LDA benchmark: vaelab vs scikit-learn vs gensim (AP corpus)

Command: `{cmd}`{make_note}, {time.strftime("%Y-%m-%d %H:%M")}.

Machine: {_cpu()}, {os.cpu_count()} CPU cores shared with other work (load average {load0[0]:.2f} at the
start, {load1[0]:.2f} at the end); every library on one thread. Versions: {vers}.

Setup: the AP corpus of lda-c, seeded 90/10 document split (seed {SEED}: {train.n_docs} train /
{test.n_docs} held-out documents, {test.n_tokens} held-out tokens); K = {K}; alpha = eta = 1/K fixed
(`vaelab-alpha` also estimates alpha, for information); E-step: at most {MAX_DOC_ITER} iterations per
document, stopping at mean |change of gamma| < {DOC_TOL}; batch: {args.passes_batch} passes of batch
variational EM (gensim with update_every=0 and decay=0, so rho = 1); online: {args.passes_online} passes,
minibatches of {BATCH_SIZE}, rho_t = (tau0 + t)^-kappa with tau0 = {TAU0:g}, kappa = {KAPPA}, file order.
Times cover the fit only (no loading or format conversion); each configuration ran {args.repeats} times,
interleaved with the others, and the table shows the fastest wall time and the smallest CPU time
(`time.process_time`, less sensitive to the other processes on the machine). Each fit ran in its own
process: peak RSS is that process's, "fit RSS increase" is the peak minus the RSS just before the fit.
vaelab runs its sparse products in float32 (gamma, lambda, alpha and every ELBO sum stay float64) and
computes and checks its training ELBO after every batch pass; that time is included.

Held-out measures, computed by vaelab's functions for every library from its normalised topic-word
matrix and alpha: *completion perplexity* = exp(-mean log p(w)) over the second half of each held-out
document's tokens, with theta = E_q[theta] fitted to a seeded random first half; *per-word bound* = the
held-out documents' ELBO with the topics fixed, per token (its perplexity bounds the whole-document
perplexity from above). The Laplace-smoothed unigram model on the same second halves: perplexity
**{uni.perplexity:.1f}**, the floor every topic model must beat.

{table}

Completion perplexity by initialisation seed (the same split and held-out tokens; the seed changes only
each library's random initialisation, and seeds are not comparable across libraries, so only the means
are):

{ppl_table}

{chr(10).join(verdicts)}

Notes: scikit-learn and gensim draw their initial topics from numpy's `RandomState(seed)` with the same
Gamma(100, 1/100) recipe, so their fits nearly coincide seed by seed; vaelab draws from
`numpy.random.default_rng(seed)`, so "seed k" is a different starting point for it and only the means
compare. After 10 online passes the completion perplexity moves by hundreds between seeds, so with
{len(seeds)} seeds the libraries' online means cannot be told apart; the batch means agree within about 1%.

All timed runs:

{chr(10).join(runs)}

Top words (first three topics of each fit):

{chr(10).join(tops)}
"""
    Path(args.results).write_text(md, encoding="utf-8")
    print(f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
