"""The modulation matrix: sources (parameters, audio/camera features, LFOs, the clock) steer parameters.

The update step calls :meth:`ModMatrix.apply` once per frame with the bus's (unmodulated) values and the injected
time; it returns the modulated value of every targeted parameter and never writes back to the bus, so routes
cannot feed into each other and a fixed-step run is deterministic. Routes whose target is ``event:<kind>`` fire
:class:`~installation.bus.Event` objects on a rising edge of their source; collect them with
:meth:`ModMatrix.take_events` after ``apply``.

Per route, with ``x`` the source value::

    u = clamp((x - lo) / (hi - lo), 0, 1)     # lo, hi = route.range or the source's natural range
    c = curve(u)                              # linear | exp | log | step (see ModRoute)
    y = gain * c + offset                     # in the target's units
    s = smooth(y, smoothing seconds)          # one-pole, starts at the first y
    target = clamp(base + sum of s over the routes into it, spec.min, spec.max)

Only ``clock`` without a range skips the normalisation: ``u`` is then the time in seconds (linear curve only).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from installation.bus import Event, ParamSpec

#: Event kinds a route may fire (``quit`` and ``prompt`` are deliberately not reachable by modulation).
EVENT_KINDS = ("scene.next", "scene.prev", "scene.goto", "seed", "freeze", "blackout", "panic", "onset")
#: Event kinds that are gates: True on the rising edge, False on the falling edge.
GATE_KINDS = ("freeze", "blackout")
EVENT_PREFIX = "event:"
LFO_PREFIX = "lfo."
CLOCK = "clock"


class LFO(BaseModel):
    """A low-frequency oscillator, read as source ``lfo.<name>``; unipolar 0..1 unless ``bipolar`` (-1..1).

    Shapes at phase 0 of a cycle: sine and triangle start at their minimum and peak at half a cycle, saw ramps
    up from the minimum, square is at its maximum for the first half.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    shape: Literal["sine", "triangle", "square", "saw"] = "sine"
    rate: float = Field(default=0.1, ge=0.0, le=1000.0, description="cycles per second")
    phase: float = Field(default=0.0, description="offset in cycles (0..1 is one cycle)")
    bipolar: bool = False

    def value(self, t: float) -> float:
        """The oscillator's value at time ``t`` seconds."""
        p = (self.rate * t + self.phase) % 1.0
        if self.shape == "sine":
            v = 0.5 - 0.5 * math.cos(2.0 * math.pi * p)
        elif self.shape == "triangle":
            v = 1.0 - abs(2.0 * p - 1.0)
        elif self.shape == "square":
            v = 1.0 if p < 0.5 else 0.0
        else:
            v = p
        return 2.0 * v - 1.0 if self.bipolar else v

    @property
    def range(self) -> tuple[float, float]:
        """tuple: the natural range, used to normalise the LFO when a route gives none."""
        return (-1.0, 1.0) if self.bipolar else (0.0, 1.0)


