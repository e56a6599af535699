"""Health reporting: a tiny HTTP endpoint (GET /health -> JSON), memory trends and the time left before out-of-memory.

The server runs in its own daemon thread and only calls the ``snapshot`` callable it is given; it never touches the
runtime's objects, so a slow or odd client cannot stall the show. Trends are least-squares slopes over a sliding window
of samples taken on an injected clock, so a slow leak shows up as MiB per hour long before it kills the process.
"""

from __future__ import annotations

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

log = logging.getLogger(__name__)


class HealthSettings(BaseModel):
    """``[health]``: where the JSON endpoint listens (loopback by default; port 0 picks a free one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9080


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


def _encode(obj: Any) -> bytes:
    return json.dumps(_clean(obj), allow_nan=False, separators=(",", ":")).encode()


# -- the server -----------------------------------------------------------------------------------------------------

class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never blocks shutdown
    allow_reuse_address = True  # restart right after a crash (TIME_WAIT); a live listener still makes bind fail
    request_queue_size = 16

    def __init__(self, addr: tuple[str, int], snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is not worth a traceback on stderr (socketserver's default)."""
        log.debug("health request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 5  # seconds a client may take to send its request
    server_version = "installation-health"

    def _send(self, code: int, body: bytes, head_only: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

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
        host = self.settings.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/health"

    @property
    def running(self) -> bool:
        """bool: whether the server thread is serving."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Bind and serve in a daemon thread; raises OSError naming host:port when it cannot listen there."""
        with self._lock:
            if self._server is not None:
                return
            host, port = self.settings.host, self.settings.port
            try:
                server = _Server((host, port), self._snapshot)
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
