"""The console entry point (``installation`` and ``python -m installation``).

For ``run`` it catches stop and reload signals before anything heavy is imported (importing the CLI takes about a
second on a busy machine, loading a show longer): a signal that arrives meanwhile is remembered and handed to the
run, which installs its real handlers first thing. Without this a ``systemctl reload`` right after a start killed the
process (SIGHUP's default action), and a stop exited without saving.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    early: list[int] = []
    if args[:1] == ["run"]:
        for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if sig is not None:
                signal.signal(sig, lambda signum, _frame: early.append(signum))
    from .cli import main as cli_main

    return cli_main(argv, early_signals=early)
