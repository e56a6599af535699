"""OSCQuery: the OSC address space as a live JSON namespace over HTTP, advertised over mDNS, with the websocket
``LISTEN``/``IGNORE`` extension, so TouchOSC, Chataigne or vezér find the show and build their controls from it.

Per the OSCQuery proposal (github.com/Vidvox/OSCQueryProposal): ``GET /`` answers the whole tree (``FULL_PATH``,
``CONTENTS``, ``TYPE``, ``RANGE``, ``VALUE``, ``ACCESS``, ``DESCRIPTION``), ``GET /<address>`` one node,
``GET /<address>?VALUE`` (or any other attribute) that attribute alone and ``GET /?HOST_INFO`` the server's name, its
OSC port and transport (UDP) and the extensions it supports. The tree is made from the same parameter specs that
``installation params`` prints and the rows of ``installation osc-map`` (:func:`installation.inputs.osc.address_map`),
so it never disagrees with what the OSC port accepts. A websocket on the same port takes
``{"COMMAND": "LISTEN", "DATA": "/param/speed"}``; from then on every accepted change of that parameter (from any
transport: OSC, MIDI, the page, a scene's defaults) arrives as a binary OSC message, until ``IGNORE``; ``LISTEN``
``/scene/goto`` sends the playing scene's name whenever it changes. When the namespace itself changes (a reload
that adds or removes parameters or scenes, or changes a range), every websocket gets
``{"COMMAND": "PATH_CHANGED", "DATA": "/"}`` and a client fetches the tree again.

Only the server's own origin, native clients (no ``Origin``) and the web pages listed in ``allow_origins`` may read
the tree or listen: a page from any other site that a visitor opens on the same machine or network is refused (403),
over HTTP and for the websocket alike; served on loopback, a request must also name loopback as its Host (DNS
rebinding). The service is advertised as ``_oscjson._tcp`` (this server) and ``_osc._udp`` (the OSC port) via
``zeroconf``, in a background thread; where multicast is impossible (a sandbox, no network) that is a logged warning
and the HTTP server serves on. The server is an :class:`~installation.ops.http.HttpServer` (aiohttp, HTTP and the
websocket on one port, on a loop thread of its own, with the deadlines and caps of ``ops/http.py``) and never touches
the runtime: it reads bus targets and drains a bus journal subscription.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from typing import TYPE_CHECKING, Annotated, Any, Sequence

from pydantic import Field

from installation.bus import ParamBus, latest_values
from installation.inputs.osc import OscSettings, _encode, address_map, allowed_networks, is_allowed, parse_packet
from installation.inputs.surface import Capabilities, ControlSurface, Scenes, Sender, capabilities, scene_list
from installation.ops.http import (HttpLimits, HttpServer, allowed_origin, host_refusal, http_url, json_error,
                                   json_response, respond)
from installation.parts import PartContext, register

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

ACCESS_NONE, ACCESS_READ, ACCESS_WRITE, ACCESS_RW = 0, 1, 2, 3
EXTENSIONS = {"ACCESS": True, "VALUE": True, "RANGE": True, "DESCRIPTION": True, "TAGS": False, "EXTENDED_TYPE": False,
              "UNIT": False, "CRITICAL": False, "CLIPMODE": False, "LISTEN": True, "PATH_CHANGED": True,
              "PATH_RENAMED": False, "PATH_ADDED": False, "PATH_REMOVED": False, "HTML": False, "TYPE": True,
              "FULL_PATH": True, "CONTENTS": True}
ATTRIBUTES = ("FULL_PATH", "CONTENTS", "TYPE", "RANGE", "VALUE", "ACCESS", "DESCRIPTION")
# The osc-map's argument notation -> an OSC type tag string (optional arguments left out); None: no argument.
_TYPES = {"": None, "f": "f", "s": "s", "i": "i", "i|f": "i", "i|f|T|F": "T", "s|i": "s", "s [f]": "s",
          "f [f ...]": "f", "f f": "ff", "[any]": None}
_PLACEHOLDER = {"f": 0.0, "i": 0, "s": "", "T": False}
_GATES = {"/freeze": "frozen", "/blackout": "blackout", "/calibrate/on": None}


QUEUE = 256  # messages waiting for one websocket; a listener that does not read loses the newest, counted


class OscQuerySettings(HttpLimits):
    """``[oscquery]``: the namespace server (off by default; loopback like the OSC port unless told), the web pages
    allowed to use it, and the connection rules of ``ops/http.py``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9002
    name: str = Field(default="installation", min_length=1, max_length=63, description="the mDNS service name")
    advertise: bool = Field(default=True, description="advertise _oscjson._tcp and _osc._udp over mDNS (zeroconf)")
    listen_rate: Annotated[float, Field(gt=0.0, le=240.0)] = 60.0
    max_clients: Annotated[int, Field(ge=1, le=256)] = 16
    allow_origins: tuple[str, ...] = Field(
        default=(), description="web pages (scheme://host:port) besides the server's own that may read the tree and "
                                "listen, e.g. 'http://192.168.1.20:8080'; '*' allows any page (not for a public room)")


