"""``vaelab text``: decode, sample, walk and fill in sentences with a trained sentence VAE.

``vaelab text reconstruct RUN "sentence"``, ``vaelab text sample RUN -n 10``, ``vaelab text homotopy
RUN ["a" "b"] --steps 7`` and ``vaelab text impute RUN "sentence _ _"`` call ``vaelab.text_ops``
and print its results, one sentence a line; warnings about the input (unknown words, a sentence
longer than the model's maximum length) go to stderr, one line each.
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


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="text_command", metavar="ACTION", required=True)
    r = sub.add_parser("reconstruct", help="greedy decodes from the posterior mean and posterior samples "
                                           "(Bowman et al. 2015, Table 7)")
    _common(r)
    r.add_argument("sentence", help="the sentence, words separated by spaces")
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
    if args.text_command == "reconstruct":
        rec = text_ops.reconstruct(model, args.sentence, n_samples=args.samples, seed=args.seed)
        _warn(rec.input)
        print(f"input:  {rec.input.text}")
        print(f"mean:   {rec.mean}")
        for s in rec.samples:
            print(f"sample: {s}")
    elif args.text_command == "sample":
        out = text_ops.sample(model, args.n, temperature=args.temperature, greedy=args.greedy, seed=args.seed)
        print("\n".join(out.sentences))
    elif args.text_command == "homotopy":
        if len(args.sentences) not in (0, 2):
            raise VaelabError(f"give two sentences for a homotopy, or none; got {len(args.sentences)}")
        a, b = args.sentences if args.sentences else (None, None)
        path = text_ops.homotopy(model, a, b, steps=args.steps, seed=args.seed)
        _warn(path.start, path.end)
        for p in path.points:
            print(f"{p.t:.2f}  {p.sentence}")
    else:
        imp = text_ops.impute(model, args.sentence, missing=args.missing, n_samples=args.samples,
                              seed=args.seed)
        _warn(imp.observed)
        print(imp.filled)
    return 0
