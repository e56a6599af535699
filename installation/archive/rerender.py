"""``installation replay``: re-render a stretch of an archived session offline, through a whole runtime on a
fixed-step clock that steps at a steady rate along show time (or through the session's own tick times, with
``live_ticks``), and compare the replay's archive with the source's
(see :mod:`installation.archive.replay` for what is replayed and how exact it is).

A command's engine: it builds a :class:`~installation.runtime.Runtime`, so it sits in the commands layer
(docs/architecture.md), above the archive part it replays.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import load_show
from ..render.record import Recorder
from ..render.targets import HeadlessTarget
from ..runtime import Runtime
from ..sizes import parse_size
from .replay import Overrides, ReplayClock, post_change, replayable
from .store import Store, parse_source

log = logging.getLogger(__name__)


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
    source's, how many archived points it reproduced to the bit). Raises ValueError/KeyError/
    FileNotFoundError/ConfigError for a bad source or flag (the command's exit 2)."""
    if live_ticks and fps is not None:
        raise ValueError("--live-ticks steps through the live show's own tick times: give it or --fps, not both")
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
    live_seeds = {sc.name: sc.seed for sc in spec.scenes}  # where each scene started live
    overrides.spec(spec)
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
        pending = overrides.changes(changes)
        playing, start = rt.show.scene.name, initial.get("seed")  # the scene playing and its live starting seed
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
            if rt.show.scene.name != playing:  # a scene change: it started from its own seed live
                playing, start = rt.show.scene.name, live_seeds.get(rt.show.scene.name)
            while i < len(pending) and pending[i]["t"] <= t:
                posted += post_change(rt.bus, overrides.jump(pending[i], playing, start))
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
