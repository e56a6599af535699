"""The ``installation`` command's registry (installation/cli/): every built-in subcommand comes from the module
``cli.BUILTINS`` names, in that order, and a command registered elsewhere is parsed and run like them."""

from __future__ import annotations

import argparse

import pytest

from installation import cli
from installation.cli import registry


def _choices(parser: argparse.ArgumentParser) -> list[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices)


def test_the_builtin_commands_are_listed_in_their_table_order():
    assert _choices(cli.build_parser()) == list(cli.BUILTINS)
    found = {c.name: c for c in registry.commands()}
    for name, module in cli.BUILTINS.items():
        assert name in found, f"{module} does not register {name!r}"
        if found[name].run is not None:
            assert found[name].run.__module__ == module, name


def test_a_registered_command_is_parsed_and_run_with_its_flags_and_defaults(capfd):
    seen = []

    def arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--times", type=int, default=1)

    def run(args: argparse.Namespace) -> int:
        seen.append((args.command, args.times, args.mood, args.config))
        return 3

    registry.command("echo-test", help="a test command", arguments=arguments, run=run, defaults={"mood": "calm"})
    try:
        assert _choices(cli.build_parser())[-1] == "echo-test"  # after the built-ins
        assert cli.main(["echo-test", "--times", "2", "--config", "x.toml"]) == 3
        assert [(c, n, m, str(p)) for c, n, m, p in seen] == [("echo-test", 2, "calm", "x.toml")]  # --config too
        with pytest.raises(SystemExit) as e:
            cli.main(["echo-test", "--times", "two"])
        assert e.value.code == 2 and "invalid int value: 'two'" in capfd.readouterr().err
    finally:
        registry.unregister("echo-test")
    assert "echo-test" not in _choices(cli.build_parser())