def _node(path: str, description: str = "", **attrs: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"FULL_PATH": path}
    if description:
        node["DESCRIPTION"] = description
    node.update({k: v for k, v in attrs.items() if v is not None})
    return node


def _value_of(spec: Any, value: float) -> Any:
    """A parameter's value as its OSC type carries it: float, int, or bool (``T``/``F``)."""
    if spec.type == "bool":
        return bool(value >= 0.5)
    return float(value) if spec.type == "float" else int(value)


def build_tree(bus: ParamBus, scenes: Scenes, osc: OscSettings, scene: str | None = None,
               outputs: Sequence[int] = (), caps: Capabilities | None = None,
               live: dict[str, Any] | None = None, acting: Sequence[str] | None = None) -> dict[str, Any]:
    """The OSCQuery tree of the show's OSC address space, with each parameter's range and current target.

    Strict to the proposal (python-oscquery checks it): a node is either a folder (``CONTENTS``, ``ACCESS`` 0, no
    value) or a method (``TYPE``, and ``VALUE`` unless it takes no argument), never both; a method with no argument
    has ``ACCESS`` 0, a write-only one ``ACCESS`` 2 with a placeholder ``VALUE`` of its type (strict clients derive
    the type from it; ``?VALUE`` answers 204). ``outputs``: the show's projector outputs, each as its number of mesh
    points (0 without a mesh); their calibration addresses (``/output/<n>/...``) are spelled out for each, as a
    client sends them. ``live``: the show's ``blackout`` and ``frozen`` state, read back as those gates' values. ``acting``:
    the parameters that act in the playing scene; the others' descriptions start "not in the playing scene"."""
    root = _node("/", "installation: a latent-space show", CONTENTS={}, ACCESS=ACCESS_NONE)
    targets = bus.targets()
    live = live or {}

    def place(address: str, node: dict[str, Any]) -> None:
        parent = root
        parts = address.strip("/").split("/")
        for i, part in enumerate(parts[:-1]):
            contents = parent.setdefault("CONTENTS", {})
            parent = contents.setdefault(part, _node("/" + "/".join(parts[: i + 1]), ACCESS=ACCESS_NONE))
            if "TYPE" in parent or "VALUE" in parent:
                raise ValueError(f"OSCQuery: {parent['FULL_PATH']} is a method and a folder")
        if parts[-1] in parent.setdefault("CONTENTS", {}):
            raise ValueError(f"OSCQuery: {address} is a folder and a method")
        parent["CONTENTS"][parts[-1]] = node

    names = scene_list(scenes)
    for address, types, doc in address_map(bus.specs, names, osc, caps):
        if address.startswith("->") or "<" in address:
            continue  # feedback rows; the /output/<n>/... patterns are spelled out below
        if address.startswith(("/param/", "/norm/")):
            norm = address.startswith("/norm/")
            spec = bus.spec(address.split("/", 2)[2])
            if spec is None:
                continue
            value = targets.get(spec.name, spec.default)
            if acting is not None and spec.name not in acting:
                doc = f"not in the playing scene ({scene or '-'}): {doc}"
            if norm:
                u = (value - spec.min) / (spec.max - spec.min) if spec.max > spec.min else 0.0
                place(address, _node(address, doc, TYPE="f", RANGE=[{"MIN": 0.0, "MAX": 1.0}], VALUE=[u],
                                     ACCESS=ACCESS_RW))
            else:
                kind = {"float": "f", "int": "i", "bool": "T"}[spec.type]
                rng = None if kind == "T" else [{"MIN": spec.min, "MAX": spec.max}]
                place(address, _node(address, doc, TYPE=kind, RANGE=rng, VALUE=[_value_of(spec, value)],
                                     ACCESS=ACCESS_RW))
            continue
        tag = _TYPES.get(types)
        if tag is None:  # takes no argument (an event, /ping): nothing to read or write
            place(address, _node(address, doc, ACCESS=ACCESS_NONE))
            continue
        rng = None
        value: list[Any] = [_PLACEHOLDER[t] for t in tag]
        access = ACCESS_WRITE
        if address == "/scene/goto":
            rng = [{"VALS": names}]
            if scene:
                value, access = [scene], ACCESS_RW
        elif address in _GATES:
            key = _GATES[address]
            if key is not None and key in live:
                value, access = [bool(live[key])], ACCESS_RW
        elif address == "/seed":
            rng = [{"MIN": 0, "MAX": 2**32 - 1}]
        elif address == "/map/goto":
            rng = [{"MIN": 0.0, "MAX": 1.0}] * 2
        place(address, _node(address, doc, TYPE=tag, RANGE=rng, VALUE=value, ACCESS=access))
    point = [{"MIN": -1.0, "MAX": 2.0}] * 2
    shown = [] if caps is not None and caps.outputs == 0 else outputs
    for n, mesh_points in enumerate(shown, start=1):
        for i, corner in enumerate(("top-left", "top-right", "bottom-right", "bottom-left")):
            address = f"/output/{n}/corner/{i}"
            place(address, _node(address, f"move output {n}'s {corner} corner to x y (0..1 of the output)",
                                 TYPE="ff", RANGE=point, VALUE=[0.0, 0.0], ACCESS=ACCESS_WRITE))
        for i in range(mesh_points):
            address = f"/output/{n}/mesh/{i}"
            place(address, _node(address, f"move output {n}'s mesh point {i} (row by row) to x y",
                                 TYPE="ff", RANGE=point, VALUE=[0.0, 0.0], ACCESS=ACCESS_WRITE))
        for side in ("left", "right", "top", "bottom"):
            address = f"/output/{n}/blend/{side}"
            place(address, _node(address, f"output {n}'s soft-edge width at the {side}", TYPE="f",
                                 RANGE=[{"MIN": 0.0, "MAX": 0.5}], VALUE=[0.0], ACCESS=ACCESS_WRITE))
    return root


