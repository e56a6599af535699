"""The web control page: scenes, a fader per parameter, prompt slots, freeze/blackout/panic, health figures and a
low-resolution live preview, for a phone or a laptop on the venue's network.

Served by an :class:`~installation.ops.http.HttpServer` (aiohttp on a loop thread of its own: slow or idle
connections cost no thread; deadlines, per-client caps and JSON errors as ``ops/http.py`` has them), loopback by
default; bound to any other interface it refuses to start without a ``token`` (start-up error). Every request then
needs the token, as ``?token=`` (the address the phone opens), an ``Authorization: Bearer`` header (what the page's
script sends) or ``X-Token``; no log line shows it. Controls go through the same control surface as OSC
(``inputs/surface.py``: range checks, the prompt guard, structural-event coalescing, counters), as transport ``web``.

The preview is a presented-frame sink (``ctx.presented``): it asks for a frame at most ``preview_fps`` times a
second and only while someone watched within the last few seconds, so with no viewer the loop reads nothing back.
Frames are scaled and JPEG-encoded on one of the server's worker threads, once per frame however many watch.

Endpoints: ``GET /`` (the page), ``GET /api/state`` (scenes, parameters with ranges and targets, health figures),
``POST /api/control`` (``{"address": "/param/x", "args": [0.5]}``, any control-surface address), and
``GET /preview.jpg?after=<n>`` (the newest frame, waiting up to a second for one newer than frame ``n``),
``GET /thumb/<scene>.jpg`` (the scene grid's picture: see :meth:`WebPage.thumb`) and ``/api/ws``; HEAD too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable

from pydantic import Field, model_validator

from ..bus import ParamBus, latest_values
from ..inputs.prompt_guard import PromptGuardSettings
from ..parts import PartContext, register
from ..render.sinks import LatestFrame
from .http import (HttpError, HttpLimits, HttpServer, host_refusal, http_url, is_loopback, json_error, json_response,
                   read_body, respond, same_origin, token_ok)

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["PreviewSink", "WebPage", "WebSettings", "is_loopback"]

MAX_BODY = 8192  # bytes of a control request
VIEWER_IDLE_S = 5.0  # the preview stops reading frames back this long after the last viewer asked for one
ARCHIVE_THUMBS_S = 60.0  # the archive's thumbnails for the scene grid are read again at most this often
MAX_STILL_BYTES = 4 << 20  # a scene's still file is served up to this size
PREVIEW_WAIT_S = 1.0  # how long /preview.jpg waits for a frame newer than the one the viewer has
GATE_HOLD_S = 3.0  # a gate seen in the journal wins over the runtime's report this long (the report lags)
WS_PERIOD_S = 0.05  # the websocket pump's round: parameter changes at most 20 times a second
WS_QUEUE = 64  # messages waiting for one websocket; a page that does not read loses them, counted
_HEALTH_KEYS = ("status", "scene", "present_fps", "decoder_fps", "frames_presented", "frames_decoded",
                "frames_dropped", "uptime_s", "rss_mb", "vram_mb", "open")


class WebSettings(HttpLimits):
    """``[web]``: the control page (off by default; loopback unless told; a token when bound elsewhere), and the
    connection rules of ``ops/http.py``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9090
    token: str = Field(default="", repr=False,
                       description="required on every request when set; must be set unless loopback")
    preview_fps: Annotated[float, Field(ge=0.0, le=30.0)] = 4.0
    preview_width: Annotated[int, Field(ge=16, le=1920)] = 320
    jpeg_quality: Annotated[int, Field(ge=10, le=100)] = 70
    prompt_slots: Annotated[int, Field(ge=0, le=64)] = 4
    prompt: PromptGuardSettings = PromptGuardSettings()
    structural_interval: Annotated[float, Field(ge=0.0, le=10.0)] = 0.25
    exclude_prefixes: tuple[str, ...] = ("audio.", "camera.", "midi.", "link.")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "WebSettings":
        if self.enabled and not is_loopback(self.host) and len(self.token) < 8:
            raise ValueError(f"host {self.host!r} is not loopback: set a token of at least 8 characters")
        return self


class PreviewSink(LatestFrame):
    """A presented-frame sink that wants a frame only while someone watches, at most ``max_fps`` a second (on the
    monotonic clock, so a fixed-step render is not read back every frame either). ``on_frame`` (set by the server)
    is called from the loop's thread after each frame, to wake the viewers waiting on the server's own loop."""

    def __init__(self, max_fps: float) -> None:
        super().__init__(max_fps)
        self.watched_until = 0.0
        self.numbered: tuple[int, Any] = (0, None)
        self.on_frame: Callable[[], None] | None = None
        self._due = 0.0

    def watch(self) -> None:
        self.watched_until = time.monotonic() + VIEWER_IDLE_S

    def wants(self, t: float | None) -> bool:
        now = time.monotonic()
        return self.period > 0 and now < self.watched_until and now >= self._due

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        self._due = time.monotonic() + self.period
        self.frame = (rgb, size, t)
        self.taken += 1
        self.numbered = (self.taken, self.frame)  # one reference, replaced whole: a reader sees a matching pair
        on_frame = self.on_frame
        if on_frame is not None:
            on_frame()


