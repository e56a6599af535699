"""HTTP and websocket serving for the show's surfaces (the health endpoint, the web page, OSCQuery), on aiohttp.

Each surface is an :class:`HttpServer`: one asyncio loop on a thread of its own (the part's only thread, besides a
few workers for calls into the show), so an idle or slow connection costs a descriptor, never a thread. This module
accepts the connections itself, to hold every one of them to the same rules before aiohttp parses a byte:

- at most ``max_per_client`` connections from one address (more are answered 503 at once), and at most
  ``max_connections`` in all, never more than the process's open-file limit allows; when full, a newcomer takes the
  place of the oldest connection still sending its request, and gets 503 only when every one is being answered;
- a deadline for each request, headers and body together (``request_timeout_s`` from the connection, or from the
  previous answer on a kept-alive one): a client trickling a byte every few seconds is cut off with a 408, a silent
  one is closed; an answer must also be taken by the client within that time;
- every answer is JSON, aiohttp's own parse errors included (400, 414, 431, 501, 505), and no log line holds a
  request's ``token`` (see :func:`redact`).

The shared request checks live here too: the Host check against DNS rebinding (:func:`host_refusal`), same-origin and
allowed-origin checks (:func:`same_origin`, :func:`allowed_origin`), the token (:func:`token_ok`), a bounded body read
with the request's deadline (:func:`read_body`). A part writes one ``async def handle(request)`` and keeps its own
routes; a websocket is ``aiohttp.web.WebSocketResponse`` on the same port. The answers (strict JSON, the JSON
errors, :class:`HttpError`) are in ``ops/http_answers.py``, re-exported here. The connection protocol itself is in
``ops/http_conn.py``, imported when the first server starts: aiohttp is not needed to read a config, and importing
it takes about a second on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import ipaddress
import logging
import math
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated, Any, Awaitable, Callable
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from .http_answers import (  # noqa: F401 - the answers: the surfaces import them from here
    HANDLING, MAX_FIELD, MAX_HEADERS, MAX_URL, READING, WRITING, Handler, HttpError, clean_json, json_bytes, json_error,
    json_response, logged_target, raw_answer, redact, respond)

if TYPE_CHECKING:  # aiohttp is imported when a server starts, not with the config (it takes a second at load)
    from aiohttp import web

    from .http_conn import Connection

log = logging.getLogger(__name__)

BACKLOG = 4096  # the kernel's queue of connections not yet accepted: a full one drops a legitimate client's SYN
FD_RESERVE = 256  # descriptors kept for the rest of the process (files, pipes, the decoder) when capping connections
FD_SHARE = 4  # each server holds at most this fraction of the rest (three servers, and room to spare)
MAX_LINGERING = 64  # refused connections draining their request at once (a quarter of the cap at most); beyond: closed
LINGER_S = 1.0  # how long a refused connection may take to read its 503 and hang up
ACCEPT_BATCH = 64  # connections accepted per wake-up, so a flood of connections cannot starve the loop
WORKERS = 4  # threads per server for calls into the show (snapshots, control messages, JPEG encoding)
_ACCEPT_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class HttpLimits(BaseModel):
    """The connection rules a server's settings table shares (``[health]``, ``[web]``, ``[oscquery]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Connections held at once, all clients together (also capped by the open-file limit). When full, a newcomer
    # takes the place of the oldest connection still sending its request; when all are being answered it gets 503.
    max_connections: Annotated[int, Field(ge=1, le=65536)] = 1024
    # Connections from one address at once; more get 503 at once, so one client cannot take every place.
    max_per_client: Annotated[int, Field(ge=1, le=65536)] = 64
    # Seconds for a whole request, headers and body, from the connection (or the previous answer): not per read.
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0


# -- request checks --------------------------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    """bool: ``host`` is a loopback address or ``localhost``, in any letter case."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def http_url(host: str, port: int, path: str = "/") -> str:
    """str: the URL of an HTTP endpoint listening on ``host``:``port`` (IPv6 literals bracketed), for logs."""
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}{path}"


def _host_name(host: str) -> str:
    """The name in a Host header (or an Origin's netloc), without its port, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_refusal(request: web.BaseRequest, bound_host: str) -> str | None:
    """Why a request must be refused for its Host, or None. A server bound to loopback answers only requests that
    name loopback (``127.0.0.1``, ``localhost``, ``[::1]``, any letter case): a DNS-rebinding web site reaches
    127.0.0.1 under its own name, which the visitor's browser sends as the Host."""
    if not is_loopback(bound_host):
        return None
    host = request.headers.get("Host", "")
    if host and not is_loopback(_host_name(host)):
        return "a request for another host name (a web site rebinding its name to this machine?)"
    return None


