"""MIDI controllers: a port opened by name (``mido`` with ``python-rtmidi``), its controls as modulation sources,
notes that fire events, and MIDI learn.

Sources (bus parameters, declared for the channels and numbers listed in ``[inputs.midi]``, so routes, OSC and the
page can name them): ``midi.cc.<ch>.<n>`` 0..1 (7-bit; for the numbers in ``cc14``, the 14-bit pair n / n+32),
``midi.note.<ch>.<n>`` the velocity 0..1 while held, 0 after the note off, ``midi.bend.<ch>`` -1..1. Channels are
1..16 as printed on controllers. ``note_events`` map a note to an event (``scene.next``, ``seed``, ``freeze`` ...):
gates (freeze, blackout) follow the note, the rest fire on the note on.

MIDI learn: ``/midi/learn <param>`` (over OSC or from the page) binds the next moved control (a CC, a 14-bit pair,
pitch bend or a note) to that parameter, across its range; bindings are saved as JSON beside the config
(``learn_file``) and loaded at start. The part drains the bus journal for the learn event (the runtime ignores it).

A port that vanishes (USB unplugged, the JACK client gone) is noticed within ``check_s`` and reopened with backoff;
its sources keep their last values. The part's thread reads the port every few milliseconds (no callback from
rtmidi's own thread: see :class:`_Port`) and only writes to the bus.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from installation import files
from installation.bus import Event, ParamBus, ParamSpec
from installation.inputs.base import ThreadedInput
from installation.modulation import EVENT_KINDS, GATE_KINDS
from installation.ops.state import write_atomic
from installation.parts import PartContext, register

log = logging.getLogger(__name__)

LEARN_EVENT = "midi.learn"
POLL_S = 0.004  # how often the port is read: a message waits at most this long (a frame is 16.7 ms)
MAX_LEARN_BYTES = 1 << 20  # a learn file holds a few hundred bindings at most
Channel = Annotated[int, Field(ge=1, le=16)]
Number = Annotated[int, Field(ge=0, le=127)]


class NoteEvent(BaseModel):
    """A note that fires an event: ``{channel = 1, note = 36, event = "scene.next"}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: Channel = 1
    note: Number
    event: str
    value: int | float | str | None = None

    @field_validator("event")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in EVENT_KINDS or v == "onset":
            raise ValueError(f"event must be one of {[k for k in EVENT_KINDS if k != 'onset']}")
        return v

    @model_validator(mode="after")
    def _goto_needs_a_scene(self) -> "NoteEvent":
        if self.event == "scene.goto" and self.value is None:
            raise ValueError("scene.goto needs a value (a scene name or index)")
        return self


