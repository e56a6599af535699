"""sd_notify over a real AF_UNIX datagram socket, bound on a filesystem path and in the abstract namespace."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import pytest

from installation.ops.notify import Notifier


class Clock:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def _recv_all(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.fixture(params=["path", "abstract"])
def listener(request, tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        addr = str(tmp_path / "notify.sock")
        sock.bind(addr)
        env_value = addr
    else:
        name = f"installation-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    yield sock, env_value
    sock.close()


def test_messages_arrive(listener):
    sock, addr = listener
    clock = Clock()
    n = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "30000000"}, now=clock)
    assert n.enabled and n.watchdog_interval_s == 30.0
    assert n.ready()
    assert n.ready(status="playing aurora\nat 60 fps")
    assert n.status("open until 18:00")
    assert n.watchdog()
    assert n.stopping()
    assert n.extend_timeout(1.5)
    assert n.reloading()
    got = _recv_all(sock)
    assert got[:6] == ["READY=1", "READY=1\nSTATUS=playing aurora at 60 fps", "STATUS=open until 18:00", "WATCHDOG=1",
                       "STOPPING=1", "EXTEND_TIMEOUT_USEC=1500000"]
    reload_msg = got[6].split("\n")
    assert reload_msg[0] == "RELOADING=1" and reload_msg[1].startswith("MONOTONIC_USEC=")
    usec = int(reload_msg[1].split("=")[1])  # systemd's CLOCK_MONOTONIC, in microseconds
    assert abs(usec / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5
    n.close()


def test_watchdog_is_rate_limited_to_half_the_interval(listener):
    sock, addr = listener
    clock = Clock()
    n = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "10000000"}, now=clock)
    assert n.watchdog_min_gap_s == 5.0
    sent = []
    for _ in range(1200):  # 20 s of frames at 60 fps
        sent.append(n.watchdog())
        clock.t += 1 / 60
    assert sum(sent) == 4  # at 0, 5, 10, 15 s
    assert _recv_all(sock) == ["WATCHDOG=1"] * 4
    n.close()


def test_watchdog_off_without_watchdog_usec(listener):
    sock, addr = listener
    n = Notifier({"NOTIFY_SOCKET": addr})
    assert n.watchdog_interval_s is None
    assert not n.watchdog()
    assert n.watchdog(force=True)  # still sendable on purpose
    assert _recv_all(sock) == ["WATCHDOG=1"]
    n.close()


def test_watchdog_for_another_pid_is_ignored(listener):
    _, addr = listener
    n = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.watchdog_interval_s is None
    mine = Notifier({"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_s == 1.0


def test_no_socket_is_a_quiet_no_op():
    n = Notifier({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.watchdog(force=True) and not n.status("x")
    assert not n.stopping() and not n.reloading()
    assert n.errors == 0 and n.sent == 0


def test_bad_environment_values(caplog):
    with caplog.at_level(logging.WARNING, logger="installation.ops.notify"):
        n = Notifier({"NOTIFY_SOCKET": "vsock:2:1234", "WATCHDOG_USEC": "soon"})
    assert not n.enabled and n.watchdog_interval_s is None
    assert "vsock" in caplog.text and "WATCHDOG_USEC" in caplog.text


def test_socket_gone_never_raises_and_warns_once(tmp_path, caplog):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock"), "WATCHDOG_USEC": "2000000"}, now=Clock())
    with caplog.at_level(logging.DEBUG, logger="installation.ops.notify"):
        assert not n.ready()
        assert not n.status("a")
        assert not n.watchdog()
    assert n.errors == 3 and "FileNotFoundError" in n.last_error
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert n.stats()["errors"] == 3
    n.close()


def test_default_env_is_os_environ(monkeypatch, listener):
    sock, addr = listener
    monkeypatch.setenv("NOTIFY_SOCKET", addr)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    n = Notifier()
    assert n.ready() and _recv_all(sock) == ["READY=1"]
    n.close()


def test_long_status_is_one_short_line(listener):
    sock, addr = listener
    n = Notifier({"NOTIFY_SOCKET": addr})
    n.status("x" * 1000 + "\n\nmore")
    (msg,) = _recv_all(sock)
    assert msg.startswith("STATUS=xxx") and "\n" not in msg and len(msg) <= len("STATUS=") + 200
    n.close()
