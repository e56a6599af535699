"""The service environment: the shipped systemd unit (parsed, and verified by systemd-analyze where present) and
screen-blanking inhibition (with injected DISPLAY, which and run)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from installation.ops.display import XSET_ARGS, inhibit_blanking

UNIT = Path(__file__).resolve().parents[2] / "config" / "installation.service"


class _Multi(dict):
    """configparser section dict that keeps every value of a key systemd allows to repeat (Environment=)."""

    def __setitem__(self, key, value):
        if key in self and isinstance(value, list) and isinstance(self[key], list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def _parse(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(strict=False, dict_type=_Multi, interpolation=None)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string(text)
    return cp


def test_unit_keys():
    cp = _parse(UNIT.read_text())
    unit, svc, inst = cp["Unit"], cp["Service"], cp["Install"]
    assert unit["StartLimitIntervalSec"] == "0"
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert svc["WatchdogSec"] == "30"
    assert svc["Restart"] == "always" and svc["RestartSec"] == "5"
    assert svc["LimitNOFILE"] == "65536"  # not systemd's soft 1024
    assert svc["KillSignal"] == "SIGTERM" and svc["TimeoutStopSec"] == "20"
    assert svc["ExecStart"] == ("/opt/installation/.venv/bin/installation run --fullscreen "
                                "--config /opt/installation/config/default.toml")
    assert "PYTHONUNBUFFERED=1" in svc["Environment"].split("\n")
    assert "PYTHONFAULTHANDLER=1" in svc["Environment"].split("\n")
    assert svc["User"] and svc["WorkingDirectory"]
    assert "StartLimitIntervalSec" not in svc  # in [Service] it would be ignored by older systemd
    assert inst["WantedBy"]


def test_unit_exec_start_matches_the_cli():
    """The command line the unit starts parses as `installation run` with its flags."""
    from installation.cli import build_parser

    argv = _parse(UNIT.read_text())["Service"]["ExecStart"].split()[1:]
    args = build_parser().parse_args(argv)
    assert args.command == "run" and args.fullscreen
    assert str(args.config) == "/opt/installation/config/default.toml"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies(tmp_path):
    # The real ExecStart/User/WorkingDirectory do not exist on a test machine; swap in ones that do, keep the rest.
    lines = []
    for line in UNIT.read_text().splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={shutil.which('true')} run"
        elif line.startswith("User="):
            line = "User=root"
        elif line.startswith("WorkingDirectory="):
            line = f"WorkingDirectory={tmp_path}"
        lines.append(line)
    unit = tmp_path / "installation.service"
    unit.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    about_ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "installation.service" in ln]
    assert proc.returncode == 0 and not about_ours, proc.stdout + proc.stderr


# -- screen blanking ---------------------------------------------------------------------------------------------

class _Run:
    def __init__(self, rc=0, err="", exc=None):
        self.rc, self.err, self.exc, self.calls = rc, err, exc, []

    def __call__(self, args, **kw):
        self.calls.append((args, kw))
        if self.exc:
            raise self.exc
        return subprocess.CompletedProcess(args, self.rc, "", self.err)


def test_xset_is_run_with_display():
    run = _Run()
    msg = inhibit_blanking({"DISPLAY": ":0"}, which=lambda n: "/usr/bin/xset", run=run)
    assert "switched off" in msg and "DISPLAY=:0" in msg
    args, kw = run.calls[0]
    assert args == ["/usr/bin/xset", *XSET_ARGS] == ["/usr/bin/xset", "s", "off", "-dpms", "s", "noblank"]
    assert kw["env"]["DISPLAY"] == ":0" and kw["timeout"] == 5


@pytest.mark.parametrize("env, which, run, expect", [
    ({}, lambda n: "/usr/bin/xset", _Run(), "no DISPLAY"),
    ({"WAYLAND_DISPLAY": "wayland-0"}, lambda n: None, _Run(), "Wayland"),
    ({"DISPLAY": ":0"}, lambda n: None, _Run(), "'xset' not found"),
    ({"DISPLAY": ":0"}, lambda n: "/usr/bin/xset", _Run(rc=1, err="unable to open display\n"),
     "exited with 1 (unable to open display)"),
    ({"DISPLAY": ":0"}, lambda n: "/usr/bin/xset", _Run(exc=subprocess.TimeoutExpired("xset", 5)), "xset failed"),
    ({"DISPLAY": ":0"}, lambda n: "/usr/bin/xset", _Run(exc=PermissionError(13, "denied")), "xset failed"),
])
def test_blanking_not_possible_is_a_message(env, which, run, expect, caplog):
    msg = inhibit_blanking(env, which=which, run=run)
    assert msg.startswith("cannot inhibit screen blanking") and expect in msg
    assert any(r.levelname == "WARNING" and r.getMessage() == msg for r in caplog.records)


def test_blanking_with_real_tools_never_raises():
    """Real which/run against a display that does not exist (never touches a real screen's settings)."""
    msg = inhibit_blanking({"DISPLAY": ":987", "PATH": "/usr/bin:/bin"})
    assert msg.startswith("cannot inhibit screen blanking on DISPLAY=:987")
