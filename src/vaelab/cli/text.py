"""``vaelab text``: decode, sample, walk and fill in sentences with a trained sentence VAE.

``vaelab text reconstruct RUN "sentence"``, ``vaelab text sample RUN -n 10``, ``vaelab text homotopy
RUN ["a" "b"] --steps 7`` and ``vaelab text impute RUN "sentence _ _"`` call ``vaelab.text_ops``
and print its results, one sentence a line; warnings about the input (unknown words, a sentence
longer than the model's maximum length) go to stderr, one line each. ``--save`` also writes the
results into the run's report as a text section (Table 7 for ``reconstruct``, Table 8 for
``homotopy``; a later ``--save`` of the same action replaces it) and rebuilds report.html.
"""

from __future__ import annotations

import argparse
import sys

from vaelab.cli import command
from vaelab.errors import VaelabError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder of a sentence VAE written by vaelab train")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws (default 0)")
    p.add_argument("--save", action="store_true",
                   help="also write the results into the run's report as a text section")


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="text_command", metavar="ACTION", required=True)
    r = sub.add_parser("reconstruct", help="greedy decodes from the posterior mean and posterior samples "
                                           "(Bowman et al. 2015, Table 7)")
    _common(r)
    r.add_argument("sentences", nargs="+", metavar="SENTENCE", help="one or more sentences, words separated "
                                                                   "by spaces")
    r.add_argument("--samples", type=int, default=3, help="posterior samples decoded (default 3)")
    s = sub.add_parser("sample", help="sentences from z ~ p(z)")
    _common(s)
    s.add_argument("-n", type=int, default=10, help="number of sentences (default 10)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of word sampling")
    s.add_argument("--greedy", action="store_true", help="greedy decodes of each z instead of sampling words")
    h = sub.add_parser("homotopy", help="decodes along the line between two sentences' posterior means, or "
                                        "two prior samples (Table 8)")
    _common(h)
    h.add_argument("sentences", nargs="*", metavar="SENTENCE", help="two sentences, or none")
    h.add_argument("--steps", type=int, default=7, help="points on the line, ends included (default 7)")
    m = sub.add_parser("impute", help="fill in missing final words, marked by trailing _ (Section 4.2)")
    _common(m)
    m.add_argument("sentence", help='the sentence with its last words missing, e.g. "i went to the _ _"')
    m.add_argument("--missing", type=int, default=None,
                   help="number of missing final words when none is marked with _ (default 1)")
    m.add_argument("--samples", type=int, default=10, help="posterior samples proposing completions")


def _warn(*inputs) -> None:
    for i in inputs:
        if i is not None:
            for line in i.warnings():
                print(f"warning: {line}", file=sys.stderr)


@command("text", "sentence VAE: reconstruct, sample, homotopy, impute (Bowman et al. 2015)", _args)
def text_cmd(args: argparse.Namespace) -> int:
    from vaelab import text_ops
    from vaelab.experiment import resolve_device

    model = text_ops.load_sentence_model(args.run, resolve_device(args.device))
    texts: list[str] = []  # what --save writes, with its labels
    labels: list[str] = []

    def show(label: str, text: str, line: str | None = None) -> None:
        print(line if line is not None else f"{label + ':':<8}{text}" if label else text)
        texts.append(text)
        labels.append(label)

    if args.text_command == "reconstruct":
        for k, sentence in enumerate(args.sentences):
            rec = text_ops.reconstruct(model, sentence, n_samples=args.samples, seed=args.seed)
            _warn(rec.input)
            if k:
                print()
            show("input", rec.input.text)
            show("mean", rec.mean)
            for s in rec.samples:
                show("sample", s)
        title = "Decoding from the posterior (Bowman et al. 2015, Table 7)"
        caption = (f"greedy decodes of the posterior mean and of {args.samples} posterior samples "
                   f"(seed {args.seed}); inputs mapped through the model's vocabulary")
    elif args.text_command == "sample":
        out = text_ops.sample(model, args.n, temperature=args.temperature, greedy=args.greedy, seed=args.seed)
        for sentence in out.sentences:
            show("", sentence)
        how = "greedy decodes" if args.greedy else f"sampled words, temperature {args.temperature:g}"
        title, caption = "Sentences from the prior", f"z ~ p(z), {how} (seed {args.seed})"
    elif args.text_command == "homotopy":
        if len(args.sentences) not in (0, 2):
            raise VaelabError(f"give two sentences for a homotopy, or none; got {len(args.sentences)}")
        a, b = args.sentences if args.sentences else (None, None)
        path = text_ops.homotopy(model, a, b, steps=args.steps, seed=args.seed)
        _warn(path.start, path.end)
        for p in path.points:
            show(f"{p.t:.2f}", p.sentence, f"{p.t:.2f}  {p.sentence}")
        title = "Homotopy (Bowman et al. 2015, Table 8)"
        if path.start is not None and path.end is not None:
            ends = f'between the posterior means of "{path.start.text}" and "{path.end.text}"'
        else:
            ends = f"between two prior draws (seed {args.seed})"
        caption = f"greedy decodes of {args.steps} evenly spaced points on the line {ends}"
    else:
        imp = text_ops.impute(model, args.sentence, missing=args.missing, n_samples=args.samples,
                              seed=args.seed)
        _warn(imp.observed)
        show("", imp.filled)
        title = "Missing-word imputation (Bowman et al. 2015, Section 4.2)"
        caption = f"{args.samples} posterior samples, seed {args.seed}"
    if args.save:
        from pathlib import Path

        from vaelab.report.build import build_report
        from vaelab.sections import TextSection, write_sections

        write_sections(args.run, [TextSection(name=f"text_{args.text_command}", title=title, caption=caption,
                                              texts=texts, labels=labels)])
        print(f"saved to the report: {build_report(Path(args.run))}", file=sys.stderr)
    return 0