def shape(tree: dict[str, Any]) -> str:
    """The tree without its values: what a client builds its controls from (a change of it is PATH_CHANGED)."""
    def strip(node: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in node.items() if k not in ("VALUE", "CONTENTS", "DESCRIPTION")}
        if "CONTENTS" in node:
            out["CONTENTS"] = {k: strip(v) for k, v in node["CONTENTS"].items()}
        return out

    return json.dumps(strip(tree), sort_keys=True)


def find(tree: dict[str, Any], address: str) -> dict[str, Any] | None:
    """The node at ``address`` (``/`` is the root), or None."""
    node = tree
    for part in [p for p in address.split("/") if p]:
        node = node.get("CONTENTS", {}).get(part)
        if node is None:
            return None
    return node


class _Listener:
    """One websocket's addresses and the messages waiting to go to it (sent by its own task, so one client that
    reads slowly never holds up the others)."""

    def __init__(self) -> None:
        self.listening: set[str] = set()
        self.queue: asyncio.Queue[str | bytes] = asyncio.Queue(QUEUE)


class OscQueryServer:
    """The OSCQuery HTTP + websocket server and its mDNS advertisement; a part."""

    def __init__(self, settings: OscQuerySettings, bus: ParamBus, scenes: Scenes, osc: OscSettings,
                 snapshot: Any = None, outputs: Sequence[int] = (), caps: Capabilities | None = None,
                 base_dir: str | None = None, scene_info: Any = None) -> None:
        self.settings = settings
        self.caps = caps
        self.scene_info = scene_info  # scene -> {"params": [...]}: which parameters act in the playing scene
        # OSC packets sent over the websocket (binary frames, as the proposal allows) take the OSC port's path:
        # the same allow list, checks, coalescing and counters, as transport "ws".
        self.surface = ControlSurface(osc, bus, scenes, base_dir=base_dir, caps=caps)
        self._allow = allowed_networks(osc)
        self.outputs = tuple(outputs)  # the projector outputs' mesh point counts (see build_tree)
        self.bus = bus
        self.scenes = scenes
        self.osc = osc
        self.snapshot = snapshot
        self._http = HttpServer("oscquery", settings.host, settings.port, settings, self._handle,
                                tasks=(self._pump,), label="OSCQuery")
        self._clients: dict["web.WebSocketResponse", _Listener] = {}  # on the server's loop only
        self._zeroconf: Any = None
        self._zc_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.counts = {"http": 0, "not_found": 0, "ws_clients": 0, "listens": 0, "sent": 0, "dropped": 0,
                       "bad_commands": 0, "advertised": 0, "path_changes": 0, "cross_origin": 0, "busy": 0,
                       "osc_packets": 0, "osc_not_allowed": 0}

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

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
        http = self._http.stats()
        out["rejects"] = {"not_found": out.pop("not_found"), "bad_commands": out.pop("bad_commands"),
                          "cross_origin": out.pop("cross_origin"),
                          "busy": out.pop("busy") + http["refused_busy"] + http["refused_client"]}
        out["connections"] = http
        out["osc"] = self.surface.stats()  # OSC packets over the websocket: applied, rejects by reason
        return out

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def start(self) -> None:
        """Bind and serve on a thread (OSError naming host:port if it cannot); advertise in the background."""
        if self._http.alive:
            return
        self._http.start()
        log.info("OSCQuery on %s (OSC udp port %s)", self.url, self.osc.port)
        if self.settings.advertise and self._zc_thread is None:
            self._zc_thread = threading.Thread(target=self._advertise, name="oscquery-mdns", daemon=True)
            self._zc_thread.start()

    def stop(self) -> None:
        self._http.stop()
        if self._zc_thread is not None:
            self._zc_thread.join(10)
            self._zc_thread = None
        zc, self._zeroconf = self._zeroconf, None
        if zc is not None:
            try:
                zc.unregister_all_services()
                zc.close()
            except Exception:  # noqa: BLE001 - leaving the network is best effort
                log.debug("zeroconf close failed", exc_info=True)

    # -- mDNS ------------------------------------------------------------------------------------------------------
    def _advertise(self) -> None:
        try:
            from zeroconf import ServiceInfo, Zeroconf

            host = self.settings.host
            if host in ("0.0.0.0", "::", ""):
                import ifaddr

                addrs = [ip.ip for a in ifaddr.get_adapters() for ip in a.ips
                         if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
            else:
                addrs = [socket.gethostbyname(host)]
            if not addrs:  # no interface but loopback (a sandbox): say so, advertise loopback
                addrs = ["127.0.0.1"]
            packed = [socket.inet_aton(a) for a in addrs]
            name = self.settings.name
            server = f"{socket.gethostname().split('.')[0]}.local."
            infos = [ServiceInfo("_oscjson._tcp.local.", f"{name}._oscjson._tcp.local.", addresses=packed,
                                 port=self.port, server=server, properties={"txtvers": "1"}),
                     ServiceInfo("_osc._udp.local.", f"{name}._osc._udp.local.", addresses=packed,
                                 port=self.osc.port, server=server, properties={"txtvers": "1"})]
            zc = Zeroconf()
            self._zeroconf = zc
            for info in infos:
                zc.register_service(info, allow_name_change=True)
                self._count("advertised")
            log.info("OSCQuery advertised over mDNS as %r on %s", name, ", ".join(addrs))
        except Exception as e:  # noqa: BLE001 - no multicast here: the server works, discovery does not
            log.warning("OSCQuery: mDNS advertising failed (%s: %s); clients must be given %s by hand",
                        type(e).__name__, e, self.url)

    # -- the server (on its loop) -----------------------------------------------------------------------------------
    def _tree(self) -> dict[str, Any]:
        snap = (self.snapshot() or {}) if self.snapshot is not None else {}
        info = ((self.scene_info() or {}).get(snap.get("scene")) or {}) if self.scene_info is not None else {}
        return build_tree(self.bus, self.scenes, self.osc, snap.get("scene"), self.outputs, self.caps,
                          snap.get("live"), info.get("params"))

    def _host_info(self, request: web.BaseRequest) -> dict[str, Any]:
        """HOST_INFO, with the address this request arrived on where a server listens on every interface: a tablet
        that found the show by mDNS must not be told to send to 0.0.0.0 (itself)."""
        local = ""
        transport = request.transport
        if transport is not None:
            sockname = transport.get_extra_info("sockname")
            if sockname:
                local = str(sockname[0])
                if local.startswith("::ffff:"):
                    local = local[len("::ffff:"):]

        def reachable(host: str) -> str:
            return (local or "127.0.0.1") if host in ("0.0.0.0", "::", "") else host

        return {"NAME": self.settings.name, "OSC_IP": reachable(self.osc.host), "OSC_PORT": self.osc.port,
                "OSC_TRANSPORT": "UDP", "WS_IP": reachable(self.settings.host), "WS_PORT": self.port,
                "EXTENSIONS": EXTENSIONS}

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return json_error(501, detail="GET or HEAD")
        refusal = host_refusal(request, self.settings.host)
        allowed, allow_header = allowed_origin(request, self.settings.allow_origins)
        if refusal or not allowed:
            self._count("cross_origin")
            return json_error(403, "forbidden", detail=refusal or "a page from another origin (see [oscquery] "
                                                                  "allow_origins)")
        headers = {"Vary": "Origin"}
        if allow_header:
            headers["Access-Control-Allow-Origin"] = allow_header
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)  # browsers check no CORS header on a websocket: the Origin is it
        self._count("http")
        path, attr = request.path or "/", request.query_string.split("&", 1)[0].upper()
        if attr == "HOST_INFO":
            return json_response(200, self._host_info(request), headers)
        node = find(await self._http.call(self._tree), path)
        if node is None:
            self._count("not_found")
            return json_response(404, {"error": "no such address", "path": path[:200]}, headers)
        if not attr:
            return json_response(200, node, headers)
        if attr == "VALUE" and not node.get("ACCESS", 0) & ACCESS_READ:
            return respond(204, b"", headers=headers)  # write-only or no value: nothing to read
        if attr in ATTRIBUTES and attr in node:
            return json_response(200, {attr: node[attr]}, headers)
        if attr in ATTRIBUTES:
            return respond(204, b"", headers=headers)
        return json_response(400, {"error": f"unknown attribute {attr[:64]}"}, headers)

    async def _websocket(self, request: web.BaseRequest) -> web.StreamResponse:
        if len(self._clients) >= self.settings.max_clients:
            self._count("busy")
            return json_error(503, "too many listeners", detail=f"at most {self.settings.max_clients}")
        from aiohttp import WSMsgType, web  # noqa: PLC0415 - with the server, not the config

        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4096)
        await ws.prepare(request)
        client = _Listener()
        self._clients[ws] = client
        self._count("ws_clients")
        sender = asyncio.create_task(self._sender(ws, client.queue))
        try:
            async for message in ws:
                if message.type == WSMsgType.BINARY:  # an OSC packet (the proposal allows OSC over the websocket)
                    await self._http.call(self._osc_packet, message.data, request.remote or "?", client)
                    continue
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    cmd = json.loads(message.data)
                    command, data = cmd["COMMAND"], cmd["DATA"]
                    if command not in ("LISTEN", "IGNORE") or not isinstance(data, str) or len(data) > 256:
                        raise ValueError(command)
                except (ValueError, KeyError, TypeError):
                    self._count("bad_commands")
                    continue
                if command == "LISTEN":
                    if len(client.listening) < 4096:
                        client.listening.add(data)
                        self._count("listens")
                else:
                    client.listening.discard(data)
        finally:
            self._clients.pop(ws, None)
            sender.cancel()
        return ws

    def _osc_packet(self, data: bytes, host: str, client: _Listener) -> None:
        """Apply one OSC packet from a websocket through the control surface (a worker thread); answers such as
        /pong go back over the same websocket."""
        self._count("osc_packets")
        if not is_allowed(self._allow, host):
            self.surface.reject("not_allowed", packet=True)
            return
        messages = parse_packet(data)
        if isinstance(messages, str):
            self.surface.reject(messages, packet=True)
            return
        loop = self._http.loop

        def reply(address: str, *args: Any) -> None:
            if loop is not None:
                loop.call_soon_threadsafe(self._send, client, _encode(address, *args))

        self.surface.count("packets")
        sender = Sender("ws", host, None, reply)
        for msg in messages:
            self.surface.apply(msg.address, msg.params, sender)
        self.surface.release_held()

    async def _sender(self, ws: web.WebSocketResponse, queue: asyncio.Queue[str | bytes]) -> None:
        """Send one websocket its queued messages, in order, as fast as it reads them."""
        while True:
            message = await queue.get()
            try:
                if isinstance(message, str):
                    await ws.send_str(message)
                else:
                    await ws.send_bytes(message)
                self._count("sent")
            except (ConnectionError, RuntimeError):  # closed or closing: its handler drops it
                self._count("dropped")
                return

    async def _pump(self) -> None:
        """Send accepted parameter changes to the websockets listening to them, at most ``listen_rate`` a second
        (the newest value of each address per round); about once a second, the playing scene to those listening to
        ``/scene/goto`` when it changed, and PATH_CHANGED to everyone when the namespace changed."""
        period = 1.0 / self.settings.listen_rate
        loop = asyncio.get_running_loop()
        sub = self.bus.subscribe()
        try:
            known, scene, checked = shape(await self._http.call(self._tree)), None, loop.time()
            while True:
                await asyncio.sleep(period if self._clients else 0.5)  # nobody listening: wake rarely
                changes = sub.drain()
                if loop.time() - checked >= 1.0:
                    checked = loop.time()
                    tree = await self._http.call(self._tree)
                    now = shape(tree)
                    if now != known:
                        known = now
                        self._count("path_changes")
                        self._send_all(json.dumps({"COMMAND": "PATH_CHANGED", "DATA": "/"}), None)
                    playing = (find(tree, "/scene/goto") or {}).get("VALUE")
                    if playing and playing[0] != scene:
                        scene = playing[0]
                        self._send_all(_encode("/scene/goto", scene), "/scene/goto")
                if changes and self._clients:
                    self._send_changes(changes)
        finally:
            sub.close()

    def _send_changes(self, changes: Sequence[Any]) -> None:
        latest = latest_values(changes)
        for client in list(self._clients.values()):
            for name, value in latest.items():
                spec = self.bus.spec(name)
                if spec is None:
                    continue
                for address, v in ((f"/param/{name}", value),
                                   (f"/norm/{name}", (value - spec.min) / (spec.max - spec.min)
                                    if spec.max > spec.min else 0.0)):
                    if address in client.listening:
                        arg = float(v) if address.startswith("/norm/") else _value_of(spec, v)
                        self._send(client, _encode(address, arg))

    def _send_all(self, message: str | bytes, address: str | None) -> None:
        """``message`` to every websocket, or (with ``address``) to those listening to it."""
        for client in list(self._clients.values()):
            if address is None or address in client.listening:
                self._send(client, message)

    def _send(self, client: _Listener, message: str | bytes) -> None:
        try:
            client.queue.put_nowait(message)
        except asyncio.QueueFull:  # it does not read: drop, count
            self._count("dropped")


@register("oscquery", table="oscquery", settings=OscQuerySettings, order=15)
def build(settings: OscQuerySettings, ctx: PartContext) -> OscQueryServer | None:
    """The OSCQuery part: on with ``[oscquery] enabled = true`` (and the OSC input on, whose port it announces)."""
    if not settings.enabled:
        return None
    osc = ctx.config.inputs.osc if ctx.config is not None else OscSettings()
    if not osc.enabled:
        log.warning("OSCQuery is enabled but the OSC input is not: nothing to announce, not started")
        return None
    outputs = [o.mesh.cols * o.mesh.rows if o.mesh else 0 for o in ctx.config.outputs] if ctx.config else []
    return OscQueryServer(settings, ctx.bus, ctx.scenes, osc, ctx.snapshot, outputs, capabilities(ctx.config),
                          str(ctx.base_dir), ctx.scene_info)
