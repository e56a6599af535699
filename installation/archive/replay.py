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
"""

from __future__ import annotations

import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bus import ParamBus
from .store import Store
from .writer import CONSEQUENCES, post_change

log = logging.getLogger(__name__)


def parse_source(text: str | Path) -> tuple[Path, int | None]:
    """``FILE`` or ``FILE#SESSION`` -> (path, session id or None for the newest)."""
    text = str(text)
    if "#" in text:
        path, _, sid = text.rpartition("#")
        if sid.isdigit():
            return Path(path), int(sid)
    return Path(text), None


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
    """A counterfactual: the same performance from another seed, with another prompt, or in another scene."""

    seed: int | None = None
    prompt: str | None = None
    scene: str | None = None

    def state(self, state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        if self.seed is not None:
            state["seed"] = self.seed
        if self.prompt is not None:
            state["prompts"] = [[self.prompt, 1.0]]
        if self.scene is not None:
            state.update(scene=self.scene, position=0, scene_time=0.0)
        return state

    def changes(self, changes: list[dict[str, Any]], seed0: Any) -> list[dict[str, Any]]:
        out = []
        for c in changes:
            if c["kind"] == "event":
                if self.scene is not None and c["name"].startswith("scene."):
                    continue  # one scene throughout
                if self.seed is not None and c["name"] == "seed" and isinstance(c["value"], int) and \
                        isinstance(seed0, int):
                    c = {**c, "value": max(c["value"] + self.seed - seed0, 0)}  # the same jumps, shifted
                if self.prompt is not None and c["name"] == "prompt" and isinstance(c["value"], list) and \
                        len(c["value"]) == 3:
                    c = {**c, "value": [c["value"][0], self.prompt, c["value"][2]]}
            out.append(c)
        return out


class _Timed:
    """A sink writing every presented frame to a blocking recorder, repeated or skipped by show time exactly as the
    live recorder did (so a replay of the live timing lines up frame for frame with the live recording)."""

    def __init__(self, recorder: Any, clock: ReplayClock, fps: float) -> None:
        self.recorder, self.clock, self.fps = recorder, clock, fps
        self.t0: float | None = None
        self.due = 0

    def wants(self, t: float | None) -> bool:
        return not self.recorder.failed

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        now = self.clock.now()
        if self.t0 is None:
            self.t0 = now
        due = int(round((now - self.t0) * self.fps)) + 1
        for _ in range(due - self.due):
            self.recorder.write(rgb)
        self.due = max(self.due, due)


def _fresh(state: dict[str, Any]) -> bool:
    return not state.get("tau") and not state.get("scene_time") and not state.get("position") and \
        not state.get("prompts")


def render_replay(source: str | Path, session: int | None = None, *, config: Path | None = None,
                  t_from: float | None = None, t_to: float | None = None, size: tuple[int, int] | None = None,
                  fps: float | None = None, record: Path | None = None, overrides: Overrides | None = None,
                  archive_out: Path | None = None, on_frame: Callable[[bytes, float], None] | None = None,
                  live_ticks: bool = False) -> dict[str, Any]:
    """Re-render a stretch of an archived session offline, at a steady ``fps`` (default: the show's), or through the
    live show's own tick times with ``live_ticks``; returns figures (and, comparing the replay's own archive with the
    source's, how many archived points it reproduced to the bit). Raises ValueError/KeyError/FileNotFoundError/
    ConfigError for a bad source or flag (the command's exit 2)."""
    if live_ticks and fps is not None:
        raise ValueError("--live-ticks steps through the live show's own tick times: give it or --fps, not both")
    from ..config import load_show
    from ..render.record import Recorder
    from ..render.targets import HeadlessTarget
    from ..runtime import Runtime
    from ..sizes import parse_size

    overrides = overrides or Overrides()
    path, sid = parse_source(source)
    store = Store(path, readonly=True)
    try:
        sess = store.session(session if session is not None else sid)
        ticks = store.ticks(sess["id"])
        # in time: a sampled feature is stamped with the tick that consumed it, which may be earlier than an entry
        # that reached the journal between that tick reading the clock and draining the bus (the race above)
        changes = sorted((c for c in store.events(sess["id"]) if replayable(c)), key=lambda c: c["t"])
        source_points = store.points(sess["id"], with_thumbs=False)
    finally:
        store.close()
    first = sess.get("first") or {}
    initial = sess.get("initial") or {}
    spec = load_show(config or sess["config"], only_scene=overrides.scene)
    cfg = spec.config
    out_size = size or (parse_size(sess["size"]) if sess.get("size") else cfg.output.size)
    exact = live_ticks and len(ticks) > 0 and first.get("t") is not None and ticks[0] == first["t"]
    if live_ticks and not exact:  # [archive] ticks = false, or the oldest thinned away at max_mb
        log.warning("session %s has no tick times from its start: replaying at a steady rate", sess["id"])
    rate = float(fps or cfg.output.fps)
    end = float(sess.get("last_t") or 0.0)
    if t_to is not None:
        end = min(end, t_to)
    if exact:
        times = ticks[ticks <= end + 1e-9]
    else:
        times = np.arange(0, int(math.floor(end * rate + 1e-9)) + 1) / rate
    if len(times) == 0 or (t_from is not None and t_from > times[-1]):
        begin = float(ticks[0]) if exact else 0.0
        raise ValueError(f"nothing to replay between {t_from or 0:g} and {end:g} s: session {sess['id']} has show "
                         f"time {begin:.1f} to {float(sess.get('last_t') or 0):.1f} s")
    tmp = None
    if archive_out is None:
        tmp = tempfile.TemporaryDirectory(prefix="replay-archive-")
        archive_out = Path(tmp.name)
    archive = cfg.archive.model_copy(update={"enabled": True, "path": str(Path(archive_out).resolve()),
                                             "replay": "", "ticks": True})
    decoder = cfg.decoder.model_copy(update={"hooks": []})  # their results were archived: replayed, not redone
    output = cfg.output.model_copy(update={"size": out_size, "fps": int(round(rate))})
    spec.config = cfg.model_copy(update={"archive": archive, "decoder": decoder, "output": output})
    target = HeadlessTarget(out_size)
    clock = ReplayClock(times, rate)
    recorder = None
    try:
        rt = Runtime(spec, target, clock, fps=rate, inputs=False)
    except Exception:
        target.close()
        raise
    sinks: list[Any] = []
    result: dict[str, Any] = {"session": sess["id"], "timing": "live ticks" if exact else f"fixed {rate:g} fps"
                              + (" (no live tick times)" if live_ticks and not exact else ""),
                              "size": f"{out_size[0]}x{out_size[1]}"}
    try:
        state = overrides.state(initial)
        if overrides != Overrides() or not _fresh(initial):
            rt.show.restore(state, 0.0)
        rt.show.update(0.0, 0.0, rt.bus.tick(0.0))  # as a live start does before its first frame
        if first.get("started") is not None and first.get("scene") == rt.show.scene.name:
            rt.show.started = float(first["started"])
        seed0 = initial.get("seed")
        pending = overrides.changes(changes, seed0)
        if record is not None:
            rc = cfg.record
            recorder = Recorder(record, out_size, rate, rc.ffmpeg, rc.codec, rc.preset, rc.crf, blocking=True)
            sinks.append(_Timed(recorder, clock, rate))
        if on_frame is not None:
            sinks.append(_Callback(on_frame, clock))
        rt.start()
        i = posted = frames = 0
        recording = False
        for _ in range(len(times)):
            t = clock.now()
            while i < len(pending) and pending[i]["t"] <= t:
                posted += post_change(rt.bus, pending[i])
                i += 1
            if not recording and (t_from is None or t >= t_from):
                recording = True
                rt.released = False
                for s in sinks:
                    rt.tap.add(s)
            elif not recording:
                rt.released = True  # fast-forward: the path is walked, nothing is decoded
            rt.step()
            frames += recording
        result.update(frames=frames, ticks=len(times), events_posted=posted, events=len(pending),
                      show_seconds=round(float(times[-1]) if len(times) else 0.0, 3))
    finally:
        for s in sinks:
            rt.tap.remove(s)
        rt.close()
        target.close()
        if recorder is not None:
            ok = recorder.close()
            result.update(recorded=str(record), recorded_frames=recorder.frames_written, recorder_ok=ok)
    try:
        result.update(compare_points(source_points, Path(archive_out), exact, rate))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return result


class _Callback:
    def __init__(self, fn: Callable[[bytes, float], None], clock: ReplayClock) -> None:
        self.fn, self.clock = fn, clock

    def wants(self, t: float | None) -> bool:
        return True

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        self.fn(rgb, self.clock.now())


def compare_points(source: list, replay_folder: Path, exact: bool, fps: float) -> dict[str, Any]:
    """The replay's archived points against the source's at the same show times: how many have the same scene,
    seed and latent (float16, as archived) to the bit, and the largest latent difference."""
    files = sorted(Path(replay_folder).glob("*.sqlite"))
    if not files or not source:
        return {"points_compared": 0}
    store = Store(files[0], readonly=True)
    try:
        mine = store.points(store.session()["id"], with_thumbs=False)
    finally:
        store.close()
    by_t = {p.t: p for p in mine}
    times = np.array(sorted(by_t))
    compared = same = 0
    worst = 0.0
    for p in source:
        if not len(times):
            break
        k = int(np.argmin(np.abs(times - p.t)))
        if abs(times[k] - p.t) > (0.0 if exact else 0.5 / fps):
            continue
        q = by_t[times[k]]
        compared += 1
        if p.latent is None or q.latent is None or p.latent.shape != q.latent.shape:
            continue
        d = float(np.max(np.abs(p.latent - q.latent))) if p.latent.size else 0.0
        worst = max(worst, d)
        same += d == 0.0 and p.scene == q.scene and p.seed == q.seed
    return {"points_compared": compared, "points_identical": same, "latent_max_diff": round(worst, 6)}


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
        from ..bus import Event

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
