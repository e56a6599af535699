"""UDP transport for control inputs: the socket, its receive buffer, a batched drain, kernel drops and a fair limiter.

Nothing here knows OSC. :class:`UdpReceiver` owns the socket and a thread that hands each datagram to a callback;
:class:`FairLimiter` decides which sender may spend a message. The OSC control surface (``inputs/osc.py``) is built
on both.

The drain is a non-blocking ``recvfrom`` loop woken by a selector: no poll and no timeout per datagram, and a
flooding sender's datagrams are refused by the limiter before any parsing. The kernel's receive buffer is what
absorbs a burst while the render loop holds the GIL, hence the large ``SO_RCVBUF``; what it still drops is read back
from ``/proc/net/udp`` so health shows it. (``recvmmsg`` through ctypes was measured too: no faster here, because
unpacking its headers in Python costs what the saved system calls save.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
import selectors
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from installation.ops.logs import RepeatLog
from installation.ops.supervise import Worker

log = logging.getLogger(__name__)

Address = tuple[Any, ...]

_LOOPBACK_KEY = "loopback"
_MAX_DGRAM = 65536  # the largest UDP payload fits (65,507 bytes over IPv4)
REOPEN_MAX_S = 1.0  # the longest wait between two tries to get a failed receiver going again


# -- who is a sender ------------------------------------------------------------------------------------------------

def host_key(host: str) -> str:
    """The limiter's notion of one host: all of 127.0.0.0/8 and ::1 are one (a local process can send from any of
    them), an IPv4 address is itself, an IPv6 address counts by its /64 (one machine usually holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return _LOOPBACK_KEY
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Host:
    __slots__ = ("tokens", "last", "senders", "checked")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.last = now
        self.senders: OrderedDict[Any, list[float]] = OrderedDict()  # port -> [share tokens, last refill, last seen]
        self.checked = now


class FairLimiter:
    """Rate limit per host, with a guaranteed fair share for each of the host's senders (ports).

    A host (see :func:`host_key`: all of loopback is one) has one token bucket: ``rate`` messages per second, bursts
    of ``burst``. Whoever asks first spends it, so a lone sender gets the whole budget. Each sender (host, port) active
    within ``idle_s`` also has a share meter of ``rate / n`` per second (at most ``burst / n``; n = the host's active
    senders): a sender within its share is let through even when the host's bucket is empty, which then runs into
    debt (at most ``burst``) that the host's next refills pay back before anyone over their share gets a token again.
    So a flooding socket, or several, cannot starve a quiet client on the same machine (TouchDesigner beside a runaway
    patch), and no number of ports or loopback addresses lifts a host above ``rate * t + 2 * burst`` messages.
    At most ``ports_per_host`` senders of a host get their own share; further ports share one. ``max_hosts`` hosts
    are kept (least recently seen dropped). Not thread-safe: the caller serialises.
    """

    def __init__(self, rate: float, burst: int, *, max_hosts: int = 256, ports_per_host: int = 16,
                 idle_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_hosts = max_hosts
        self.ports_per_host = ports_per_host
        self.idle_s = idle_s
        self._clock = clock
        self._hosts: OrderedDict[str, _Host] = OrderedDict()

    def take(self, host: str, port: Any, now: float | None = None) -> bool:
        """Spend one message for sender (host key, port); False when it must be dropped."""
        now = self._clock() if now is None else now
        h = self._hosts.get(host)
        if h is None:
            h = self._hosts[host] = _Host(self.burst, now)
            if len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)
        else:
            self._hosts.move_to_end(host)
            h.tokens = min(self.burst, h.tokens + (now - h.last) * self.rate)
            h.last = now
        senders = h.senders
        if now - h.checked >= self.idle_s / 4:  # forget senders gone quiet, so the others get their share back
            h.checked = now
            for key in [k for k, b in senders.items() if now - b[2] > self.idle_s]:
                del senders[key]
        share = senders.get(port)
        if share is None:
            if len(senders) >= self.ports_per_host:
                port = None  # the shared overflow sender
                share = senders.get(None)
            if share is None:
                share = senders[port] = [self.burst / (len(senders) + 1), now, now]
        n = len(senders)
        share[0] = min(max(self.burst / n, 1.0), share[0] + (now - share[1]) * self.rate / n)
        share[1] = share[2] = now
        if share[0] >= 1.0 and h.tokens > -self.burst:
            share[0] -= 1.0
            h.tokens -= 1.0
            return True
        if h.tokens >= 1.0:
            h.tokens -= 1.0
            share[0] = max(0.0, share[0] - 1.0)
            return True
        return False

    def senders(self, host: str) -> int:
        """int: senders of ``host`` tracked now (the overflow sender counts as one)."""
        h = self._hosts.get(host)
        return len(h.senders) if h is not None else 0


# -- kernel drops ---------------------------------------------------------------------------------------------------

def proc_udp_counters(inode: int, tables: tuple[Path | str, ...] = ("/proc/net/udp", "/proc/net/udp6")
                      ) -> dict[str, int] | None:
    """``drops`` and ``rx_queue`` (bytes waiting) of the UDP socket with this inode, from Linux's /proc tables."""
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) >= 13 and f[9] == str(inode):
                try:
                    return {"drops": int(f[12]), "rx_queue": int(f[4].split(":")[1], 16)}
                except (ValueError, IndexError):
                    return None
    return None


