"""The HTTP surfaces (health, web page, OSCQuery) on ops/http.py, over real sockets on loopback: 1,000 slow
connections from other client addresses cost no thread and lock nobody out, caps per client address, deadlines for
headers and bodies, HEAD, the Host check in any letter case, and no token in any log line at debug level."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest

from installation.ops.http import WORKERS, HttpLimits, HttpServer, json_response
from installation.ops.http_bench import OTHERS, slow_connections, surface
from installation.ops.limits import raise_nofile_limit
from installation.ops.logs import LogSettings, setup_logging
from support import read_all, wait_until

TOKEN = "tok-3f9a1c77e2b4d5"
SLOW = 1000  # from the 40 "other clients" of OTHERS (loopback addresses besides 127.0.0.1), 25 each


@contextmanager
def serving(kind: str, **settings):
    """One of the three surfaces, started on a free port: (part, path a real client asks for, its HttpServer)."""
    with surface(kind, **settings) as (part, path):
        yield part, path, part.http


def fetch(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None,
          timeout: float = 30) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request from 127.0.0.1, errors included."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@pytest.mark.parametrize("kind", ["health", "web", "oscquery"])
def test_a_real_client_is_answered_while_1000_slow_connections_are_held(kind):
    """1,000 slow connections from 40 other addresses (idle, trickling a header byte at a time, unfinished websocket
    upgrades) are all held at once, with no thread each, and a real request from 127.0.0.1 is answered each time."""
    raise_nofile_limit()  # 1,000 connections are 2,000 descriptors in this process (both ends)
    threads_before = threading.active_count()
    # a deadline far beyond the test, so that "held" means held on a loaded machine too; the caps are the defaults
    with serving(kind, request_timeout_s=300.0) as (part, path, http):
        socks, trickle = slow_connections(part.port, SLOW)
        try:
            assert wait_until(lambda: http.stats()["open"] >= SLOW, 60), http.stats()
            answers, latencies = [], []
            for byte in b"ET /x":  # one header byte to each trickling connection between the real requests
                for s in trickle:
                    s.send(bytes([byte]))
                t0 = time.perf_counter()
                status, _, body = fetch(f"http://127.0.0.1:{part.port}{path}")
                latencies.append(time.perf_counter() - t0)
                answers.append(status)
            stats = http.stats()
            threads = threading.active_count() - threads_before
        finally:
            for s in socks:
                s.close()
        print(f"{kind}: {SLOW} slow connections held; real requests answered in "
              f"{', '.join(f'{x * 1000:.0f}' for x in latencies)} ms")
    assert answers == [200] * 5, answers
    assert stats["open"] >= SLOW and stats["evicted"] == 0 and stats["refused_busy"] == 0, stats
    assert stats["refused_client"] == 0 and stats["timed_out"] == 0, stats
    assert threads <= 1 + WORKERS, f"{threads} threads for {SLOW} connections"  # the loop and its call workers


def test_one_address_cannot_take_every_place():
    """An address at its cap gets 503 at once for more (JSON, read before the close); another address is served."""
    with serving("web", max_per_client=4, request_timeout_s=300.0) as (part, path, http):
        held = []
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", part.port), source_address=(OTHERS[0], 0))
            held.append(s)
        assert wait_until(lambda: http.stats()["open"] == 4, 20)
        refused = []
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", part.port), timeout=20,
                                          source_address=(OTHERS[0], 0)) as s:
                s.sendall(b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                refused.append(read_all(s))
        assert fetch(part.url + "api/state")[0] == 200  # from 127.0.0.1: its own places
        stats = http.stats()
        for s in held:
            s.close()
    for raw in refused:
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and json.loads(body)["error"] == "too many connections"
    assert stats["refused_client"] == 3 and stats["open"] <= 5
    assert part.stats()["rejects"]["busy"] == 3


def test_when_full_a_newcomer_takes_the_oldest_slow_ones_place():
    with serving("oscquery", max_connections=8, request_timeout_s=300.0) as (part, path, http):
        socks, _ = slow_connections(part.port, 8)
        try:
            assert wait_until(lambda: http.stats()["open"] == 8, 20)
            assert fetch(f"http://127.0.0.1:{part.port}{path}")[0] == 200
            assert http.stats()["evicted"] == 1
            socks[0].setblocking(True)
            socks[0].settimeout(10)
            assert socks[0].recv(100) == b""  # the oldest was closed for it
        finally:
            for s in socks:
                s.close()


def test_a_body_must_arrive_by_the_deadline_and_be_small():
    with serving("web", request_timeout_s=1.0) as (part, path, http):
        with socket.create_connection(("127.0.0.1", part.port), timeout=20) as s:
            s.sendall(b"POST /api/control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"address\":")  # and never the rest
            head, _, body = read_all(s).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["code"] == 408
        status, _, body = fetch(part.url + "api/control", "POST", data=b"x" * 9000)
        assert status == 413 and json.loads(body)["reason"] == "too_large"
        assert http.stats()["timed_out"] == 1


@pytest.mark.parametrize("kind", ["health", "web", "oscquery"])
def test_head_and_the_host_check_in_any_letter_case(kind):
    with serving(kind) as (part, path, http):
        base = f"http://127.0.0.1:{part.port}"
        status, headers, body = fetch(base + path, "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        assert headers["Content-Type"].startswith("application/json")
        for host in ("LOCALHOST", f"LocalHost:{part.port}", "127.0.0.1", "[::1]:80"):
            assert fetch(base + path, headers={"Host": host})[0] == 200, host
        for host in ("evil.example", f"Evil.Example:{part.port}", "localhost.evil.example", "127.0.0.1.nip.io"):
            status, _, body = fetch(base + path, headers={"Host": host})
            assert status == 403 and json.loads(body)["error"] == "forbidden", host


def test_a_server_whose_loop_dies_is_seen_dead_and_starts_again():
    """A server task that fails ends the loop thread: ``alive`` turns False (the part supervisor restarts it)."""
    gate = threading.Event()

    async def pump():
        while not gate.is_set():
            await __import__("asyncio").sleep(0.01)
        raise RuntimeError("injected")

    async def handle(request):
        return json_response(200, {"ok": True})

    http = HttpServer("t-http", "127.0.0.1", 0, HttpLimits(), handle, tasks=(pump,))
    http.start()
    try:
        assert http.alive and fetch(f"http://127.0.0.1:{http.port}/")[0] == 200
        gate.clear()
        gate.set()
        assert wait_until(lambda: not http.alive, 10)
        http.stop()
        gate.clear()
        http.start()  # what the supervisor does
        assert http.alive and fetch(f"http://127.0.0.1:{http.port}/")[0] == 200
    finally:
        http.stop()


def test_the_token_is_in_no_log_line_at_debug_level(tmp_path):
    """With the show's logging at debug (stderr and a file) and the web page behind a token: requests with the token
    in the query, a header, a malformed request line and an unknown path are all logged, the token never."""
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    added = setup_logging(LogSettings(level="debug", file=str(tmp_path / "show.log")), stream=stream,
                          secrets=(TOKEN,))
    try:
        with serving("web", token=TOKEN, request_timeout_s=2.0) as (part, path, http):
            base = part.url
            assert fetch(f"{base}api/state?token={TOKEN}")[0] == 200
            assert fetch(f"{base}api/state?ToKeN={TOKEN}&x=1")[0] == 401  # not the parameter, but never logged
            assert fetch(f"{base}nope/{TOKEN}?token={TOKEN}")[0] == 404
            assert fetch(f"{base}api/state", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
            assert fetch(f"{base}api/control?token={TOKEN}", "POST", data=b"{not json")[0] == 400
            assert fetch(f"{base}api/state?token=wrong")[0] == 401
            for raw in (f"GET /?token={TOKEN} HTTP/9.9\r\n\r\n", f"BREW /?token={TOKEN} HTTP/1.1\r\n\r\n",
                        f"GET /{'x' * 9000}?token={TOKEN} HTTP/1.1\r\n\r\n", f"GET /?token={TOKEN} HT"):
                with socket.create_connection(("127.0.0.1", part.port), timeout=20) as s:
                    s.sendall(raw.encode())
                    assert read_all(s).startswith(b"HTTP/1.")
            # a line from anywhere else that quotes the token (a library, an exception) is scrubbed too
            logging.getLogger("some.library").debug("fetched http://x/?token=%s", TOKEN)
            try:
                raise ValueError(f"bad url /?token={TOKEN}")
            except ValueError:
                logging.getLogger("some.library").exception("failed")
            assert wait_until(lambda: http.stats()["answered"] >= 9 and http.stats()["timed_out"] == 1, 10)
    finally:
        for h in added:
            root.removeHandler(h)
            h.close()
        root.setLevel(level)
    for text in (stream.getvalue(), (tmp_path / "show.log").read_text()):
        assert "web-page" in text and "token=***" in text and "/api/state" in text  # the requests were logged
        assert "some.library" in text and "bad url" in text
        assert TOKEN not in text


def test_the_runtime_restarts_a_surface_whose_loop_died(tmp_path):
    """Each surface's loop thread stopped dead (as a crash would): counted as a part death, restarted by the part
    supervisor within a second of show time, visible in /health, and serving again."""
    from installation.clock import FixedClock
    from installation.config import load_show
    from installation.render.targets import HeadlessTarget
    from installation.runtime import Runtime
    from support import scene_toml, write_show

    cfg = write_show(tmp_path, {"a": scene_toml()},
                     extra="[state]\nenabled = false\n[archive]\nenabled = false\n[web]\nenabled = true\nport = 0\n"
                           "[oscquery]\nenabled = true\nport = 0\nadvertise = false\n")
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, serve_health=True)
    names = ("health", "web", "oscquery")
    try:
        rt.start()
        for name in names:
            http = rt.part(name).http
            http.loop.call_soon_threadsafe(http.loop.stop)  # the loop ends under the server: its thread dies
        assert wait_until(lambda: not any(rt.part(n).alive for n in names), 10)
        for _ in range(41):  # to t = 2 s: supervision at t = 1 s, the health report again at t = 2 s
            rt.step()
        assert all(rt.part(n).alive for n in names)
        deaths = rt.health_snapshot()["faults"]["part_deaths"]
        assert deaths == {"health": 1, "web": 1, "oscquery": 1}, deaths
        for url in (rt.health_server.url, rt.part("web").url + "api/state", rt.part("oscquery").url):
            assert fetch(url)[0] == 200, url
    finally:
        rt.close()
        target.close()


def test_the_show_hands_its_web_token_to_the_log_handlers(tmp_path, capfd):
    """The command's logging set-up (what `installation run` calls) scrubs the config's [web] token."""
    from installation.cli.shared import start_logging
    from installation.config import load_show
    from installation.ops.logs import _MARK
    from support import scene_toml, write_show

    cfg = write_show(tmp_path, {"a": scene_toml()}, extra=f'[web]\nenabled = true\ntoken = "{TOKEN}"\n')
    spec = load_show(cfg)
    assert TOKEN not in repr(spec.config.web)
    root = logging.getLogger()
    level = root.level
    start_logging("debug", spec)
    try:
        logging.getLogger("some.library").debug("GET /?token=%s", TOKEN)
    finally:
        for h in [h for h in root.handlers if getattr(h, _MARK, False)]:
            root.removeHandler(h)
            h.close()
        root.setLevel(level)
    err = capfd.readouterr().err
    assert "GET /?token=***" in err and TOKEN not in err
