"""The control surface: an address space (``/param/<name>``, ``/scene/goto``, ``/prompt``, ...) mapped onto bus writes
and events, plus the feedback a performer's controller should show. No transport here.

Any transport calls :meth:`ControlSurface.apply` with an address, its arguments and a :class:`Sender` (transport
name, host, port, and optionally how to answer): OSC over UDP does (``inputs/osc.py``), and OSCQuery, MIDI mappings
or a web page can, with the same type and range checks, the same counters and the same structural-event coalescing
(at most one scene change, seed jump or prompt per slot per ``structural_interval``: the first at once, the newest
of the rest when the interval ends; ``coalesced`` counts those superseded). Every dropped message is counted by
reason (see :data:`REJECT_REASONS`). Bus writes carry ``<transport>:<host>`` as their source.

Events (``/scene/next``, ``/scene/prev``, ``/panic``, ``/calibrate/save``, ``/calibrate/undo``, ``/describe``,
``/quit``) fire on a non-zero argument or none and ignore 0 (counted as ``released``): a TouchOSC, Resolume or QLab
button sends 1 on press and 0 on release, and must fire once per tap.

An address whose part is off in this show (``/map/goto`` without the archive, ``/steer`` and ``/describe`` without
``[vision]``, ``/midi/learn`` without MIDI, ``/blend`` where no scene blends reference images, ``/output/<n>`` past
the show's outputs) is answered as ``unavailable``: counted under that reason and, when feedback is on, sent back
as ``/unavailable s<address> s<why>``. What is available is a :class:`Capabilities`, read from the config
(:func:`capabilities`).

Feedback (:meth:`ControlSurface.feedback_due`) picks what to send: changed parameters and the scene, at most
``feedback_rate`` flushes per second and ``feedback_max_messages`` per flush, never the value a sender on the
feedback host just set back to it; the transport encodes and sends it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from pythonosc.dispatcher import Dispatcher

from installation.bus import MAX_GLIDE, Event, ParamBus
from installation.inputs.osc_settings import OscSettings
from installation.inputs.prompt_guard import PromptGuard

log = logging.getLogger(__name__)

REJECT_REASONS = (
    "malformed", "unknown_type_tag", "unknown_address", "bad_type", "out_of_range", "not_allowed", "rate_limited",
    "guard", "event_overflow", "unavailable", "error",
)
MAX_ADDRESS = 256
AUDIT_TEXT_MAX = 1000  # characters of a prompt kept in its audit note
# Notes (ParamBus.note) sent as feedback when they change: the frame's description, the refusals made visible.
FEEDBACK_NOTES = {"vision.description": "/vision/description", "vision.refused": "/vision/refused",
                  "midi.learn": "/midi/learn/state"}
MAX_PENDING_FEEDBACK = 32  # /unavailable answers waiting for the next feedback flush; older ones dropped
SEED_MAX = 2**32 - 1
MAX_BLEND = 16  # reference images one /blend message may weigh
MAX_SEEK_TEXT = 500  # characters of a /seek text
MAX_SEEK_RESULTS = 50  # results of a /seek that /seek_pick may choose from
MAX_OUTPUTS = 64  # projector outputs /output/<n>/... may address
MAX_MESH_POINTS = 33 * 33
_STRUCTURAL = {"scene.next": "scene", "scene.prev": "scene", "scene.goto": "scene", "seed": "seed"}

Scenes = Sequence[str] | Callable[[], Sequence[str]]


class Capabilities(NamedTuple):
    """Which optional parts of the address space this show can act on. The defaults (everything, any output) are
    for a surface with no show behind it (a test, a bench); a running show passes :func:`capabilities`."""

    archive: bool = True  # /map/goto
    vision: bool = True  # /steer, /describe
    midi: bool = True  # /midi/learn
    outputs: int | None = None  # projector outputs: /output/<1..n>, /calibrate (None: not known, any n)
    presets: bool = True  # /preset/store, /preset/recall

    def why_not(self, address: str) -> str | None:
        """Why ``address`` cannot act in this show, or None when it can (or the address is not optional)."""
        if address == "/map/goto" and not self.archive:
            return "the archive is off ([archive] enabled = false)"
        if address in ("/steer", "/describe", "/seek", "/seek_pick") and not self.vision:
            return "[vision] is off"
        if address.startswith("/midi/learn") and not self.midi:
            return "MIDI is off ([inputs.midi] enabled = false)"
        if address.startswith("/preset/") and not self.presets:
            return "presets are off ([presets] enabled = false)"
        if self.outputs is not None:
            if address.startswith("/calibrate") and self.outputs == 0:
                return "no [[outputs]] to calibrate"
            if address.startswith("/output/"):
                n = address.split("/")[2] if address.count("/") >= 2 else ""
                if n.isdigit() and int(n) > self.outputs:
                    return f"this show has {self.outputs} output{'s' if self.outputs != 1 else ''}"
        return None


def capabilities(config: Any) -> Capabilities:
    """The :class:`Capabilities` of a validated config (everything when there is none)."""
    if config is None:
        return Capabilities()

    def on(*path: str) -> bool:
        obj = config
        for key in path:
            obj = getattr(obj, key, None)
        return bool(obj)

    return Capabilities(archive=on("archive", "enabled"), vision=on("vision", "enabled"),
                        midi=on("inputs", "midi", "enabled"), outputs=len(getattr(config, "outputs", ()) or ()),
                        presets=on("presets", "enabled"))


class Sender(NamedTuple):
    """Who sent a message: the transport's name ("osc", "midi", "web"), the host, the port (None where there is
    none) and, where the transport can answer, ``reply(address, *args)`` (used by /ping)."""

    transport: str
    host: str
    port: Any = None
    reply: Callable[..., None] | None = None

    @property
    def source(self) -> str:
        """str: the bus source of what this sender sets (``osc:127.0.0.1``)."""
        return f"{self.transport}:{self.host}"


class Reject(Exception):
    """Raised inside a handler to drop the message, counted under ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unavailable(Exception):
    """Raised inside a handler when the show has no part that could act on the message (``why`` says which)."""


