"""``vaelab reproduce NAME``: a published figure or table, trained, measured and drawn in one command.

The reproductions themselves live in :mod:`vaelab.reproduce`; this module parses arguments and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaelab.cli import command
from vaelab.cli.core import _common


def _reproduce_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="which reproduction (omit, or --list, to list them)")
    p.add_argument("--list", action="store_true", help="list the reproductions and their full budgets")
    p.add_argument(
        "--budget", type=float, default=1.0,
        help="fraction of the documented full budget, in (0, 1] (default 1: the full run; "
             "e.g. 0.01 for a quick look)",
    )
    p.add_argument("--out", default=None, help="run folder (default runs/<name>)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: PyTorch's default)")
    p.add_argument(
        "--part", action="append", default=None, metavar="NAME",
        help="train only this child run (repeatable; --list-parts names them); the figure is drawn by "
             "the call that finds every child finished",
    )
    p.add_argument("--list-parts", action="store_true", help="list the child runs of NAME at --budget")
    _common(p)


@command("reproduce", "reproduce a paper's figure or table (vaelab reproduce --list)", _reproduce_args)
def reproduce_cmd(args: argparse.Namespace) -> int:
    from vaelab.experiment import resolve_device
    from vaelab.reproduce import Context, PartsMissing, get, reproduction_names, run_reproduction
    from vaelab.runfolder import command_line

    if args.list or not args.name:
        for name in reproduction_names():
            rep = get(name)
            print(f"{name:24s} {rep.title}\n{'':24s} full budget: {rep.full_budget}")
        return 0
    rep = get(args.name)
    out = Path(args.out) if args.out else Path("runs") / args.name
    if args.list_parts:
        for part in rep.part_names(Context(out=out, budget=args.budget)):
            print(part)
        return 0
    device = resolve_device(args.device)
    only = f", parts {', '.join(args.part)}" if args.part else ""
    print(f"reproducing {rep.title} (budget {args.budget:g} of the full one{only}, {device}) -> {out}",
          file=sys.stderr)
    try:
        path = run_reproduction(
            args.name, out, budget=args.budget, device=device, seed=0 if args.seed is None else args.seed,
            progress=bool(args.progress), threads=args.threads, parts=args.part,
            command=command_line(getattr(args, "_argv", None)),
        )
    except PartsMissing as exc:
        print(f"trained: {', '.join(args.part or [])}; {exc}")
        return 0
    print(f"report: {path}")
    return 0
