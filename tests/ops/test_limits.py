"""The open-file soft limit raised at start-up, checked in child processes (a limit is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support import ROOT

resource = pytest.importorskip("resource")

CHILD = r"""
import json, resource, sys
from installation.ops.limits import raise_nofile_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))
result = raise_nofile_limit(int(sys.argv[2]))
print(json.dumps({"hard": hard, "result": result, "now": resource.getrlimit(resource.RLIMIT_NOFILE)}))
"""


def child(start: int, target: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(start), str(target)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout
    return json.loads(out)


def _hard() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return hard if hard != resource.RLIM_INFINITY else 1 << 20


@pytest.mark.skipif(_hard() < 512, reason="hard open-file limit below 512")
def test_soft_limit_is_raised_to_the_hard_limit_bounded_by_the_target():
    r = child(256, 512)
    assert r["result"] == [256, 512] and r["now"] == [512, r["hard"]]
    if r["hard"] != resource.RLIM_INFINITY:
        r = child(256, r["hard"] + 1000)  # a target above the hard limit: the hard limit
        assert r["now"][0] == r["hard"]


def test_never_lowered():
    r = child(256, 100)
    assert r["result"] == [256, 256] and r["now"][0] == 256


def test_installation_run_raises_its_open_file_limit_at_start(tmp_path):
    """Started with systemd's soft limit (here 256), a run raises it before anything opens its files."""
    import os

    from support import scene_toml, write_show

    cfg = write_show(tmp_path, {"a": scene_toml()})
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    r = subprocess.run([sys.executable, "-m", "installation", "run", "--config", str(cfg), "--headless",
                        "--duration", "0.5"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)},
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)))
    assert r.returncode == 0, r.stderr
    assert "open-file limit raised from 256 to" in r.stderr
