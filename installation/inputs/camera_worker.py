"""The camera's worker process: capture, analysis and smoothing, away from the presenter.

Why a process: on a thread of the main process the analysis (colour conversion, optical flow, background model)
competed with the presenter for the GIL and the cores, and the presenter missed ticks; it cost the presenter's
process about 2 ms of CPU per 60 Hz tick for a 320x240 camera at 30 fps. Here the presenter's process only reads
one small message per camera frame (well under 0.5 ms of CPU per tick). Unplug, read errors and end of file are
handled in here as before (files loop at once, devices and streams reopen with backoff, all counted); if the process
itself dies or falls silent, the parent's reader thread ends with it and the runtime restarts the input.

Each message up the pipe is ``(values, frame, edges, stats)``: the smoothed ``camera.*`` features, the newest frame
as HxWx3 uint8 RGB only while the parent has asked for frames recently (an img2img or control scene plays), else
None, the Canny edge maps of that frame the parent asked for ({(width, height, low, high): HxW uint8}, see
:mod:`installation.inputs.camera_edges`; None when none), and the counters. Nothing is written to disk.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

import numpy as np

from installation.bus import Follower
from installation.inputs.camera_edges import EdgeWants, canny_edges
from installation.inputs.camera_settings import FEATURES, LAVFI_PREFIX, CameraSettings, feature_specs

log = logging.getLogger(__name__)

FRAME_DEMAND_S = 2.0  # frames are sent while the parent asked for one within this many seconds
IDLE_EVERY = 0.05  # seconds between messages while no source delivers (the features decay meanwhile)
# OpenCV reads OPENCV_FFMPEG_CAPTURE_OPTIONS at open time; opens that set it are serialised by this lock.
_FFMPEG_ENV_LOCK = threading.Lock()


def open_capture(source: int | str) -> Any:
    """A cv2.VideoCapture for the source (lavfi graphs through FFmpeg), or None when it does not open."""
    import cv2

    if isinstance(source, str) and source.startswith("ndi:"):  # an NDI source (render/ndi.py)
        from ..render.ndi import open_ndi

        return open_ndi(source)
    if isinstance(source, str) and source.startswith(LAVFI_PREFIX):
        with _FFMPEG_ENV_LOCK:
            old = os.environ.get("OPENCV_FFMPEG_CAPTURE_OPTIONS")
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "input_format;lavfi"
            try:
                cap = cv2.VideoCapture(source[len(LAVFI_PREFIX):], cv2.CAP_FFMPEG)
            finally:
                if old is None:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                else:
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = old
    elif isinstance(source, str):
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG) if os.path.exists(source) else cv2.VideoCapture(source)
    else:
        cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        return None
    return cap


class Analyzer:
    """Per-frame features on a small grey image; owns the previous frame and the background model."""

    def __init__(self, s: CameraSettings) -> None:
        self.s = s
        self.prev: np.ndarray | None = None
        self.prev_flow: np.ndarray | None = None  # the previous frame at the flow size
        self.background: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the previous frame (after a reopen or loop, so the jump is not seen as motion)."""
        self.prev = self.prev_flow = None

    def process(self, bgr: np.ndarray, dt: float) -> dict[str, float]:
        import cv2

        s = self.s
        grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if bgr.ndim == 3 else bgr
        h, w = grey.shape[:2]
        aw = min(s.analysis_width, w)
        ah = max(8, int(round(h * aw / w)))
        small = cv2.resize(grey, (aw, ah), interpolation=cv2.INTER_AREA)
        out = {name: 0.0 for name in FEATURES}
        out["camera.brightness"] = float(np.mean(small)) / 255.0
        if self.background is None or self.background.shape != small.shape:
            self.background = small.astype(np.float32)
        fg = cv2.absdiff(small.astype(np.float32), self.background) > s.presence_threshold
        out["camera.presence"] = float(np.mean(fg))
        alpha = 1.0 - math.exp(-max(dt, 0.0) / s.background_time)
        cv2.accumulateWeighted(small.astype(np.float32), self.background, alpha)
        # Flow on a smaller image still (a quarter of the pixels at the defaults: about 6x cheaper, within 10% on a
        # moving test pattern); its vectors are scaled back to analysis pixels, so flow_min keeps its meaning.
        fw = min(s.flow_width, aw)
        fh = max(8, int(round(h * fw / w)))
        flow_img = small if fw == aw else cv2.resize(small, (fw, fh), interpolation=cv2.INTER_AREA)
        if self.prev is not None and self.prev.shape == small.shape:
            diff = cv2.absdiff(small, self.prev)
            out["camera.motion"] = float(np.mean(diff > s.motion_threshold))
        if self.prev_flow is not None and self.prev_flow.shape == flow_img.shape:
            flow = cv2.calcOpticalFlowFarneback(self.prev_flow, flow_img, None, 0.5, 3, 9, 3, 5, 1.1, 0)
            if fw != aw:
                flow *= aw / fw
            fx, fy = flow[..., 0], flow[..., 1]
            mag = np.hypot(fx, fy)
            moving = mag > s.flow_min
            per_s = 1.0 / (aw * max(dt, 1e-3))  # px/frame -> frame widths per second
            if np.any(moving):
                out["camera.flow_x"] = float(np.mean(fx[moving])) * per_s
                out["camera.flow_y"] = float(np.mean(fy[moving])) * per_s
            out["camera.flow_mag"] = float(np.mean(mag)) * per_s
        self.prev, self.prev_flow = small, flow_img
        return out