def _origin_key(origin: str) -> str:
    parts = urlsplit(origin.strip().lower())
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else origin.strip().lower()


def same_origin(request: web.BaseRequest) -> bool:
    """bool: the request carries no Origin (not sent by another site's page), or its Origin is this server's own
    (the Host the browser addressed), compared without regard to letter case."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin.strip().lower())
    return parts.scheme in ("http", "https") and parts.netloc == request.headers.get("Host", "").strip().lower()


def allowed_origin(request: web.BaseRequest, allow: tuple[str, ...]) -> tuple[bool, str | None]:
    """(allowed, the ``Access-Control-Allow-Origin`` to answer or None) for a request's Origin: no Origin (a native
    client) and this server's own are allowed with no header; an Origin listed in ``allow`` (``"*"``: any) is
    allowed and named in the header; any other is refused."""
    origin = request.headers.get("Origin")
    if origin is None or same_origin(request):
        return True, None
    if "*" in allow:
        return True, "*"
    if _origin_key(origin) in {_origin_key(a) for a in allow}:
        return True, origin.strip()
    return False, None


def token_ok(request: web.BaseRequest, token: str) -> bool:
    """bool: ``token`` is empty or the request carries it, as ``?token=``, ``Authorization: Bearer`` or
    ``X-Token`` (compared in constant time)."""
    if not token:
        return True
    given = request.query.get("token", "")
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    given = request.headers.get("X-Token", given)
    return hmac.compare_digest(given.encode(), token.encode())


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request's body, at most ``limit`` bytes (413 past it), whole before the request's deadline (408)."""
    length = request.content_length
    if length is not None and length > limit:
        raise HttpError(413, detail=f"a body of at most {limit} bytes")
    conn = request.protocol
    deadline = getattr(conn, "body_deadline", None) or asyncio.get_running_loop().time() + 10.0
    buf = bytearray()
    try:
        async with asyncio.timeout_at(deadline):
            while True:
                chunk = await request.content.read(limit + 1 - len(buf))
                if not chunk:
                    return bytes(buf)
                buf += chunk
                if len(buf) > limit:
                    raise HttpError(413, detail=f"a body of at most {limit} bytes")
    except TimeoutError:
        if hasattr(conn, "owner"):
            conn.owner.count("timed_out")
        raise HttpError(408, detail="the whole request must arrive in time") from None


# -- the server ------------------------------------------------------------------------------------------------------

