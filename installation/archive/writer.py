"""The archive part: records the show as it plays, from its own thread, without ever making the loop wait.

What it takes, all through the taps a watching part has (``docs/architecture.md``):

- the bus journal (``ctx.bus.subscribe()``): every accepted parameter set, event and reset, with show time and source
  (the continuous input features as the loop consumed them, once per tick at most, kept packed: ``samples``);
- the plan hook (on the loop thread, a few microseconds): each tick's show time, and every ``point_every`` seconds
  the tick's plan (immutable), from which the writer computes the point's latent, seed and path time;
- a presented-frame sink (``ctx.presented``): the frame of a point's tick, shrunk to a thumbnail by the writer.

Every ``batch_s`` (at most a second) the writer thread commits what arrived as one transaction. A failing write (a
full disk, a locked or broken file) is a counted fault: the batch is dropped, the show goes on. When the writer falls
behind, an offline (fixed-step) render waits for it, so no point is lost; a live show never waits: its bounded queues
drop, and each stretch of dropped points is counted (``points_dropped`` in ``/health``) and written to the journal (a
``dropped`` entry, summed by ``archive info``).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..bus import Event
from ..ops.supervise import SupervisedThread, supervised
from ..parts import Moment, PartContext
from .store import CorruptArchive, Store, archive_file, is_corrupt, pack_latent, pack_vector, to_json

log = logging.getLogger(__name__)

MAP_POINTS = 5000  # /map/goto chooses among the newest this many archived points
# A CLIP embedding of a presented frame: {"t": the archived point's show time, "embedding": [...]} from the vision
# part (stored on that point only), or a bare list of floats (stored on the newest point at the event's time).
EMBEDDING_EVENT = "vision.embedding"
MAX_PENDING_POINTS = 64
WRITER_WAIT_S = 10.0  # a fixed-step render waits at most this long for the writer to take its points
MAX_PENDING_TICKS = 1 << 17
CONFIG_SUFFIXES = frozenset({".json", ".txt", ".yaml", ".yml", ".toml"})


def model_identity(decoder: Any) -> dict[str, Any]:
    """A decoder's type and settings, and for each model folder it names, the folder and a SHA-256 of its config
    files (not the weights): enough to tell later which model made the frames."""
    settings = decoder.settings
    out: dict[str, Any] = {"type": decoder.type, "settings": settings.model_dump(mode="json"), "files": {}}
    for name in getattr(type(settings), "path_fields", ()):
        value = getattr(settings, name, "")
        folder = Path(value).expanduser() if value else None
        if folder is None or not folder.is_dir():
            continue
        h = hashlib.sha256()
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix in CONFIG_SUFFIXES and f.stat().st_size < 16 << 20:
                h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
        out["files"][name] = {"folder": str(folder.resolve()), "config_sha256": h.hexdigest()}
    return out


class PointClock:
    """When a point is due: at the first tick, then at the first tick ``every`` seconds of show time after the last
    one. The archive and the vision part each keep one, so CLIP embeds exactly the archived points' frames."""

    def __init__(self, every: float) -> None:
        self.every = float(every)
        self.next: float | None = None

    def due(self, t: float) -> bool:
        if self.next is None or t >= self.next - 1e-9:  # 1e-9: sums of steps round
            self.next = t + self.every
            return True
        return False


def thumbnail(rgb: bytes, size: tuple[int, int], long_edge: int) -> bytes:
    """A JPEG of a presented frame (RGB, bottom row first) with its long edge ``long_edge`` pixels."""
    import cv2

    w, h = size
    img = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1]
    scale = long_edge / max(w, h)
    if scale < 1.0:
        img = cv2.resize(img, (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)),
                         interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else b""


def show_config(ctx: PartContext, state: dict[str, Any]) -> str:
    """The show's config file, as the runtime's state names it (the archive file is named after it)."""
    return (state.get("show") or {}).get("config") or str(ctx.base_dir)


