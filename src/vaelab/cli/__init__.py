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
from pathlib import Path

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
_COMMAND_MODULES = ("vaelab.cli.core", "vaelab.cli.vi", "vaelab.cli.data")


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


def _typed(path: str, key: str, value, action: argparse.Action):
    """``value`` from a TOML file as ``action`` would have parsed it from a flag, or a VaelabError."""
    if action.nargs == 0 and isinstance(action.const, bool):  # --flag (store_true / store_false)
        want, ok = "true or false", isinstance(value, bool)
    elif action.type is int:
        want, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif action.type is float:
        want, ok = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif action.type in (None, str):
        want, ok = "a string", isinstance(value, str)
    else:  # a parsing function of the flag's text
        want, ok = "valid", isinstance(value, str)
        try:
            value = action.type(value) if ok else value
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            ok = False
    if not ok:
        raise VaelabError(f"{path}: {key} must be {want}, got {value!r}")
    return value


def config_file_values(path: str, parser: argparse.ArgumentParser) -> dict:
    """The settings of a TOML file for a subcommand whose options are argparse flags (``--config``).

    Keys are the flags' names without ``--`` (``batch-size`` or ``batch_size``), positionals by
    name (``corpus``); each value is checked against its option's type and choices. Flags given on
    the command line override the file. Unknown keys and wrong types name the key and the file.
    """
    from vaelab.config import read_toml

    presets = sorted(Path("configs/vi").glob(f"{parser.prog.split()[-1]}*.toml"))
    data = read_toml(path, example=str(presets[0]) if presets else "configs/vi/lda_ap.toml")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config_file", "_run")}
    values = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None or isinstance(value, dict):
            known = ", ".join(sorted(d.replace("_", "-") for d in actions))
            raise VaelabError(f"{path}: unknown setting {key!r} for `vaelab {parser.prog.split()[-1]}`; "
                              f"known settings: {known}")
        value = _typed(path, key, value, action)
        if action.choices is not None and value not in action.choices:
            options = ", ".join(map(str, action.choices))
            raise VaelabError(f"{path}: {key} must be one of {options}, got {value!r}")
        values[dest] = value
    return values


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
    parser.subcommands = sub.choices  # name -> its parser (for --config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        if getattr(args, "config_file", None):  # a TOML file of settings; flags on the command line win
            sub = parser.subcommands[args.command]
            sub.set_defaults(**config_file_values(args.config_file, sub))
            args = parser.parse_args(argv)
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
