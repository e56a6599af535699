"""The console entry point (``installation`` and ``python -m installation``).

For ``run`` it catches stop and reload signals before anything heavy is imported (importing the CLI takes about a
second on a busy machine, loading a show longer): a signal that arrives meanwhile is remembered and handed to the
run, which installs its real handlers first thing. Without this a ``systemctl reload`` right after a start killed the
process (SIGHUP's default action), and a stop exited without saving.

A run that has ended (parts stopped, state saved, decoder process gone) leaves without the interpreter's teardown:
its final garbage collection and module cleanup over everything torch, GL and opencv had loaded took 3-5 s at a load
of 20, a third of a systemd stop's time.
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

    try:
        code = cli_main(argv, early_signals=early)
    except BrokenPipeError:  # `installation scenes | head`: the reader has gone; that is not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush goes nowhere
        return 0
    # The process's own entry point (not a caller's), after a show: no interpreter teardown. A daemon thread still
    # in torch then (the frame check's CLIP pass) is ended by pthread_exit as it takes the GIL back, and the unwind
    # through torch's C++ frames calls std::terminate: an every-part soak aborted so after its report (exit 134,
    # "terminate called without an active exception", a core).
    if args[:1] in (["run"], ["calibrate"], ["soak"]) and argv is None:
        from .ops.supervise import leave

        leave(code)
    return code