# -- the receiver ---------------------------------------------------------------------------------------------------

class UdpReceiver(Worker):
    """A bound UDP socket drained by a daemon thread: ``on_datagram(data, address)`` for each datagram.

    ``rcvbuf`` bytes of kernel receive buffer are asked for (Linux caps it at ``net.core.rmem_max`` unless the
    process may use SO_RCVBUFFORCE); what was granted is in :meth:`stats`. Up to ``batch`` datagrams are taken per
    wake-up; ``on_idle()`` runs in the same thread after each batch and at least every ``idle_every`` seconds, and
    returns how soon it wants to run again (or None). Nothing raised by a callback reaches the thread's top: it is
    counted as ``callback_errors``. Datagrams are read whole (64 KiB), so none is ever truncated. A receiver that
    fails (no file descriptor left for its selector, its socket closed under it) is counted in ``socket_errors`` and
    gets going again at once, then every REOPEN_MAX_S at most while it cannot (``reopens`` counts new sockets): the
    port is never deaf for longer than the fault lasts.
    """

    def __init__(self, host: str, port: int, on_datagram: Callable[[bytes, Address], None], *,
                 rcvbuf: int = 4 << 20, batch: int = 64, on_idle: Callable[[], float | None] | None = None,
                 idle_every: float = 0.1, name: str = "udp-receive") -> None:
        self.host, self.port = host, port
        self._on_datagram = on_datagram
        self._on_idle = on_idle
        self._rcvbuf = rcvbuf
        self._batch_n = max(1, batch)
        self._idle_every = idle_every
        super().__init__()
        self.thread_name = name
        self.sock: socket.socket | None = None
        self._inode = 0
        self.datagrams = 0
        self.wakeups = 0
        self.socket_errors = 0
        self.callback_errors = 0
        self.reopens = 0
        self._repeats = RepeatLog(log, interval=60.0)

    @property
    def address(self) -> Address | None:
        """tuple: the bound (host, port) while bound, else None."""
        sock = self.sock
        return sock.getsockname()[:2] if sock is not None else None

    def bind(self) -> None:
        """Create, size and bind the socket; raises OSError naming host:port when it cannot listen there."""
        if self.sock is not None:
            return
        info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:
            _set_rcvbuf(sock, self._rcvbuf)
            sock.bind(info[4])
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from exc
        sock.setblocking(False)
        self.sock = sock
        try:
            self._inode = os.fstat(sock.fileno()).st_ino
        except OSError:
            self._inode = 0
        granted = self.rcvbuf_bytes()
        if granted is not None and granted < self._rcvbuf:
            log.info("UDP %s:%s receive buffer is %d KiB (asked for %d KiB; raise net.core.rmem_max to allow more)",
                     self.host, self.port, granted // 1024, self._rcvbuf // 1024)

    def start(self) -> None:
        """Bind if needed and start draining in a supervised thread (:class:`~installation.ops.supervise.Worker`)."""
        if self._thread is None:
            self.bind()
        super().start()

    def _stopped(self) -> None:
        """The thread has ended: close the socket (stop() is safe to call twice)."""
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def rcvbuf_bytes(self) -> int | None:
        """int: the receive buffer the kernel granted, as it accounts it (Linux reports twice the size asked for)."""
        sock = self.sock
        try:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) if sock is not None else None
        except OSError:
            return None

    def kernel_counters(self) -> dict[str, int] | None:
        """``drops`` (datagrams the kernel threw away because the buffer was full) and ``rx_queue`` (bytes
        waiting) for this socket, from /proc/net/udp; None where that cannot be read (not Linux)."""
        return proc_udp_counters(self._inode) if self.sock is not None and self._inode else None

    def stats(self) -> dict[str, Any]:
        """Counters for health: datagrams, kernel drops, bytes queued, the buffer granted, errors."""
        k = self.kernel_counters()
        return {"datagrams": self.datagrams, "kernel_drops": None if k is None else k["drops"],
                "rx_queue_bytes": None if k is None else k["rx_queue"], "rcvbuf_bytes": self.rcvbuf_bytes(),
                "socket_errors": self.socket_errors, "callback_errors": self.callback_errors,
                "reopens": self.reopens}

    # -- the thread ----------------------------------------------------------------------------------------------
    def _idle(self) -> float:
        if self._on_idle is None:
            return self._idle_every
        try:
            want = self._on_idle()
        except Exception:  # noqa: BLE001 - never let a callback stop the receiver
            self.callback_errors += 1
            log.debug("UDP idle callback failed", exc_info=True)
            return self._idle_every
        return self._idle_every if want is None else min(max(want, 0.0), self._idle_every)

    def _recv(self, sock: socket.socket) -> list[tuple[bytes, Address]]:
        out = []
        for _ in range(self._batch_n):
            try:
                out.append(sock.recvfrom(_MAX_DGRAM))
            except (BlockingIOError, InterruptedError):
                break
        return out

    def _run(self) -> None:
        """The receive thread (supervised): serve; when serving fails, try again at once, then after a wait that
        doubles up to REOPEN_MAX_S, with a new socket if the old one is closed; until stopped."""
        streak, wait = 0, 0.0
        while not self._stop.wait(wait):
            began = time.monotonic()
            try:
                sock = self.sock
                if sock is None or sock.fileno() < 0:
                    self.sock = None
                    self.bind()
                    self.reopens += 1
                    log.info("UDP receiver on %s:%s: listening again", self.host, self.port)
                self._serve(self.sock)
                return  # stopped
            except (OSError, ValueError) as e:
                if self._stop.is_set():
                    return
                self.socket_errors += 1
                if time.monotonic() - began > 10.0:
                    streak = 0  # it had served a good while: try again at once
                wait = min(0.05 * 2 ** (streak - 1), REOPEN_MAX_S) if streak else 0.0
                streak += 1
                self._repeats.error("serve", "UDP receiver on %s:%s failed (%s); trying again in %.2f s",
                                    self.host, self.port, e, wait)

    def _serve(self, sock: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(sock, selectors.EVENT_READ)
            wait = self._idle_every
            while not self._stop.is_set():
                if not sel.select(wait):
                    wait = self._idle()
                    continue
                self.wakeups += 1
                for _ in range(64):  # bounded, so stop() and on_idle get a look in during a flood
                    try:
                        batch = self._recv(sock)
                    except OSError:
                        if self._stop.is_set():
                            return
                        self.socket_errors += 1  # e.g. ICMP port unreachable surfacing on Windows
                        break
                    if not batch:
                        break
                    self.datagrams += len(batch)
                    for data, addr in batch:
                        try:
                            self._on_datagram(data, addr)
                        except Exception:  # noqa: BLE001 - belt and braces: the thread never dies
                            self.callback_errors += 1
                            log.debug("UDP datagram callback failed", exc_info=True)
                    wait = self._idle()
                    if len(batch) < self._batch_n:
                        break
        finally:
            sel.close()


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    """Ask for ``size`` bytes of receive buffer: SO_RCVBUFFORCE where allowed (root, CAP_NET_ADMIN), else SO_RCVBUF."""
    force = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform.startswith("linux") else None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            return
        except OSError:
            pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as exc:
        log.debug("SO_RCVBUF %d refused: %s", size, exc)
