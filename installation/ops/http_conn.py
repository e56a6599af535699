"""One connection of an :class:`~installation.ops.http.HttpServer`: aiohttp's protocol with the request deadline,
the connection's place in the server's caps, JSON for the errors aiohttp answers itself, and redacted access lines.

Imported when a server starts (aiohttp is not needed to read the config).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, Protocol

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestHandler

from .http_answers import (HANDLING, MAX_FIELD, MAX_HEADERS, MAX_URL, READING, WRITING, Handler, json_error,
                           logged_target, raw_answer)

log = logging.getLogger("installation.ops.http")


class Owner(Protocol):
    """What a connection reads of its server (an :class:`~installation.ops.http.HttpServer`, which imports this
    module when it starts)."""

    name: str
    timeout_s: float

    def loop_time(self) -> float: ...

    def count(self, key: str) -> None: ...

    def release(self, conn: "Connection") -> None: ...
_METHOD_LINE = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP/(\d+)\.(\d+)\r?$", re.M)  # to tell 505 from 400
_TOKEN_START = re.compile(rb"^[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")  # a method llhttp does not know: 501, not 400


class Connection(RequestHandler):
    """aiohttp's protocol for one connection, with the request deadline and its place in the server's counts.

    States: reading (a request is arriving: the deadline cuts it off), handling (the handler runs: its own time),
    writing (the answer is going out: the client must take it before the deadline)."""

    def __init__(self, manager: web.Server, *, owner: Owner, client: str, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.owner = owner
        self.client = client
        self.state = READING
        self.deadline = owner.loop_time() + owner.timeout_s
        self.body_deadline = self.deadline
        self.evicted = False
        self._bytes = False  # a byte of the next request has come
        self._head = b""  # the start of the request (to tell an unknown method or version from garbage)
        self._request_head = b""
        self._timer: asyncio.TimerHandle | None = None
        self._begun = 0.0

    # -- the deadline ---------------------------------------------------------------------------------------------
    def _set(self, state: str, deadline: float | None = None) -> None:
        """Enter ``state``; reading and writing run against the deadline (a new one when given), handling does not."""
        self.state = state
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self.deadline = deadline
        if state != HANDLING:
            self._timer = self._loop.call_at(self.deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or self.state == HANDLING:
            return
        if self.state == WRITING:  # the client does not take its answer
            self.owner.count("timed_out")
            transport.abort()
            return
        if self._bytes:  # a request that did not arrive whole in time
            self.owner.count("timed_out")
            transport.write(raw_answer(408, "request timeout",
                                        f"the whole request must arrive within {self.owner.timeout_s:g} s"))
        self.force_close()  # flushes the 408 (if any), then closes

    def begun(self) -> None:
        """A request's headers are in: the handler runs (its body must still arrive by the same deadline)."""
        self.body_deadline = self.deadline
        self._request_head, self._head = self._head, b""  # kept for handle_error (an unparsable request)
        self._bytes = False
        self._begun = self.owner.loop_time()
        self._set(HANDLING)

    def answered(self) -> None:
        """The handler has returned: the answer goes out, and must be taken within ``request_timeout_s``."""
        self._set(WRITING, self.owner.loop_time() + self.owner.timeout_s)

    # -- aiohttp's protocol ---------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.evicted:
            self.force_close()
            return
        self._set(READING)  # the deadline counts from the accept

    def data_received(self, data: bytes) -> None:
        if self.state == READING and data:
            self._bytes = True
            if len(self._head) < 256:
                self._head += data[: 256 - len(self._head)]
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.owner.release(self)
        super().connection_lost(exc)

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        """Called by aiohttp once an answer is written: count it, log it (token redacted), wait for the next."""
        self.owner.count("answered")
        if log.isEnabledFor(logging.DEBUG):
            log.debug('%s %s "%s %s" %d %.1f ms', self.owner.name, self.client, request.method, logged_target(request),
                      response.status, (self.owner.loop_time() - self._begun) * 1000)
        if self.transport is not None:  # kept alive: the next request has its own deadline
            self._set(READING, self.owner.loop_time() + self.owner.timeout_s)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request it cannot parse (or a handler that failed), as JSON; the request's bytes are
        never logged or echoed (they may hold a token)."""
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was sent already")
        code, detail = status, None
        if isinstance(exc, LineTooLong):
            code = 414 if exc.args[1:2] == (MAX_URL,) else 431
            detail = (f"a request line of at most {MAX_URL} bytes" if code == 414
                      else f"header lines of at most {MAX_FIELD} bytes")
        elif exc is not None and "too many headers" in str(getattr(exc, "message", "")).lower():
            code, detail = 431, f"at most {MAX_HEADERS} header lines"
        elif isinstance(exc, BadHttpMethod):
            if _TOKEN_START.match(self._request_head):
                code, detail = 501, "GET, HEAD or POST"
        elif isinstance(exc, BadStatusLine):
            line = _METHOD_LINE.match(self._request_head.split(b"\n", 1)[0])
            if line and line.group(1) != b"1":
                code, detail = 505, "HTTP/1.0 or HTTP/1.1"
        if code == 500:
            log.warning("%s: a request from %s failed: %s", self.owner.name, self.client,
                        type(exc).__name__ if exc is not None else "unknown")
            log.debug("%s: the failure", self.owner.name, exc_info=exc)
        else:
            log.debug("%s: %s answered %d (%s)", self.owner.name, self.client, code, type(exc).__name__)
        resp = json_error(code, None, **({"detail": detail} if detail else {}))
        resp.force_close()
        return resp


class ConnectionServer(web.Server):
    """aiohttp's low-level server, making this module's connections and marking each request's start."""

    def __init__(self, handler: Handler, owner: Owner, **kwargs: Any) -> None:
        super().__init__(handler, request_factory=self._request, handler_cancellation=True, **kwargs)
        self._owner = owner
        self._conn_kwargs = kwargs

    def connection(self, client: str) -> Connection:
        return Connection(self, loop=self._loop, owner=self._owner, client=client, **self._conn_kwargs)

    def _request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        if isinstance(protocol, Connection):
            protocol.begun()
        return web.BaseRequest(message, payload, protocol, writer, task, self._loop)
