"""The parameter bus: the only way inputs talk to the show.

Writers (OSC thread, audio callback, camera thread, LFOs) call :meth:`ParamBus.set` or :meth:`ParamBus.post`
from any thread; they never block on the loop and never raise into it. The update step calls
:meth:`ParamBus.tick` once per frame: it drains the latest targets and the event queue and advances each
parameter's attack/release follower by the injected ``dt``, so a fixed-step run is deterministic.

Everything accepted is also written to a journal that other parts may watch without steering anything (an archive
records who changed what and when): :meth:`ParamBus.subscribe` hands out a bounded queue of :class:`Change` entries,
each with its show time and source; a subscriber that falls behind loses its oldest entries, counted, and never
slows a writer.

A continuous feature (the camera's and the microphone's, many times a second) is set with ``sampled=True``: its
target changes at once, but the journal records it as the loop consumed it, once per tick at that tick's show time,
and only when the value differs from the one the journal last gave that parameter. What the show read at each tick
is then in the journal exactly (a replay that posts it before the same tick reads the same), at the tick's rate at
most rather than the input's, and none of the values no tick read.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

log = logging.getLogger(__name__)

PARAM_TYPES = ("float", "int", "bool")
MAX_GLIDE = 60.0  # seconds: the longest glide a seek (/seek, the show's seek event) may ask for


@dataclass(frozen=True)
class ParamSpec:
    """A named, typed, ranged parameter with its smoothing times (seconds, 0 = jump)."""

    name: str
    type: str = "float"
    min: float = 0.0
    max: float = 1.0
    default: float = 0.0
    attack: float = 0.0
    release: float = 0.0
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            raise ValueError(f"parameter {self.name!r}: type must be one of {PARAM_TYPES}, not {self.type!r}")
        if not self.min <= self.default <= self.max:
            raise ValueError(f"parameter {self.name!r}: default {self.default} outside [{self.min}, {self.max}]")

    def coerce(self, value: Any) -> tuple[float | None, str]:
        """(value, "") when valid, (clamped, "clamped") when out of range, (None, reason) when rejected."""
        if isinstance(value, (bool, np.bool_)):
            value = float(value)
        if not isinstance(value, numbers.Real):
            return None, "type"
        v = float(value)
        if not math.isfinite(v):
            return None, "nonfinite"
        if self.type == "bool":
            v = 1.0 if v >= 0.5 else 0.0
        elif self.type == "int":
            v = float(round(v))
        if v < self.min or v > self.max:
            return min(max(v, self.min), self.max), "clamped"
        return v, ""

    def from_norm(self, u: float) -> float:
        """Map 0..1 onto the native range."""
        return self.min + (self.max - self.min) * u


@dataclass(frozen=True)
class Event:
    """A discrete command for the update step (next scene, jump seed, ...)."""

    kind: str
    value: Any = None
    source: str = ""


class Follower:
    """Attack/release envelope follower: rises with time constant ``attack``, falls with ``release``."""

    __slots__ = ("attack", "release", "value")

    def __init__(self, value: float, attack: float = 0.0, release: float = 0.0) -> None:
        self.value = float(value)
        self.attack = attack
        self.release = release

    def step(self, target: float, dt: float) -> float:
        tau = self.attack if target > self.value else self.release
        if tau <= 0.0 or dt <= 0.0:
            self.value = target if tau <= 0.0 else self.value
        else:
            self.value += (target - self.value) * (1.0 - math.exp(-dt / tau))
        return self.value


@dataclass(frozen=True)
class Change:
    """One journal entry: a parameter target set (``kind`` "set"), an event posted ("event"), many targets reset
    at once ("reset", ``value`` a dict) or a fact a tap learned ("note"), at show time ``t``, by ``source``
    ("osc:127.0.0.1", "audio", "scene"...)."""

    t: float
    kind: str
    name: str
    value: Any
    source: str = ""
    sampled: bool = False  # a continuous feature's value as a tick consumed it (see the module's doc)


class Subscription:
    """A subscriber's view of the journal: a bounded queue, drained by its owner on its own thread.

    When full, the oldest entry is dropped (counted in ``dropped``): the newest state always gets through.
    """

    def __init__(self, bus: "ParamBus", maxlen: int) -> None:
        self._bus = bus
        self._queue: deque[Change] = deque(maxlen=maxlen)
        self.dropped = 0

    def _put(self, change: Change) -> None:  # under the bus lock
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(change)

    def drain(self) -> list[Change]:
        """Every entry since the last drain, oldest first."""
        with self._bus._lock:
            out = list(self._queue)
            self._queue.clear()
        return out

    def close(self) -> None:
        """Stop receiving entries."""
        self._bus._unsubscribe(self)


def latest_values(changes: Iterable[Change]) -> dict[str, Any]:
    """The newest target of each parameter in a drained run of changes ("set" and "reset" entries, in order): what a
    subscriber that echoes parameters (OSCQuery's LISTEN, the web page's live channel) sends once per round."""
    latest: dict[str, Any] = {}
    for c in changes:
        if c.kind == "set":
            latest[c.name] = c.value
        elif c.kind == "reset":
            latest.update(c.value)
    return latest


@dataclass(frozen=True)
class Tick:
    """What the loop reads once per frame: smoothed values, the events drained, and the raw targets."""

    values: Mapping[str, float]
    events: tuple[Event, ...] = ()
    changed: frozenset[str] = field(default_factory=frozenset)


class ParamBus:
    """Latest-value parameter store plus a small event queue, safe to write from any thread."""

    def __init__(self, specs: Iterable[ParamSpec] = (), max_events: int = 64,
                 clock: Callable[[], float] | None = None) -> None:
        self._lock = threading.Lock()
        self._clock = clock or time.monotonic  # the show time written into the journal
        self._subscribers: list[Subscription] = []
        self._specs: dict[str, ParamSpec] = {}
        self._targets: dict[str, float] = {}
        self._followers: dict[str, Follower] = {}
        self._pending: set[str] = set()
        self._events: deque[Event] = deque()
        self._notes: dict[str, Any] = {}
        self._sampled: dict[str, str] = {}  # sampled parameters set since the last tick -> the newest setter
        self._journaled: dict[str, float] = {}  # the value the journal last gave each parameter
        self._max_events = max_events
        self.rejects: Counter[str] = Counter()
        self.accepted = 0
        for spec in specs:
            self.declare(spec)

    # -- declaration -------------------------------------------------------------------------------------------
    def declare(self, spec: ParamSpec) -> None:
        with self._lock:
            self._specs[spec.name] = spec
            self._targets[spec.name] = spec.default
            self._followers[spec.name] = Follower(spec.default, spec.attack, spec.release)

    @property
    def specs(self) -> Mapping[str, ParamSpec]:
        return dict(self._specs)

    def spec(self, name: str) -> ParamSpec | None:
        return self._specs.get(name)

    # -- writers (any thread) ----------------------------------------------------------------------------------
    def set(self, name: str, value: Any, source: str = "", sampled: bool = False) -> bool:
        """Set a parameter's target. Returns False (and counts why) when the value was rejected. ``sampled``: a
        continuous feature, journaled as the next tick consumes it (see the module's doc)."""
        spec = self._specs.get(name)
        if spec is None:
            self.reject("unknown")
            return False
        v, why = spec.coerce(value)
        if v is None:
            self.reject(why)
            return False
        with self._lock:
            if why:
                self.rejects[why] += 1
            self._targets[name] = v
            self._pending.add(name)
            self.accepted += 1
            if sampled:
                if self._subscribers:
                    self._sampled[name] = source
            else:
                self._sampled.pop(name, None)  # this entry carries the newest value
                self._journal("set", name, v, source)
        return True

    def set_norm(self, name: str, u: Any, source: str = "") -> bool:
        """Set a parameter from 0..1 across its range."""
        spec = self._specs.get(name)
        if spec is None:
            self.reject("unknown")
            return False
        if isinstance(u, bool) or not isinstance(u, numbers.Real) or not math.isfinite(u):
            self.reject("type")
            return False
        if not 0.0 <= u <= 1.0:
            with self._lock:
                self.rejects["clamped"] += 1
            u = min(max(u, 0.0), 1.0)
        return self.set(name, spec.from_norm(float(u)), source)

    def post(self, event: Event) -> bool:
        """Queue a discrete event; the oldest is kept and the newest dropped (counted) when full."""
        with self._lock:
            if len(self._events) >= self._max_events:
                self.rejects["event_overflow"] += 1
                return False
            self._events.append(event)
            self._journal("event", event.kind, event.value, event.source)
        return True

    def note(self, name: str, value: Any, source: str = "") -> None:
        """Publish a fact a tap learned (``vision.description``, a prompt's audit record): journal only (kind
        "note"), never an event for the update step; the newest value per name is kept for :meth:`notes`."""
        with self._lock:
            self._notes[name] = value
            self._journal("note", name, value, source)

    def notes(self) -> dict[str, Any]:
        """The newest value of every note published so far."""
        with self._lock:
            return dict(self._notes)

    def reset(self, values: Mapping[str, float], snap: bool = False, source: str = "scene") -> None:
        """Set many targets at once (scene defaults); ``snap`` jumps the followers too."""
        with self._lock:
            applied = {}
            for name, v in values.items():
                if name in self._specs:
                    applied[name] = self._targets[name] = float(v)
                    self._pending.add(name)
                    self._sampled.pop(name, None)
                    if snap:
                        self._followers[name].value = float(v)
            self._journal("reset", "", applied, source)

    # -- the journal ---------------------------------------------------------------------------------------------
    def subscribe(self, maxlen: int = 4096) -> Subscription:
        """A new bounded queue that receives every accepted change from now on (see :class:`Subscription`)."""
        sub = Subscription(self, maxlen)
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def _journal(self, kind: str, name: str, value: Any, source: str, t: float | None = None,
                 sampled: bool = False) -> None:  # under the lock
        if self._subscribers:
            if kind == "set":
                self._journaled[name] = value
            elif kind == "reset":
                self._journaled.update(value)
            change = Change(self._clock() if t is None else t, kind, name, value, source, sampled)
            for sub in self._subscribers:
                sub._put(change)

    def reject(self, why: str) -> None:
        with self._lock:
            self.rejects[why] += 1

    # -- the loop (one thread) ---------------------------------------------------------------------------------
    def tick(self, dt: float, t: float | None = None) -> Tick:
        """Drain targets and events, advance the followers by ``dt`` and return the frame's snapshot. ``t``: the
        tick's show time, the journal's time for the sampled features this tick consumes (default: the clock's)."""
        with self._lock:
            targets = dict(self._targets)
            changed = frozenset(self._pending)
            self._pending.clear()
            events = tuple(self._events)
            self._events.clear()
            if self._sampled:
                stamp = self._clock() if t is None else t
                for name, source in self._sampled.items():
                    v = targets[name]
                    if self._journaled.get(name) != v:
                        self._journal("set", name, v, source, t=stamp, sampled=True)
                self._sampled.clear()
        values = {name: f.step(targets[name], dt) for name, f in self._followers.items()}
        return Tick(values=values, events=events, changed=changed)

    def targets(self) -> dict[str, float]:
        with self._lock:
            return dict(self._targets)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"accepted": self.accepted, "rejects": dict(self.rejects)}
