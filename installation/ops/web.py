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
``GET /preview.jpg?after=<n>`` (the newest frame, waiting up to a second for one newer than frame ``n``); HEAD too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Annotated, Any, Callable

from pydantic import Field, model_validator

from ..bus import ParamBus
from ..inputs.prompt_guard import PromptGuardSettings
from ..parts import PartContext, register
from ..render.outputs import LatestFrame
from .http import (HttpError, HttpLimits, HttpServer, host_refusal, http_url, is_loopback, json_error, json_response,
                   read_body, respond, same_origin, token_ok)

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["PreviewSink", "WebPage", "WebSettings", "is_loopback"]

MAX_BODY = 8192  # bytes of a control request
VIEWER_IDLE_S = 5.0  # the preview stops reading frames back this long after the last viewer asked for one
PREVIEW_WAIT_S = 1.0  # how long /preview.jpg waits for a frame newer than the one the viewer has
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
                 caps: Any = None) -> None:
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
        self._http = HttpServer("web-page", settings.host, settings.port, settings, self._handle, label="web page")
        self._frame_event: asyncio.Event | None = None  # on the server's loop: set (and replaced) on each frame
        self.counts = {"requests": 0, "unauthorized": 0, "cross_site": 0, "previews": 0}
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
        """What the page shows: scenes, parameters (ranges, defaults, targets), prompt slots, health figures."""
        targets = self.bus.targets()
        params = [{"name": p.name, "type": p.type, "min": p.min, "max": p.max, "default": p.default, "doc": p.doc,
                   "value": targets.get(p.name, p.default)}
                  for p in sorted(self.bus.specs.values(), key=lambda p: p.name)
                  if not p.name.startswith(self.settings.exclude_prefixes)]
        health = self.snapshot() or {}
        return {"scenes": list(self.scenes()), "scene": health.get("scene"), "params": params,
                "prompt_slots": self.settings.prompt_slots, "preview": self.settings.preview_fps > 0,
                "health": {k: health.get(k) for k in _HEALTH_KEYS if k in health}}

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
            return self._jpeg

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

    return WebPage(settings, ctx.bus, ctx.scenes, ctx.snapshot, ctx.presented, str(ctx.base_dir),
                   capabilities(ctx.config))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>installation</title>