def _fd_cap(wanted: int) -> int:
    """``wanted`` connections, or fewer where the open-file soft limit would not leave room for the rest."""
    try:
        import resource  # noqa: PLC0415 - POSIX only

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return wanted
    if soft == resource.RLIM_INFINITY:
        return wanted
    return min(wanted, max(8, (soft - FD_RESERVE) // FD_SHARE))


class HttpServer:
    """One HTTP/websocket server on its own asyncio loop thread, holding connections to :class:`HttpLimits`.

    ``handler`` answers each request (on the loop: call into the show with :meth:`call`); ``tasks`` are coroutine
    functions run beside the server for its lifetime (a pump). The server's thread ends, and ``alive`` turns False
    for the part's supervisor to restart it, if a task fails or the loop dies."""

    def __init__(self, name: str, host: str, port: int, limits: HttpLimits, handler: Handler,
                 tasks: tuple[Callable[[], Awaitable[None]], ...] = (), label: str = "") -> None:
        self.name = name  # the thread's name, in log lines
        self.label = label or name  # what a user calls it ("health endpoint"), in the start-up error
        self.host, self._want_port, self._port = host, port, port
        self.limits = limits
        self.timeout_s = limits.request_timeout_s
        self.max_connections = limits.max_connections
        self._handler = handler
        self._tasks = tasks
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._ready = threading.Event()  # set while the loop serves
        self._settled = threading.Event()  # set once the thread serves, or has ended trying
        self._conns: dict[Connection, None] = {}  # oldest first
        self._per_client: dict[str, int] = {}
        self._lingering: dict[socket.socket, asyncio.TimerHandle] = {}
        self._last_accept_warning = -math.inf
        self.counts = {"accepted": 0, "answered": 0, "refused_busy": 0, "refused_client": 0, "evicted": 0,
                       "timed_out": 0, "accept_errors": 0}

    # -- the part's side (any thread) -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """int: the port listened on (the chosen one when asked for 0; after stop(), the last one), or the
        configured one before start()."""
        return self._port

    @property
    def alive(self) -> bool:
        """bool: the server's loop thread is serving."""
        thread = self._thread
        return thread is not None and thread.is_alive() and self._ready.is_set()

    def stats(self) -> dict[str, Any]:
        """Connections open now and the caps, and counters: accepted, answered, refused_busy (all being answered),
        refused_client (too many from one address), evicted (slow ones cut for a newcomer), timed_out (a request or
        an answer not through in time), accept_errors (out of descriptors)."""
        return {"open": len(self._conns), "max_connections": self.max_connections,
                "max_per_client": self.limits.max_per_client, **dict(self.counts)}

    def start(self) -> None:
        """Bind and serve on a thread of its own; OSError naming host:port when it cannot listen there."""
        thread = self._thread
        if thread is not None and not thread.is_alive():
            self.stop()  # it ended on its own: close what it left before serving again
        with self._lock:
            if self._thread is not None:
                return
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            try:
                sock = socket.create_server((self.host, self._want_port), family=family, backlog=BACKLOG)
            except OSError as e:
                raise OSError(e.errno, f"{self.label} cannot listen on {self.host}:{self._want_port}: "
                                       f"{e.strerror or e}") from e
            sock.setblocking(False)
            self._sock = sock
            self._port = sock.getsockname()[1]
            self.max_connections = _fd_cap(self.limits.max_connections)
            if self.max_connections < self.limits.max_connections:
                log.info("%s: at most %d connections at once (the open-file limit leaves no room for %d)",
                         self.name, self.max_connections, self.limits.max_connections)
            self._ready.clear()
            self._settled.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._settled.wait(30)

    def stop(self) -> None:
        """Stop serving, close every connection and the socket; safe to call more than once, or before start()."""
        with self._lock:
            thread, loop, stopping = self._thread, self._loop, self._stopping
            self._thread = None
        if thread is None:
            return
        if loop is not None and stopping is not None:
            try:
                loop.call_soon_threadsafe(stopping.set)
            except RuntimeError:
                pass  # the loop has ended already
        thread.join(10)
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        """Run a blocking call into the show (a snapshot, a control message) on one of the server's worker threads."""
        assert self._loop is not None and self._executor is not None
        return self._loop.run_in_executor(self._executor, fn, *args)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The server's event loop while it runs (for ``call_soon_threadsafe`` from the show's threads)."""
        return self._loop

    # -- the loop thread ------------------------------------------------------------------------------------------
    def loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def count(self, key: str) -> None:
        self.counts[key] += 1

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException:  # noqa: BLE001 - the thread ends: `alive` is False and the part is restarted
            log.exception("%s: the server's loop ended", self.name)
        finally:
            self._settled.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop, self._stopping = loop, asyncio.Event()
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix=f"{self.name}-call")
        self._conns.clear()
        self._per_client.clear()
        from .http_conn import ConnectionServer  # noqa: PLC0415 - aiohttp, once a server starts

        self._server = ConnectionServer(self._wrap, self, keepalive_timeout=self.timeout_s * 2 + 1, access_log=None,
                               max_line_size=MAX_URL, max_field_size=MAX_FIELD, max_headers=MAX_HEADERS,
                               lingering_time=1.0)
        assert self._sock is not None
        sock = self._sock
        loop.add_reader(sock.fileno(), self._accept)
        tasks = [asyncio.create_task(t(), name=f"{self.name}-{t.__name__}") for t in self._tasks]
        stopped = asyncio.create_task(self._stopping.wait())
        self._ready.set()
        self._settled.set()
        try:
            done, _ = await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in done if t is not stopped]
            for t in failed:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            if failed:
                raise RuntimeError(f"{failed[0].get_name()} ended")
        finally:
            self._ready.clear()
            loop.remove_reader(sock.fileno())
            for t in (*tasks, stopped):
                t.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
            await self._server.shutdown(1.0)
            for s in list(self._lingering):
                self._unlinger(s)
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _accept(self) -> None:
        """Accept what is waiting (a batch), each held to the caps before aiohttp sees it."""
        assert self._sock is not None and self._loop is not None
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:
                if e.errno in _ACCEPT_ERRNOS:
                    self._out_of_descriptors(e)
                    return
                log.warning("%s: accept failed: %s", self.name, e)
                return
            if not self._admit(sock, str(addr[0])):
                return  # it took a slow one's place: that socket closes on the loop's next round, then go on

    def _out_of_descriptors(self, e: OSError) -> None:
        """No descriptor for a new connection: make room (the oldest slow connection), pause accepting briefly, and
        warn at most once a minute with the count."""
        assert self._loop is not None and self._sock is not None
        self.count("accept_errors")
        now = time.monotonic()
        if now - self._last_accept_warning > 60:
            self._last_accept_warning = now
            log.warning("%s cannot accept a connection: %s (open files: raise the limit); %d so far", self.name,
                        e.strerror or e, self.counts["accept_errors"])
        self._evict_one()
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)
        self._loop.call_later(0.05, self._resume_accepting, self._sock)

    def _resume_accepting(self, sock: socket.socket) -> None:
        if self._sock is sock and self._loop is not None and sock.fileno() >= 0:
            self._loop.add_reader(sock.fileno(), self._accept)

    def _admit(self, sock: socket.socket, client: str) -> bool:
        """Hold a new connection to the caps; False when it took an evicted one's place (whose descriptor is freed
        only on the loop's next round, so the accept batch ends there and the process never holds more)."""
        if self._per_client.get(client, 0) >= self.limits.max_per_client:
            self.count("refused_client")
            self._refuse(sock, "too many connections",
                         f"at most {self.limits.max_per_client} connections from one address")
            return True
        evicted = False
        if len(self._conns) >= self.max_connections:
            evicted = self._evict_one()
            if not evicted:
                self.count("refused_busy")
                self._refuse(sock, "busy", f"more than {self.max_connections} connections; try again")
                return True
        sock.setblocking(False)
        conn = self._server.connection(client)
        self._conns[conn] = None
        self._per_client[client] = self._per_client.get(client, 0) + 1
        self.count("accepted")
        assert self._loop is not None
        self._loop.create_task(self._attach(conn, sock))
        return not evicted

    async def _attach(self, conn: Connection, sock: socket.socket) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: conn, sock)
        except OSError:
            self.release(conn)
            sock.close()

    def _evict_one(self) -> bool:
        """Close the oldest connection still sending its request (a slow or silent client); False if none is."""
        for conn in self._conns:
            if conn.state == READING:
                conn.evicted = True
                self.release(conn)
                self.count("evicted")
                conn.force_close()
                return True
        return False

    def release(self, conn: Connection) -> None:
        """A connection's place is free (closed, or evicted: its socket closes on the next round)."""
        if conn in self._conns:
            del self._conns[conn]
            n = self._per_client.get(conn.client, 1) - 1
            if n > 0:
                self._per_client[conn.client] = n
            else:
                self._per_client.pop(conn.client, None)

    def _refuse(self, sock: socket.socket, error: str, detail: str) -> None:
        """Answer 503 at once and close: after the client has read it where there is room to wait (a second at most,
        draining what it sends, so the answer is not lost to a reset), or at once."""
        try:
            sock.setblocking(False)
            sock.send(raw_answer(503, error, detail))
        except OSError:
            pass
        if len(self._lingering) >= min(MAX_LINGERING, max(1, self.max_connections // 4)):
            sock.close()
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            sock.close()
            return
        assert self._loop is not None
        self._loop.add_reader(sock.fileno(), self._drain, sock)
        self._lingering[sock] = self._loop.call_later(LINGER_S, self._unlinger, sock)

    def _drain(self, sock: socket.socket) -> None:
        try:
            while sock.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._unlinger(sock)

    def _unlinger(self, sock: socket.socket) -> None:
        handle = self._lingering.pop(sock, None)
        if handle is None:
            return
        handle.cancel()
        if self._loop is not None and sock.fileno() >= 0:
            self._loop.remove_reader(sock.fileno())
        sock.close()

    async def _wrap(self, request: web.BaseRequest) -> web.StreamResponse:
        """Every request: the part's handler, its HttpError as JSON, any other failure as a JSON 500."""
        try:
            return await self._handler(request)
        except HttpError as e:
            resp = json_error(e.code, e.error, **e.extra)
            if e.code in (408, 413):
                resp.force_close()
            return resp
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as e:  # noqa: BLE001 - one request fails, the server goes on
            log.warning("%s: handling %s %s failed: %s: %s", self.name, request.method, redact(request.path),
                        type(e).__name__, redact(str(e)))
            log.debug("%s: the failure", self.name, exc_info=True)
            return json_error(500, "internal error")
        finally:
            answered = getattr(request.protocol, "answered", None)
            if answered is not None:
                answered()
