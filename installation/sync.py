"""Ableton Link: tempo and beat as modulation sources, scene changes on the bar, and a show clock shared by every
machine in the session (``linkpython-extern``, a binding of Ableton's Link library).

``[sync] link = true`` joins the Link session on the local network and, once per loop tick, writes ``link.beat``
(0..1 through the current beat: a ramp per beat, for routes that pulse with the music), ``link.phase`` (0..1 through
the bar of ``quantum`` beats), ``link.tempo`` (BPM) and ``link.peers``. With ``quantise_scenes``, scene changes
(``scene.next``, ``scene.prev``, ``scene.goto``, from any input) wait for the next bar line.

``[sync] clock = "link"`` makes the show clock the session's shared beat timeline: show time is
``beats * 60 / tempo`` with ``tempo`` the configured reference (at that tempo one show second is one wall second;
when Live speeds up, so does the show). Link keeps the timeline itself identical on every peer (the phase over a
very long quantum, which Link aligns across peers, is the beat count), so machines that run the same show compute
the same show time at the same instant, and a machine that restarts rejoins at the session's time. What follows
that time on every machine: the scene clock, scene durations, and whatever is a function of show time. What does
not: frames a slow machine drops, the path position integrated from a ``speed`` someone changed on one machine
only, and events sent to one machine only (send OSC to all, or quantise scene changes to the bar on all).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from installation.bus import Event, ParamBus, ParamSpec
from installation.parts import Moment, PartContext, register

log = logging.getLogger(__name__)

TIMELINE_QUANTUM = float(2**20)  # beats: about six days at 120 BPM before the shared timeline wraps
SCENE_EVENTS = ("scene.next", "scene.prev", "scene.goto")


class SyncSettings(BaseModel):
    """``[sync]``: Ableton Link (off by default) and which clock the show follows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    link: bool = False
    clock: Literal["wall", "link"] = "wall"
    tempo: Annotated[float, Field(ge=20.0, le=999.0)] = 120.0
    quantum: Annotated[float, Field(gt=0.0, le=64.0)] = 4.0
    quantise_scenes: bool = True
    join_s: Annotated[float, Field(ge=0.0, le=30.0)] = 2.0


def link_specs(settings: SyncSettings) -> list[ParamSpec]:
    return [ParamSpec("link.beat", doc="0..1 through the current Link beat"),
            ParamSpec("link.phase", doc="0..1 through the Link bar (quantum beats)"),
            ParamSpec("link.tempo", min=20.0, max=999.0, default=settings.tempo, doc="the Link session's BPM"),
            ParamSpec("link.peers", min=0.0, max=1000.0, doc="other Link peers in the session")]


def _new_link(tempo: float) -> Any:
    import link

    session = link.Link(tempo)
    session.enabled = True
    return session


class LinkClock:
    """The show clock from a Link session's shared timeline (see the module's doc); a live clock (``fixed`` False)
    with ``origin`` set so a decoder process's ``perf_counter() - origin`` matches it at the reference tempo."""

    fixed = False

    def __init__(self, tempo: float = 120.0, join_s: float = 2.0, session: Any = None) -> None:
        self.tempo = float(tempo)
        self.link = session if session is not None else _new_link(self.tempo)
        deadline = time.monotonic() + join_s
        while self.link.numPeers() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # joining an existing session first, so the time does not jump once the loop runs
        self.origin = time.perf_counter() - self.now()

    def at(self, micros: int) -> float:
        """Show seconds at Link host time ``micros`` (the monotonic clock, in microseconds)."""
        state = self.link.captureAppSessionState()
        return state.phaseAtTime(int(micros), TIMELINE_QUANTUM) * 60.0 / self.tempo

    def now(self) -> float:
        return self.at(self.link.clock().micros())

    def advance(self) -> None:
        """Live time advances by itself."""

    def align(self, show: Any, t: float) -> None:
        """Put the show where the shared clock says it is at ``t`` (called once the show is on screen), so a node
        that starts or restarts mid-show plays the same scene at the same path time as the others."""
        state = shared_position(show, t)
        if state is not None:
            show.restore(state, t)


