"""Typed settings from the command line: ``--config FILE``, ``--set key=value`` and flags that stand for one.

A command whose settings are a dataclass tree adds :func:`add_settings_arguments`, and declares each
convenience flag with :func:`shorthand` as the dotted key it sets (``--topics 20`` is
``--set model.topics=20``). :func:`settings_from_args` then builds the settings: the file first,
then the flags and ``--set``s in the order given (a later one wins), through
:func:`vaelab.config.settings_from_dict`, so unknown keys and wrong types are the same one-line
errors as ``vaelab train --set``.
"""

from __future__ import annotations

import argparse
from typing import Any, Literal

from vaelab.config import parse_override, read_settings_file, settings_from_dict

__all__ = ["add_settings_arguments", "shorthand", "settings_from_args"]

_Parse = Literal["toml", "list", "str"]


class _Override(argparse.Action):
    """Appends to ``namespace.overrides``: the raw ``KEY=VALUE`` of ``--set``, or (key, raw, parse)."""

    def __init__(
        self, option_strings, dest, key: str | None = None, parse: _Parse = "toml", **kwargs
    ):
        super().__init__(option_strings, "overrides", **kwargs)
        self.key, self.parse = key, parse

    def __call__(self, parser, namespace, values, option_string=None):
        items = list(getattr(namespace, "overrides", None) or [])
        if self.key is None:
            items.append(values)
        elif self.nargs == 0:
            items.append((self.key, self.const, "value"))
        else:
            items.append((self.key, values, self.parse))
        namespace.overrides = items


def add_settings_arguments(p: argparse.ArgumentParser, example: str) -> None:
    """``--config FILE`` and ``--set KEY=VALUE`` (repeatable)."""
    p.set_defaults(overrides=[])
    p.add_argument(
        "--config",
        dest="settings_file",
        default=None,
        metavar="FILE",
        help=f"settings from a TOML file (e.g. {example}) or a run's config.json; "
        "flags and --set override it",
    )
    p.add_argument(
        "--set",
        action=_Override,
        metavar="KEY=VALUE",
        default=None,
        help="override a setting by its dotted key, as listed in the command's config.json "
        "(repeatable; values are TOML: 0.5, [1,2], true)",
    )


def shorthand(
    p: argparse.ArgumentParser,
    flag: str,
    key: str,
    help: str,
    *,
    parse: _Parse = "toml",
    const: Any = None,
) -> None:
    """``flag VALUE`` as ``--set key=VALUE``; with ``const``, a bare ``flag`` as ``--set key=const``.

    parse: ``toml`` reads VALUE as ``--set`` does; ``list`` splits it at commas into a list of TOML
    values (``--sizes 3x3,4x4``); ``str`` keeps it verbatim (a path).
    """
    if const is not None:
        p.add_argument(
            flag,
            action=_Override,
            key=key,
            nargs=0,
            const=const,
            default=None,
            help=f"{help} (--set {key}={_toml(const)})",
        )
    else:
        p.add_argument(
            flag,
            action=_Override,
            key=key,
            parse=parse,
            default=None,
            metavar="VALUE",
            help=f"{help} (--set {key}=...)",
        )


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _value(raw: str, parse: str) -> Any:
    if parse == "str":
        return raw
    if parse == "list":
        return [parse_override(f"v={part.strip()}")[1] for part in raw.split(",") if part.strip()]
    return parse_override(f"v={raw}")[1]


def settings_from_args(
    cls: type, args: argparse.Namespace, example: str, first: list | None = None
) -> Any:
    """The settings ``cls`` from ``args``: ``--config`` file, then ``first`` (key, value) pairs, then
    the flags and ``--set``s in command-line order. Errors are VaelabErrors naming the key."""
    data = read_settings_file(args.settings_file, example) if args.settings_file else {}
    pairs: list[tuple[str, Any]] = list(first or [])
    for item in args.overrides:
        if isinstance(item, str):
            pairs.append(parse_override(item))
        else:
            key, raw, parse = item
            pairs.append((key, raw if parse == "value" else _value(raw, parse)))
    return settings_from_dict(cls, data, pairs)
