"""``installation bench --http N``: how long a real request to each HTTP surface takes while N slow connections are
held (a figure, not a pass/fail), beside the same request with none.

The slow connections come from 40 loopback addresses besides 127.0.0.1 (other clients; all of 127/8 is loopback on
Linux, only 127.0.0.1 elsewhere, then they all come from it): a third send nothing, a third have begun a request and
send one more header byte between two real requests, a third are websocket upgrades whose headers never end.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

from .limits import raise_nofile_limit

OTHERS = [f"127.0.{1 + i // 200}.{2 + i % 200}" for i in range(40)]


def slow_connections(port: int, n: int, host: str = "127.0.0.1") -> tuple[list[socket.socket], list[socket.socket]]:
    """``n`` slow connections to ``host``:``port`` spread over :data:`OTHERS`: (all of them, the ones that have
    begun a request and take one more byte at a time)."""
    socks: list[socket.socket] = []
    trickle: list[socket.socket] = []
    try:
        for i in range(n):
            s = socket.socket()
            socks.append(s)
            try:
                s.bind((OTHERS[i % len(OTHERS)], 0))
            except OSError:
                pass  # no such loopback address here: from 127.0.0.1
            s.connect((host, port))
            s.setblocking(False)
            if i % 3 == 1:
                s.send(b"G")
                trickle.append(s)
            elif i % 3 == 2:
                s.send(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n".encode())
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks, trickle


@contextmanager
def surface(kind: str, **settings: Any) -> Iterator[tuple[Any, str]]:
    """One of the three surfaces on a free loopback port, at its defaults but for ``settings``: (part, a path a
    real client asks for)."""
    from ..bus import ParamBus, ParamSpec
    from ..inputs.osc import OscSettings
    from ..inputs.oscquery import OscQueryServer, OscQuerySettings
    from .health import HealthServer, HealthSettings
    from .web import WebPage, WebSettings

    bus = ParamBus([ParamSpec("speed", max=10.0, default=1.0)])
    part: Any
    if kind == "health":
        part, path = HealthServer(HealthSettings(port=0, **settings), lambda: {"status": "ok"}), "/health"
    elif kind == "web":
        part = WebPage(WebSettings(enabled=True, port=0, **settings), bus, lambda: ["a"], lambda: {"status": "ok"})
        path = "/api/state"
    else:
        part = OscQueryServer(OscQuerySettings(enabled=True, port=0, advertise=False, **settings), bus, ["a"],
                              OscSettings(port=9555))
        path = "/param/speed?VALUE"
    part.start()
    try:
        yield part, path
    finally:
        part.stop()


def _latencies(url: str, rounds: int, trickle: list[socket.socket]) -> list[float]:
    out = []
    for i in range(rounds):
        for s in trickle:
            try:
                s.send(b"ET /x HTTP/1.1\r\n"[i % 16:i % 16 + 1])
            except OSError:
                pass
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            r.read()
        out.append(time.perf_counter() - t0)
    return out


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def http_bench(slow: int = 1000, rounds: int = 20) -> dict[str, Any]:
    """Per surface: a real request's latency with no other connection, then with ``slow`` slow ones held; how many
    the server held, the seconds from the first connect until it held them all (connecting included; a request made
    meanwhile waits behind them in the kernel's queue), and the threads it added."""
    raise_nofile_limit()
    result: dict[str, Any] = {"slow_connections": slow, "rounds": rounds}
    # held for the whole measurement (a deadline past it), and all from the few addresses where 127/8 is not loopback
    settings = {"request_timeout_s": 300.0, "max_connections": max(1024, slow + 64), "max_per_client": slow + 64}
    for kind in ("health", "web", "oscquery"):
        with surface(kind, **settings) as (part, path):
            url = f"http://127.0.0.1:{part.port}{path}"
            idle = _latencies(url, rounds, [])
            threads = threading.active_count()
            t0 = time.monotonic()
            socks, trickle = slow_connections(part.port, slow)
            try:
                deadline = time.monotonic() + 60
                while part.http.stats()["open"] < slow and time.monotonic() < deadline:
                    time.sleep(0.01)
                absorbed_s = time.monotonic() - t0
                held = part.http.stats()["open"]
                loaded = _latencies(url, rounds, trickle)
                extra_threads = threading.active_count() - threads
            finally:
                for s in socks:
                    s.close()
        result[kind] = {"idle": _ms(idle), "held": held, "held_after_s": round(absorbed_s, 2), "loaded": _ms(loaded),
                        "threads_added": extra_threads}
    return result
