"""Health reporting: a tiny HTTP endpoint (GET /health -> JSON), memory trends and the time left before out-of-memory.

The server runs in its own daemon thread and only calls the ``snapshot`` callable it is given; it never touches the
runtime's objects, so a slow or odd client cannot stall the show. It holds at most ``max_connections`` connections
(one thread and one descriptor each), so clients can never exhaust the process's descriptors (which the state file,
logs and the decoder need); each request must arrive whole within ``request_timeout_s`` of the connection, however
slowly it trickles in. Every answer, errors included, is JSON. Trends are least-squares slopes over a sliding window
of samples taken on an injected clock, so a slow leak shows up as MiB per hour long before it kills the process.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from ..parts import PartContext, register

log = logging.getLogger(__name__)


class HealthSettings(BaseModel):
    """``[health]``: where the JSON endpoint listens (loopback by default; port 0 picks a free one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9080
    # Connections held at once (each is a thread and a descriptor). When full, a newcomer takes the place of the
    # oldest connection still sending its request (a slow client); when all are being answered it gets a 503.
    max_connections: Annotated[int, Field(ge=1, le=1024)] = 32
    # Seconds from connecting to the whole request being read (not per read): a client trickling bytes is cut off.
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0


# -- JSON -----------------------------------------------------------------------------------------------------------

def _clean(obj: Any) -> Any:
    """Make a snapshot strict JSON: non-finite floats become null, numpy scalars plain numbers, the rest strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy scalar, 0-d tensor
    if callable(item):
        try:
            return _clean(item())
        except Exception:  # noqa: BLE001 - fall through to str
            pass
    return str(obj)


def http_url(host: str, port: int, path: str = "/") -> str:
    """str: the URL of an HTTP endpoint listening on ``host``:``port`` (IPv6 literals bracketed), for logs."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"


def _encode(obj: Any) -> bytes:
    return json.dumps(_clean(obj), allow_nan=False, separators=(",", ":")).encode()


# -- the server -----------------------------------------------------------------------------------------------------

_ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class _Conn:
    __slots__ = ("started", "answering", "evicted")

    def __init__(self, started: float) -> None:
        self.started = started
        self.answering = False  # the request is read; the answer is being made or written
        self.evicted = False


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until a fixed deadline: each read may wait only for the time left, so trickling bytes (one every
    few seconds) cannot stretch a request past it."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self.expired = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError("request deadline passed")
        self._sock.settimeout(left)
        try:
            return self._sock.recv_into(b)
        except TimeoutError:
            self.expired = True
            raise


def _error_body(code: int, error: str, **extra: Any) -> bytes:
    return _encode({"error": error, "code": code, **extra})


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    allow_reuse_address = True  # restart right after a crash (TIME_WAIT); a live listener still makes bind fail
    request_queue_size = 16

    def __init__(self, addr: tuple[str, int], snapshot: Callable[[], dict[str, Any]], max_connections: int = 32,
                 timeout_s: float = 5.0) -> None:
        self.snapshot = snapshot
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.evict_after = 0.0  # seconds a connection must have waited before it may be taken for a slow one
        self._conns: dict[Any, _Conn] = {}
        self._conns_lock = threading.Lock()
        self.counts = {"accepted": 0, "answered": 0, "refused_busy": 0, "evicted": 0, "timed_out": 0,
                       "accept_errors": 0}
        self._last_accept_warning = -math.inf
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)

    def count(self, key: str) -> None:
        with self._conns_lock:
            self.counts[key] += 1

    def stats(self) -> dict[str, Any]:
        with self._conns_lock:
            return {"open": len(self._conns), "max_connections": self.max_connections, **self.counts}

    def get_request(self) -> tuple[Any, Any]:
        """Accept; when the process is out of descriptors, count it and pause briefly instead of spinning."""
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in _ACCEPT_ERRNOS:
                self.count("accept_errors")
                now = time.monotonic()
                if now - self._last_accept_warning > 60:
                    self._last_accept_warning = now
                    log.warning("health endpoint cannot accept a connection: %s (open files: raise the limit)", e)
                time.sleep(0.05)
            raise  # socketserver drops this round quietly

    def process_request(self, request: Any, client_address: Any) -> None:
        """Admit the connection (a thread of its own) within ``max_connections``, or refuse it at once with a 503."""
        now = time.monotonic()
        victim = None
        with self._conns_lock:
            if len(self._conns) >= self.max_connections:
                waiting = [(c.started, sock) for sock, c in self._conns.items()
                           if not c.answering and not c.evicted and now - c.started >= self.evict_after]
                if not waiting:
                    self.counts["refused_busy"] += 1
                    admitted = False
                else:
                    victim = min(waiting, key=lambda w: w[0])[1]
                    self._conns[victim].evicted = True
                    self.counts["evicted"] += 1
                    admitted = True
            else:
                admitted = True
            if admitted:
                self._conns[request] = _Conn(now)
                self.counts["accepted"] += 1
        if victim is not None:
            try:
                victim.shutdown(socket.SHUT_RDWR)  # its thread reads end-of-file and closes it
            except OSError:
                pass
        if not admitted:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: Any) -> None:
        body = _error_body(503, "busy", detail=f"more than {self.max_connections} connections; try again")
        head = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            request.setblocking(False)  # never wait on a client we are turning away
            request.recv(65536)  # what already came: closing with unread data would reset the connection
        except OSError:
            pass
        try:
            request.send(head + body)
        except OSError:
            pass
        self.shutdown_request(request)

    def conn(self, request: Any) -> _Conn | None:
        with self._conns_lock:
            return self._conns.get(request)

    def begin_answer(self, conn: _Conn) -> bool:
        """Mark a connection whose request is read (no longer to be taken for a slow client); False if already cut."""
        with self._conns_lock:
            conn.answering = not conn.evicted
            return conn.answering

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is not worth a traceback on stderr (socketserver's default)."""
        log.debug("health request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "installation-health"
    default_request_version = "HTTP/1.0"  # so even an answer to garbage has a status line and headers

    def setup(self) -> None:
        self.timeout = self.server.timeout_s
        self.requestline, self.request_version, self.command = "", self.default_request_version, None
        super().setup()
        conn = self.server.conn(self.request)
        self._conn = conn if conn is not None else _Conn(time.monotonic())
        self._deadline = self._conn.started + self.server.timeout_s
        self.rfile.close()  # the makefile() one: reads go through the deadline instead
        self._reader = _DeadlineReader(self.connection, self._deadline)
        self.rfile = io.BufferedReader(self._reader)
        self._responded = False

    def handle_one_request(self) -> None:
        super().handle_one_request()  # a read past the deadline ends in TimeoutError, which it catches
        if self._reader.expired and not self._responded and not self._conn.evicted:
            self.server.count("timed_out")
            self.close_connection = True
            self.send_error(408, f"the whole request must arrive within {self.server.timeout_s:g} s")

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if ok and not self.server.begin_answer(self._conn):
            self.close_connection = True
            return False
        return ok

    def _write_timeout(self) -> None:
        self.connection.settimeout(max(self._deadline - time.monotonic(), 1.0))

    def _send(self, code: int, body: bytes, head_only: bool = False) -> None:
        if self._conn.evicted:  # cut off for a newcomer: the socket is shut already
            self.close_connection = True
            return
        self._responded = True
        self._write_timeout()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)
        self.server.count("answered")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's errors (400, 408, 414, 431, 501, ...) as JSON instead of its HTML page."""
        self.log_error("code %d, message %s", code, message)
        phrase = self.responses.get(code, ("error",))[0]
        extra = {"detail": message[:200]} if message and message != phrase else {}
        self.close_connection = True
        self._send(code, _error_body(code, phrase.lower(), **extra),
                   head_only=getattr(self, "command", None) == "HEAD" or code < 200 or code in (204, 304))

    def _respond(self, head_only: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/health":
            self._send(404, _encode({"error": "not found", "path": path[:200], "try": "/health"}), head_only)
            return
        try:
            body = _encode(self.server.snapshot())
        except Exception as e:  # noqa: BLE001 - report it, keep serving
            log.warning("health snapshot failed: %s: %s", type(e).__name__, e)
            self._send(500, _encode({"status": "error", "error": f"{type(e).__name__}: {e}"}), head_only)
            return
        self._send(200, body, head_only)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._respond(head_only=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._respond(head_only=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server signature
        log.debug("health %s: " + format, self.client_address[0], *args)


class HealthServer:
    """Serves ``GET /health`` with ``snapshot()`` as JSON from a daemon thread; ``start()``/``stop()``."""

    def __init__(self, settings: HealthSettings, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self._snapshot = snapshot
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """int: the port actually listened on (the chosen one when settings say 0), or the configured one if stopped."""
        server = self._server
        return server.server_address[1] if server is not None else self.settings.port

    @property
    def url(self) -> str:
        """str: the full URL of the endpoint, for logs."""
        return http_url(self.settings.host, self.port, "/health")

    @property
    def running(self) -> bool:
        """bool: whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """bool: the server thread serves (as a part: False once it has ended without stop())."""
        return self.running

    def stats(self) -> dict[str, Any]:
        """Connection counters for the health report: open, max_connections, accepted, answered, refused_busy (turned
        away when full), evicted (slow clients cut off for a newcomer), timed_out (request not whole in time),
        accept_errors (out of descriptors)."""
        server = self._server
        if server is None:
            return {"open": 0, "max_connections": self.settings.max_connections}
        return server.stats()

    def start(self) -> None:
        """Bind and serve in a daemon thread; raises OSError naming host:port when it cannot listen there."""
        with self._lock:
            if self._server is not None:
                return
            host, port = self.settings.host, self.settings.port
            try:
                server = _Server((host, port), self._snapshot, self.settings.max_connections,
                                 self.settings.request_timeout_s)
            except OSError as e:
                raise OSError(e.errno, f"health endpoint cannot listen on {host}:{port}: {e.strerror or e}") from e
            self._server = server
            self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="health-http", daemon=True)
            self._thread.start()
        log.info("health endpoint on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once or before start()."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> "HealthServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@register("health", table="health", settings=HealthSettings, order=0)
def build(settings: HealthSettings, ctx: PartContext) -> HealthServer | None:
    """The health part: serves the runtime's snapshot when the runtime is asked to (``--health``) and
    ``[health] enabled``; a port that cannot be bound is a start-up error."""
    return HealthServer(settings, ctx.snapshot) if ctx.serve_health and settings.enabled else None


# -- trends ---------------------------------------------------------------------------------------------------------

class Trend:
    """Least-squares slope (units per hour) of samples over the last ``window_s`` seconds of an injected clock.

    Samples closer than ``min_interval_s`` to the previous one are dropped, which bounds memory however often
    ``add`` is called (720 samples per window by default).
    """

    def __init__(self, window_s: float = 3600.0, now: Callable[[], float] = time.monotonic, *,
                 min_samples: int = 5, min_span_s: float | None = None, min_interval_s: float | None = None) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self.min_samples = max(int(min_samples), 2)
        self.min_span_s = window_s / 60 if min_span_s is None else float(min_span_s)
        self.min_interval_s = window_s / 720 if min_interval_s is None else float(min_interval_s)
        self._now = now
        self._samples: deque[tuple[float, float]] = deque()

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, value: float | None) -> bool:
        """Record ``value`` now; None and non-finite values are ignored. True when the sample was kept."""
        if value is None or not math.isfinite(value):
            return False
        t = self._now()
        if self._samples and t - self._samples[-1][0] < self.min_interval_s:
            return False
        self._samples.append((t, float(value)))
        self._prune(t)
        return True

    def _prune(self, t: float) -> None:
        while self._samples and self._samples[0][0] < t - self.window_s:
            self._samples.popleft()

    def slope_per_hour(self) -> float | None:
        """Units per hour fitted over the window, or None with fewer than ``min_samples`` or too short a span."""
        self._prune(self._now())
        n = len(self._samples)
        if n < self.min_samples:
            return None
        t0 = self._samples[0][0]
        if self._samples[-1][0] - t0 < self.min_span_s:
            return None
        ts = [(t - t0) / 3600.0 for t, _ in self._samples]
        vs = [v for _, v in self._samples]
        mt, mv = sum(ts) / n, sum(vs) / n
        sxx = sum((t - mt) ** 2 for t in ts)
        if sxx <= 0:
            return None
        return sum((t - mt) * (v - mv) for t, v in zip(ts, vs)) / sxx


def eta_to_limit_s(value: float | None, slope_per_hour: float | None, limit: float | None) -> float | None:
    """Seconds until ``value`` growing at ``slope_per_hour`` reaches ``limit``; None unless it is growing towards it."""
    if value is None or slope_per_hour is None or limit is None or slope_per_hour <= 0:
        return None
    if value >= limit:
        return 0.0
    return (limit - value) / slope_per_hour * 3600.0


# -- memory ---------------------------------------------------------------------------------------------------------

_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number close to 2**63


def _read_limit(file: Path) -> float | None:
    try:
        text = file.read_text().strip()
    except (OSError, ValueError):
        return None
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value / 2**20 if 0 < value < _UNLIMITED else None


def memory_limit_mb(proc: Path | str = "/proc", cgroup_root: Path | str = "/sys/fs/cgroup") -> float | None:
    """The memory this process may use, in MiB: the tightest cgroup limit (v2 memory.max, v1 limit_in_bytes, this
    group or a parent) or else MemTotal from /proc/meminfo; None when neither can be read.

    Under systemd a ``MemoryMax=`` in the unit shows up here, so the out-of-memory estimate uses the real ceiling.
    """
    proc, root = Path(proc), Path(cgroup_root)
    limits: list[float] = []
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.strip().lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            bases, name = [root, root / "unified"], "memory.max"
        elif "memory" in controllers.split(","):
            bases, name = [root / "memory"], "memory.limit_in_bytes"
        else:
            continue
        for base in bases:
            # Walk from this group up to the root of the mount; in a container the group path may not exist
            # inside the mounted tree, and then the mount's root is the group itself.
            group = Path(rel)
            while True:
                limit = _read_limit(base / group / name)
                if limit is not None:
                    limits.append(limit)
                if group == Path(".") or str(group) == "":
                    break
                group = group.parent
    total = None
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) / 1024  # kB -> MiB
                break
    except (OSError, ValueError, IndexError):
        pass
    if total is not None:
        limits.append(total)
    return min(limits) if limits else None


def _torch_cuda() -> Any:
    """torch.cuda when CUDA is usable, else None; torch is imported here, not at module import (it is slow)."""
    torch = sys.modules.get("torch")
    if torch is None:
        import torch  # noqa: PLC0415 - lazy on purpose
    return torch.cuda if torch.cuda.is_available() else None


def vram_mb() -> float | None:
    """GPU memory reserved by torch's caching allocator on the current device, in MiB; None without CUDA.

    Returns 0.0 while CUDA is not initialised, so a health request never creates a CUDA context by itself.
    """
    try:
        cuda = _torch_cuda()
        if cuda is None:
            return None
        return cuda.memory_reserved() / 2**20 if cuda.is_initialized() else 0.0
    except Exception:  # noqa: BLE001 - health must not fail because of the GPU query
        return None


def vram_total_mb() -> float | None:
    """Total memory of the current GPU in MiB, or None without CUDA or before CUDA is initialised."""
    try:
        cuda = _torch_cuda()
        if cuda is None or not cuda.is_initialized():
            return None
        return cuda.get_device_properties(cuda.current_device()).total_memory / 2**20
    except Exception:  # noqa: BLE001
        return None


def rss_mb() -> float | None:
    """Resident memory of this process now, in MiB (Linux /proc), or None where that cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class MemoryWatch:
    """RSS and VRAM with their slopes per hour and a time-to-limit estimate, sampled from the loop every few seconds.

    ``sample()`` may be called every tick (it rate-limits itself); ``report()`` gives the health keys.
    """

    def __init__(self, window_s: float = 3600.0, now: Callable[[], float] = time.monotonic, *,
                 limit_mb: float | None = None, rss: Callable[[], float | None] = rss_mb,
                 vram: Callable[[], float | None] = vram_mb, vram_limit_mb: float | None = None,
                 vram_total: Callable[[], float | None] = vram_total_mb) -> None:
        self._now = now
        self._rss_fn, self._vram_fn, self._vram_total_fn = rss, vram, vram_total
        self.rss = Trend(window_s, now)
        self.vram = Trend(window_s, now)
        self.limit_mb = memory_limit_mb() if limit_mb is None else limit_mb
        self.vram_limit_mb = vram_limit_mb
        self._last: float | None = None
        self._rss_now: float | None = None
        self._vram_now: float | None = None

    def sample(self) -> bool:
        """Read RSS and VRAM if the trends want a sample now; True when it did."""
        t = self._now()
        if self._last is not None and t - self._last < self.rss.min_interval_s:
            return False
        self._last = t
        self._rss_now, self._vram_now = self._rss_fn(), self._vram_fn()
        self.rss.add(self._rss_now)
        self.vram.add(self._vram_now)
        if self._vram_now is not None and self.vram_limit_mb is None:
            self.vram_limit_mb = self._vram_total_fn()  # known once CUDA is up
        return True

    def report(self) -> dict[str, Any]:
        """rss_mb, vram_mb (null without a GPU), their slopes per hour, the limits and the seconds to reach them."""
        rs, vs = self.rss.slope_per_hour(), self.vram.slope_per_hour()
        rss_eta = eta_to_limit_s(self._rss_now, rs, self.limit_mb)
        vram_eta = eta_to_limit_s(self._vram_now, vs, self.vram_limit_mb)
        etas = [e for e in (rss_eta, vram_eta) if e is not None]
        r = lambda x, n=1: None if x is None else round(x, n)  # noqa: E731
        return {
            "rss_mb": r(self._rss_now), "rss_mb_per_h": r(rs, 2), "memory_limit_mb": r(self.limit_mb),
            "rss_eta_to_limit_s": r(rss_eta, 0),
            "vram_mb": r(self._vram_now), "vram_mb_per_h": r(vs, 2), "vram_limit_mb": r(self.vram_limit_mb),
            "vram_eta_to_limit_s": r(vram_eta, 0),
            "oom_eta_s": r(min(etas), 0) if etas else None,  # the sooner of the two; null when nothing grows
        }
