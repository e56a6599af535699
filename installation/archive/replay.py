"""Replaying an archived performance: offline through a fixed-step clock (``installation replay``), or live
(``installation run --replay``).

Offline, the show is rebuilt from the session's starting state and the archived journal is posted on the bus at the
same show times: before tick k, every change stamped at or before tick k's time. By default the replay steps at a
steady rate along show time (frame n at n / fps, the show's own fps or ``--fps``), so a performance whose live
ticks stuttered (a busy machine, a slow decoder) comes out as an even film; a change lands on the first frame at or
after its time. With ``live_ticks`` (``--live-ticks``) and the session's tick times archived (the default), the
clock steps through exactly those times instead, so every tick sees the same time, the same step and the same
changes as the live show did, and the path (latents, seeds, path time) is the same to the bit, stutter included.
Changes the show makes itself (scene defaults, a resume, a panic's reset) are not posted: the replayed show makes
them again. Frames are rendered in lockstep; the live show's frames came from a decoder running beside the loop, so
they match the replay's to within that decoder's timing, not to the bit.

The continuous input features (camera, microphone) are journaled as the loop consumed them, stamped with the time of
the tick that read them (:mod:`installation.bus`, ``sampled``): a replay posts each before that same tick, so every
replayed tick reads exactly the values the live tick read, whatever the clock, the inputs' rates or the load.

One race is left for the other changes: one that reached the bus in the microseconds between a live tick reading
the clock and draining the bus was applied at that tick, and is applied one tick later by a replay.

This module holds what both need (which changes replay, the clock, overrides, the live feeder); the offline render,
which runs a whole :class:`~installation.runtime.Runtime`, is :mod:`installation.archive.rerender`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..bus import Event, ParamBus
from .store import Store, parse_source

log = logging.getLogger(__name__)

CONSEQUENCES = frozenset({"scene", "resume", "panic", "archive"})  # journal sources the show itself produces


def replayable(change: dict[str, Any]) -> bool:
    """A journal entry that came from outside the show (a performer, an input, a schedule), not from the show."""
    return change["source"] not in CONSEQUENCES and change["kind"] in ("set", "event", "reset") and \
        change["source"] != "replay-initial" and change["name"] != "map.goto"  # its seek is in the journal


class ReplayClock:
    """A fixed clock (frames rendered in lockstep) stepping through given show times; past them, at ``fps``."""

    fixed = True

    def __init__(self, times: np.ndarray, fps: float) -> None:
        self.times = np.asarray(times, dtype=np.float64)
        self.fps = float(fps)
        self.frame = 0

    def now(self) -> float:
        n = len(self.times)
        if self.frame < n:
            return float(self.times[self.frame])
        return (float(self.times[-1]) if n else 0.0) + (self.frame - n + 1) / self.fps

    def advance(self) -> None:
        self.frame += 1


@dataclass
class Overrides:
    """A counterfactual: the same performance from other seeds, with another prompt, or in another scene.

    ``seed`` walks every scene from that seed, ``seeds`` ({scene: seed}) one scene (it wins over ``seed``): each scene
    starts from its override wherever it comes up, and a recorded seed jump in it is shifted by as much as that
    scene's start was."""

    seed: int | None = None
    prompt: str | None = None
    scene: str | None = None
    seeds: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse_seeds(cls, values: list[str] | None) -> tuple[int | None, dict[str, int]]:
        """``--seed`` values: ``99`` (every scene) or ``tide=7`` (one scene), as (seed, {scene: seed})."""
        seed, seeds = None, {}
        for v in values or ():
            name, _, number = v.rpartition("=")
            try:
                n = int(number)
            except ValueError:
                raise ValueError(f"--seed {v!r}: give a seed (99) or a scene and a seed (tide=7)") from None
            if not 0 <= n < 2**63:
                raise ValueError(f"--seed {v!r}: a seed is 0 .. 2**63-1")
            if name:
                seeds[name] = n
            else:
                seed = n
        return seed, seeds

    def seed_for(self, scene: str) -> int | None:
        return self.seeds.get(scene, self.seed)

    def spec(self, spec: Any) -> None:
        """Each overridden scene of the show starts from its override (a ValueError names an unknown scene)."""
        names = [sc.name for sc in spec.scenes]
        unknown = [n for n in self.seeds if n not in names]
        if unknown:
            raise ValueError(f"--seed {unknown[0]}=...: no scene {unknown[0]!r} in this show "
                             f"(scenes: {', '.join(names)})")
        spec.scenes = [sc if self.seed_for(sc.name) is None else
                       replace(sc, body=sc.body.model_copy(update={"seed": self.seed_for(sc.name)}))
                       for sc in spec.scenes]

    def state(self, state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        if self.scene is not None:
            state.update(scene=self.scene, position=0, scene_time=0.0)
        seed = self.seed_for(str(state.get("scene", "")))
        if seed is not None:
            state["seed"] = seed
        if self.prompt is not None:
            state["prompts"] = [[self.prompt, 1.0]]
        return state

    def changes(self, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for c in changes:
            if c["kind"] == "event":
                if self.scene is not None and c["name"].startswith("scene."):
                    continue  # one scene throughout
                if self.prompt is not None and c["name"] == "prompt" and isinstance(c["value"], list) and \
                        len(c["value"]) == 3:
                    c = {**c, "value": [c["value"][0], self.prompt, c["value"][2]]}
            out.append(c)
        return out

    def jump(self, change: dict[str, Any], scene: str, start: Any) -> dict[str, Any]:
        """A recorded seed jump made while ``scene`` played, which started (live) from seed ``start``: shifted by as
        much as that scene's start is."""
        seed = self.seed_for(scene)
        if seed is None or change["kind"] != "event" or change["name"] != "seed" or \
                not isinstance(change["value"], int) or not isinstance(start, int):
            return change
        return {**change, "value": max(change["value"] + seed - start, 0)}


class LiveFeeder:
    """``run --replay``: posts an archived session's changes on the live bus at their show times (counted from the
    first tick), starting from the session's scene and parameters; when ``loop``, again from the start when done."""

    def __init__(self, source: str, bus: ParamBus, loop: bool = True) -> None:
        path, sid = parse_source(source)
        store = Store(path, readonly=True)
        try:
            sess = store.session(sid)
            self.changes = sorted((c for c in store.events(sess["id"]) if replayable(c)), key=lambda c: c["t"])
        finally:
            store.close()
        self.initial = sess.get("initial") or {}
        self.span = max(float(sess.get("last_t") or 0.0), self.changes[-1]["t"] if self.changes else 0.0, 1.0)
        self.bus, self.loop = bus, loop
        self.offset: float | None = None
        self.i = 0
        self.rounds = 0

    def start(self) -> None:
        self.offset, self.i = None, 0

    def tick(self, t: float) -> None:
        if self.offset is None or (self.loop and self.i >= len(self.changes) and t - self.offset >= self.span):
            self.offset, self.i = t, 0
            self.rounds += 1
            if self.initial.get("scene"):
                self.bus.post(Event("scene.goto", self.initial["scene"], "replay-initial"))
            if self.initial.get("params"):
                self.bus.reset(self.initial["params"], source="replay-initial")
        while self.i < len(self.changes) and self.changes[self.i]["t"] + self.offset <= t:
            post_change(self.bus, self.changes[self.i])
            self.i += 1


def post_change(bus: Any, change: dict[str, Any], source: str = "replay") -> bool:
    """Re-post one archived journal entry on ``bus`` (a set, an event or a reset)."""
    kind, name, value = change["kind"], change["name"], change["value"]
    if kind == "set":
        return bus.set(name, value, source=source, sampled=bool(change.get("sampled")))
    if kind == "event":
        if name == "prompt" and isinstance(value, list):
            value = tuple(value)
        return bus.post(Event(name, value, source))
    if kind == "reset" and isinstance(value, dict):
        bus.reset(value, source=source)
        return True
    return False
