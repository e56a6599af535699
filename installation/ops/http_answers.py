"""What the show's HTTP surfaces answer, below the server (:mod:`installation.ops.http`) and its connections
(:mod:`installation.ops.http_conn`), which both use it: strict JSON answers and errors, the raw answer for a
connection refused before aiohttp parses it, log lines without tokens, the request limits and a connection's states.
aiohttp is imported only when an answer is made (it takes a second at load; a config is read without it).
"""

from __future__ import annotations

import json
import math
import re
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from aiohttp import web

Handler = Callable[["web.BaseRequest"], Awaitable["web.StreamResponse"]]

MAX_URL = 8192  # bytes of a request line (414 past it)
MAX_FIELD = 8190  # bytes of a header line (431 past it); differs from MAX_URL so the two errors can be told apart
MAX_HEADERS = 100  # header lines in a request (431 past them), as http.server had
READING, HANDLING, WRITING = "reading", "handling", "writing"  # a connection's states (ops/http_conn.py)
_TOKEN_IN_URL = re.compile(r"(?i)([?&;]token=)[^&;#\s]*")


def clean_json(obj: Any) -> Any:
    """Make ``obj`` strict JSON: non-finite floats become null, numpy scalars plain numbers, the rest strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    item = getattr(obj, "item", None)  # numpy scalar, 0-d tensor
    if callable(item):
        try:
            return clean_json(item())
        except Exception:  # noqa: BLE001 - fall through to str
            pass
    return str(obj)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as compact strict JSON (see :func:`clean_json`)."""
    return json.dumps(clean_json(obj), allow_nan=False, separators=(",", ":")).encode()


def respond(code: int, body: bytes, content_type: str = "application/json",
            headers: dict[str, str] | None = None) -> web.Response:
    """An answer that no cache keeps; HEAD gets its headers only (aiohttp drops the body). ``content_type`` may
    name a charset (``text/html; charset=utf-8``)."""
    from aiohttp import web

    ctype, _, params = content_type.partition(";")
    charset = params.strip()[len("charset="):] if params.strip().lower().startswith("charset=") else None
    return web.Response(status=code, body=body, content_type=ctype.strip(), charset=charset,
                        headers={"Cache-Control": "no-store", "Server": "installation", **(headers or {})})


def json_response(code: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    """``obj`` as a JSON answer with status ``code``."""
    return respond(code, json_bytes(obj), headers=headers)


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase.lower()
    except ValueError:
        return "error"


def json_error(code: int, error: str | None = None, **extra: Any) -> web.Response:
    """The JSON error every surface answers: ``{"error": ..., "code": ..., **extra}``."""
    return json_response(code, {"error": error or _phrase(code), "code": code, **extra})


def raw_answer(code: int, error: str, detail: str) -> bytes:
    """A whole JSON answer as bytes, for a connection refused or cut off before aiohttp has a request for it."""
    body = json_bytes({"error": error, "code": code, "detail": detail})
    return (f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n").encode() + body


class HttpError(Exception):
    """Raised by a handler (or :func:`read_body`) to answer ``code`` with a JSON body and close the connection."""

    def __init__(self, code: int, error: str | None = None, **extra: Any) -> None:
        super().__init__(code, error)
        self.code, self.error, self.extra = code, error, extra


def redact(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced by ``***`` (for log lines)."""
    return _TOKEN_IN_URL.sub(r"\1***", text)


def logged_target(request: web.BaseRequest) -> str:
    """The request's path and query as a log line may show them: a ``token`` parameter's value (however its name is
    spelled or escaped) as ``***``."""
    if not request.query_string:
        return request.path
    query = "&".join(f"{k}={'***' if k.lower() == 'token' else v}" for k, v in request.query.items())
    return f"{request.path}?{query}"
