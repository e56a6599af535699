"""Show state on disk: saved atomically every few seconds and on exit, loaded once at start to resume the show.

A power cut at any instant leaves either the previous file or the new one, never a mix: the new state is written to a
temporary file in the same folder, flushed and fsynced, renamed over the old one, and the folder is fsynced so the
rename itself survives. A state file is untrusted input: a corrupt, truncated or odd-shaped one is moved aside with a
warning and the show starts from its beginning; one written by an older version is migrated or ignored.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Callable, Mapping

from pydantic import BaseModel, ConfigDict, Field

from .. import files
from ..files import write_atomic  # moved down to installation.files (presets, MIDI learn, train import it from here)
from ..parts import Moment, PartContext, register
from .logs import RepeatLog
from .supervise import SupervisedThread, supervised

log = logging.getLogger(__name__)

STATE_VERSION = 1
STALLED_AFTER = 3  # save intervals without a written state (one was due) before health says saving is stalled
MAX_STATE_BYTES = 1 << 20  # a show state is a few KiB; anything bigger is not ours
FRAME_EDGE = 960  # the long edge of the picture kept beside the state, pixels

Migration = Callable[[dict[str, Any]], dict[str, Any]]
# from-version -> function returning the state at from-version + 1. Version 1 is the first, so nothing to migrate yet.
MIGRATIONS: Mapping[int, Migration] = MappingProxyType({})


class StateSettings(BaseModel):
    """``[state]``: where the show position is kept and how often it is saved (seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = "state/show.json"  # relative paths are taken from the config file's folder
    interval_s: Annotated[float, Field(ge=0.5, le=3600)] = 5.0
    enabled: bool = True


class StateError(ValueError):
    """A state file that cannot be used as it is."""


# -- writing ---------------------------------------------------------------------------------------------------------

def save_state(path: Path | str, state: Mapping[str, Any], *, version: int = STATE_VERSION,
               wall: Callable[[], float] = time.time) -> dict[str, Any]:
    """Write ``state`` plus ``version`` and ``saved_at`` (wall time) to ``path`` atomically; returns what was written
    (:func:`installation.files.save_json`).

    Raises OSError (disk), TypeError or ValueError (state not JSON-serialisable, NaN); the old file is then untouched.
    """
    return files.save_json(path, state, version=version, wall=wall)


# -- reading ---------------------------------------------------------------------------------------------------------

def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_show_state(state: Mapping[str, Any]) -> str | None:
    """What is wrong with the show keys of a loaded state (types and finiteness), or None when they are usable.

    Only keys that are present are checked; whether the scene still exists is for the runtime to decide.
    """
    checks: dict[str, Callable[[Any], bool]] = {
        "scene": lambda v: isinstance(v, str) and 0 < len(v) <= 200,
        "position": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1_000_000,
        "scene_time": lambda v: _finite(v) and v >= 0,
        "tau": _finite,
        "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**64,
        "prompts": lambda v: isinstance(v, list) and len(v) <= 64 and all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and len(p[0]) <= 2000 and _finite(p[1])
            for p in v),
        "params": lambda v: isinstance(v, dict) and len(v) <= 10_000 and all(
            isinstance(k, str) and _finite(x) for k, x in v.items()),
        "saved_at": _finite,
        "show": lambda v: isinstance(v, dict) and isinstance(v.get("config"), str) and isinstance(v.get("scenes"), list)
        and len(v["scenes"]) <= 10_000 and all(isinstance(n, str) for n in v["scenes"]),
    }
    for key, ok in checks.items():
        if key in state and not ok(state[key]):
            return f"key {key!r} has an unusable value {state[key]!r:.80}"
    return None


def _set_aside(path: Path, why: str, wall: Callable[[], float]) -> Path | None:
    """Rename a bad state file to ``<name>.corrupt-<UTC time>`` so it can be inspected and no longer loads."""
    return files.set_aside(path, why, what="state file", wall=wall, then="starting the show from the beginning",
                           logger=log)


