"""``installation doctor``'s core-dump line (issue 23): it says whether a native crash would leave a core, read from
the process's real limit, and how to turn them on."""

from __future__ import annotations

import resource
import subprocess
import sys

from support import ROOT

LINE = "from installation.doctor import _cores; print(_cores())"


def _doctor_line(limit: int) -> str:
    def preexec():
        resource.setrlimit(resource.RLIMIT_CORE, (limit, resource.RLIM_INFINITY))

    out = subprocess.run([sys.executable, "-c", LINE], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         preexec_fn=preexec, env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_off_says_how_to_turn_them_on_and_on_says_the_limit():
    off = _doctor_line(0)
    assert off.startswith("off (ulimit -c is 0; LimitCORE=infinity in the service unit)"), off
    on = _doctor_line(resource.RLIM_INFINITY)
    assert on.startswith("on (limit unlimited), to "), on
    pattern = open("/proc/sys/kernel/core_pattern").read().strip()
    assert pattern.lstrip("|").split()[0].split("/")[-1] in on or "systemd-coredump" in on


def test_the_unit_offers_core_dumps_as_an_option():
    unit = (ROOT / "config" / "installation.service").read_text().splitlines()
    assert "#LimitCORE=infinity" in unit  # an option: cores are large and a crash loop repeats them
    assert not any(line.startswith("LimitCORE") for line in unit)