class StopSignal:
    """The parent's "stop": its end of the control pipe closing (on purpose, or because the parent died).

    A pipe rather than a ``multiprocessing.Event``: the Event's lock is shared with the parent, and a worker killed
    while holding it (it checks the Event all the time) would leave the parent blocked forever on ``set()``.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._set = False

    def is_set(self) -> bool:
        return self.wait(0.0)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the stop; True once it came."""
        if not self._set:
            try:
                self._set = self._conn.poll(max(timeout, 0.0))  # EOF (or anything sent) reads as ready
            except (OSError, EOFError, ValueError):
                self._set = True
        return self._set


class ParentGone(Exception):
    """The pipe to the parent broke: the parent process ended or stopped listening."""


class Capture:
    """The worker's loop: open, read, analyse, smooth, send; reopen on failure. ``send`` raising ends it."""

    def __init__(self, settings: CameraSettings, conn: Any, stop: StopSignal, wanted: Any,
                 edges: EdgeWants | None = None) -> None:
        self.settings = settings
        self.conn = conn
        self.stop = stop
        self.wanted = wanted  # a shared double: when (time.monotonic()) the parent last asked for a frame
        self.edges = edges  # the edge maps the parent wants beside each frame
        self.stats: dict[str, Any] = {"state": "starting", "frames": 0, "opens": 0, "open_failures": 0,
                                      "reopens": 0, "loops": 0, "read_failures": 0, "frames_sent": 0,
                                      "size": None, "error": ""}
        specs = {spec.name: spec for spec in feature_specs(settings)}
        self._limits = {n: (specs[n].min, specs[n].max) for n in FEATURES}
        self._followers = {n: Follower(0.0, settings.attack, settings.release) for n in FEATURES}
        self._gain = {n: (1.0 if n == "camera.brightness" else settings.gain) for n in FEATURES}

    # -- messages ----------------------------------------------------------------------------------------------
    def _send(self, values: dict[str, float], frame: np.ndarray | None = None,
              edges: dict | None = None) -> None:
        try:
            self.conn.send((values, frame, edges, dict(self.stats)))
        except (OSError, EOFError, ValueError) as exc:  # BrokenPipeError, or the connection closed
            raise ParentGone(str(exc)) from exc

    def _emit(self, raw: dict[str, float], dt: float, frame: np.ndarray | None = None,
              edges: dict | None = None) -> None:
        out = {}
        for name in FEATURES:
            lo, hi = self._limits[name]
            v = self._followers[name].step(raw[name] * self._gain[name], dt)
            out[name] = float(np.float32(min(max(v, lo), hi)))  # what the show uses: float32 is plenty, and the
        self._send(out, frame, edges)  # archive keeps it in 4 bytes, exactly (bus.set(sampled=True))

    def _decay(self, dt: float) -> None:
        """No frames: the features fall towards zero at their release rate."""
        self._emit({n: 0.0 for n in FEATURES}, dt)

    def _idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        last = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < end:
            self.stop.wait(min(IDLE_EVERY, max(end - time.monotonic(), 0.0)))
            now = time.monotonic()
            self._decay(now - last)
            last = now

    def _frames_wanted(self) -> bool:
        return time.monotonic() - self.wanted.value < FRAME_DEMAND_S

    # -- the loop ----------------------------------------------------------------------------------------------
    def _is_file(self) -> bool:
        src = self.settings.source
        return isinstance(src, str) and not src.startswith(LAVFI_PREFIX) and os.path.exists(src)

    def run(self) -> None:
        analyzer = Analyzer(self.settings)
        backoff = self.settings.reopen_min
        while not self.stop.is_set():
            cap = self._open()
            if cap is None:
                self._idle(backoff)
                backoff = min(backoff * 2.0, self.settings.reopen_max)
                continue
            backoff = self.settings.reopen_min
            analyzer.reset()
            try:
                looped = self._read_loop(cap, analyzer)
            except ParentGone:
                raise
            except Exception as exc:  # noqa: BLE001 - the show goes on
                log.warning("camera analysis failed: %s", exc, exc_info=True)
                looped = False
            finally:
                cap.release()
            if self.stop.is_set():
                break
            if looped:
                self.stats["loops"] += 1
                continue
            if self._is_file() and not self.settings.loop:
                self.stats["state"] = "ended"
                self._idle(math.inf)
                break
            self.stats["reopens"] += 1
            self.stats["state"] = "waiting"
            log.warning("camera source %r stopped delivering frames; reopening", self.settings.source)
            self._idle(backoff)
        self.stats["state"] = "stopped"
        self._decay(math.inf)

    def _open(self) -> Any:
        import cv2

        s = self.settings
        try:
            cap = open_capture(s.source)
            if cap is not None and isinstance(s.source, int):
                if s.width:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, s.width)
                if s.height:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, s.height)
                if s.fps:
                    cap.set(cv2.CAP_PROP_FPS, s.fps)
        except Exception as exc:  # noqa: BLE001
            cap, why = None, str(exc)
        else:
            why = "does not open"
        if cap is None:
            self.stats["open_failures"] += 1
            self.stats.update(state="waiting", error=f"camera source {s.source!r} {why}")
            log.warning("camera: source %r %s (retrying)", s.source, why)
            return None
        self.stats.update(state="running", opens=self.stats["opens"] + 1, error="")
        return cap

    def _read_loop(self, cap: Any, analyzer: Analyzer) -> bool:
        """Read and analyse until stop or failure; True when a file ended and should loop."""
        import cv2

        s = self.settings
        is_file = self._is_file()
        paced = is_file or (isinstance(s.source, str) and s.source.startswith(LAVFI_PREFIX))
        fps = s.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
        if not 1.0 <= fps <= 240.0:
            fps = 30.0
        period = 1.0 / fps
        next_due = time.monotonic()
        last = None
        while not self.stop.is_set():
            ok, frame = cap.read()
            if not ok or frame is None or frame.size == 0:
                if is_file and s.loop:
                    return True
                self.stats["read_failures"] += 1
                return False
            now = time.monotonic()
            dt = period if paced or last is None else min(max(now - last, 1.0 / 240.0), 0.5)
            last = now
            if s.mirror:
                frame = cv2.flip(frame, 1)
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            frame = frame[..., :3]
            raw = analyzer.process(frame, dt)
            self.stats["frames"] += 1
            self.stats["size"] = (frame.shape[1], frame.shape[0])
            rgb = edges = None
            if self._frames_wanted():
                rgb = self._offered(frame)
                edges = {spec: canny_edges(rgb, spec) for spec in self.edges.read()} if self.edges else None
                self.stats["frames_sent"] += 1
            self._emit(raw, dt, rgb, edges or None)
            if paced:
                next_due += period
                wait = next_due - time.monotonic()
                if wait < -0.25:
                    next_due = time.monotonic()  # fell behind: do not try to catch up in a burst
                elif wait > 0:
                    self.stop.wait(wait)
        return False

    def _offered(self, bgr: np.ndarray) -> np.ndarray:
        """The frame the parent gets: RGB, no wider than ``frame_width``."""
        import cv2

        w = self.settings.frame_width
        if w and bgr.shape[1] > w:
            h = max(1, int(round(bgr.shape[0] * w / bgr.shape[1])))
            bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def run(settings: CameraSettings, conn: Any, control: Any, wanted: Any, log_level: str = "info",
        parent: int = 0, edges: EdgeWants | None = None) -> None:
    """Entry point of the camera process: messages go up ``conn``; ``control`` closing is the stop; ``wanted`` is a
    shared double, the time (``time.monotonic()``) the parent last asked for a frame; ``edges`` the edge maps it
    wants beside each frame. It dies with ``parent`` (the show's process id), also when that is killed."""
    import faulthandler

    from installation.ops.logs import LogSettings, setup_logging
    from installation.ops.supervise import die_with_parent, leave

    if parent:
        die_with_parent(parent)
    faulthandler.enable()  # a native crash here (libndi, a capture driver) leaves this process's stacks in the log
    from installation.ops.memory import map_large_blocks

    map_large_blocks()  # source frames and their resized copies off the heap, as in the show process (issue 33)

    setup_logging(LogSettings(level=log_level))  # stderr, as the parent's and the decoder process's
    if settings.nice:
        try:
            os.nice(settings.nice)
        except OSError:
            pass
    capture = Capture(settings, conn, StopSignal(control), wanted, edges)
    try:
        import cv2

        cv2.setNumThreads(settings.threads)
    except Exception as exc:  # noqa: BLE001
        log.error("camera input disabled: opencv not importable: %s", exc)
        capture.stats.update(state="unavailable", error=f"opencv not importable: {exc}")
        try:
            capture._decay(math.inf)
        except ParentGone:
            pass
        return
    try:
        capture.run()
    except ParentGone:
        pass
    finally:
        conn.close()
        control.close()
    leave(0)  # no interpreter teardown: the parent waits for this process to end
