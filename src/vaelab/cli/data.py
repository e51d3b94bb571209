"""``vaelab data list`` and ``vaelab data download NAME [--root DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli import command
from vaelab.errors import VaelabError


def _add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    ls = sub.add_parser(
        "list", help="each dataset, where it is looked for, and whether it is present and verified"
    )
    ls.add_argument(
        "--root", type=Path, default=None, help="data root to inspect (default: $VAELAB_DATA or cache)"
    )
    ls.add_argument("--quick", action="store_true", help="check file sizes only, no sha256")
    dl = sub.add_parser("download", help="fetch a dataset's canonical files, checked by sha256")
    dl.add_argument("name", help="a dataset from `vaelab data list`")
    dl.add_argument("--root", type=Path, default=None, help="where to write (default: $VAELAB_DATA or cache)")
    dl.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default 60)")
    dl.add_argument(
        "--from",
        dest="from_dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="use the canonical source files fetched by hand into DIR instead of the network",
    )


def _list(args: argparse.Namespace) -> int:
    from vaelab.data import PREFIXES, data_root, data_root_source, dataset_names, file_status, get_dataset

    root = args.root if args.root is not None else data_root()
    source = "--root" if args.root is not None else data_root_source()
    print(f"data root: {root}  (from {source})")
    rows: list[tuple[str, str, str, str]] = [("dataset", "status", "folder", "description")]
    notes: dict[str, str] = {}
    for ds in map(get_dataset, dataset_names()):
        if not ds.files:
            rows.append((ds.name, "ok, no files needed", f"({ds.note})", ds.description))
            continue
        statuses = [file_status(ds, f, root, verify=not args.quick) for f in ds.files]
        bad = [s for s in statuses if s.state != "present"]
        if not bad:
            status = "present, size ok" if args.quick else "present, verified"
        elif any(s.state == "corrupt" for s in bad):
            status = "corrupt"
        else:
            status = (
                "missing" if len(bad) == len(statuses) else f"missing {len(bad)} of {len(statuses)} files"
            )
        if bad:
            notes[ds.name] = ", ".join(
                f"{s.file.name} {s.state}" + (f" ({s.detail})" if s.detail else "") for s in bad
            )
        rows.append((ds.name, status, str(root / ds.folder), ds.description))
    for prefix in PREFIXES:
        rows.append((f"{prefix}:PATH", "your data", "PATH", _PREFIX_HELP.get(prefix, "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
        if r[0] in notes:
            print(" " * (widths[0] + 2) + "-> " + notes[r[0]])
    if notes:
        print(
            "fetch a dataset with `vaelab data download NAME`, or set VAELAB_DATA to a folder that holds it"
        )
    return 0


_PREFIX_HELP = {
    "folder": "a folder of images (png/jpg/bmp/gif/webp); sub-folders become labels",
    "npy": "a .npy/.npz array (N,H,W), (N,H,W,C), (N,C,H,W) or (N,D)",
    "text": "sentences, one per line: a folder with train/valid/test .txt, or one file (split by seed)",
    "wav": "a folder of .wav files (any rate, resampled to data.sample_rate); labels from its labels.csv",
    "codes": "code maps (N,H',W') with labels from `vaelab vq extract-codes` (an .npz): a prior's data",
}


def _download(args: argparse.Namespace) -> int:
    from vaelab.data import download

    paths = download(args.name, args.root, timeout=args.timeout, from_dir=args.from_dir)
    print(f"{args.name}: ready in {paths[0].parent}")
    return 0


@command("data", "list the datasets and their files, or download one", _add_arguments)
def data(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        return _list(args)
    if args.data_command == "download":
        return _download(args)
    raise VaelabError("vaelab data needs an action: `vaelab data list` or `vaelab data download NAME`")
