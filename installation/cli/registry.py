"""The commands of ``installation``, registered by the modules that carry them (as parts register themselves).

Each command module calls :func:`command` once per subcommand with its name, help line, a function adding its
flags and the function that runs it; ``installation.cli.build_parser`` imports the built-in modules (named in
``installation.cli.BUILTINS``, in the order ``installation --help`` lists them) and adds a subparser for each
registered command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Command:
    """A subcommand: ``installation <name>``. ``run(args) -> exit status`` runs it (``None``: its own subcommands
    set one); ``arguments`` adds its flags to its parser (after ``--config`` and ``--log-level`` when ``common``);
    ``defaults`` are namespace values it sets without a flag."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int] | None
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    description: str | None = None
    usage: str | None = None
    common: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, Command] = {}


def command(name: str, *, help: str, run: Callable[[argparse.Namespace], int] | None,
            arguments: Callable[[argparse.ArgumentParser], None] | None = None, description: str | None = None,
            usage: str | None = None, common: bool = True, defaults: dict[str, Any] | None = None) -> Command:
    """Make ``installation <name>`` available (a second registration of a name replaces the first)."""
    found = Command(name, help, run, arguments, description, usage, common, dict(defaults or {}))
    _REGISTRY[name] = found
    return found


def unregister(name: str) -> None:
    """Forget a registered command (tests that register their own)."""
    _REGISTRY.pop(name, None)


def commands() -> list[Command]:
    """Every registered command, in registration order."""
    return list(_REGISTRY.values())


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--log-level``: the flags every command that reads a show takes first."""
    parser.add_argument("--config", type=Path, default=None, help="config TOML (default: config/default.toml)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)


def add_to(sub: Any, found: Command) -> argparse.ArgumentParser:
    """Add ``found``'s parser to the subparsers ``sub``."""
    parser = sub.add_parser(found.name, help=found.help, description=found.description, usage=found.usage)
    if found.common:
        common_arguments(parser)
    if found.arguments is not None:
        found.arguments(parser)
    if found.run is not None:
        parser.set_defaults(func=found.run)
    if found.defaults:
        parser.set_defaults(**found.defaults)
    return parser