def _remove_stale_temps(path: Path) -> None:
    """Temporary files left by a crash in the middle of a save are never valid; drop them."""
    try:
        for p in path.parent.glob(f".{path.name}.*.tmp"):
            p.unlink(missing_ok=True)
    except OSError:
        pass


def load_state(path: Path | str, current_version: int = STATE_VERSION,
               migrations: Mapping[int, Migration] | None = None, *,
               wall: Callable[[], float] = time.time) -> dict[str, Any] | None:
    """The saved state, migrated to ``current_version``, or None (missing, corrupt, too old or too new to use).

    Never raises for a bad file: a corrupt one is moved aside with a warning; an unreadable one is left with a warning.
    """
    path = Path(path)
    migrations = MIGRATIONS if migrations is None else migrations
    _remove_stale_temps(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot read state file %s (%s); starting the show from the beginning", path, e)
        return None
    try:
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"larger than {MAX_STATE_BYTES} bytes")
        try:
            state = files.parse_json(raw, path, max_depth=16)
        except files.FileError as e:
            raise StateError(e.why) from None
        if not isinstance(state, dict):
            raise StateError(f"expected a JSON object, got {type(state).__name__}")
        version = state.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise StateError(f"no usable 'version' (got {version!r:.40})")
    except StateError as e:
        _set_aside(path, str(e), wall)
        return None
    if version > current_version:
        log.warning("state file %s was written by a newer version (%d > %d); ignoring it", path, version,
                    current_version)
        return None
    while version < current_version:
        step = migrations.get(version)
        if step is None:
            log.warning("state file %s has version %d and there is no migration to %d; ignoring it",
                        path, version, current_version)
            return None
        try:
            state = step(dict(state))
        except Exception as e:  # noqa: BLE001 - a migration failing on odd old data means: start over
            log.warning("migrating state file %s from version %d failed (%s); ignoring it", path, version, e)
            return None
        if not isinstance(state, dict):
            log.warning("migration of %s from version %d returned %s; ignoring it", path, version,
                        type(state).__name__)
            return None
        version += 1
        state["version"] = version
        log.info("migrated state file %s to version %d", path, version)
    problem = check_show_state(state)
    if problem:
        _set_aside(path, problem, wall)
        return None
    return state


# -- the keeper the loop calls ---------------------------------------------------------------------------------------