<style>
 :root { color-scheme: dark; font-family: system-ui, sans-serif; }
 body { margin: 0; background: #111; color: #eee; }
 header { position: sticky; top: 0; background: #222; padding: .5rem; display: flex; flex-wrap: wrap; gap: .5rem;
          align-items: center; z-index: 1; }
 main { display: grid; grid-template-columns: repeat(auto-fit, minmax(18rem, 1fr)); gap: .75rem; padding: .75rem; }
 section { background: #1b1b1b; border-radius: .5rem; padding: .5rem .75rem; }
 h2 { font-size: 1rem; margin: .25rem 0 .5rem; }
 button, select, input[type=text] { font-size: 1rem; padding: .6rem .8rem; border-radius: .4rem; border: 1px solid #444;
          background: #2a2a2a; color: #eee; }
 button.on { background: #a60; } #panic { background: #900; }
 .row { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: .25rem 0; }
 .fader { display: grid; grid-template-columns: 1fr 4.5rem; gap: .25rem .5rem; margin: .4rem 0; }
 .fader label { grid-column: 1 / -1; font-size: .85rem; color: #bbb; }
 .fader input { width: 100%; height: 2rem; } .fader output { text-align: right; font-variant-numeric: tabular-nums; }
 #preview { width: 100%; background: #000; border-radius: .25rem; min-height: 4rem; }
 dl { display: grid; grid-template-columns: auto 1fr; gap: .1rem .75rem; margin: 0; font-size: .9rem; }
 dt { color: #999; } dd { margin: 0; font-variant-numeric: tabular-nums; }
 #msg { color: #f88; font-size: .85rem; }
</style></head><body>
<header><strong id="scene">-</strong><span id="status"></span><span id="msg"></span></header>
<main>
 <section><h2>Preview</h2><img id="preview" alt="live preview" data-frame="0"></section>
 <section><h2>Scenes</h2>
  <div class="row"><button id="prev">&#9664; prev</button><button id="next">next &#9654;</button></div>
  <div class="row"><select id="scenes"></select><button id="goto">go</button></div>
  <div class="row"><button id="freeze">freeze</button><button id="blackout">blackout</button>
   <button id="panic">panic</button></div></section>
 <section><h2>Prompts</h2><div id="prompts"></div></section>
 <section><h2>Health</h2><dl id="health"></dl></section>
 <section id="params"><h2>Parameters</h2>
  <div class="row"><select id="learn-param"></select><button id="learn">MIDI learn</button></div></section>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const auth = token ? {"Authorization": "Bearer " + token} : {};
const $ = (id) => document.getElementById(id);
const gates = {freeze: false, blackout: false};
let dragging = null, built = false;

async function send(address, args = []) {
  const r = await fetch("/api/control", {method: "POST", headers: {...auth, "Content-Type": "application/json"},
                                          body: JSON.stringify({address, args})});
  const j = await r.json().catch(() => ({}));
  $("msg").textContent = j.ok ? "" : (address + ": " + (j.reason || r.status));
  return j.ok;
}
const pending = new Map();
function sendParam(name, v) {            // at most ~20 messages a second per fader while dragging
  if (pending.has(name)) { pending.get(name).v = v; return; }
  const entry = {v};
  pending.set(name, entry);
  send("/param/" + name, [v]).finally(() => setTimeout(() => {
    pending.delete(name); if (entry.v !== v) sendParam(name, entry.v); }, 50));
}
function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3); }

function build(state) {
  const box = $("params");
  for (const p of state.params) {
    const div = document.createElement("div"); div.className = "fader";
    const id = "p-" + p.name;
    const step = p.type === "float" ? (p.max - p.min) / 1000 : 1;
    div.innerHTML = `<label for="${id}"></label><input type="range" id="${id}" min="${p.min}" max="${p.max}"
      step="${step}" value="${p.value}"><output></output>`;
    div.querySelector("label").textContent = p.name + (p.doc ? " - " + p.doc : "");
    const input = div.querySelector("input"), out = div.querySelector("output");
    out.textContent = fmt(p.value);
    input.dataset.param = p.name;
    input.addEventListener("pointerdown", () => dragging = p.name);
    input.addEventListener("pointerup", () => dragging = null);
    input.addEventListener("input", () => { out.textContent = fmt(+input.value); sendParam(p.name, +input.value); });
    box.appendChild(div);
  }
  for (const p of state.params) {
    const o = document.createElement("option"); o.value = o.textContent = p.name; $("learn-param").appendChild(o);
  }
  const sel = $("scenes");
  state.scenes.forEach((s) => { const o = document.createElement("option"); o.value = o.textContent = s; sel.appendChild(o); });
  const pr = $("prompts");
  for (let i = 0; i < state.prompt_slots; i++) {
    const row = document.createElement("div"); row.className = "row";
    row.innerHTML = `<input type="text" id="prompt-${i}" placeholder="prompt ${i}" maxlength="400"><button>set</button>`;
    row.querySelector("button").addEventListener("click", () => send("/prompt/" + i, [$("prompt-" + i).value]));
    pr.appendChild(row);
  }
  built = true;
}

async function refresh() {
  try {
    const r = await fetch("/api/state", {headers: auth});
    if (!r.ok) { $("msg").textContent = "state: " + r.status; return; }
    const state = await r.json();
    if (!built) build(state);
    $("scene").textContent = state.scene || "-";
    $("status").textContent = (state.health.status || "") + " " + (state.health.present_fps ?? "") + " fps";
    for (const p of state.params) {
      const input = $("p-" + p.name);
      if (input && dragging !== p.name && !pending.has(p.name)) {
        input.value = p.value; input.nextElementSibling.textContent = fmt(p.value);
      }
    }
    const dl = $("health"); dl.innerHTML = "";
    for (const [k, v] of Object.entries(state.health)) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v === null ? "-" : v; dl.append(dt, dd);
    }
  } catch (e) { $("msg").textContent = "offline"; }
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
      } else { await new Promise((ok) => setTimeout(ok, 1000)); }
    } catch (e) { await new Promise((ok) => setTimeout(ok, 1000)); }
  }
}

$("prev").onclick = () => send("/scene/prev");
$("next").onclick = () => send("/scene/next");
$("goto").onclick = () => send("/scene/goto", [$("scenes").value]);
$("panic").onclick = () => send("/panic");
$("learn").onclick = async () => { if (await send("/midi/learn", [$("learn-param").value]))
  $("msg").textContent = "move a MIDI control to bind it to " + $("learn-param").value; };
for (const g of ["freeze", "blackout"]) {
  $(g).onclick = async () => { if (await send("/" + g, [gates[g] ? 0 : 1])) { gates[g] = !gates[g];
    $(g).classList.toggle("on", gates[g]); } };
}
refresh(); setInterval(refresh, 1000);
preview();
</script></body></html>
"""
PAGE_BYTES = PAGE.encode()
