"""systemd notifications (sd_notify) without a dependency: READY, WATCHDOG, STATUS, STOPPING, RELOADING.

Datagrams go to the AF_UNIX socket named by NOTIFY_SOCKET (a path, or '@name' for the abstract namespace). Every call
is a no-op when not started by systemd and never raises: the show must not stop because its supervisor is missing.
The watchdog is pinged by the loop only while frames are presented, so a hung presenter gets restarted.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping

log = logging.getLogger(__name__)

MAX_STATUS_CHARS = 200


class Notifier:
    """Talks to systemd for this process; built once from the environment (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``)."""

    def __init__(self, env: Mapping[str, str] | None = None, now: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        self._now = now
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._last_ping: float | None = None
        self.sent = 0
        self.errors = 0
        self.last_error = ""
        self.address = self._parse_socket(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_s = self._parse_watchdog(env)

    @staticmethod
    def _parse_socket(value: str) -> str | None:
        if not value:
            return None
        if value.startswith("@"):
            return "\0" + value[1:]  # abstract namespace (Linux)
        if value.startswith("/"):
            return value
        log.warning("NOTIFY_SOCKET=%r is not a path or '@name' (vsock is not supported); not notifying systemd",
                    value)
        return None

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str]) -> float | None:
        usec = env.get("WATCHDOG_USEC", "")
        if not usec:
            return None
        pid = env.get("WATCHDOG_PID", "")
        if pid and pid != str(os.getpid()):
            return None  # the watchdog is meant for another process (we were forked or exec'd by the main one)
        try:
            value = int(usec)
        except ValueError:
            log.warning("WATCHDOG_USEC=%r is not a number; not pinging the watchdog", usec)
            return None
        return value / 1e6 if value > 0 else None

    @property
    def enabled(self) -> bool:
        """bool: whether a notification socket is configured (started by systemd with Type=notify)."""
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """float | None: systemd's watchdog timeout (WatchdogSec) in seconds, None when the watchdog is off."""
        return self._watchdog_s

    @property
    def watchdog_min_gap_s(self) -> float:
        """float: pings closer together than this are skipped (half the watchdog interval, as systemd advises)."""
        return self._watchdog_s / 2 if self._watchdog_s else 0.0

    # -- messages ---------------------------------------------------------------------------------------------------
    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up is complete (send when the first frame is on screen); arms systemd's watchdog."""
        return self.send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def watchdog(self, force: bool = False) -> bool:
        """WATCHDOG=1 if the watchdog is on and half its interval has passed since the last ping; True when sent.

        Call it every presented frame: it rate-limits itself. ``force`` sends even without WATCHDOG_USEC.
        """
        if not self.enabled or (self._watchdog_s is None and not force):
            return False
        t = self._now()
        if not force and self._last_ping is not None and t - self._last_ping < self.watchdog_min_gap_s:
            return False
        self._last_ping = t
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by ``systemctl status`` (open/closed, scene, fps)."""
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """STOPPING=1: shutting down on purpose (after SIGTERM), so a slow exit is not a hang."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd >= 253 wants the time to match the reload); send ready() after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000  # systemd's clock, not the injected one
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=...: ask for more start-up (or stop) time, e.g. while a large model loads."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(int(seconds * 1e6), 0)}")

    def send(self, message: str) -> bool:
        """Send one raw notification; True when it was handed to the socket, False when off or it failed."""
        address = self.address
        if address is None:
            return False
        data = message.encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.setblocking(False)  # never stall the loop on a full socket queue
                    self._sock = sock
                self._sock.sendto(data, address)
            except OSError as e:
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                # Warn once; systemd being gone is a single story, not one per frame.
                log.log(logging.WARNING if self.errors == 1 else logging.DEBUG,
                        "sd_notify %r to %r failed (%s); %d failures so far", message.split("\n", 1)[0],
                        address.replace("\0", "@"), self.last_error, self.errors)
                return False
            self.sent += 1
            return True

    def close(self) -> None:
        """Close the socket (a later send reopens it)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def stats(self) -> dict[str, object]:
        """Counters for the health report."""
        return {"enabled": self.enabled, "watchdog_s": self._watchdog_s, "sent": self.sent, "errors": self.errors}


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_STATUS_CHARS else line[:MAX_STATUS_CHARS - 1] + "…"
