"""OSC over UDP: the transport in front of the control surface, plus feedback out.

Transport, decoding and routing stay apart: the UDP transport (``inputs/udp.py``: socket, receive buffer, drain,
kernel drop counter, fair limiter; nothing raised reaches its thread's top and a bundle's timetag never makes it
sleep), OSC decoding here (python-osc's ``OscMessage`` parser behind our own bundle splitter and type-tag check), and
routing in the transport-free control surface (``inputs/surface.py``: the address map's handlers, range checks,
structural-event coalescing, feedback selection), which OSCQuery, MIDI mappings or a web page can share. Every
packet passes the allow-list, then the limiter (its host's budget, with a fair share for each of the host's ports; a
datagram costs one message, a bundle one per message), then the parser, then the surface's type and range checks;
each drop is counted by reason (see :data:`REJECT_REASONS`). Structural events (scene changes, seed jumps, prompts)
are coalesced: at most one per ``structural_interval`` per kind (per prompt slot), the first at once, the newest of
the rest when the interval ends (``coalesced`` counts those superseded).

Address space (``installation osc-map`` prints it from :func:`address_map`)::

    /param/<name> <f>            native range; out of range is dropped, not clamped
    /norm/<name> <f>             0..1 across the range (/param/<name>/norm, the older spelling, is taken too)
    /scene/next  /scene/prev  /scene/goto <s name | i index>    events fire on 1 or no argument, 0 is ignored
    /prompt/all <s>  /prompt/<slot> <s> [f weight]  through the prompt guard (/prompt <s> is taken too)
    /blend <f> [<f> ...]         img2img reference image weights, all at once
    /seed <i>  /freeze <0|1>  /blackout <0|1>  /panic  /ping -> /pong (to the sender)  [/quit if allowed]
    /describe -> /vision/description s (to the sender)  /steer <s> [f]      with [vision] (installation/vision)
    /seek <s> [f]  /seek_pick <i> [f]                                    with [vision] (installation/archive/seek.py)

Feedback (when ``feedback_host`` is set): ``/param/<name> f`` (``/norm/<name> f`` with ``feedback_norm``) for
changed parameters, ``/unavailable s s`` for a message this show cannot act on, ``/scene/current s`` and the
notes in ``surface.FEEDBACK_NOTES`` (``/vision/description s``, ``/vision/refused i``) when they change,
at most ``feedback_rate`` flushes per second, never the value a sender just set back to that same sender. It is the
OSC part's per-tick hook (:meth:`OscServer.tick`), so the runtime knows nothing of it.
Its settings, which the control surface reads too, are in :mod:`installation.inputs.osc_settings`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from installation.bus import ParamBus, ParamSpec
from installation.inputs.base import RateMeter
from installation.inputs.osc_settings import OscSettings
from installation.inputs.surface import (REJECT_REASONS, SEED_MAX, Capabilities, ControlSurface, Scenes, Sender,
                                        capabilities, scene_list)
from installation.inputs.udp import FairLimiter, UdpReceiver, host_key
from installation.parts import Moment, PartContext, register

__all__ = ["REJECT_REASONS", "ControlSurface", "OscServer", "OscSettings", "Sender", "address_map", "bench_latency"]

log = logging.getLogger(__name__)

_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_MAX_NESTING = 8  # bundles inside bundles
_KNOWN_TAGS = b"ifsbhdtrmTFN[]"  # the argument types python-osc parses; any other is refused before parsing


def _specs_of(bus_specs: Mapping[str, ParamSpec] | Iterable[ParamSpec]) -> list[ParamSpec]:
    return list(bus_specs.values()) if isinstance(bus_specs, Mapping) else list(bus_specs)


def address_map(
    bus_specs: Mapping[str, ParamSpec] | Iterable[ParamSpec],
    scenes: Scenes,
    settings: OscSettings | None = None,
    caps: Capabilities | None = None,
) -> list[tuple[str, str, str]]:
    """The OSC address space as (address, argument types, doc) rows, for ``installation osc-map`` and OSCQuery.

    With ``caps`` (the show's :class:`Capabilities`) only the addresses that can act in this show are listed, so the
    map, OSCQuery's tree and what the OSC port answers agree; ``/blend`` is listed only when a scene blends reference
    images."""
    s = settings or OscSettings()
    rows: list[tuple[str, str, str]] = []
    specs = _specs_of(bus_specs)
    for spec in sorted(specs, key=lambda p: p.name):
        if spec.name.startswith(s.exclude_prefixes):
            continue
        kind = {"float": "f", "int": "i|f", "bool": "i|f|T|F"}[spec.type]
        doc = f"{spec.type} {spec.min:g}..{spec.max:g} (default {spec.default:g})" + (f": {spec.doc}" if spec.doc else "")
        rows.append((f"/param/{spec.name}", kind, doc))
    for spec in sorted(specs, key=lambda p: p.name):
        if not spec.name.startswith(s.exclude_prefixes):
            rows.append((f"/norm/{spec.name}", "f", f"{spec.name} from 0..1 across {spec.min:g}..{spec.max:g}"))
    names = scene_list(scenes)
    rows += [
        ("/scene/next", "", "go to the next scene (events fire on 1 or no argument, a 0 is a button's release)"),
        ("/scene/prev", "", "go to the previous scene"),
        ("/scene/goto", "s|i", "scene by name or index: " + ", ".join(f"{i}={n}" for i, n in enumerate(names))),
        ("/prompt/all", "s", f"replace the whole prompt (guarded, at most {s.prompt.max_length} characters; "
                             "/prompt s is taken too)"),
    ]
    lo, hi = s.prompt_weight
    rows += [(f"/prompt/{i}", "s [f]", f"prompt slot {i}, optional weight {lo:g}..{hi:g}") for i in range(s.prompt_slots)]
    rows += [
        ("/seed", "i", f"jump to seed 0..{SEED_MAX}"),
        ("/map/goto", "f f", "glide to the archived point nearest this place on the map (x, y: 0..1 from top left)"),
        ("/blend", "f [f ...]", "img2img reference image weights at once (reference.<i>.weight), all or none"),
        ("/freeze", "i|f|T|F", "1 holds the current frame, 0 releases"),
        ("/blackout", "i|f|T|F", "1 fades to black, 0 fades back"),
        ("/panic", "", "blackout now and reset steering to the scene defaults (fires on 1 or no argument; 0 is "
                       "ignored, as a button's release)"),
        ("/preset/store", "s", "store the playing scene's parameters as a named preset (beside the config)"),
        ("/preset/recall", "s [f]", "glide to a stored preset over f seconds ([presets] fade_s when not given)"),
        ("/ping", "[any]", "answered by /pong (same numeric/string args) to the sender"),
        ("/describe", "", "answered by /vision/description s (what the frame shows, [vision]) to the sender"),
        ("/steer", "s [f]", "bend the walk towards a text, strength 0..1 ([vision]; guarded); \"\" releases"),
        ("/seek", "s [f]", "glide (over f s) to the archived moment or space image most like a text and hold it "
                           "([vision]); \"\" lets the walk go on"),
        ("/seek_pick", "i [f]", "glide to the i-th result (from 0) of the latest /seek instead"),
        ("/calibrate/on", "i|f|T|F", "1 shows the projector outputs' test patterns for calibration, 0 ends (and "
                                     "saves); /calibrate 1|0 is taken too"),
        ("/calibrate/save", "", "save the calibration beside the config now"),
        ("/calibrate/undo", "", "undo the last calibration change"),
        ("/output/<n>/corner/<0-3>", "f f", "move output n's corner (n from 1, as on its test pattern; corners "
                                            "top-left, top-right, bottom-right, bottom-left) to x y in 0..1 of the "
                                            "output"),
        ("/output/<n>/mesh/<i>", "f f", "move output n's mesh point i (row by row) to x y, 0..1"),
        ("/output/<n>/blend/<side>", "f", "output n's soft-edge width at left|right|top|bottom, 0..0.5"),
        ("/midi/learn", "s", "bind the next moved MIDI control to this parameter ([inputs.midi]); \"\" cancels; "
                             "a pending learn expires after [inputs.midi] learn_timeout_s"),
    ]
    if s.allow_quit:
        rows.append(("/quit", "", "stop the show"))
    if not any(p.name == "reference.0.weight" for p in specs):
        rows = [r for r in rows if r[0] != "/blend"]
    if caps is not None:
        rows = [r for r in rows if caps.why_not(r[0].replace("<n>", "1")) is None]
    if s.feedback_host:
        rows.append((f"-> {s.feedback_host}:{s.feedback_port} /param/<name>", "f", "feedback of changed parameters"))
        rows.append((f"-> {s.feedback_host}:{s.feedback_port} /scene/current", "s", "feedback of the scene"))
    return rows


_FIXED = {"i": 4, "f": 4, "r": 4, "m": 4, "h": 8, "d": 8, "t": 8}


def _pad4(n: int) -> int:
    return n + (-n % 4)


def _complete(msg: OscMessage) -> bool:
    """True when the datagram holds exactly what its type tags promise (python-osc pads short floats)."""
    dgram = msg.dgram
    if len(dgram) % 4:
        return False
    end = dgram.find(b"\0")
    i = _pad4(end + 1)
    if i >= len(dgram):
        return i == len(dgram)
    tend = dgram.find(b"\0", i)
    tags = dgram[i + 1 : tend].decode("ascii", "replace")
    i = _pad4(tend + 1)
    args = iter(_flat(msg.params))
    for tag in tags:
        if tag in _FIXED:
            i += _FIXED[tag]
            next(args, None)
        elif tag == "s":
            i += _pad4(len(str(next(args, "")).encode("utf-8")) + 1)
        elif tag == "b":
            i += 4 + _pad4(len(next(args, b"")))
        elif tag in "TFN":
            next(args, None)
        elif tag not in "[]":
            return False  # a type python-osc skips: refuse rather than guess its size
    return i == len(dgram)


def _elements(data: bytes, depth: int = 0) -> Iterator[bytes]:
    """The message datagrams of a packet in order, bundles unpacked (timetags ignored); ValueError when malformed.

    Our own walk instead of ``OscBundle``: it bounds nesting, refuses an element that is neither a message nor a
    bundle (python-osc logs a root WARNING for each and skips it) and is lazy, so a bundle of thousands of messages
    costs no more than the messages its sender may still spend.
    """
    if data.startswith(b"/"):
        yield data
        return
    if not data.startswith(b"#bundle\0") or len(data) < 16 or depth >= _MAX_NESTING:
        raise ValueError("neither a message nor a bundle")
    i, n = 16, len(data)
    while i < n:
        if i + 4 > n:
            raise ValueError("bundle element size cut")
        size = int.from_bytes(data[i : i + 4], "big", signed=True)
        i += 4
        if size <= 0 or size % 4 or i + size > n:
            raise ValueError("bad bundle element size")
        yield from _elements(data[i : i + size], depth + 1)
        i += size


def _tags_known(dgram: bytes) -> bool:
    """False when the type tag string names a type python-osc does not parse (it would log a root WARNING)."""
    end = dgram.find(b"\0")
    if end < 0:
        return True  # no address terminator: the parser calls it malformed
    i = _pad4(end + 1)
    if i >= len(dgram):
        return True
    tend = dgram.find(b"\0", i)
    tags = dgram[i : tend if tend >= 0 else len(dgram)]
    return not tags.startswith(b",") or not tags[1:].translate(None, _KNOWN_TAGS)


def _flat(params: list[Any]) -> Iterator[Any]:
    for p in params:
        if isinstance(p, list):
            yield from _flat(p)
        else:
            yield p


def allowed_networks(settings: OscSettings) -> list[Any]:
    """The networks whose senders may talk: ``allow``, plus loopback unless ``allow_loopback`` is off (loopback
    alone when ``allow`` is empty)."""
    nets: list[Any] = [ipaddress.ip_network(a, strict=False) for a in settings.allow]
    if settings.allow_loopback or not nets:
        nets += list(_LOOPBACK)  # TouchDesigner on the show's own machine stays live beside a tablet
    return nets


def is_allowed(nets: list[Any], host: str) -> bool:
    """Whether a sender's address (IPv4, IPv6, IPv4-mapped, with or without a zone) is in ``nets``."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in nets)


def parse_packet(data: bytes) -> list[OscMessage] | str:
    """The messages of one OSC packet (bundles unpacked, in order), or the reject reason when it is refused."""
    try:
        parts = list(_elements(data))
    except ValueError:
        return "malformed"
    if not all(_tags_known(p) for p in parts):
        return "unknown_type_tag"
    try:
        messages = [OscMessage(p) for p in parts]
    except Exception:  # noqa: BLE001 - any parser failure is a malformed packet
        return "malformed"
    if not all(_complete(m) for m in messages):
        return "malformed"
    return messages


def _encode(address: str, *args: Any) -> bytes:
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


class OscServer:
    """OSC over UDP in front of a :class:`ControlSurface`. ``start()`` binds and serves in a thread; ``tick()`` (the
    runtime calls it once per loop tick) sends feedback. A :class:`~installation.parts.Part`."""

    restart_max_s = 0.0  # a socket costs nothing to reopen: the runtime restarts it at once, and retries each second

    def __init__(
        self,
        settings: OscSettings,
        bus: ParamBus,
        scenes: Scenes = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        base_dir: str | None = None,
        surface: ControlSurface | None = None,
        caps: Capabilities | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.surface = surface or ControlSurface(settings, bus, scenes, clock=clock, base_dir=base_dir, caps=caps)
        self._packet_rate = RateMeter("packets")  # packets_per_s and last_packet_age_s for /health
        self._allow = allowed_networks(settings)
        self._senders: OrderedDict[str, tuple[bool, str]] = OrderedDict()  # host -> (allowed, limiter host key)
        self._limiter = FairLimiter(settings.rate_limit, settings.burst, max_hosts=settings.max_senders,
                                    ports_per_host=settings.ports_per_host)
        # _rx_lock serialises packet handling (the receive thread, or a caller of handle_datagram: the limiter is not
        # thread-safe); the surface's own lock guards its counters, so stats() never waits for a packet.
        self._rx_lock = threading.Lock()
        self._rx: UdpReceiver | None = None
        self._fb_sock: socket.socket | None = None
        self._fb_addr: tuple[Any, ...] | None = None
        self._fb_host = ""

    @property
    def dispatcher(self) -> Any:
        """The surface's python-osc ``Dispatcher`` (address patterns -> handlers)."""
        return self.surface.dispatcher

    # -- packets -----------------------------------------------------------------------------------------------
    def _sender(self, host: str) -> tuple[bool, str]:
        """(allowed, limiter host key) of a sender address, cached."""
        entry = self._senders.get(host)
        if entry is None:
            entry = self._senders[host] = (is_allowed(self._allow, host), host_key(host))
            if len(self._senders) > 1024:
                self._senders.popitem(last=False)
        return entry

    def handle_datagram(self, data: bytes, client: tuple[Any, ...]) -> None:
        """Apply one UDP datagram from ``client``; every outcome is counted, nothing is raised."""
        with self._rx_lock:
            self._handle(data, client)

    def _handle(self, data: bytes, client: tuple[Any, ...]) -> None:
        surface = self.surface
        allowed, key = self._sender(str(client[0]))
        if not allowed:
            surface.reject("not_allowed", packet=True)
            return
        port = client[1] if len(client) > 1 else None
        if not self._limiter.take(key, port):  # every datagram costs a token, a malformed one too
            surface.reject("rate_limited", packet=True)
            return
        parts: list[bytes] = []
        try:
            for part in _elements(data):
                if parts and not self._limiter.take(key, port):  # a bundle costs one token per message
                    surface.reject("rate_limited")  # this message and the rest of the bundle (not looked at)
                    break
                parts.append(part)
        except ValueError:
            surface.reject("malformed", packet=True)
            return
        if not all(_tags_known(p) for p in parts):
            surface.reject("unknown_type_tag", packet=True)  # python-osc would skip the argument, log a WARNING
            return
        try:
            messages = [OscMessage(p) for p in parts]
        except Exception:  # noqa: BLE001 - any parser failure is a malformed packet
            surface.reject("malformed", packet=True)
            return
        if not all(_complete(m) for m in messages):
            surface.reject("malformed", packet=True)
            return
        surface.count("packets")
        sender = Sender("osc", client[0], port, lambda address, *args: self._reply(client, address, *args))
        for msg in messages:
            surface.apply(msg.address, msg.params, sender)

    def _reply(self, client: tuple[Any, ...], address: str, *args: Any) -> None:
        sock = self._sock
        if sock is not None:
            sock.sendto(_encode(address, *args), client[:2])

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def _sock(self) -> socket.socket | None:
        rx = self._rx
        return rx.sock if rx is not None else None

    @property
    def address(self) -> tuple[str, int] | None:
        """tuple: the bound (host, port) while running, else None."""
        rx = self._rx
        return rx.address if rx is not None else None  # type: ignore[return-value]

    @property
    def running(self) -> bool:
        """bool: whether the receive thread is serving."""
        return self._rx is not None and self._rx.alive

    @property
    def alive(self) -> bool:
        """bool: the receive thread runs (False once started, it has ended: the runtime then restarts the server)."""
        return self.running

    @property
    def _thread(self) -> threading.Thread | None:
        """The receive thread (tests end it to play a death)."""
        rx = self._rx
        return rx._thread if rx is not None else None

    @property
    def _stop(self) -> threading.Event | None:
        rx = self._rx
        return rx._stop if rx is not None else None

    def start(self) -> None:
        """Bind the socket (fails fast with OSError if the port is taken) and start the receive thread."""
        if self._rx is not None:
            return
        s = self.settings
        rx = UdpReceiver(s.host, s.port, self.handle_datagram, rcvbuf=s.rcvbuf, on_idle=self.surface.release_held,
                         name="osc-server")
        try:
            rx.bind()
        except OSError as exc:
            raise OSError(exc.errno, f"OSC: {exc.strerror}") from exc
        if s.feedback_host:
            try:
                fb = socket.getaddrinfo(s.feedback_host, s.feedback_port, type=socket.SOCK_DGRAM)[0]
                self._fb_sock = socket.socket(fb[0], socket.SOCK_DGRAM)
                self._fb_sock.setblocking(False)
                self._fb_addr = fb[4]
                self._fb_host = str(fb[4][0])
            except OSError as exc:
                log.error("OSC feedback to %s:%s disabled: %s", s.feedback_host, s.feedback_port, exc)
        self._rx = rx
        rx.start()
        log.info("OSC listening on %s:%s (receive buffer %s KiB)", *self.address, (rx.rcvbuf_bytes() or 0) // 1024)

    def stop(self) -> None:
        """Stop the thread and close the sockets; safe to call twice."""
        rx, self._rx = self._rx, None
        if rx is not None:
            rx.stop()
        if self._fb_sock is not None:
            self._fb_sock.close()
        self._fb_sock = None
        self._fb_addr = None

    def stats(self) -> dict[str, Any]:
        """Counters: packets, messages, applied, coalesced, pongs, feedback_sent, rejects by reason, guard reasons,
        and the transport's: kernel_drops (datagrams the kernel dropped, buffer full), rx_queue_bytes, rcvbuf_bytes."""
        out = self.surface.stats()
        out.update(self._packet_rate.figures(out["packets"]))
        rx = self._rx
        if rx is not None:
            t = rx.stats()
            out.update(kernel_drops=t["kernel_drops"], rx_queue_bytes=t["rx_queue_bytes"],
                       rcvbuf_bytes=t["rcvbuf_bytes"])
            for key in ("socket_errors", "callback_errors"):
                if t[key]:
                    out[key] = t[key]
        return out

    # -- feedback (loop thread) --------------------------------------------------------------------------------
    def tick(self, moment: Moment) -> None:
        """The part's per-tick hook: feedback of the bus targets and the scene playing."""
        if self._fb_sock is not None:
            self.feedback(self.bus.targets(), moment.scene.name)

    def feedback(self, values: Mapping[str, float], scene: str) -> None:
        """Send changed parameters and the scene to the feedback target; never blocks, rate-bounded.

        Pass the values the performer should see (the bus targets, or the modulated values). A parameter that a
        sender on the feedback host set within ``echo_guard`` seconds is not sent back to it.
        """
        sock, addr = self._fb_sock, self._fb_addr
        if sock is None or addr is None:
            return
        surface = self.surface
        for address, value in surface.feedback_due(values, scene, self._fb_host):
            try:
                sock.sendto(_encode(address, *(value if isinstance(value, tuple) else (value,))), addr)
                surface.count("feedback_sent")
            except BlockingIOError:
                surface.count("feedback_dropped")
            except OSError:
                surface.count("feedback_errors")


@register("osc", table="inputs.osc", settings=OscSettings, order=10)
def build(settings: OscSettings, ctx: PartContext) -> OscServer | None:
    """The OSC part: on unless ``[inputs.osc] enabled = false``; its port is bound at start (a start-up error)."""
    if not settings.enabled:
        return None
    return OscServer(settings, ctx.bus, ctx.scenes, base_dir=str(ctx.base_dir), caps=capabilities(ctx.config))


def bench_latency(n: int = 2000, warmup: int = 100) -> dict[str, float]:
    """Print and return the send-to-bus latency of /param messages over loopback (p50, p99, max in ms)."""
    from pythonosc.udp_client import SimpleUDPClient

    bus = ParamBus([ParamSpec("bench", min=0.0, max=1e9)])
    server = OscServer(OscSettings(port=0, rate_limit=1e9, burst=10**9), bus)
    server.start()
    try:
        host, port = server.address  # type: ignore[misc]
        client = SimpleUDPClient(host, port)
        lat: list[float] = []
        for i in range(1, n + warmup + 1):
            t0 = time.perf_counter()
            client.send_message("/param/bench", float(i))
            while bus.targets()["bench"] != float(i):
                if time.perf_counter() - t0 > 1.0:
                    break
                time.sleep(0)  # yield the GIL to the server thread
            if i > warmup:
                lat.append((time.perf_counter() - t0) * 1e3)
        lat.sort()
        figures = {
            "n": float(len(lat)),
            "p50_ms": lat[len(lat) // 2],
            "p99_ms": lat[int(len(lat) * 0.99)],
            "max_ms": lat[-1],
            "mean_ms": sum(lat) / len(lat),
        }
    finally:
        server.stop()
    print(f"OSC /param -> bus latency over {n} messages: p50 {figures['p50_ms']:.3f} ms, "
          f"p99 {figures['p99_ms']:.3f} ms, max {figures['max_ms']:.3f} ms")
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    bench_latency()
