"""The ``vaelab`` command line: subcommands register themselves by name.

Each subcommand is a small function taking parsed arguments; :func:`command` registers it together
with a function that adds its arguments. ``main`` turns :class:`~vaelab.errors.VaelabError` into a
one-line ``error: ...`` message (exit status 2) and Ctrl-C into exit status 130, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from vaelab.errors import VaelabError

__all__ = ["main", "command", "COMMANDS", "build_parser"]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}

# Modules whose import registers subcommands. New families add their module here.
_COMMAND_MODULES = ("vaelab.cli.core", "vaelab.cli.vi", "vaelab.cli.data", "vaelab.cli.reproduce",
                    "vaelab.cli.text", "vaelab.cli.vq")


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None):
    """Decorator registering ``fn(args) -> exit code`` as subcommand ``name``."""

    def register(fn: Callable[[argparse.Namespace], int | None]):
        if name in COMMANDS:
            raise RuntimeError(f"subcommand {name!r} registered twice")
        COMMANDS[name] = Command(name, help, add_arguments or (lambda p: None), fn)
        return fn

    return register


def _load_commands() -> None:
    for module in _COMMAND_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a family not yet installed must not break the others
            if exc.name != module:
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_commands()
    from vaelab import __version__

    parser = argparse.ArgumentParser(
        prog="vaelab", description="Variational autoencoders and variational inference on PyTorch."
    )
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    args._argv = argv  # the command as typed, for the run folder's command.txt
    try:
        code = args._run(args)
    except VaelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
