"""Keep the screen awake: switch off X11 screen blanking and DPMS where the platform allows it.

SDL (pygame) already disables the screensaver while its own window is open; this also covers the X server's blanking
and DPMS timers, which some setups apply regardless. Where nothing can be done the message says what to configure.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from typing import Callable, Mapping

log = logging.getLogger(__name__)

XSET_ARGS = ("s", "off", "-dpms", "s", "noblank")


def inhibit_blanking(env: Mapping[str, str] | None = None, *, which: Callable[[str], str | None] = shutil.which,
                     run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    """Try to stop screen blanking and DPMS; logs the outcome (info when done, warning when not) and returns it.

    Never raises. ``env``, ``which`` and ``run`` are injectable for tests.
    """
    env = os.environ if env is None else env
    display = env.get("DISPLAY", "")
    ok = False
    if not display:
        if env.get("WAYLAND_DISPLAY"):
            msg = ("cannot inhibit screen blanking on Wayland from here; switch off the compositor's idle/blank "
                   "settings (SDL inhibits idle only for its own window)")
        else:
            msg = ("cannot inhibit screen blanking: no DISPLAY (X11) set; on a bare console add consoleblank=0 to the "
                   "kernel command line (SDL disables its own screensaver)")
    else:
        xset = which("xset")
        if xset is None:
            msg = (f"cannot inhibit screen blanking on DISPLAY={display}: 'xset' not found (install x11-xserver-utils);"
                   " SDL still disables the screensaver for its own window")
        else:
            try:
                proc = run([xset, *XSET_ARGS], env=dict(env), capture_output=True, text=True, timeout=5)
            except (OSError, subprocess.SubprocessError) as e:
                msg = f"cannot inhibit screen blanking on DISPLAY={display}: running xset failed ({e})"
            else:
                if proc.returncode == 0:
                    ok = True
                    msg = f"screen blanking and DPMS switched off on DISPLAY={display} (xset {' '.join(XSET_ARGS)})"
                else:
                    detail = " ".join((proc.stderr or proc.stdout or "").split())[:200]
                    msg = (f"cannot inhibit screen blanking on DISPLAY={display}: xset exited with "
                           f"{proc.returncode}" + (f" ({detail})" if detail else ""))
    log.log(logging.INFO if ok else logging.WARNING, "%s", msg)
    return msg