def archive_path(settings: Any, ctx: PartContext, state: dict[str, Any] | None = None) -> Path:
    """The show's archive file: ``[archive] path`` (relative to the config's folder), named after the config."""
    folder = Path(settings.path).expanduser()
    folder = folder if folder.is_absolute() else ctx.base_dir / folder
    return archive_file(folder, show_config(ctx, ctx.state() if state is None else state))


class Archive:
    """The ``archive`` part. See the module's doc; ``settings`` is :class:`~installation.archive.ArchiveSettings`."""

    def __init__(self, settings: Any, ctx: PartContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.path: Path | None = None  # known once started (named after the config file)
        self.session: int | None = None
        self.faults: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()  # written: events, points, ticks, batches; dropped: ...
        self._journal = ctx.bus.subscribe(maxlen=1 << 16)
        self._points: deque[list[Any]] = deque()
        self._ticks: list[float] = []
        self._clips: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        self._clock = PointClock(settings.point_every)
        self._queued: deque[float] = deque(maxlen=4 * MAX_PENDING_POINTS)  # recent points' times (not dropped)
        self._want_thumb: list[Any] | None = None  # the point whose frame the sink takes next
        self._first: dict[str, Any] | None = None
        self._first_sent = False
        self._models: set[int] = set()
        self._drained = threading.Condition(self._lock)  # the writer took the pending points
        self._wake = threading.Event()  # write a batch now (a fixed-step render waits for it)
        self._fixed = bool(getattr(ctx.clock, "fixed", False))  # an offline render: wait rather than drop
        self._waits_failed = False
        self._dropping: list[float] | None = None  # [first t, last t, count] of the points dropped since the last batch
        self._stop = threading.Event()
        self._thread: SupervisedThread | None = None
        self._store: Store | None = None
        self._last_t = 0.0
        self._scene = ""
        self.cpu_s = 0.0  # the writer thread's CPU time
        self.hook_s = 0.0  # time spent in the plan hook, on the loop thread
        self._opening: tuple[str, dict[str, Any]] | None = None
        self._points_before: int | None = None  # points in the file from earlier sessions (the atlas maps them)
        self._points_queued = 0  # this session's points handed to the writer
        self.paused = False  # bench --archive: ticks that record nothing, to compare with ticks that do
        self.feeder = None
        if settings.replay:
            from .replay import LiveFeeder

            self.feeder = LiveFeeder(settings.replay, ctx.bus, loop=settings.replay_loop)
        if ctx.presented is not None:
            ctx.presented.add(self)
        overlay = getattr(getattr(ctx.config, "output", None), "map", None)
        self.live_map = None
        if overlay is not None and overlay.enabled:
            if settings.enabled:
                from .live_map import LiveMap

                self.live_map = LiveMap(overlay, lambda: (self.path, self.session), marks=lambda: seek_marks(ctx.bus))
            else:
                log.warning("[output.map] needs the archive ([archive] enabled = true): no live map")

    # -- the part ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if self._opening is None:  # the show as it starts (a restart after a fault carries on with the same session)
            state = self.ctx.state()
            self.path = archive_path(self.settings, self.ctx, state)
            self._opening = (show_config(self.ctx, state), {k: v for k, v in state.items() if k != "show"})
        self._open()
        if self.feeder is not None:
            self.feeder.start()
        self._stop.clear()
        self._thread = supervised("archive", self._run, stop=self._stop)
        if self.live_map is not None:
            self.live_map.start()

    def _open(self) -> bool:
        """Open the file and start the session; a folder or file that cannot be used is a counted fault (tried
        again every batch), never a reason for the show not to start."""
        if self._store is not None or not self.settings.enabled:
            return self._store is not None
        config, initial = self._opening
        try:
            try:
                self._store = Store(self.path)
            except CorruptArchive as e:  # truncated, pages overwritten, not a database: set aside, start a new one
                self._set_aside(e.why)
                self._store = Store(self.path)
            if self.session is None:
                size = getattr(getattr(self.ctx.presented, "output", None), "size", None)
                self.session = self._store.new_session(_now(), config, list(self.ctx.scenes()), size, initial,
                                                       kind="replay" if self.feeder else "live")
                log.info("archiving to %s, session %d", self.path, self.session)
            if self._points_before is None:
                try:  # (nothing of this session is written before its first open)
                    n = int(self._store.conn.execute("SELECT count(*) FROM points").fetchone()[0])
                except sqlite3.DatabaseError as e:  # a damaged page: the first batch meets it and sets the file aside
                    log.warning("archive %s: its points could not be counted (%s)", self.path, e)
                    n = int(self.counts["points"])
                self._points_before = n - int(self.counts["points"])
        except Exception as e:  # noqa: BLE001 - unwritable folder, not an archive, full disk: counted, retried
            if self._store is not None:
                self._store.close()
                self._store = None
            self.faults["open"] += 1
            if self.faults["open"] == 1:
                log.error("archive %s cannot be opened (%s); the show goes on unarchived, retrying", self.path, e)
            return False
        return True

    def stop(self) -> None:
        if self.live_map is not None:
            self.live_map.stop()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
        if self._store is not None:
            self._flush(ended=_now())
            self._store.close()
            self._store = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, Any]:
        out = {"path": str(self.path) if self.path else None, "session": self.session, "points_dropped": 0,
               "embeddings": 0, **self.counts,
               "writer_cpu_s": round(self.cpu_s, 3), "loop_hook_s": round(self.hook_s, 4),
               "journal_dropped": self._journal.dropped, "failures": sum(self.faults.values()),
               "faults": dict(self.faults)}
        if self.live_map is not None:
            out["live_map"] = self.live_map.stats()
        return out

    # -- the loop thread: a few appends per tick -----------------------------------------------------------------
    def points_held(self) -> int:
        """Points in the archive: earlier sessions' in the file, this one's written and those queued to be written
        (the atlas waits for them): counted as they are queued on the loop thread, so the count follows show time,
        not the writer's pace (a point between the queue and the file was counted in neither)."""
        return (self._points_before or 0) + self._points_queued

    def plan(self, plan: Any, moment: Moment) -> Any:
        if self.settings.enabled and self.path is not None and plan.decoder.type == "atlas":
            plan = replace(plan, extras={**plan.extras, "archive": (str(self.path), self.session)})
        if not self.settings.enabled or self.paused:
            return plan
        started = time.perf_counter()
        t = moment.t
        self._last_t = t
        if self.live_map is not None:
            self.live_map.position(plan, t)
        self._scene = plan.scene
        with self._lock:
            if self.settings.ticks:
                if len(self._ticks) < MAX_PENDING_TICKS:
                    self._ticks.append(t)
                else:
                    self.counts["ticks_dropped"] += 1
            if self._first is None:
                state = self.ctx.state()
                self._first = {"t": t, "started": t - float(state.get("scene_time", 0.0)), "scene": state["scene"],
                               "tau": state.get("tau"), "seed": state.get("seed")}
            if self._clock.due(t):
                if len(self._points) >= MAX_PENDING_POINTS and self._fixed:
                    self._wait_for_writer()
                if len(self._points) < MAX_PENDING_POINTS:
                    point = [t, plan, None]
                    self._points.append(point)
                    self._points_queued += 1
                    self._want_thumb = point
                    self._queued.append(t)
                else:
                    self._drop_point(t)
        self.hook_s += time.perf_counter() - started
        return plan

    def _wait_for_writer(self) -> None:
        """A fixed-step render (holding the lock): wake the writer and wait until it took the pending points. A
        writer that cannot take them (dead, or its file cannot be opened) is not waited for again until it does."""
        if self._waits_failed or self._store is None or not self.alive:
            return
        self._wake.set()
        self.counts["writer_waits"] += 1
        if not self._drained.wait_for(lambda: len(self._points) < MAX_PENDING_POINTS, WRITER_WAIT_S):
            self._waits_failed = True
            log.error("archive %s: the writer took no points for %.0f s; points are dropped (counted)",
                      self.path, WRITER_WAIT_S)

    def _drop_point(self, t: float) -> None:
        """A point the writer had no room for (holding the lock): counted, and its stretch goes to the journal."""
        self.counts["points_dropped"] += 1
        if self._dropping is None:
            self._dropping = [t, t, 0]
            if self.counts["points_dropped"] == 1:
                log.warning("archive %s: the writer is behind; points are dropped (counted in /health and the "
                            "archive's journal)", self.path)
        self._dropping[1] = t
        self._dropping[2] += 1

    def overlay(self, ctx: Any, framebuffer: Any, size: tuple[int, int]) -> None:
        """Draw over the presented output (the loop thread, GL): the live map, when ``[output.map]`` is on."""
        if self.live_map is not None:
            self.live_map.draw(ctx, framebuffer, size)

    def tick(self, moment: Moment) -> None:
        if self.feeder is not None:
            self.feeder.tick(moment.t)

    # -- the presented-frame sink ----------------------------------------------------------------------------------
    def wants(self, t: float | None) -> bool:
        return self._want_thumb is not None

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        point, self._want_thumb = self._want_thumb, None
        if point is not None:
            point[2] = (rgb, size)

    def embedding(self, t: float, vector: Any) -> None:
        """A CLIP embedding of the frame at show time ``t`` (also taken from ``vision.embedding`` bus events)."""
        with self._lock:
            self._clips.append((t, pack_vector(vector)))

    # -- the writer thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.batch_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            cpu = time.thread_time()
            self._flush()
            self.cpu_s += time.thread_time() - cpu

    def _flush(self, ended: str | None = None) -> None:
        if not self._open():
            return
        store = self._store
        changes = self._journal.drain()
        with self._lock:
            points = list(self._points)
            if points and points[-1] is self._want_thumb and ended is None:  # its frame is still to come
                points.pop()
            for _ in points:
                self._points.popleft()
            if points:
                self._waits_failed = False
                self._drained.notify_all()
            dropping, self._dropping = self._dropping, None
            ticks = np.asarray(self._ticks, dtype=np.float64)
            self._ticks = []
            first = self._first if not self._first_sent else None
            clips, self._clips = self._clips, []
            queued = set(self._queued)
        try:
            events, samples, goto = [], [], None
            for c in changes:
                if c.kind == "event" and c.name == "map.goto":
                    goto = c.value  # the newest wins
                if c.kind == "event" and c.name == EMBEDDING_EVENT:
                    clip = self._clip(c, queued)
                    if clip is not None:
                        clips.append(clip)
                elif c.sampled:
                    samples.append((c.t, c.name, c.value, c.source))
                else:
                    events.append((c.t, c.kind, c.name, to_json(c.value), c.source))
            if dropping is not None:  # a stretch of points the live show could not wait for
                events.append((dropping[1], "dropped", "points", to_json({"count": dropping[2], "from": dropping[0],
                                                                          "to": dropping[1]}), "archive"))
            rows = []
            for t, plan, frame in points:
                events.extend(self._model_event(t, plan))
                rows.append(self._point_row(t, plan, frame))
            try:
                store.write_batch(self.session, events=events, points=rows, ticks=ticks, first=first, clips=clips,
                                  last_t=self._last_t, ended=ended, samples=samples)
            except Exception as e:  # noqa: BLE001 - sorted out below
                if not is_corrupt(e):
                    raise
                # The file was damaged under us: set it aside and write this batch to a new file with a new
                # session at once (it may be the last batch of the run: nothing may wait for a next one).
                store.close()
                self._store = None
                self._set_aside(str(e))
                if not self._open():
                    raise
                store, first = self._store, self._first
                store.write_batch(self.session, events=events, points=rows, ticks=ticks, first=first, clips=clips,
                                  last_t=self._last_t, ended=ended, samples=samples)
        except Exception as e:  # noqa: BLE001 - a full disk or a broken file is a counted fault, never a crash
            if is_corrupt(e):  # damaged again, at once: this batch is lost, the next goes to yet another file
                self.counts["batches_lost"] += 1
                if self._store is not None:
                    self._store.close()
                self._store = None
                self._set_aside(str(e))
                return
            kind = "disk_full" if "full" in str(e) else type(e).__name__
            self.faults[kind] += 1
            self.counts["batches_lost"] += 1
            if self.faults[kind] == 1:
                log.error("archive %s: a batch was not written (%s); the show goes on", self.path, e)
            return
        if goto is not None:
            self._goto(store, goto)
        self._first_sent = self._first_sent or first is not None
        self.counts["batches"] += 1
        self.counts["events"] += len(events)
        self.counts["samples"] += len(samples)
        self.counts["points"] += len(rows)
        self.counts["embeddings"] += len(clips)
        self.counts["ticks"] += len(ticks)
        self.counts["journal_dropped"] = self._journal.dropped
        self._bound(store)  # three PRAGMA reads unless over the bound

    def _clip(self, change: Any, queued: set[float]) -> tuple[float, bytes] | None:
        """A ``vision.embedding`` event as ``(t, packed vector)``; one for a point that was never queued (dropped,
        or not this archive's) or a malformed one is counted and left out."""
        value = change.value
        if not isinstance(value, dict):
            return change.t, pack_vector(value)
        t = value.get("t")
        if t not in queued:
            self.counts["embeddings_unmatched"] += 1
            return None
        try:
            return float(t), pack_vector(value["embedding"])
        except (KeyError, TypeError, ValueError):
            self.counts["embeddings_unmatched"] += 1
            return None

    def _set_aside(self, why: str) -> None:
        """A damaged archive file is renamed ``<name>.corrupt-<time>`` (its WAL beside it), as the state file is,
        counted (``corrupt`` in the part's faults and /health) and a new file with a new session started."""
        self.faults["corrupt"] += 1
        files.set_aside(self.path, why, what="archive", companions=("-wal", "-shm"), logger=log,
                        then="starting a new one")
        self.session = None
        self._first_sent = False  # the new session starts where the show is

    def _goto(self, store: Store, place: Any) -> None:
        """/map/goto: glide the walk to the archived point nearest ``place`` on the map (its scene, seed and path
        time; the show blends there like a seed jump)."""
        from .maps import nearest

        try:
            x, y = (float(v) for v in place)
            target = nearest(store.points(newest=MAP_POINTS), x, y)
        except Exception as e:  # noqa: BLE001 - a bad request or a failing fit: counted, the show goes on
            self.faults["map_goto"] += 1
            log.warning("map goto %r failed: %s", place, e)
            return
        if target is None:
            self.counts["map_goto_empty"] += 1
            return
        if target.scene != self._scene:
            self.ctx.bus.post(Event("scene.goto", target.scene, "map"))
        self.ctx.bus.post(Event("seek", [target.seed, target.tau], "map"))
        self.counts["map_goto"] += 1

    def _bound(self, store: Store) -> None:
        try:
            removed = store.enforce(int(self.settings.max_mb * 1e6))
        except Exception as e:  # noqa: BLE001
            if is_corrupt(e):
                store.close()
                self._store = None
                self._set_aside(str(e))
                return
            self.faults[type(e).__name__] += 1
            log.error("archive %s: retention failed (%s)", self.path, e)
            return
        for k, v in removed.items():
            self.counts[f"retired_{k}"] += v

    def _model_event(self, t: float, plan: Any) -> list[tuple]:
        key = hash(plan.decoder)
        if key in self._models:
            return []
        self._models.add(key)
        return [(t, "model", plan.decoder.type, to_json(model_identity(plan.decoder)), "archive")]

    def _point_row(self, t: float, plan: Any, frame: tuple[bytes, tuple[int, int]] | None) -> tuple:
        latent, shape = pack_latent(plan.latent(t))
        thumb = thumbnail(frame[0], frame[1], self.settings.thumb) if frame is not None else None
        seed = plan.part.key[2] if len(plan.part.key) > 2 else None
        prompts = plan.extras.get("prompts") if plan.extras else None
        return (t, plan.scene, seed, plan.part.tau0, latent, shape, thumb, None,
                to_json([list(p) for p in prompts]) if prompts else None)


def seek_marks(bus: Any) -> list[int]:
    """The archived points among the results of the current ``/seek`` (none once it is let go)."""
    results = bus.notes().get("seek.results")
    if not isinstance(results, dict):
        return []
    return [int(r["id"]) for r in results.get("results", ()) if isinstance(r, dict) and r.get("kind") == "point"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