class MidiSettings(BaseModel):
    """``[inputs.midi]``: which port, which controls become sources, which notes fire events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    port: str = Field(default="", description="part of the input port's name; '' = the first port found")
    api: Literal["", "UNIX_JACK", "LINUX_ALSA", "MACOSX_CORE", "WINDOWS_MM"] = Field(
        default="", description="rtmidi's API; '' = the platform's default (ALSA on Linux)")
    channels: tuple[Channel, ...] = (1,)
    cc: tuple[Number, ...] = Field(default=(1, 7, 10, 11, 64, 74), description="7-bit CCs declared as sources")
    cc14: tuple[Annotated[int, Field(ge=0, le=31)], ...] = Field(
        default=(), description="14-bit CCs: MSB n with LSB n+32, declared as midi.cc.<ch>.<n>")
    notes: tuple[Number, ...] = Field(default=(), description="notes declared as sources (velocity while held)")
    bend: bool = True
    note_events: tuple[NoteEvent, ...] = ()
    learn_file: str = Field(default="midi-learn.json", description="learned bindings, relative to the config")
    learn_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        default=30.0, description="a pending /midi/learn that no control answered within this many seconds expires")
    check_s: Annotated[float, Field(gt=0.0, le=60.0)] = 1.0
    reopen_min: Annotated[float, Field(gt=0.0, le=60.0)] = 0.5
    reopen_max: Annotated[float, Field(gt=0.0, le=600.0)] = 10.0


def midi_specs(s: MidiSettings) -> list[ParamSpec]:
    """The sources these settings declare."""
    out: list[ParamSpec] = []
    for ch in s.channels:
        for n in sorted(set(s.cc) | set(s.cc14)):
            bits = 14 if n in s.cc14 else 7
            out.append(ParamSpec(f"midi.cc.{ch}.{n}", doc=f"MIDI CC {n} on channel {ch} ({bits}-bit), 0..1"))
        for n in s.notes:
            out.append(ParamSpec(f"midi.note.{ch}.{n}", doc=f"MIDI note {n} on channel {ch}: velocity while held"))
        if s.bend:
            out.append(ParamSpec(f"midi.bend.{ch}", min=-1.0, max=1.0, doc=f"MIDI pitch bend on channel {ch}"))
    return out


def _binding(b: Any) -> dict[str, Any] | None:
    """A learned binding as saved (kind, channel 1-16, number 0-127), or None when it is not one."""
    if not isinstance(b, dict) or b.get("kind") not in ("cc", "cc14", "bend", "note"):
        return None
    channel, number = b.get("channel", 1), b.get("number", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (channel, number)):
        return None
    if not (1 <= channel <= 16 and 0 <= number <= 127):
        return None
    return {"kind": b["kind"], "channel": channel, "number": number}


class MidiInput(ThreadedInput):
    """The MIDI part: a supervising thread opens the port and reopens it when it vanishes; its thread
    writes sources, events and learned bindings to the bus."""

    thread_name = "midi"
    delivery_key = "messages"

    def __init__(self, settings: MidiSettings, bus: ParamBus, base_dir: Path | str = ".") -> None:
        super().__init__({"messages": 0, "reopens": 0, "learned": 0, "learn_expired": 0, "port": None,
                          "rejects": {"unmapped": 0, "learn_unknown_param": 0, "learn_file": 0}})
        self.settings = settings
        self.bus = bus
        self.learn_path = Path(base_dir) / settings.learn_file
        self._cc14 = tuple(settings.cc14)
        self._msb: dict[tuple[int, int], int] = {}
        self._events = {(e.channel, e.note): e for e in settings.note_events}
        self._learning: str | None = None
        self._learn_until = 0.0  # monotonic deadline of the pending learn
        self._bindings: dict[str, dict[str, Any]] = self._load()
        self._next_check = 0.0
        self._rng = random.Random()

    # -- learn file ------------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, dict[str, Any]]:
        """The learned bindings. A file that is no learn file (not JSON, too big or deep, not {"bindings": {...}})
        is set aside (``.corrupt-<time>``) with one warning; a binding that does not fit this show is dropped."""
        try:
            data = files.load_json(self.learn_path, max_bytes=MAX_LEARN_BYTES, max_depth=4)
            if not isinstance(data, dict) or set(data) - {"bindings"} or not isinstance(data.get("bindings", {}), dict):
                raise files.FileError(self.learn_path, 'not a learn file ({"bindings": {PARAM: {...}}})')
        except FileNotFoundError:
            return {}
        except files.FileError as e:
            self._reject("learn_file")
            files.set_aside(self.learn_path, e.why, what="MIDI learn file", then="starting without learned bindings")
            return {}
        out, dropped = {}, []
        for param, b in data.get("bindings", {}).items():
            binding = _binding(b)
            if binding is not None and self.bus.spec(param):
                out[param] = binding
            else:
                dropped.append(param)
        if dropped:
            log.warning("MIDI learn file %s: %d binding%s dropped (no such parameter, or not a control): %s",
                        self.learn_path, len(dropped), "s" * (len(dropped) != 1), ", ".join(dropped[:5])[:200])
        return out

    def _save(self) -> None:
        """Write the bindings atomically (the state file's way: a temporary file renamed over the old one)."""
        data = json.dumps({"bindings": self._bindings}, indent=1, sort_keys=True)
        try:
            write_atomic(self.learn_path, data.encode())
        except OSError as e:
            self._reject("learn_file")
            log.warning("MIDI learn: cannot save %s: %s", self.learn_path, e)

    @property
    def bindings(self) -> dict[str, dict[str, Any]]:
        """dict: parameter -> the control bound to it by learn."""
        with self._lock:
            return {k: dict(v) for k, v in self._bindings.items()}

    def learn(self, param: str) -> bool:
        """Bind the next moved control to ``param`` within ``learn_timeout_s`` (False, counted, if there is no such
        parameter); ``""`` cancels a pending learn. Each step is the bus note ``midi.learn`` (``learning <param>``,
        ``bound <param>``, ``expired <param>``, ``cancelled <param>``), fed back over OSC as ``/midi/learn/state``."""
        if not param:
            with self._lock:
                was, self._learning = self._learning, None
            if was is not None:
                self._learn_note("cancelled", was)
                log.info("MIDI learn for %s cancelled", was)
            return True
        if self.bus.spec(param) is None or param.startswith("midi."):
            self._reject("learn_unknown_param")
            return False
        with self._lock:
            self._learning = param
            self._learn_until = time.monotonic() + self.settings.learn_timeout_s
        self._learn_note("learning", param)
        log.info("MIDI learn: move a control within %g s to bind it to %s", self.settings.learn_timeout_s, param)
        return True

    def _learn_note(self, state: str, param: str) -> None:
        self.bus.note("midi.learn", f"{state} {param}", "midi")

    def expire_learn(self, now: float | None = None) -> bool:
        """End a pending learn whose time is up (True when one ended); called by the port thread and on each
        message, so a control moved minutes later is never bound."""
        now = time.monotonic() if now is None else now
        with self._lock:
            param = self._learning
            if param is None or now < self._learn_until:
                return False
            self._learning = None
            self._stats["learn_expired"] += 1
        self._learn_note("expired", param)
        log.info("MIDI learn for %s expired: no control moved within %g s", param, self.settings.learn_timeout_s)
        return True

    # -- messages (rtmidi's thread) --------------------------------------------------------------------------------
    def _reject(self, why: str) -> None:
        with self._lock:
            self._stats["rejects"][why] += 1

    def _decode(self, msg: Any) -> tuple[str, int, int, float] | None:
        """(kind, channel 1-16, number, value 0..1) of a control or note message; None for anything else."""
        ch = getattr(msg, "channel", 0) + 1
        if msg.type == "control_change":
            n, v = msg.control, msg.value
            if n < 32 and n in self._cc14:
                self._msb[(ch, n)] = v
                return "cc14", ch, n, (v << 7) / 16383.0  # an MSB resets the LSB
            if 32 <= n < 64 and n - 32 in self._cc14:
                return "cc14", ch, n - 32, ((self._msb.get((ch, n - 32), 0) << 7) | v) / 16383.0
            return "cc", ch, n, v / 127.0
        if msg.type in ("note_on", "note_off"):
            return "note", ch, msg.note, (msg.velocity if msg.type == "note_on" else 0) / 127.0
        if msg.type == "pitchwheel":
            return "bend", ch, 0, (msg.pitch + 8192) / 16383.0
        return None

    def handle(self, msg: Any) -> None:
        """Apply one MIDI message: its source, a note's event, learn, and the learned bindings."""
        self.expire_learn()
        with self._lock:
            self._stats["messages"] += 1
            learning = self._learning
            bindings = self._bindings
        control = self._decode(msg)
        if control is None:
            self._reject("unmapped")
            return
        bus, src = self.bus, "midi"
        kind, ch, num, u = control
        mapped = False
        if kind == "bend":
            mapped = bus.set(f"midi.bend.{ch}", 2.0 * u - 1.0, src) if bus.spec(f"midi.bend.{ch}") else False
        else:
            name = f"midi.{'note' if kind == 'note' else 'cc'}.{ch}.{num}"
            mapped = bus.set(name, u, src) if bus.spec(name) is not None else False
        if kind == "note":
            ev = self._events.get((ch, num))
            if ev is not None and (u > 0 or ev.event in GATE_KINDS):
                value = (u > 0) if ev.event in GATE_KINDS else ev.value
                if ev.event == "seed" and value is None:
                    value = self._rng.randrange(2**31)  # a jump to somewhere new
                mapped = bus.post(Event(ev.event, value, src)) or mapped
        if learning is not None and (kind != "note" or u > 0):
            bindings = self._bind(learning, kind, ch, num)
        for param, b in bindings.items():
            if (b["kind"], b["channel"], b["number"]) == (kind, ch, num):
                mapped = bus.set_norm(param, u, src) or mapped
        if not mapped:
            self._reject("unmapped")

    def _bind(self, param: str, kind: str, channel: int, number: int) -> dict[str, dict[str, Any]]:
        """Bind a control to ``param`` (replacing what it was bound to), save; the bindings now."""
        with self._lock:
            if self._learning != param:
                return self._bindings
            self._learning = None
            self._bindings = {p: b for p, b in self._bindings.items()
                              if (b["kind"], b["channel"], b["number"]) != (kind, channel, number)}
            self._bindings[param] = {"kind": kind, "channel": channel, "number": number}
            self._stats["learned"] += 1
        self._learn_note("bound", param)
        log.info("MIDI learn: %s channel %d number %d -> %s", kind, channel, number, param)
        self._save()
        return self._bindings

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        with self._lock:
            out["rejects"] = dict(out["rejects"])
            out["bindings"] = len(self._bindings)
            out["learning"] = self._learning
        return out

    # -- the port ----------------------------------------------------------------------------------------------------
    def _probe(self) -> Any:
        """One rtmidi input kept for listing ports: mido's listing makes (and on JACK, registers) a new client on
        every call, which under load stalls the whole process for a moment; this one is made once."""
        return _rt_input(self.settings.api, "installation-probe")

    def _find(self, probe: Any) -> str | None:
        names = probe.get_ports()
        want = self.settings.port
        return next((n for n in names if want.lower() in n.lower()), None) if names else None

    def _set_state(self, state: str, port: str | None = None) -> None:
        with self._lock:
            self._stats["state"] = state
            self._stats["port"] = port

    def _run(self) -> None:
        backoff = self.settings.reopen_min
        sub = self.bus.subscribe(maxlen=256)
        try:
            probe = self._probe()
        except Exception as e:  # noqa: BLE001 - no rtmidi: the input reports it and stays off
            log.error("MIDI input unavailable: %s", e)
            self._set_state(f"error: {e}")
            sub.close()
            return
        first = True
        try:
            while not self._stop.is_set():
                self._drain_learn(sub)
                name = self._find(probe)
                if name is None:
                    self._set_state("waiting")
                    if first:
                        log.warning("MIDI: no input port matching %r yet; retrying with backoff",
                                    self.settings.port)
                    first = False
                    if self._wait_learning(backoff):
                        break
                    backoff = min(backoff * 2.0, self.settings.reopen_max)
                    continue
                try:
                    port = _Port(self.settings.api, name)
                except Exception as e:  # noqa: BLE001 - it vanished between listing and opening
                    log.warning("MIDI: cannot open %r: %s", name, e)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2.0, self.settings.reopen_max)
                    continue
                if not first:
                    with self._lock:
                        self._stats["reopens"] += 1
                first = False
                backoff = self.settings.reopen_min
                self._set_state("running", name)
                log.info("MIDI input %r open", name)
                housekeeping = 0.0
                try:
                    while not self._stop.wait(POLL_S):
                        for msg in port.pending():
                            self._deliver(msg)
                        if (now := time.monotonic()) < housekeeping:
                            continue
                        housekeeping = now + min(self.settings.check_s, 0.1)
                        self._drain_learn(sub)
                        if self._due_check() and name not in probe.get_ports():
                            log.warning("MIDI port %r vanished; reopening with backoff", name)
                            break
                finally:
                    port.close()
                self._set_state("waiting")
        finally:
            probe.delete()
            sub.close()

    def _wait_learning(self, seconds: float) -> bool:
        """Wait ``seconds`` (True when stopped), ending a pending learn on time meanwhile."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self._stop.wait(min(left, 0.25)):
                return True
            self.expire_learn()
        return self._stop.is_set()

    def _due_check(self) -> bool:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.settings.check_s
            return True
        return False

    def _deliver(self, msg: Any) -> None:
        try:
            self.handle(msg)
        except Exception:  # noqa: BLE001 - one bad message is counted, the port goes on
            self._reject("unmapped")
            log.debug("MIDI message %r failed", msg, exc_info=True)

    def _drain_learn(self, sub: Any) -> None:
        self.expire_learn()
        for change in sub.drain():
            if change.kind == "event" and change.name == LEARN_EVENT and isinstance(change.value, str):
                self.learn(change.value)


def _rt_input(api: str | None, client: str) -> Any:
    import rtmidi

    return rtmidi.MidiIn(rtapi=getattr(rtmidi, f"API_{api}", rtmidi.API_UNSPECIFIED) if api else
                         rtmidi.API_UNSPECIFIED, name=client)


class _Port:
    """One rtmidi input port, read by polling from the part's own thread; no Python callback.

    With a callback, rtmidi calls Python from the MIDI backend's own thread (on JACK, the process thread), and
    python-rtmidi offers no safe way to end that: ``cancel_callback`` (also inside ``close_port``) drops the Python
    callback while a call the backend has already begun still waits for the GIL and then reads the freed object
    (a segfault, or a corrupted heap that aborts later somewhere else), and ``close_port``/``delete`` keep the GIL
    while closing the JACK client waits for that same call (the stop hangs for good). Both were reproduced with a
    controller sending CCs while the port closed (tests/inputs/test_midi.py). Polled, the backend thread only
    fills rtmidi's own queue (1024 messages), so nothing native ever waits on Python."""

    def __init__(self, api: str | None, name: str) -> None:
        import mido

        self._parse = mido.Message.from_bytes
        self._rt = _rt_input(api, "RtMidiIn Client")
        try:
            ports = self._rt.get_ports()
            if name not in ports:
                raise OSError(f"unknown port {name!r}")
            self._rt.open_port(ports.index(name))
            self._rt.ignore_types(False, False, True)  # sysex and clock in, active sensing out (as mido)
        except Exception:
            self._rt.delete()
            raise

    def pending(self) -> Iterator[Any]:
        """The messages that arrived since the last call, as ``mido`` messages (a malformed one is skipped, as
        mido does)."""
        while (event := self._rt.get_message()) is not None:
            try:
                yield self._parse(event[0])
            except ValueError:
                continue

    def close(self) -> None:
        self._rt.close_port()
        self._rt.delete()


@register("midi", table="inputs.midi", settings=MidiSettings, params=midi_specs, order=30)
def build(settings: MidiSettings, ctx: PartContext) -> MidiInput | None:
    """The MIDI part: on with ``[inputs.midi] enabled = true``; a missing port is waited for, not an error."""
    return MidiInput(settings, ctx.bus, ctx.base_dir) if settings.enabled else None