class WebPage:
    """The control page's server; a part (``start``/``stop``/``alive``/``stats``)."""

    def __init__(self, settings: WebSettings, bus: ParamBus, scenes: Callable[[], Any],
                 snapshot: Callable[[], dict[str, Any]], presented: Any = None, base_dir: str | None = None,
                 caps: Any = None, scene_info: Callable[[], Any] = dict,
                 archive: Callable[[], Any] | None = None) -> None:
        from ..inputs.osc import OscSettings
        from ..inputs.surface import ControlSurface

        self.settings = settings
        self.bus = bus
        self.scenes = scenes
        self.snapshot = snapshot
        surface_settings = OscSettings(prompt=settings.prompt, prompt_slots=settings.prompt_slots,
                                       structural_interval=settings.structural_interval,
                                       exclude_prefixes=settings.exclude_prefixes)
        self.surface = ControlSurface(surface_settings, bus, scenes, base_dir=base_dir, caps=caps)
        self.preview = PreviewSink(settings.preview_fps)
        self._presented = presented
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._jpeg_lock = threading.Lock()
        self._control_lock = threading.Lock()
        self.scene_info = scene_info
        self._thumbs: dict[str, bytes] = {}  # scene -> the JPEG of a preview frame it showed (the scene grid)
        self._archive = archive  # () -> the archive file (or None): each scene's newest archived thumbnail
        self._archived: tuple[float, dict[str, bytes]] = (-math.inf, {})  # (when read, scene -> JPEG)
        self._sockets: set[Any] = set()  # live websockets (on the server's loop)
        self._gates: dict[str, tuple[bool, float]] = {}  # blackout/frozen from the journal: (state, when)
        self._http = HttpServer("web-page", settings.host, settings.port, settings, self._handle,
                                tasks=(self._pump,), label="web page")
        self._frame_event: asyncio.Event | None = None  # on the server's loop: set (and replaced) on each frame
        self.counts = {"requests": 0, "unauthorized": 0, "cross_site": 0, "previews": 0, "ws_clients": 0,
                       "ws_sent": 0, "ws_dropped": 0}
        self._count_lock = threading.Lock()

    # -- part ----------------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._http.port

    @property
    def http(self) -> HttpServer:
        """HttpServer: the server itself (its connection figures: ``http.stats()``)."""
        return self._http

    @property
    def url(self) -> str:
        return http_url(self.settings.host, self.port)

    @property
    def alive(self) -> bool:
        return self._http.alive

    def start(self) -> None:
        if self._http.alive:
            return
        s = self.settings
        self._frame_event = None  # an event of an earlier loop cannot be awaited on the new one
        self._http.start()
        self.preview.on_frame = self._wake_viewers
        if self._presented is not None and self.preview not in self._presented.sinks:
            self._presented.add(self.preview)
        log.info("web control page on %s%s", self.url, " (token required)" if s.token else "")

    def stop(self) -> None:
        self.preview.on_frame = None
        self._http.stop()
        self._frame_event = None

    def stats(self) -> dict[str, Any]:
        with self._count_lock:
            out: dict[str, Any] = dict(self.counts)
        surface = self.surface.stats()
        http = self._http.stats()
        out.update(applied=surface["applied"], rejects=surface["rejects"], preview_frames=self.preview.taken,
                   connections=http)
        out["rejects"] = {**surface["rejects"], "unauthorized": out.pop("unauthorized"),
                          "busy": http["refused_busy"] + http["refused_client"]}
        return out

    def count(self, key: str) -> None:
        with self._count_lock:
            self.counts[key] += 1

    # -- what the handlers ask ---------------------------------------------------------------------------------
    def cross_site(self, request: web.BaseRequest) -> str | None:
        """Why a request is one another web site made a visitor's browser send, or None. Served on loopback, the
        Host must be a loopback name (a DNS-rebinding site has its own name); a POST carrying an Origin must come
        from this page's own origin (a cross-site form or fetch to 127.0.0.1 carries the other site's)."""
        refusal = host_refusal(request, self.settings.host)
        if refusal:
            return refusal
        if request.method == "POST" and not same_origin(request):
            return "a request from another site's page (Origin)"
        return None

    def state(self) -> dict[str, Any]:
        """What the page shows: scenes (with a thumbnail when one was seen), the playing scene and the parameters
        that act in it, grouped (motion, look, palette, prompts, inputs; the rest as ``other``), every parameter's
        range, label and target, whether the scene takes prompts, the live state (blackout, freeze, prompts),
        presets, prompt slots and health figures."""
        from ..scene_params import grouped, group_of, label

        targets = self.bus.targets()
        health = self.snapshot() or {}
        scene = health.get("scene")
        info = (self.scene_info() or {}).get(scene) or {}
        acting = [n for n in info.get("params", ()) if not n.startswith(self.settings.exclude_prefixes)]
        params = [{"name": p.name, "label": label(p), "group": group_of(p.name), "type": p.type, "min": p.min,
                   "max": p.max, "default": p.default, "doc": p.doc, "value": targets.get(p.name, p.default),
                   "acting": p.name in acting}
                  for p in sorted(self.bus.specs.values(), key=lambda p: p.name)
                  if not p.name.startswith(self.settings.exclude_prefixes)]
        groups = grouped(acting, self.bus.specs)
        rest = [p["name"] for p in params if not p["acting"]]
        if rest:
            groups["other"] = rest
        notes = self.bus.notes()
        return {"scenes": [{"name": n, "thumb": self.thumb(n) is not None} for n in self.scenes()], "scene": scene,
                "description": info.get("description", ""), "params": params, "groups": groups,
                "prompts_supported": bool(info.get("prompts", False)), "live": self.live(health),
                "presets": notes.get("presets") if isinstance(notes.get("presets"), list) else None,
                "preset": notes.get("preset"),
                "prompt_slots": self.settings.prompt_slots, "preview": self.settings.preview_fps > 0,
                "search": self.surface.caps.why_not("/seek") is None,
                "health": {k: health.get(k) for k in _HEALTH_KEYS if k in health}}

    def live(self, health: dict[str, Any] | None = None) -> dict[str, Any]:
        """The show's state besides the parameters: scene, blackout, freeze, the prompts playing. The gates follow
        the bus journal at once (any transport, the schedule) and the runtime's own report once it is newer."""
        if health is None:
            health = self.snapshot() or {}
        live = dict(health.get("live") or {})
        now = time.monotonic()
        for key, (state, when) in list(self._gates.items()):
            if now - when < GATE_HOLD_S:
                live[key] = state  # the runtime's report (about once a second) may not have caught up yet
        live.setdefault("blackout", False)
        live.setdefault("frozen", False)
        live.setdefault("prompts", [])
        live["scene"] = health.get("scene")
        return live

    def control(self, address: str, args: list[Any], host: str) -> tuple[bool, str]:
        """Apply one control-surface message from the page; (applied, reject reason)."""
        from ..inputs.surface import Sender

        with self._control_lock:  # one at a time, so the counters before and after are this message's
            before = self.surface.stats()
            self.surface.apply(address, args, Sender("web", host))
            self.surface.release_held()
            after = self.surface.stats()
        if after["applied"] > before["applied"]:
            return True, ""
        reasons = [r for r, n in after["rejects"].items() if n > before["rejects"].get(r, 0)]
        return False, reasons[0] if reasons else "rejected"

    def _jpeg_of(self, seq: int, frame: Any) -> tuple[int, bytes]:
        with self._jpeg_lock:  # once per frame, however many watch
            if self._jpeg[0] != seq:
                self._jpeg = (seq, self._encode(frame))
                scene = (self.snapshot() or {}).get("scene")
                if scene and self._jpeg[1]:
                    self._thumbs[str(scene)] = self._jpeg[1]  # the scene grid shows what each scene looked like
            return self._jpeg

    def thumb(self, scene: str) -> bytes | None:
        """A scene's picture for the grid: the preview frame it showed in this run, else the newest thumbnail the
        archive kept of it (earlier runs included; re-read at most once a minute), else its ``still`` file."""
        with self._jpeg_lock:
            jpeg = self._thumbs.get(scene)
        if jpeg is not None:
            return jpeg
        when, archived = self._archived
        if self._archive is not None and time.monotonic() - when > ARCHIVE_THUMBS_S:
            archived = self._read_archived()
            self._archived = (time.monotonic(), archived)
        if scene in archived:
            return archived[scene]
        still = ((self.scene_info() or {}).get(scene) or {}).get("still")
        if still:
            try:
                return Path(still).read_bytes()[:MAX_STILL_BYTES]
            except OSError:
                return None
        return None

    def _read_archived(self) -> dict[str, bytes]:
        from ..archive.store import Store

        try:
            path = self._archive()
            if path is None or not Path(path).is_file():
                return {}
            store = Store(path, readonly=True)
            try:
                return store.thumbs()
            finally:
                store.close()
        except (OSError, ValueError, sqlite3.Error) as e:  # a damaged or locked file: no archived thumbnails
            log.debug("web page: archived thumbnails unreadable (%s)", e)
            return {}

    def _wake_viewers(self) -> None:
        """From the loop's thread after each preview frame: wake the viewers waiting on the server's loop."""
        loop = self._http.loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._frame_arrived)
            except RuntimeError:
                pass  # the server's loop has ended (stopping, or dead until the supervisor restarts it)

    def _frame_arrived(self) -> None:
        """On the server's loop: wake the viewers waiting for a frame."""
        event, self._frame_event = self._frame_event, asyncio.Event()
        if event is not None:
            event.set()

    async def _newer(self, after: int) -> tuple[int, Any]:
        """(frame number, frame): a frame newer than ``after`` if one comes within :data:`PREVIEW_WAIT_S`, else the
        newest (None before the first)."""
        deadline = asyncio.get_running_loop().time() + PREVIEW_WAIT_S
        while self.preview.taken <= after:
            if self._frame_event is None:
                self._frame_event = asyncio.Event()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._frame_event.wait()
            except TimeoutError:
                break
        return self.preview.numbered

    def _encode(self, frame: tuple[bytes, tuple[int, int], Any]) -> bytes:
        import cv2
        import numpy as np

        rgb, (w, h), _ = frame
        img = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1, :, ::-1]  # GL rows bottom first; RGB -> BGR
        width = min(self.settings.preview_width, w)
        height = max(1, round(h * width / w))
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.settings.jpeg_quality])
        return buf.tobytes() if ok else b""

    # -- the server's handler (on its loop) ------------------------------------------------------------------------
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.count("requests")
        method, path = request.method, request.path
        if method not in ("GET", "HEAD", "POST"):
            return json_error(501, detail="GET, HEAD or POST")
        if not token_ok(request, self.settings.token):
            self.count("unauthorized")
            return json_response(401, {"error": "unauthorized", "detail": "this page needs its token (?token=...)"})
        refusal = self.cross_site(request)
        if refusal:
            self.count("cross_site")
            return json_response(403, {"error": "forbidden", "detail": refusal})
        get = method in ("GET", "HEAD")
        if get and path in ("/", "/index.html"):
            return respond(200, PAGE_BYTES, "text/html; charset=utf-8", {"X-Frame-Options": "DENY"})
        if get and path == "/api/state":
            return json_response(200, await self._http.call(self.state))
        if method == "POST" and path == "/api/control":
            return await self._control(request)
        if get and path == "/preview.jpg":
            return await self._preview(request)
        if get and path == "/api/ws":
            return await self._websocket(request)
        if get and path.startswith("/thumb/") and path.endswith(".jpg"):
            name = path[len("/thumb/"):-len(".jpg")]
            picture = await self._http.call(self.thumb, name) if name in self.scenes() else None
            if picture is None:
                return json_response(404, {"error": "no thumbnail yet", "path": path[:200]})
            return respond(200, picture, "image/png" if picture.startswith(b"\x89PNG") else "image/jpeg")
        return json_response(404, {"error": "not found", "path": path[:200]})

    async def _control(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            body = await read_body(request, MAX_BODY)
        except HttpError as e:
            if e.code != 413:
                raise
            self.surface.reject("malformed")
            return json_response(413, {"ok": False, "reason": "too_large"})
        try:
            msg = json.loads(body)
            address, args = msg["address"], msg.get("args", [])
            if not isinstance(address, str) or not isinstance(args, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self.surface.reject("malformed")
            return json_response(400, {"ok": False, "reason": "malformed"})
        ok, reason = await self._http.call(self.control, address, args, request.remote or "?")
        return json_response(200 if ok else 422, {"ok": ok, "reason": reason})

    # -- the live channel (a websocket under /api/) -------------------------------------------------------------
    async def _websocket(self, request: web.BaseRequest) -> web.StreamResponse:
        """The page's live channel: the whole state on connect (and again when the scene changes), then parameter
        changes (any source) and the live state as they happen; the page sends controls over it as
        ``{"address", "args"}`` and gets ``{"type": "ack", ...}`` back. The token and same-origin checks passed in
        ``_handle`` (a browser's websocket carries its Origin)."""
        from aiohttp import WSMsgType, web  # noqa: PLC0415 - with the server, not the config

        if request.headers.get("Origin") and not same_origin(request):
            self.count("cross_site")
            return json_response(403, {"error": "forbidden", "detail": "a websocket from another site's page"})
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_BODY)
        await ws.prepare(request)
        queue: asyncio.Queue[str] = asyncio.Queue(WS_QUEUE)
        self._sockets.add(queue)
        self.count("ws_clients")
        sender = asyncio.create_task(self._ws_sender(ws, queue))
        try:
            self._queue(queue, {"type": "state", **await self._http.call(self.state)})
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    msg = json.loads(message.data)
                    address, args = msg["address"], msg.get("args", [])
                    if not isinstance(address, str) or not isinstance(args, list):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    self.surface.reject("malformed")
                    self._queue(queue, {"type": "ack", "ok": False, "reason": "malformed"})
                    continue
                ok, reason = await self._http.call(self.control, address, args, request.remote or "?")
                self._queue(queue, {"type": "ack", "ok": ok, "reason": reason, "address": address[:256]})
        finally:
            self._sockets.discard(queue)
            sender.cancel()
        return ws

    def _queue(self, queue: asyncio.Queue[str], message: dict[str, Any]) -> None:
        try:
            queue.put_nowait(json.dumps(message, allow_nan=False, default=str))
        except asyncio.QueueFull:
            self.count("ws_dropped")
        except ValueError:  # a non-finite value: never sent as invalid JSON
            self.count("ws_dropped")

    async def _ws_sender(self, ws: Any, queue: asyncio.Queue[str]) -> None:
        while True:
            text = await queue.get()
            try:
                await ws.send_str(text)
                self.count("ws_sent")
            except (ConnectionError, RuntimeError):
                return

    async def _pump(self) -> None:
        """Push what changed to every open page: parameter targets (from the bus journal, any source, the newest
        of each per round), the live state when it changes, and the whole state when the scene or the presets
        change (a scene has its own controls)."""
        sub = self.bus.subscribe(maxlen=1024)
        last_live: Any = None
        last_shape: Any = None
        try:
            while True:
                await asyncio.sleep(WS_PERIOD_S if self._sockets else 0.5)
                changes = sub.drain()
                for c in changes:
                    if c.kind == "event":
                        self._gate_event(c.name, c.value)
                    elif c.kind == "note" and c.name == "seek.results" and isinstance(c.value, dict):
                        for q in list(self._sockets):  # /seek's results, thumbnails to tap (archive/seek.py)
                            self._queue(q, {"type": "seek", **c.value})
                values = latest_values(changes)
                if not self._sockets:
                    continue
                values = {k: v for k, v in values.items() if not k.startswith(self.settings.exclude_prefixes)
                          and isinstance(v, (int, float)) and math.isfinite(v)}
                if values:
                    for q in list(self._sockets):
                        self._queue(q, {"type": "params", "values": values})
                live = await self._http.call(self.live)
                notes = self.bus.notes()
                shape = (live.get("scene"), tuple(notes.get("presets") or ()), notes.get("preset"))
                if shape != last_shape:
                    last_shape = shape
                    state = await self._http.call(self.state)
                    for q in list(self._sockets):
                        self._queue(q, {"type": "state", **state})
                    last_live = state["live"]
                elif live != last_live:
                    last_live = live
                    for q in list(self._sockets):
                        self._queue(q, {"type": "live", "live": live})
        finally:
            sub.close()

    def _gate_event(self, kind: str, value: Any) -> None:
        now = time.monotonic()
        if kind == "blackout":
            self._gates["blackout"] = (bool(value), now)
        elif kind == "freeze":
            self._gates["frozen"] = (bool(value), now)
        elif kind == "panic":
            self._gates["blackout"] = (True, now)
            self._gates["frozen"] = (False, now)

    async def _preview(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            after = 0
        self.preview.watch()
        seq, frame = await self._newer(after)
        if frame is None:
            return json_response(503, {"error": "no frame yet"})
        seq, jpeg = await self._http.call(self._jpeg_of, seq, frame)
        self.count("previews")
        return respond(200, jpeg, "image/jpeg", {"X-Frame": str(seq)})


@register("web", table="web", settings=WebSettings, order=5)
def build(settings: WebSettings, ctx: PartContext) -> WebPage | None:
    """The web page part: on with ``[web] enabled = true``; its port is bound at start (a start-up error)."""
    if not settings.enabled:
        return None
    from ..inputs.surface import capabilities

    from ..archive.writer import archive_path

    archive = getattr(ctx.config, "archive", None)
    where = (lambda: archive_path(archive, ctx)) if archive is not None and archive.enabled else None
    return WebPage(settings, ctx.bus, ctx.scenes, ctx.snapshot, ctx.presented, str(ctx.base_dir),
                   capabilities(ctx.config), ctx.scene_info, where)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="theme-color" content="#000000">
<title>installation</title>
<style>
 :root { color-scheme: dark; font-family: system-ui, sans-serif; --bg: #000; --panel: #111; --line: #2a2a2a;
         --text: #ddd; --dim: #888; --accent: #d08a2e; --danger: #b3261e; }
 * { box-sizing: border-box; }
 body { margin: 0; background: var(--bg); color: var(--text); -webkit-tap-highlight-color: transparent; }
 header { position: sticky; top: 0; z-index: 2; background: #000d; backdrop-filter: blur(6px);
          padding: .5rem .6rem; border-bottom: 1px solid var(--line); }
 .top { display: flex; align-items: center; gap: .5rem; }
 #scene { font-weight: 600; font-size: 1.1rem; flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
 #dot { width: .7rem; height: .7rem; border-radius: 50%; background: #555; flex: none; }
 #dot.ok { background: #3a7; } #dot.degraded { background: #c80; } #dot.off { background: #733; }
 .gates { display: grid; grid-template-columns: 1fr 1fr 1fr; gap: .5rem; margin-top: .5rem; }
 button { font: inherit; font-size: 1rem; min-height: 3rem; padding: .5rem .8rem; border-radius: .6rem;
          border: 1px solid #333; background: #1a1a1a; color: var(--text); touch-action: manipulation; }
 button:active { background: #2a2a2a; }
 button.on { background: var(--accent); color: #000; border-color: var(--accent); font-weight: 600; }
 #panic { background: var(--danger); border-color: var(--danger); color: #fff; }
 main { padding: .6rem; display: grid; gap: .6rem; max-width: 60rem; margin: 0 auto; }
 @media (min-width: 50rem) { main { grid-template-columns: 1fr 1fr; } }
 section, details { background: var(--panel); border-radius: .8rem; border: 1px solid #1c1c1c; }
 section { padding: .6rem; }
 details > summary { list-style: none; cursor: pointer; padding: .8rem .7rem; font-weight: 600; min-height: 3rem;
          display: flex; justify-content: space-between; align-items: center; }
 details > summary::after { content: "+"; color: var(--dim); font-size: 1.3rem; }
 details[open] > summary::after { content: "\\2212"; }
 details > .body { padding: 0 .7rem .7rem; }
 h2 { font-size: .85rem; text-transform: uppercase; letter-spacing: .08em; color: var(--dim); margin: 0 0 .5rem; }
 #preview { width: 100%; aspect-ratio: 16 / 9; object-fit: contain; background: #050505; border-radius: .5rem;
            display: block; }
 #scenes { display: grid; grid-template-columns: repeat(3, 1fr); gap: .4rem; }
 .tile { position: relative; aspect-ratio: 16 / 10; border-radius: .5rem; overflow: hidden; padding: 0;
         background: #181818 center / cover no-repeat; border: 2px solid transparent; min-height: 0; }
 .tile span { position: absolute; left: 0; right: 0; bottom: 0; padding: .25rem .35rem; font-size: .85rem;
              background: linear-gradient(transparent, #000c); text-align: left; }
 .tile.playing { border-color: var(--accent); }
 .fader { margin: .35rem 0 .6rem; }
 .fader .lab { display: flex; justify-content: space-between; font-size: .9rem; color: #bbb; gap: .5rem; }
 .fader output { font-variant-numeric: tabular-nums; color: var(--text); }
 input[type=range] { width: 100%; height: 2.75rem; margin: 0; accent-color: var(--accent); }
 input[type=text], select { font: inherit; font-size: 1rem; width: 100%; min-height: 3rem; padding: .5rem .7rem;
          border-radius: .6rem; border: 1px solid #333; background: #0b0b0b; color: var(--text); }
 .row { display: flex; gap: .5rem; align-items: center; margin: .4rem 0; }
 .row > * { flex: 1; } .row > button { flex: none; }
 #xy { position: relative; width: 100%; aspect-ratio: 1; background: #0b0b0b; border-radius: .6rem;
       border: 1px solid #333; touch-action: none; }
 #xy .puck { position: absolute; width: 2.2rem; height: 2.2rem; margin: -1.1rem 0 0 -1.1rem; border-radius: 50%;
             border: 2px solid var(--accent); background: #d08a2e44; pointer-events: none; }
 .note { color: var(--dim); font-size: .9rem; margin: .3rem 0; }
 .current { font-size: .9rem; color: #bbb; margin: .2rem 0 .5rem; }
 #presets { display: flex; flex-wrap: wrap; gap: .4rem; }
 #seekhits { display: grid; grid-template-columns: repeat(4, 1fr); gap: .4rem; }
 .hit { position: relative; aspect-ratio: 1; padding: 0; min-height: 0; background: #181818 center / cover no-repeat; }
 .hit span { position: absolute; left: 0; right: 0; bottom: 0; font-size: .75rem; background: #000a; }
 #msg { color: #f88; font-size: .85rem; min-height: 1em; margin-top: .3rem; }
 dl { display: grid; grid-template-columns: auto 1fr; gap: .1rem .75rem; margin: 0; font-size: .9rem; }
 dt { color: var(--dim); } dd { margin: 0; font-variant-numeric: tabular-nums; }
</style></head><body>
<header>
 <div class="top"><span id="dot" title="link"></span><span id="scene">-</span>
  <button id="prev" aria-label="previous scene">&#9664;</button><button id="next" aria-label="next scene">&#9654;</button></div>
 <div class="gates"><button id="blackout" aria-pressed="false">blackout</button>
  <button id="freeze" aria-pressed="false">freeze</button><button id="panic">panic</button></div>
 <div id="msg" role="status"></div>
</header>
<main>
 <section><img id="preview" alt="live preview" data-frame="0"></section>
 <section><h2>Scenes</h2><div id="scenes"></div></section>
 <div id="groups"></div>
 <details id="xybox" open><summary>XY pad</summary><div class="body">
  <div class="row"><select id="xsel" aria-label="x parameter"></select><select id="ysel" aria-label="y parameter"></select></div>
  <div id="xy"><div class="puck"></div></div></div></details>
 <details id="promptbox" open><summary>Prompts</summary><div class="body">
  <p class="note" id="noprompts" hidden></p><div id="prompts"></div></div></details>
 <details id="presetbox" open><summary>Presets</summary><div class="body">
  <div id="presets"></div>
  <div class="fader"><div class="lab"><label for="fade">recall fade</label><output id="fadeout">2.0 s</output></div>
   <input type="range" id="fade" min="0" max="30" step="0.5" value="2"></div>
  <div class="row"><input type="text" id="presetname" placeholder="preset name" maxlength="64">
   <button id="store">store</button></div></div></details>
 <details id="searchbox" hidden open><summary>Search the archive</summary><div class="body">
  <div class="row"><input type="search" id="seektext" placeholder="a storm at sea" maxlength="500">
   <button id="seek">seek</button><button id="seekoff" title="let the walk go on">go on</button></div>
  <div id="seekhits"></div></div></details>
 <details><summary>MIDI learn</summary><div class="body">
  <div class="row"><select id="learn-param"></select><button id="learn">learn</button></div></div></details>
 <details id="healthbox"><summary>Health</summary><div class="body"><dl id="health"></dl></div></details>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const auth = token ? {"Authorization": "Bearer " + token} : {};
const $ = (id) => document.getElementById(id);
const GROUP_NAMES = {motion: "Motion", look: "Look", palette: "Palette", prompts: "Prompts & references",
                     inputs: "Inputs", other: "Not in this scene"};
let S = null, ws = null, dragging = null, live = {blackout: false, frozen: false, prompts: []};
const faders = new Map();   // name -> {input, out, spec}

function note(text) { $("msg").textContent = text || ""; }
function send(address, args = []) {
  if (ws && ws.readyState === 1) { ws.send(JSON.stringify({address, args})); return; }
  fetch("/api/control", {method: "POST", headers: {...auth, "Content-Type": "application/json"},
                         body: JSON.stringify({address, args})})
    .then((r) => r.json()).then((j) => note(j.ok ? "" : address + ": " + (j.reason || "refused")))
    .catch(() => note("offline"));
}
const pending = new Map();
function sendParam(name, v) {            // at most ~25 messages a second per control while dragging
  if (pending.has(name)) { pending.get(name).v = v; return; }
  const entry = {v}; pending.set(name, entry); send("/param/" + name, [v]);
  setTimeout(() => { pending.delete(name); if (entry.v !== v) sendParam(name, entry.v); }, 40);
}
function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2); }
function el(tag, props = {}, ...kids) { const e = Object.assign(document.createElement(tag), props);
  for (const k of kids) e.append(k); return e; }

function fader(p) {
  const id = "p-" + p.name;
  const step = p.type === "float" ? (p.max - p.min) / 1000 : 1;
  const input = el("input", {type: "range", id, min: p.min, max: p.max, step, value: p.value});
  const out = el("output", {textContent: fmt(p.value)});
  const lab = el("label", {htmlFor: id, textContent: p.label, title: p.name + (p.doc ? " - " + p.doc : "")});
  input.dataset.param = p.name;
  input.addEventListener("pointerdown", () => dragging = p.name);
  input.addEventListener("pointerup", () => dragging = null);
  input.addEventListener("input", () => { out.textContent = fmt(+input.value); sendParam(p.name, +input.value); });
  faders.set(p.name, {input, out, spec: p});
  return el("div", {className: "fader"}, el("div", {className: "lab"}, lab, out), input);
}

function build(state) {
  S = state; faders.clear();
  $("scene").textContent = state.scene || "-";
  $("searchbox").hidden = !state.search;
  const grid = $("scenes"); grid.innerHTML = "";
  for (const sc of state.scenes) {
    const b = el("button", {className: "tile" + (sc.name === state.scene ? " playing" : "")}, el("span", {textContent: sc.name}));
    b.dataset.scene = sc.name;
    if (sc.thumb) b.style.backgroundImage = `url("/thumb/${encodeURIComponent(sc.name)}.jpg${token ? "?token=" + encodeURIComponent(token) : ""}")`;
    b.onclick = () => send("/scene/goto", [sc.name]);
    grid.append(b);
  }
  const byName = new Map(state.params.map((p) => [p.name, p]));
  const box = $("groups"); const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.group));
  const first = box.children.length === 0;
  box.innerHTML = "";
  for (const [g, names] of Object.entries(state.groups)) {
    const d = el("details", {}, el("summary", {textContent: GROUP_NAMES[g] || g}));
    d.dataset.group = g; d.id = "group-" + g;
    d.open = first ? (g === "motion" || g === "look") : open.has(g);
    const body = el("div", {className: "body"});
    for (const n of names) if (byName.has(n)) body.append(fader(byName.get(n)));
    d.append(body); box.append(d);
  }
  for (const sel of [$("xsel"), $("ysel"), $("learn-param")]) {
    const keep = sel.value; sel.innerHTML = "";
    for (const p of state.params) if (p.acting || sel.id === "learn-param") sel.append(el("option", {value: p.name, textContent: p.label + " (" + p.name + ")"}));
    if (keep && byName.has(keep)) sel.value = keep;
  }
  const acting = Object.entries(state.groups).filter(([g]) => g !== "other").flatMap(([, names]) => names);
  if (!$("xsel").dataset.chosen && acting.length > 1) { $("xsel").value = acting[0]; $("ysel").value = acting[1]; }
  placePuck();
  const pr = $("prompts"); pr.innerHTML = "";
  $("noprompts").hidden = state.prompts_supported;
  $("noprompts").textContent = state.prompts_supported ? "" : `${state.scene || "this scene"} takes no prompts: its decoder draws without text. Pick a diffusion scene to type one.`;
  for (let i = 0; i < state.prompt_slots; i++) {
    const input = el("input", {type: "text", id: "prompt-" + i, placeholder: "prompt " + i, maxLength: 400, disabled: !state.prompts_supported});
    const b = el("button", {textContent: "set", disabled: !state.prompts_supported});
    b.onclick = () => send("/prompt/" + i, [input.value]);
    pr.append(el("div", {className: "current", id: "current-" + i}), el("div", {className: "row"}, input, b));
  }
  const ps = $("presets"); ps.innerHTML = "";
  if (state.presets === null) ps.append(el("p", {className: "note", textContent: "presets are off ([presets] enabled = false)"}));
  else if (!state.presets.length) ps.append(el("p", {className: "note", textContent: "no presets yet: store one below"}));
  else for (const name of state.presets) {
    const b = el("button", {textContent: name, className: name === state.preset ? "on" : ""});
    b.dataset.preset = name;
    b.onclick = () => send("/preset/recall", [name, +$("fade").value]);
    ps.append(b);
  }
  showLive(state.live); showHealth(state.health);
}

function showLive(l) {
  live = l || live;
  for (const [id, key] of [["blackout", "blackout"], ["freeze", "frozen"]]) {
    $(id).classList.toggle("on", !!live[key]); $(id).setAttribute("aria-pressed", String(!!live[key]));
  }
  if (live.scene && S && live.scene !== S.scene) $("scene").textContent = live.scene;
  for (let i = 0; S && i < S.prompt_slots; i++) {
    const cur = $("current-" + i); if (!cur) continue;
    const p = (live.prompts || [])[i];
    cur.textContent = p ? "now: " + p[0] + (p[1] !== 1 ? " (" + p[1] + ")" : "") : (i === 0 && S.prompts_supported ? "now: (none)" : "");
  }
}
function showHealth(h) {
  if (!h) return;
  const dl = $("health"); dl.innerHTML = "";
  for (const [k, v] of Object.entries(h)) dl.append(el("dt", {textContent: k}), el("dd", {textContent: v === null ? "-" : v}));
  $("dot").className = h.status === "ok" ? "ok" : h.status ? "degraded" : "";
}
function showParams(values) {
  for (const [name, v] of Object.entries(values)) {
    const f = faders.get(name);
    if (f && dragging !== name && !pending.has(name)) { f.input.value = v; f.out.textContent = fmt(v); f.spec.value = v; }
    if (S) { const p = S.params.find((q) => q.name === name); if (p) p.value = v; }
  }
  if (!xyDragging) placePuck();
}

// XY pad: two chosen parameters, 0..1 across each range
let xyDragging = false;
function showHits(msg) {           // /seek's results: tap one to glide there instead
  const box = $("seekhits"); box.innerHTML = "";
  if (!msg.results.length) box.append(el("p", {className: "note", textContent: "nothing found yet: no archived moment has an embedding"}));
  msg.results.forEach((h, i) => {
    const b = el("button", {className: "hit", title: (h.scene || "") + (h.t !== undefined ? " at " + h.t.toFixed(1) + " s" : "") + (h.name ? " " + h.name : "") + ", score " + h.score});
    if (h.thumb) b.style.backgroundImage = "url(data:image/jpeg;base64," + h.thumb + ")";
    b.append(el("span", {textContent: h.score.toFixed(3)}));
    b.onclick = () => send("/seek_pick", [i]);
    box.append(b);
  });
}
function spec(name) { return S ? S.params.find((p) => p.name === name) : null; }
function placePuck() {
  const x = spec($("xsel").value), y = spec($("ysel").value), puck = document.querySelector("#xy .puck");
  if (!x || !y) return;
  puck.style.left = (100 * (x.value - x.min) / (x.max - x.min || 1)) + "%";
  puck.style.top = (100 * (1 - (y.value - y.min) / (y.max - y.min || 1))) + "%";
}
function xyMove(e) {
  const r = $("xy").getBoundingClientRect();
  const u = Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), v = Math.min(1, Math.max(0, 1 - (e.clientY - r.top) / r.height));
  const puck = document.querySelector("#xy .puck"); puck.style.left = 100 * u + "%"; puck.style.top = 100 * (1 - v) + "%";
  for (const [sel, w] of [[$("xsel"), u], [$("ysel"), v]]) {
    const p = spec(sel.value); if (!p) continue;
    let val = p.min + w * (p.max - p.min); if (p.type !== "float") val = Math.round(val);
    sendParam(p.name, val);
  }
}
$("xy").addEventListener("pointerdown", (e) => { xyDragging = true; $("xy").setPointerCapture(e.pointerId); xyMove(e); });
$("xy").addEventListener("pointermove", (e) => { if (xyDragging) xyMove(e); });
$("xy").addEventListener("pointerup", () => { xyDragging = false; });
for (const s of [$("xsel"), $("ysel")]) s.onchange = () => { $("xsel").dataset.chosen = "1"; placePuck(); };

function connect(delay = 500) {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/ws" + (token ? "?token=" + encodeURIComponent(token) : "");
  ws = new WebSocket(url);
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.type === "state") build(msg);
    else if (msg.type === "params") showParams(msg.values);
    else if (msg.type === "live") showLive(msg.live);
    else if (msg.type === "seek") showHits(msg);
    else if (msg.type === "ack") note(msg.ok ? "" : (msg.address || "") + ": " + (msg.reason === "unavailable" ? "not available in this show" : msg.reason));
  };
  ws.onopen = () => { delay = 500; note(""); };
  ws.onclose = () => { $("dot").className = "off"; note("reconnecting..."); setTimeout(() => connect(Math.min(delay * 2, 8000)), delay); };
}

async function preview() {
  const img = $("preview");
  for (;;) {
    try {
      const r = await fetch("/preview.jpg?after=" + img.dataset.frame, {headers: auth});
      if (r.ok) {
        const url = URL.createObjectURL(await r.blob());
        const old = img.src; img.src = url; if (old) URL.revokeObjectURL(old);
        img.dataset.frame = r.headers.get("X-Frame") || img.dataset.frame;
      } else { await new Promise((ok) => setTimeout(ok, r.status === 503 ? 200 : 1000)); }
    } catch (e) { await new Promise((ok) => setTimeout(ok, 1000)); }
  }
}

$("prev").onclick = () => send("/scene/prev");
$("next").onclick = () => send("/scene/next");
$("panic").onclick = () => send("/panic");
$("blackout").onclick = () => send("/blackout", [live.blackout ? 0 : 1]);
$("freeze").onclick = () => send("/freeze", [live.frozen ? 0 : 1]);
$("fade").oninput = () => $("fadeout").textContent = (+$("fade").value).toFixed(1) + " s";
$("seek").onclick = () => { const t = $("seektext").value.trim(); if (t) send("/seek", [t]); };
$("seektext").onkeydown = (e) => { if (e.key === "Enter") $("seek").click(); };
$("seekoff").onclick = () => { send("/seek", [""]); $("seekhits").innerHTML = ""; };
$("store").onclick = () => { const n = $("presetname").value.trim(); if (n) send("/preset/store", [n]); };
$("learn").onclick = () => { send("/midi/learn", [$("learn-param").value]); note("move a MIDI control to bind it to " + $("learn-param").value); };
connect();
preview();
</script></body></html>
"""
PAGE_BYTES = PAGE.encode()