class ModRoute(BaseModel):
    """One source steering one parameter (or firing one event kind); several routes may sum into a target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    target: str
    gain: float = 1.0
    offset: float = 0.0
    curve: Literal["linear", "exp", "log", "step"] = "linear"
    curve_k: float = Field(default=4.0, gt=0.0, le=50.0, description="steepness of exp/log curves")
    steps: int = Field(default=2, ge=2, le=1024, description="levels of the step curve (2 = a gate at 0.5)")
    smoothing: float = Field(default=0.0, ge=0.0, le=600.0, description="one-pole time constant, seconds")
    range: tuple[float, float] | None = Field(default=None, description="source range mapped onto 0..1")
    threshold: float = Field(default=0.5, ge=0.0, le=1.0, description="event routes: fire when c rises past it")
    cooldown: float = Field(default=0.0, ge=0.0, description="event routes: minimum seconds between firings")
    value: int | float | str | bool | None = Field(default=None, description="event routes: the event's value")
    enabled: bool = True

    @field_validator("gain", "offset")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    @model_validator(mode="after")
    def _check_range(self) -> "ModRoute":
        if self.range is not None:
            lo, hi = self.range
            if not (math.isfinite(lo) and math.isfinite(hi)) or hi == lo:
                raise ValueError(f"range {self.range} must be two different finite numbers")
        return self

    @property
    def is_event(self) -> bool:
        """bool: the target is an event kind rather than a parameter."""
        return self.target.startswith(EVENT_PREFIX)

    def shape(self, u: float) -> float:
        """Apply the curve to a normalised input ``u`` in 0..1 (returns 0..1)."""
        if self.curve == "linear":
            return u
        k = self.curve_k
        if self.curve == "exp":
            return math.expm1(k * u) / math.expm1(k)
        if self.curve == "log":
            return math.log1p(k * u) / math.log1p(k)
        n = self.steps
        return min(math.floor(u * n), n - 1) / (n - 1)


class ModulationSettings(BaseModel):
    """The ``[modulation]`` table of a scene or config: LFO definitions plus routes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lfos: tuple[LFO, ...] = ()
    routes: tuple[ModRoute, ...] = ()


class _RouteState:
    """Mutable per-route state owned by the matrix (smoother, edge detector)."""

    __slots__ = ("smoothed", "high", "last_fire")

    def __init__(self) -> None:
        self.smoothed: float | None = None
        self.high = False
        self.last_fire = -math.inf