class Released(Exception):
    """Raised inside an event's handler for a 0 argument (a button's release): not applied, not an error."""


def pressed(args: Sequence[Any]) -> bool:
    """Whether an event's arguments fire it: none, or one non-zero number (``T`` too); 0 / ``F`` is a release."""
    if not args:
        return True
    if len(args) != 1:
        raise Reject("bad_type")
    if args[0] is None:
        return True  # an OSC nil fires like no argument
    return finite(number(args[0])) != 0.0


def number(arg: Any) -> float:
    """A numeric argument (int, float, bool) as a float; anything else is a bad type."""
    if isinstance(arg, bool):
        return 1.0 if arg else 0.0
    if isinstance(arg, (int, float)):
        return float(arg)
    raise Reject("bad_type")


def finite(v: float) -> float:
    if not math.isfinite(v):
        raise Reject("out_of_range")
    return v


def scene_list(scenes: Scenes) -> list[str]:
    return list(scenes() if callable(scenes) else scenes)


class Coalescer:
    """At most one structural event per group per ``interval``: the first passes at once, later ones are held (the
    newest replaces an older held one) and the held one is released when the interval since the last ends."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[Any, float] = {}
        self._held: dict[Any, Event] = {}

    def offer(self, group: Any, event: Event, now: float) -> str:
        """``"post"`` (post it now), ``"held"`` (kept for later) or ``"replaced"`` (kept; an older held one dropped)."""
        with self._lock:
            last = self._last.get(group)
            if group not in self._held and (last is None or now - last >= self.interval):
                self._last[group] = now
                return "post"
            replaced = group in self._held
            self._held[group] = event
            return "replaced" if replaced else "held"

    def due(self, now: float) -> tuple[list[Event], float | None]:
        """The held events whose interval has ended (now marked posted) and the seconds until the next is due."""
        out: list[Event] = []
        wait: float | None = None
        with self._lock:
            for group, event in list(self._held.items()):
                at = self._last.get(group, -math.inf) + self.interval
                if now >= at:
                    out.append(event)
                    del self._held[group]
                    self._last[group] = now
                else:
                    wait = at - now if wait is None else min(wait, at - now)
        return out, wait


class ControlSurface:
    """Addresses -> bus writes and events, with counters; feedback selection. Thread-safe: ``apply`` may be called
    from any transport's thread (calls are serialised); ``stats`` and ``feedback_due`` never wait for one."""

    def __init__(self, settings: OscSettings, bus: ParamBus, scenes: Scenes = (), *,
                 clock: Callable[[], float] = time.monotonic, base_dir: str | None = None,
                 caps: Capabilities | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.caps = caps or Capabilities()
        self._scenes = scenes
        self._clock = clock
        self._guard = PromptGuard(settings.prompt, base_dir)
        self._coalescer = Coalescer(settings.structural_interval)
        # _apply_lock serialises messages (the coalescer and the guard's counters are not thread-safe across
        # senders); _lock, never held across a handler, guards the counters and the last-setter table.
        self._apply_lock = threading.Lock()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejects: Counter[str] = Counter()
        self._guard_reasons: Counter[str] = Counter()
        self._setters: dict[str, tuple[str, float, float]] = {}  # param -> (host, time, value set)
        self._fb_next = -math.inf
        self._fb_sent: dict[str, float] = {}
        self._fb_scene: str | None = None
        self._fb_notes: dict[str, Any] = {}
        self._fb_pending: deque[tuple[str, tuple[Any, ...]]] = deque(maxlen=MAX_PENDING_FEEDBACK)
        self.dispatcher = self._build_dispatcher()

    # -- routing -----------------------------------------------------------------------------------------------
    def _build_dispatcher(self) -> Dispatcher:
        d = Dispatcher(strict_timing=False)
        table: dict[str, Callable[..., None]] = {
            "/param/*": self._h_param,
            "/norm/*": self._h_param,
            "/scene/next": lambda c, a, *args: self._fire("scene.next", args, c),
            "/scene/prev": lambda c, a, *args: self._fire("scene.prev", args, c),
            "/scene/goto": self._h_goto,
            "/prompt": self._h_prompt,
            "/prompt/*": self._h_prompt,
            "/seed": self._h_seed,
            "/map/goto": self._h_map_goto,
            "/blend": self._h_blend,
            "/freeze": lambda c, a, *args: self._h_gate("freeze", args, c),
            "/blackout": lambda c, a, *args: self._h_gate("blackout", args, c),
            "/panic": lambda c, a, *args: self._fire("panic", args, c),
            "/ping": self._h_ping,
            "/describe": self._h_describe,
            "/steer": self._h_steer,
            "/seek": self._h_seek,
            "/seek_pick": self._h_seek_pick,
            # projector calibration (render/calibration.py); the runtime counts what no output can take
            "/calibrate": lambda c, a, *args: self._h_gate("calibrate", args, c),
            "/calibrate/on": lambda c, a, *args: self._h_gate("calibrate", args, c),
            "/calibrate/save": lambda c, a, *args: self._fire("calibrate.save", args, c),
            "/calibrate/undo": lambda c, a, *args: self._fire("calibrate.undo", args, c),
            "/output/*": self._h_output,
            "/midi/learn": self._h_learn,
            "/preset/store": self._h_preset,
            "/preset/recall": self._h_preset,
        }
        if self.settings.allow_quit:
            table["/quit"] = lambda c, a, *args: self._fire("quit", args, c)
        for address, fn in table.items():
            d.map(address, fn, needs_reply_address=True)
        return d

    def apply(self, address: str, args: Sequence[Any], sender: Sender) -> None:
        """Apply one message; every outcome is counted (``messages``, ``applied`` or a reject), nothing is raised."""
        with self._apply_lock:
            self._apply(address, args, sender)

    def _apply(self, address: str, args: Sequence[Any], sender: Sender) -> None:
        self.count("messages")
        if len(address) > MAX_ADDRESS:
            self.reject("malformed")
            return
        if not self.settings.patterns and any(c in address for c in "*?[]{}"):
            self.reject("unknown_address")
            return
        handlers = list(self.dispatcher.handlers_for_address(address))
        if not handlers:
            self.reject("unknown_address")
            return
        why = self.caps.why_not(address)
        if why is not None:
            self.unavailable(address, why)
            return
        for handler in handlers:
            try:
                handler.callback(sender, address, *args)
                self.count("applied")
            except Released:
                self.count("released")
            except Unavailable as u:
                self.unavailable(address, str(u))
            except Reject as r:
                self.reject(r.reason)
            except Exception:  # noqa: BLE001 - a handler bug must not stop the transport
                self.reject("error")
                log.debug("control handler for %r failed", address, exc_info=True)

    def unavailable(self, address: str, why: str) -> None:
        """Count a message this show cannot act on and queue ``/unavailable address why`` for the feedback."""
        self.reject("unavailable")
        with self._lock:
            self._fb_pending.append(("/unavailable", (address[:MAX_ADDRESS], why)))

    def _fire(self, kind: str, args: Sequence[Any], sender: Sender) -> None:
        """An event that fires on press (no argument, or non-zero) and ignores a button's release (0)."""
        if not pressed(args):
            raise Released()
        self._post(kind, None, sender)

    def _post(self, kind: str, value: Any, sender: Sender, group: Any = None) -> None:
        event = Event(kind, value, sender.source)
        group = _STRUCTURAL.get(kind, group)
        if group is not None and self._coalescer.interval > 0:
            outcome = self._coalescer.offer(group, event, time.monotonic())
            if outcome == "replaced":
                self.count("coalesced")  # the older held one is superseded: its intent merges into this one
            if outcome != "post":
                return
        if not self.bus.post(event):
            raise Reject("event_overflow")  # the bus's event queue is full

    def release_held(self) -> float | None:
        """Post the held structural events that are due; seconds until the next one is (or None). A transport calls
        it from its thread when idle."""
        events, wait = self._coalescer.due(time.monotonic())
        for event in events:
            if not self.bus.post(event):
                self.reject("event_overflow")
        return wait

    # -- handlers ----------------------------------------------------------------------------------------------
    def _h_param(self, sender: Sender, address: str, *args: Any) -> None:
        """``/param/<name>`` (native range), ``/norm/<name>`` (0..1 across it; ``/param/<name>/norm``, its older
        spelling, is still taken: OSCQuery cannot list it, since a node may not be both a method and a folder)."""
        if address.startswith("/norm/"):
            name, norm = address[len("/norm/"):], True
        else:
            rest = address[len("/param/"):]
            norm = rest.endswith("/norm")
            name = rest[: -len("/norm")] if norm else rest
        spec = self.bus.spec(name)
        if spec is None or name.startswith(self.settings.exclude_prefixes):
            raise Reject("unknown_address")
        if len(args) != 1:
            raise Reject("bad_type")
        v = finite(number(args[0]))
        if norm:
            if not 0.0 <= v <= 1.0:
                raise Reject("out_of_range")
            value = spec.from_norm(v)
        else:
            if not spec.min <= v <= spec.max:
                raise Reject("out_of_range")
            value = v
        if not self.bus.set(name, value, source=sender.source):
            raise Reject("out_of_range")
        with self._lock:
            self._setters[name] = (sender.host, self._clock(), value)

    def _h_goto(self, sender: Sender, address: str, *args: Any) -> None:
        if len(args) != 1:
            raise Reject("bad_type")
        arg = args[0]
        names = scene_list(self._scenes)
        if isinstance(arg, str):
            if names and arg not in names:
                raise Reject("out_of_range")
            self._post("scene.goto", arg, sender)
            return
        v = finite(number(arg))
        if v != int(v) or v < 0 or (names and v >= len(names)):
            raise Reject("out_of_range")
        self._post("scene.goto", int(v), sender)

    def _h_prompt(self, sender: Sender, address: str, *args: Any) -> None:
        slot: int | None = None
        if address not in ("/prompt", "/prompt/all"):
            tail = address[len("/prompt/"):]
            if not tail.isdigit() or int(tail) >= self.settings.prompt_slots:
                raise Reject("unknown_address")
            slot = int(tail)
        if not 1 <= len(args) <= (2 if slot is not None else 1) or not isinstance(args[0], str):
            raise Reject("bad_type")
        weight: float | None = None
        if len(args) == 2:
            weight = finite(number(args[1]))
            lo, hi = self.settings.prompt_weight
            if not lo <= weight <= hi:
                raise Reject("out_of_range")
        result = self._guard.check(args[0])
        # Every public prompt is noted for the audit log (installation/vision/audit.py), refused ones too.
        self.bus.note("prompt.audit", {"slot": slot, "text": self._guard.audit_text(args[0][:AUDIT_TEXT_MAX], result),
                                       "verdict": "ok" if result.ok else result.reason}, sender.source)
        if not result.ok:
            with self._lock:
                self._guard_reasons[result.reason] += 1
            raise Reject("guard")
        self._post("prompt", (slot, result.text, weight), sender, group=("prompt", slot))

    def _h_seed(self, sender: Sender, address: str, *args: Any) -> None:
        if len(args) != 1 or isinstance(args[0], bool):
            raise Reject("bad_type")
        v = finite(number(args[0]))
        if v != int(v) or not 0 <= v <= SEED_MAX:
            raise Reject("out_of_range")
        self._post("seed", int(v), sender)

    def _h_map_goto(self, sender: Sender, address: str, *args: Any) -> None:
        """A place on the archive's map (0..1 across, 0..1 down); the archive part glides the walk there."""
        if len(args) != 2 or any(isinstance(a, (bool, str, bytes)) for a in args):
            raise Reject("bad_type")
        x, y = (finite(number(a)) for a in args)
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise Reject("out_of_range")
        self._post("map.goto", (x, y), sender, group="map")

    def _h_blend(self, sender: Sender, address: str, *args: Any) -> None:
        """All img2img reference weights in one message (reference.0.weight, reference.1.weight, ...), all or none."""
        if not 1 <= len(args) <= MAX_BLEND or any(isinstance(a, (str, bytes)) for a in args):
            raise Reject("bad_type")
        values = [finite(number(a)) for a in args]
        specs = [self.bus.spec(f"reference.{i}.weight") for i in range(len(values))]
        if specs[0] is None:
            raise Unavailable("no scene of this show blends reference images (img2img)")
        if any(spec is None for spec in specs):
            raise Reject("out_of_range")  # no scene of this show blends that many images
        if any(not spec.min <= v <= spec.max for spec, v in zip(specs, values)):
            raise Reject("out_of_range")
        for spec, v in zip(specs, values):
            self.bus.set(spec.name, v, source=sender.source)

    def _h_gate(self, kind: str, args: tuple[Any, ...], sender: Sender) -> None:
        if len(args) != 1:
            raise Reject("bad_type")
        v = finite(number(args[0]))
        if not 0.0 <= v <= 1.0:
            raise Reject("out_of_range")
        self._post(kind, v >= 0.5, sender)

    def _h_steer(self, sender: Sender, address: str, *args: Any) -> None:
        """``/steer s [f]``: bend the walk towards a text (through the prompt guard, audited); ``""`` releases it.
        Published as the ``steer`` note for the [vision] part."""
        if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
            raise Reject("bad_type")
        strength = None
        if len(args) == 2:
            strength = finite(number(args[1]))
            if not 0.0 <= strength <= 1.0:
                raise Reject("out_of_range")
        text = ""
        if args[0].strip():
            result = self._guard.check(args[0])
            self.bus.note("prompt.audit", {"slot": "steer",
                                           "text": self._guard.audit_text(args[0][:AUDIT_TEXT_MAX], result),
                                           "verdict": "ok" if result.ok else result.reason}, sender.source)
            if not result.ok:
                with self._lock:
                    self._guard_reasons[result.reason] += 1
                raise Reject("guard")
            text = result.text
        self.bus.note("steer", {"text": text, "strength": strength}, sender.source)

    def _h_seek(self, sender: Sender, address: str, *args: Any) -> None:
        """``/seek s [f]``: glide the walk to the archived moment (or space image) most like a text, over f seconds,
        and hold it there; ``""`` lets the walk go on. Published as the ``seek`` note for the search part (the text
        only chooses among moments already made and shown: it is bounded, not guarded)."""
        if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
            raise Reject("bad_type")
        glide = self._glide(args[1:])
        text = " ".join(args[0].split())
        if len(text) > MAX_SEEK_TEXT:
            raise Reject("too_long")
        self.bus.note("seek", {"text": text, "glide": glide}, sender.source)

    def _h_seek_pick(self, sender: Sender, address: str, *args: Any) -> None:
        """``/seek_pick i [f]``: glide to the i-th result (from 0) of the latest ``/seek`` instead of the best."""
        if not 1 <= len(args) <= 2 or isinstance(args[0], (bool, str, bytes)):
            raise Reject("bad_type")
        i = finite(number(args[0]))
        if i != int(i) or not 0 <= i < MAX_SEEK_RESULTS:
            raise Reject("out_of_range")
        self.bus.note("seek", {"pick": int(i), "glide": self._glide(args[1:])}, sender.source)

    @staticmethod
    def _glide(args: tuple[Any, ...]) -> float | None:
        if not args:
            return None
        if isinstance(args[0], (bool, str, bytes)):
            raise Reject("bad_type")
        glide = finite(number(args[0]))
        if not 0.0 <= glide <= MAX_GLIDE:
            raise Reject("out_of_range")
        return glide

    def _h_describe(self, sender: Sender, address: str, *args: Any) -> None:
        """Answer the sender with the current description of the frame (``[vision]``; "" before the first)."""
        if not pressed(args):
            raise Released()
        if sender.reply is None:
            return
        try:
            sender.reply("/vision/description", str(self.bus.notes().get("vision.description", "")))
            self.count("describes")
        except OSError:
            self.count("pong_errors")

    def _h_output(self, sender: Sender, address: str, *args: Any) -> None:
        """/output/<n>/corner/<0-3> x y, /output/<n>/mesh/<i> x y (0..1 of the output), /output/<n>/blend/<side> w.
        ``n`` counts from 1, as the test patterns and the outputs' default names number them."""
        parts = address.split("/")
        if len(parts) != 5 or not parts[2].isdigit() or not 1 <= int(parts[2]) <= MAX_OUTPUTS:
            raise Reject("unknown_address")
        n, what, key = int(parts[2]) - 1, parts[3], parts[4]
        if what in ("corner", "mesh") and key.isdigit() and int(key) < (4 if what == "corner" else MAX_MESH_POINTS):
            if len(args) != 2:
                raise Reject("bad_type")
            x, y = (finite(number(a)) for a in args)
            if not (-1.0 <= x <= 2.0 and -1.0 <= y <= 2.0):
                raise Reject("out_of_range")
            self._post(f"output.{what}", (n, int(key), x, y), sender)
        elif what == "blend" and key in ("left", "right", "top", "bottom"):
            if len(args) != 1:
                raise Reject("bad_type")
            width = finite(number(args[0]))
            if not 0.0 <= width <= 0.5:
                raise Reject("out_of_range")
            self._post("output.blend", (n, key, width), sender)
        else:
            raise Reject("unknown_address")

    def _h_learn(self, sender: Sender, address: str, *args: Any) -> None:
        """MIDI learn: the MIDI part (watching the bus journal) binds the next moved control to this parameter
        (``""`` cancels a pending learn)."""
        if len(args) != 1 or not isinstance(args[0], str):
            raise Reject("bad_type")
        if args[0] and (self.bus.spec(args[0]) is None or args[0].startswith(self.settings.exclude_prefixes)):
            raise Reject("out_of_range")
        self._post("midi.learn", args[0], sender)


    def _h_preset(self, sender: Sender, address: str, *args: Any) -> None:
        """``/preset/store s`` and ``/preset/recall s [f seconds]``: the presets part (ops/presets.py) does them; a
        recall names a stored preset (the part's ``presets`` note), a fade of 0..600 s."""
        from installation.ops.presets import MAX_FADE_S, valid_name  # noqa: PLC0415 - a small module, same layer

        store = address == "/preset/store"
        if not 1 <= len(args) <= (1 if store else 2) or not isinstance(args[0], str):
            raise Reject("bad_type")
        if not valid_name(args[0]):
            raise Reject("out_of_range")
        if store:
            self._post("preset.store", args[0], sender)
            return
        seconds = None
        if len(args) == 2:
            seconds = finite(number(args[1]))
            if not 0.0 <= seconds <= MAX_FADE_S:
                raise Reject("out_of_range")
        known = self.bus.notes().get("presets")
        if isinstance(known, list) and args[0] not in known:
            raise Reject("out_of_range")  # no such preset
        self._post("preset.recall", (args[0], seconds), sender)

    def _h_ping(self, sender: Sender, address: str, *args: Any) -> None:
        echo = [a for a in args[:8] if isinstance(a, (int, float, str)) and not isinstance(a, bool)]
        echo = [a for a in echo if not isinstance(a, str) or len(a) <= 64]
        if sender.reply is None:
            return
        try:
            sender.reply("/pong", *echo)
            self.count("pongs")
        except OSError:
            self.count("pong_errors")

    # -- counters ----------------------------------------------------------------------------------------------
    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def reject(self, reason: str, packet: bool = False) -> None:
        """Count a dropped message (or, with ``packet``, a whole datagram refused by its transport: counted as a
        packet too, under one lock)."""
        with self._lock:
            self._rejects[reason] += 1
            if packet:
                self._counts["packets"] += 1

    def stats(self) -> dict[str, Any]:
        """Counters: messages, applied, coalesced, pongs, feedback_sent, rejects by reason, guard reasons (and the
        transport's own, such as packets, counted here too)."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
            out["rejects"] = dict(self._rejects)
            out["guard"] = dict(self._guard_reasons)
        for key in ("packets", "messages", "applied", "coalesced"):
            out.setdefault(key, 0)
        return out

    # -- feedback (loop thread) --------------------------------------------------------------------------------
    def feedback_due(self, values: Mapping[str, float], scene: str, host: str) -> list[tuple[str, Any]]:
        """The (address, value) messages to send to a controller on ``host`` now: the scene when it changed and the
        parameters that changed, at most ``feedback_rate`` times a second (an empty list in between).

        A parameter that a sender on ``host`` set within ``echo_guard`` seconds is not sent back to it.
        """
        now = self._clock()
        if now < self._fb_next:
            return []
        s = self.settings
        self._fb_next = now + 1.0 / s.feedback_rate
        with self._lock:
            setters = dict(self._setters)
        out: list[tuple[str, Any]] = []
        with self._lock:
            while self._fb_pending and len(out) < s.feedback_max_messages // 2:
                out.append(self._fb_pending.popleft())
        if scene != self._fb_scene:
            out.append(("/scene/current", str(scene)))
            self._fb_scene = scene
        notes = self.bus.notes()
        for name, address in FEEDBACK_NOTES.items():  # what taps learned (the frame's description), when it changes
            if name in notes and notes[name] != self._fb_notes.get(name):
                self._fb_notes[name] = notes[name]
                out.append((address, notes[name]))
        for name, v in values.items():
            if len(out) >= s.feedback_max_messages:
                break
            if name.startswith(s.exclude_prefixes) or not math.isfinite(v):
                continue
            spec = self.bus.spec(name)
            if spec is None:
                continue
            eps = 1e-6 * max(spec.max - spec.min, 1e-9)
            who = setters.get(name)
            if who is not None and who[0] == host and now - who[1] < s.echo_guard:
                self._fb_sent[name] = who[2]  # the sender already shows this value
                continue
            last = self._fb_sent.get(name)
            if last is not None and abs(v - last) <= eps:
                continue
            self._fb_sent[name] = v
            if s.feedback_norm:
                u = (v - spec.min) / (spec.max - spec.min) if spec.max > spec.min else 0.0
                out.append((f"/norm/{name}", float(u)))
            else:
                out.append((f"/param/{name}", float(v)))
        return out

