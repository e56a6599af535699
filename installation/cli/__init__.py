"""The ``installation`` command: a subcommand per registered command (``registry.py``).

The built-in commands and the module that registers each, in the order ``installation --help`` lists them, are in
``BUILTINS``; a new command group is a module that calls ``registry.command`` for each of its commands, named there.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib

from ..render.glenv import prepare_gl_env
from .registry import add_to, commands

BUILTINS = {
    "run": "installation.cli.run",
    "calibrate": "installation.cli.run",
    "soak": "installation.cli.run",
    "scenes": "installation.cli.describe",
    "params": "installation.cli.describe",
    "bench": "installation.cli.bench",
    "osc-map": "installation.cli.describe",
    "archive": "installation.archive.commands",
    "replay": "installation.archive.commands",
    "map": "installation.archive.commands",
    "doctor": "installation.cli.doctor",
    "train": "installation.spaces.cli",
    "space": "installation.spaces.cli",
}


class _Parser(argparse.ArgumentParser):
    """Options anywhere among a command's positionals (``archive info --config C FILE`` as well as ``archive info
    FILE --config C``): argparse's intermixed parsing for every command that has no subcommands of its own."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        nested = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions())
        if self._mixing or nested:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="installation", description="Walk the latent space of a generative model in "
                                "real time, for galleries and live performance.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in dict.fromkeys(BUILTINS.values()):
        importlib.import_module(module)
    place = {name: i for i, name in enumerate(BUILTINS)}
    for found in sorted(commands(), key=lambda c: place.get(c.name, len(place))):  # stable: others as registered
        add_to(sub, found)
    return p


def main(argv: list[str] | None = None, early_signals: list[int] | None = None) -> int:
    """``early_signals``: signals caught (by ``entry.main``) before this module was even imported; a run takes over
    the list, so a stop that arrived meanwhile still stops it."""
    # A native crash (a GL driver, a C extension) leaves every thread's Python stack on stderr, i.e. in the journal.
    faulthandler.enable()
    # Mesa's settings (LP_NUM_THREADS=0, issue 23) before any GL context exists and before any child process is
    # started: the decoder's and the camera's processes inherit them.
    prepare_gl_env()
    args = build_parser().parse_args(argv)
    args.early_signals = early_signals if early_signals is not None else []
    return args.func(args)
