"""Health reporting: a tiny HTTP endpoint (GET /health -> JSON), memory trends and the time left before out-of-memory.

The endpoint is an :class:`~installation.ops.http.HttpServer` (aiohttp on a loop thread of its own): it only calls
the ``snapshot`` callable it is given, on a worker thread, and never touches the runtime's objects, so a slow or odd
client cannot stall the show. Slow or idle connections cost no thread; each request must arrive whole within
``request_timeout_s``, connections are capped per client address and in all, and every answer, errors included, is
JSON (``ops/http.py``). Trends are least-squares slopes over a sliding window of samples taken on an injected
clock, so a slow leak shows up as MiB per hour long before it kills the process.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable

from pydantic import Field

from ..parts import PartContext, register
from .http import HttpLimits, HttpServer, host_refusal, http_url, json_bytes, json_error, json_response, respond

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["HealthServer", "HealthSettings", "MemoryWatch", "Trend", "eta_to_limit_s", "http_url", "memory_limit_mb",
           "rss_mb", "vram_mb", "vram_total_mb"]


class HealthSettings(HttpLimits):
    """``[health]``: where the JSON endpoint listens (loopback by default; port 0 picks a free one), and the
    connection rules of ``ops/http.py``."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9080
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 5.0


class HealthServer:
    """Serves ``GET /health`` (and HEAD) with ``snapshot()`` as JSON from its own loop thread; ``start()``/``stop()``."""

    def __init__(self, settings: HealthSettings, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self._snapshot = snapshot
        self._http = HttpServer("health-http", settings.host, settings.port, settings, self._handle,
                                 label="health endpoint")

    @property
    def port(self) -> int:
        """int: the port actually listened on (the chosen one when settings say 0; after stop(), the last one)."""
        return self._http.port

    @property
    def http(self) -> HttpServer:
        """HttpServer: the server itself (its connection figures: ``http.stats()``)."""
        return self._http

    @property
    def url(self) -> str:
        """str: the full URL of the endpoint, for logs."""
        return http_url(self.settings.host, self.port, "/health")

    @property
    def running(self) -> bool:
        """bool: whether the server thread is serving."""
        return self._http.alive

    @property
    def alive(self) -> bool:
        """bool: the server thread serves (as a part: False once it has ended without stop())."""
        return self._http.alive

    def stats(self) -> dict[str, Any]:
        """Connection counters for the health report (see :meth:`HttpServer.stats`)."""
        return self._http.stats()

    def start(self) -> None:
        """Bind and serve; raises OSError naming host:port when it cannot listen there."""
        if self._http.alive:
            return
        self._http.start()
        log.info("health endpoint on %s", self.url)

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call more than once or before start()."""
        self._http.stop()

    def __enter__(self) -> "HealthServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return json_error(501, detail="GET or HEAD")
        refusal = host_refusal(request, self.settings.host)
        if refusal:
            return json_error(403, "forbidden", detail=refusal)
        if request.path != "/health":
            return json_response(404, {"error": "not found", "path": request.path[:200], "try": "/health"})
        try:
            body = json_bytes(await self._http.call(self._snapshot))
        except Exception as e:  # noqa: BLE001 - report it, keep serving
            log.warning("health snapshot failed: %s: %s", type(e).__name__, e)
            return json_response(500, {"status": "error", "error": f"{type(e).__name__}: {e}"})
        return respond(200, body)


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