def shared_position(show: Any, t: float) -> dict[str, Any] | None:
    """The scene, position, time in scene and path time a show that started at show time 0 and ran untouched
    would have at ``t``: scenes follow each other by their durations (a scene without one plays on), the path
    walks at the scene's default ``speed``. None when the show has a single scene that plays forever."""
    scenes = show.scenes
    n = len(scenes)
    durations = [scenes[show.scene_index(p)].duration for p in range(n)]
    if n == 1 or durations[0] <= 0:
        position, scene_time = 0, t
    else:
        finite = all(d > 0 for d in durations)
        cycle = sum(durations) if finite else math.inf
        k = int(t // cycle) if finite else 0
        rest, position = t - k * cycle if finite else t, k * n
        while True:
            d = scenes[show.scene_index(position)].duration
            if d <= 0 or rest < d:
                break
            rest -= d
            position += 1
        scene_time = rest
    scene = scenes[show.scene_index(position)]
    speed = float(show.defaults(scene).get("speed", 1.0))
    return {"scene": scene.name, "position": position, "scene_time": scene_time, "tau": scene_time * speed,
            "seed": scene.seed}


def clock_for(config: Any, clock: Any) -> Any:
    """The show clock a config asks for: a :class:`LinkClock` for ``[sync] clock = "link"`` on a live run, else
    ``clock`` itself (a fixed-step render keeps its own frame clock)."""
    s: SyncSettings = config.sync
    if s.clock != "link" or getattr(clock, "fixed", False):
        return clock
    return LinkClock(s.tempo, s.join_s)


class LinkPart:
    """Joins the session (or shares the clock's), writes the link.* sources each tick, and holds scene changes to
    the next bar. A part with no thread of its own: Link runs its own."""

    def __init__(self, settings: SyncSettings, bus: ParamBus, session: Any = None) -> None:
        self.settings = settings
        self.bus = bus
        self._shared = session
        self.link: Any = None
        self._held: list[Event] = []  # scene changes waiting for the bar line
        self._released = 0
        self._last_phase: float | None = None
        self._figures: dict[str, float] = {}

    @property
    def alive(self) -> bool:
        return self.link is not None

    def start(self) -> None:
        if self.link is None:
            self.link = self._shared if self._shared is not None else _new_link(self.settings.tempo)
            log.info("Ableton Link on (%s peers, %.1f BPM)", self.link.numPeers(),
                     self.link.captureAppSessionState().tempo())

    def stop(self) -> None:
        link, self.link = self.link, None
        if link is not None and link is not self._shared:
            link.enabled = False

    def stats(self) -> dict[str, Any]:
        return {**self._figures, "held": len(self._held), "released": self._released}

    def events(self, events: Iterable[Event], moment: Moment) -> list[Event]:
        """The per-tick event hook: update the sources; scene changes wait for the next bar line."""
        link = self.link
        if link is None:
            return list(events)
        s = self.settings
        state = link.captureAppSessionState()
        now = link.clock().micros()
        beat = state.beatAtTime(now, s.quantum)
        phase = state.phaseAtTime(now, s.quantum) / s.quantum
        tempo = state.tempo()
        peers = link.numPeers()
        for name, v in (("link.beat", beat % 1.0), ("link.phase", phase), ("link.tempo", tempo),
                        ("link.peers", float(peers))):  # every tick: journaled as the next tick reads it
            self.bus.set(name, v, source="link", sampled=True)
        self._figures = {"tempo": round(tempo, 3), "beat": round(beat, 3), "phase": round(phase, 3), "peers": peers}
        out: list[Event] = []
        for ev in events:
            (self._held if s.quantise_scenes and ev.kind in SCENE_EVENTS else out).append(ev)
        crossed = self._last_phase is not None and phase < self._last_phase
        self._last_phase = phase
        if crossed and self._held:
            out.extend(self._held)
            self._released += len(self._held)
            self._held = []
        return out


@register("link", table="sync", settings=SyncSettings, params=link_specs, order=20)
def build(settings: SyncSettings, ctx: PartContext) -> LinkPart | None:
    """The Link part: on with ``[sync] link = true`` (or ``clock = "link"``, whose session it shares)."""
    clock = getattr(ctx, "clock", None)
    session = clock.link if isinstance(clock, LinkClock) else None
    if not (settings.link or session is not None):
        return None
    return LinkPart(settings, ctx.bus, session)