class ModMatrix:
    """Validated routes plus their state; call from the update step only (not thread-safe, by design)."""

    def __init__(
        self,
        routes: Iterable[ModRoute | Mapping[str, Any]],
        lfos: Iterable[LFO | Mapping[str, Any]] = (),
        specs: Mapping[str, ParamSpec] | Iterable[ParamSpec] = (),
        seed: int = 0,
    ) -> None:
        self.routes = tuple(r if isinstance(r, ModRoute) else ModRoute.model_validate(r) for r in routes)
        lfo_list = [x if isinstance(x, LFO) else LFO.model_validate(x) for x in lfos]
        self.lfos: dict[str, LFO] = {}
        for lfo in lfo_list:
            if lfo.name in self.lfos:
                raise ValueError(f"modulation: LFO {lfo.name!r} defined twice")
            self.lfos[lfo.name] = lfo
        if isinstance(specs, Mapping):
            self.specs: dict[str, ParamSpec] = dict(specs)
        else:
            self.specs = {s.name: s for s in specs}
        for i, route in enumerate(self.routes):
            self._validate(i, route)
        self._state = [_RouteState() for _ in self.routes]
        self._events: list[Event] = []
        self._rng = np.random.default_rng(seed)
        self.targets = tuple(dict.fromkeys(r.target for r in self.routes if r.enabled and not r.is_event))

    @classmethod
    def from_settings(cls, settings: ModulationSettings, specs: Mapping[str, ParamSpec], seed: int = 0) -> "ModMatrix":
        """Build from a ``[modulation]`` table."""
        return cls(settings.routes, settings.lfos, specs, seed=seed)

    def _validate(self, i: int, route: ModRoute) -> None:
        where = f"modulation route {i} ({route.source} -> {route.target})"
        src = route.source
        if src == CLOCK:
            if route.range is None and route.curve != "linear" and not route.is_event:
                raise ValueError(f"{where}: source 'clock' needs a range for curve {route.curve!r}")
        elif src.startswith(LFO_PREFIX):
            if src[len(LFO_PREFIX):] not in self.lfos:
                raise ValueError(f"{where}: unknown source {src!r} (LFOs defined: {sorted(self.lfos)})")
        elif src not in self.specs:
            raise ValueError(f"{where}: unknown source {src!r} (not a parameter, 'lfo.<name>' or 'clock')")
        if route.is_event:
            kind = route.target[len(EVENT_PREFIX):]
            if kind not in EVENT_KINDS:
                raise ValueError(f"{where}: unknown target event kind {kind!r} (allowed: {EVENT_KINDS})")
            if kind == "scene.goto" and route.value is None:
                raise ValueError(f"{where}: 'event:scene.goto' needs a value (scene name or index)")
        elif route.target not in self.specs:
            raise ValueError(f"{where}: unknown target {route.target!r} (not a parameter or 'event:<kind>')")

    # -- evaluation --------------------------------------------------------------------------------------------
    def _source(self, route: ModRoute, values: Mapping[str, float], t: float) -> float:
        """The route's source normalised to 0..1 (clock without range: seconds)."""
        src = route.source
        if src == CLOCK:
            if route.range is None:
                return t
            x, (lo, hi) = t, route.range
        elif src.startswith(LFO_PREFIX):
            lfo = self.lfos[src[len(LFO_PREFIX):]]
            x = lfo.value(t)
            lo, hi = route.range or lfo.range
        else:
            spec = self.specs[src]
            x = float(values.get(src, spec.default))
            lo, hi = route.range or (spec.min, spec.max)
        if not math.isfinite(x):
            x = lo
        u = (x - lo) / (hi - lo) if hi != lo else 0.0
        return min(max(u, 0.0), 1.0)

    def apply(self, values: Mapping[str, float], t: float, dt: float) -> dict[str, float]:
        """Modulated value of each targeted parameter at time ``t`` (``dt`` advances the smoothers).

        Event routes are evaluated too; their events wait in :meth:`take_events`.
        """
        sums: dict[str, float] = {name: 0.0 for name in self.targets}
        for route, st in zip(self.routes, self._state):
            if not route.enabled:
                continue
            u = self._source(route, values, t)
            c = route.shape(u) if not (route.source == CLOCK and route.range is None) else u
            if route.is_event:
                self._edge(route, st, c, t)
                continue
            y = route.gain * c + route.offset
            if st.smoothed is None or route.smoothing <= 0.0:
                st.smoothed = y
            elif dt > 0.0:
                st.smoothed += (y - st.smoothed) * (1.0 - math.exp(-dt / route.smoothing))
            sums[route.target] += st.smoothed
        out: dict[str, float] = {}
        for name, total in sums.items():
            spec = self.specs[name]
            base = float(values.get(name, spec.default))
            v = base + total
            if not math.isfinite(v):
                v = base if math.isfinite(base) else spec.default
            v = min(max(v, spec.min), spec.max)
            if spec.type == "int":
                v = float(round(v))
            elif spec.type == "bool":
                v = 1.0 if v >= 0.5 else 0.0
            out[name] = v
        return out

    def _edge(self, route: ModRoute, st: _RouteState, c: float, t: float) -> None:
        """Fire on the rising edge past ``threshold`` (re-armed below it); gates also fire False on the fall."""
        kind = route.target[len(EVENT_PREFIX):]
        high = c >= route.threshold if route.threshold > 0.0 else c > 0.0
        if high and not st.high:
            st.high = True  # an edge inside the cooldown is consumed, not deferred
            if t - st.last_fire >= route.cooldown:
                st.last_fire = t
                self._events.append(Event(kind, self._event_value(kind, route, True), "mod"))
        elif not high and st.high:
            st.high = False
            if kind in GATE_KINDS:
                self._events.append(Event(kind, False, "mod"))

    def _event_value(self, kind: str, route: ModRoute, rising: bool) -> Any:
        if kind in GATE_KINDS:
            return True if route.value is None else bool(route.value)
        if kind == "seed":
            # A deterministic "jump": the matrix's own generator, seeded at construction.
            return int(route.value) if route.value is not None else int(self._rng.integers(0, 2**31 - 1))
        if kind == "onset":
            return 1.0 if route.value is None else float(route.value)
        return route.value

    def take_events(self) -> list[Event]:
        """Events fired by event routes since the last call (oldest first)."""
        events, self._events = self._events, []
        return events