class StateKeeper:
    """Saves the show state every ``interval_s`` (monotonic) and on demand; failures are logged and counted, never raised.

    ``maybe_save`` is cheap when nothing is due, so the loop may call it every tick. Given ``state`` (what to save),
    it is also a part: its ``tick`` hook saves when due (written by a background thread), ``stop()`` saves at once.
    """

    def __init__(self, settings: StateSettings, now: Callable[[], float] = time.monotonic, *,
                 base_dir: Path | str | None = None, version: int = STATE_VERSION,
                 state: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.settings = settings
        self._state = state
        p = Path(settings.path).expanduser()
        self.path = p if p.is_absolute() or base_dir is None else Path(base_dir) / p
        self.version = version
        self._now = now
        self._lock = threading.Lock()
        self._last: float | None = None
        self._pending_cond = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._writing = False
        self._writer: SupervisedThread | None = None
        self._handed: float | None = None  # when the oldest state not yet written was handed to the writer
        self.saves = 0
        self.failures = 0
        self.last_error = ""
        self._failing = False
        self._repeats = RepeatLog(log, interval=60.0)  # a dead disk: one line a minute with a count, not one a save
        # The picture on the wall, kept beside the state (a presented-frame sink): a resumed show opens on it while
        # its decoder starts. Taken with each periodic save, never at stop (the stop fade is black by then).
        self.frame_path = self.path.with_name(self.path.stem + ".frame.png")
        self._want_frame = False
        self._frame: tuple[bytes, tuple[int, int]] | None = None
        self.frames_saved = 0

    @property
    def enabled(self) -> bool:
        """bool: whether state is kept at all (``[state] enabled``)."""
        return self.settings.enabled

    def load(self, migrations: Mapping[int, Migration] | None = None) -> dict[str, Any] | None:
        """The saved state to resume from, or None (disabled, missing, unusable)."""
        if not self.enabled:
            return None
        return load_state(self.path, self.version, migrations)

    def maybe_save(self, state_fn: Callable[[], Mapping[str, Any]], background: bool = False) -> bool:
        """Save ``state_fn()`` if ``interval_s`` has passed since the last attempt; True when a file was written.

        With ``background`` the state is collected here but written (with its fsyncs) by a writer thread, so a
        slow or stuck disk never stalls the caller (the render loop); True then means "handed to the writer".
        """
        if not self.enabled:
            return False
        t = self._now()
        if self._last is not None and t - self._last < self.settings.interval_s:
            return False
        self._last = t  # also after a failure: retry next interval, not every frame against a broken disk
        try:
            state = state_fn()
        except Exception as e:  # noqa: BLE001 - the loop must go on
            self._failed(e, "collecting")
            return False
        if not background:
            return self._save(state)
        self._want_frame = True  # the next presented frame goes with this save
        with self._pending_cond:
            self._pending = dict(state)  # latest wins: a write still in progress just gets the newer state next
            if self._handed is None:
                self._handed = t
            self._pending_cond.notify()
            if self._writer is None or not self._writer.is_alive():
                self._writer = supervised("state-writer", self._write_loop)
        return True

    def _write_loop(self) -> None:
        """The writer thread (supervised): writes the newest state and frame handed to it; a failing write is a
        counted fault, never the thread's end."""
        while True:
            with self._pending_cond:
                while self._pending is None and self._frame is None:
                    self._pending_cond.wait()
                state, self._pending = self._pending, None
                frame, self._frame = self._frame, None
                self._writing = True
            try:
                if state is not None:
                    self._save(state)
                if frame is not None:
                    self._save_frame(*frame)
            finally:
                with self._pending_cond:
                    self._writing = False
                    self._pending_cond.notify_all()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the background writer has written what it was given; False on timeout."""
        with self._pending_cond:
            return self._pending_cond.wait_for(
                lambda: self._pending is None and self._frame is None and not self._writing, timeout)

    # -- the picture on the wall (a presented-frame sink) ---------------------------------------------------------
    def wants(self, t: float | None) -> bool:
        return self._want_frame

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        """A presented frame (RGB, bottom row first): handed to the writer thread, which shrinks and writes it."""
        self._want_frame = False
        with self._pending_cond:
            self._frame = (rgb, size)
            self._pending_cond.notify()

    def _save_frame(self, rgb: bytes, size: tuple[int, int]) -> None:
        """Write the frame as a PNG (long edge at most FRAME_EDGE) beside the state, atomically; a black frame (a
        blackout, a closed gallery) keeps the picture saved before it. Any failure (a full disk, no file descriptors
        left, opencv missing) is a counted fault: the state saves go on."""
        try:
            import cv2  # imported at start() already: an import here, with no descriptors left, killed the writer
            import numpy as np

            w, h = size
            img = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1]
            if img.max() < 8:
                return
            scale = FRAME_EDGE / max(w, h)
            if scale < 1.0:
                img = cv2.resize(img, (max(round(w * scale), 1), max(round(h * scale), 1)),
                                 interpolation=cv2.INTER_AREA)
            ok, png = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
            if not ok:
                raise OSError("PNG encoding failed")
            write_atomic(self.frame_path, png.tobytes())
            self.frames_saved += 1
        except Exception as e:  # noqa: BLE001 - the picture is a nicety; the writer must go on saving the state
            self._failed(e, "saving the frame of")

    def saved_frame(self) -> "Any | None":
        """The picture saved beside the state (HxWx3 RGB, top row first), or None (none, unreadable, disabled)."""
        if not self.enabled or not self.frame_path.is_file():
            return None
        import cv2

        img = cv2.imread(str(self.frame_path), cv2.IMREAD_COLOR)
        return None if img is None else img[:, :, ::-1].copy()

    def save_now(self, state: Mapping[str, Any]) -> bool:
        """Save immediately (on exit, after a scene change); True when a file was written."""
        if not self.enabled:
            return False
        self._last = self._now()
        return self._save(state)

    def stats(self) -> dict[str, Any]:
        """Counters for the health report, and ``degraded``: why saving does not work now ("" while it does)."""
        return {"saves": self.saves, "frames_saved": self.frames_saved, "failures": self.failures,
                "last_error": self.last_error, "degraded": self.trouble()}

    def trouble(self) -> str:
        """Why the show state is not being saved now, or "": the last attempt failed, or states handed to the
        writer have gone unwritten for STALLED_AFTER intervals (a writer stuck on a dead disk)."""
        if not self.enabled:
            return ""
        if self._failing:
            return f"saving the show state to {self.path} fails: {self.last_error}"
        handed = self._handed
        if handed is not None:
            waited = self._now() - handed
            if waited > STALLED_AFTER * self.settings.interval_s:
                return f"no show state written to {self.path} for {waited:.0f} s"
        return ""

    # -- as a part ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Saving happens in :meth:`tick` (its writer thread starts with the first save). The picture's encoder is
        imported now, at start, not on the writer thread when descriptors may have run out."""
        if self.enabled and self._state is not None:
            try:
                import cv2  # noqa: F401
            except Exception as e:  # noqa: BLE001 - without opencv the picture is not kept; the state is
                log.warning("the picture on the wall will not be kept beside the state: %s", e)

    @property
    def alive(self) -> bool:
        """bool: always True (a failed save is counted in ``failures``, never fatal)."""
        return True

    def tick(self, moment: Moment) -> None:
        """Save the state when ``interval_s`` has passed (the fsyncs happen off the loop thread)."""
        if self._state is not None:
            self.maybe_save(self._state, background=True)

    def stop(self) -> None:
        """Save the state now (the last position before shutting down); failures are logged and counted."""
        if not self.enabled or self._state is None:
            return
        try:
            self.flush()
            self.save_now(self._state())
        except Exception:  # noqa: BLE001 - collecting the state failing must not stop the shutdown
            log.exception("collecting the show state failed")

    def _save(self, state: Mapping[str, Any]) -> bool:
        try:
            with self._lock:
                save_state(self.path, state, version=self.version)
        except Exception as e:  # noqa: BLE001 - OSError (disk), TypeError/ValueError (bad value): log, count, go on
            self._failed(e, "saving")
            return False
        self.saves += 1
        self._handed = None
        if self._failing:
            log.info("saving show state to %s works again", self.path)
            self._failing = False
            self._repeats.reset("state")
        return True

    def _failed(self, e: Exception, what: str) -> None:
        """Count a failure to collect or save the state (``what``: "collecting", "saving") or its picture ("saving
        the frame of": counted, but the state itself is still saved, so health is not degraded by it)."""
        self.failures += 1
        self.last_error = f"{type(e).__name__}: {e}"
        # The first failure of a run at once, then one line a minute with a count: a dead disk never floods the log.
        frame = what == "saving the frame of"
        self._repeats.warning("frame" if frame else "state", "%s show state for %s failed (%s); the show goes on (%d failures)",
                              what, self.path, self.last_error, self.failures)
        if not frame:
            self._failing = True


@register("state", table="state", settings=StateSettings, order=1)
def build(settings: StateSettings, ctx: PartContext) -> StateKeeper:
    """The state part, always built (the runtime resumes from it and reports its counters); it saves only when the
    runtime keeps state (``keep_state``) and ``[state] enabled``. A one-scene run keeps its own file, so that it
    never overwrites the whole show's position."""
    if not ctx.keep_state:
        settings = settings.model_copy(update={"enabled": False})
    if ctx.only_scene:
        saved_at = Path(settings.path)
        settings = settings.model_copy(
            update={"path": str(saved_at.with_name(f"{saved_at.stem}.{ctx.only_scene}{saved_at.suffix}"))})
    keeper = StateKeeper(settings, base_dir=ctx.base_dir, state=ctx.state)
    if settings.enabled and ctx.presented is not None:
        ctx.presented.add(keeper)  # the picture on the wall goes with each save
    return keeper
