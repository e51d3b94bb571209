"""``vaelab vq``: a VQ-VAE run and a prior over its codes (``vaelab.vq_runs``).

``vaelab vq extract-codes RUN [--out PATH]`` writes the codes of the run's dataset (the prior's
training data, ``codes:PATH``); ``vaelab vq sample RUN --prior PRIOR [--class C] -n 64
[--temperature T] [--png FILE] [--seed S]`` draws codes from the prior and decodes them; ``vaelab vq
eval RUN --prior PRIOR`` prints the VQ-VAE's bound with the uniform prior and with the learned one,
in bits/dim. Each calls the library and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli import command


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="vq_command", metavar="ACTION", required=True)
    e = sub.add_parser("extract-codes", help="write the codes of a VQ-VAE run's dataset (train, valid, test, "
                                             "with labels) to an .npz, the data of a prior (codes:PATH)")
    e.add_argument("run", help="a VQ-VAE run folder")
    e.add_argument("--out", default=None, help="the .npz to write (default RUN/codes.npz)")
    e.add_argument("--batch-size", type=int, default=500, help="images encoded at a time (default 500)")
    _device(e)
    s = sub.add_parser("sample", help="draw code maps from a prior run and decode them with the VQ-VAE")
    s.add_argument("run", help="the VQ-VAE run folder the prior was trained on")
    s.add_argument("--prior", required=True, help="a prior run trained on the run's codes")
    s.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--class", dest="label", type=int, default=None,
                   help="the class to draw (class-conditional prior; default: each class in turn)")
    s.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default 1)")
    s.add_argument("--png", default=None, help="also draw the samples as a grid into this PNG file")
    s.add_argument("--seed", type=int, default=0, help="random seed of the draws (default 0)")
    _device(s)
    v = sub.add_parser("eval", help="the VQ-VAE's bound in bits/dim with the uniform prior and with the "
                                    "learned prior, on its test split")
    v.add_argument("run", help="the VQ-VAE run folder the prior was trained on")
    v.add_argument("--prior", required=True, help="a prior run trained on the run's codes")
    v.add_argument("--max-examples", type=int, default=0, help="only the first N test examples (0: all)")
    _device(v)


@command("vq", "VQ-VAE with a learned prior: extract-codes, sample, eval (van den Oord et al. 2017)", _args)
def vq_cmd(args: argparse.Namespace) -> int:
    from vaelab import vq_runs
    from vaelab.experiment import resolve_device
    from vaelab.sections import write_sections

    device = resolve_device(args.device)
    if args.vq_command == "extract-codes":
        got = vq_runs.extract_codes(args.run, device, args.out, batch_size=args.batch_size)
        for split, shape in got.shapes.items():
            print(f"{split:<6} codes {shape}" + (" with labels" if got.labelled[split] else ""))
        print(f"K = {got.codebook_size} codes, {got.n_classes} classes: {got.path} "
              f"(train a prior on it with data.name = \"codes:{got.path}\", parent.run = \"{args.run}\")")
    elif args.vq_command == "sample":
        out = vq_runs.sample_with_prior(args.run, args.prior, device, args.n, label=args.label,
                                        temperature=args.temperature, seed=args.seed, png=args.png)
        also = f" and {args.png}" if args.png else ""
        print(f"{args.n} samples {tuple(out.images.shape[1:])}: {_rebuild(args.run)}{also}")
    else:
        b = vq_runs.prior_bound(args.run, args.prior, device, max_examples=args.max_examples)
        given = " | y" if b.conditional else ""
        print(f"{b.n_examples} {b.split} examples, -log p(x{given}) bounds:")
        print(f"  uniform prior  {b.uniform.value:.4f} bits/dim  ({b.uniform.nats_per_example:.2f} nats per "
              "example: -log p(x|z_q) + H'W' log K)")
        print(f"  learned prior  {b.learned.value:.4f} bits/dim  ({b.learned.nats_per_example:.2f} nats per "
              f"example: -log p(x|z_q) - log p(z_q{given}))")
        print(f"  -log p(x|z_q)  {b.reconstruction:.2f} nats per example")
        write_sections(args.run, [vq_runs.bound_section(b, args.prior)])
        print(f"saved to the report: {_rebuild(args.run)}")
    return 0


def _rebuild(run: str) -> Path:
    """Rebuild the run's report.html (after a command added a section to it); its path."""
    from vaelab.report.build import build_report

    return build_report(Path(run))
