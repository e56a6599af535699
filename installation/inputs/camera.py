"""Camera features and the img2img source: a capture thread on a device index, a file, a URL or a lavfi graph.

Each frame is shrunk to a small grey image for analysis: motion energy (frame difference), mean optical flow
(Farneback), presence (foreground against a slowly learned background) and brightness, each smoothed by an
attack/release follower and written to the bus as ``camera.*``. The latest full frame (RGB, read-only) is offered
through :meth:`CameraInput.latest_frame`. Unplug, read errors or end of file reopen the source (files loop at once,
devices and streams with backoff); nothing is ever written to disk.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
import time
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from installation.inputs.base import ThreadedInput
from installation.bus import Follower, ParamBus, ParamSpec

log = logging.getLogger(__name__)

FEATURES = (
    "camera.motion", "camera.flow_x", "camera.flow_y", "camera.flow_mag", "camera.presence", "camera.brightness",
)
LAVFI_PREFIX = "lavfi:"
# OpenCV reads OPENCV_FFMPEG_CAPTURE_OPTIONS at open time; opens that set it are serialised by this lock.
_FFMPEG_ENV_LOCK = threading.Lock()


class CameraSettings(BaseModel):
    """``[inputs.camera]``: the source, analysis size, thresholds, smoothing and reopen policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="off unless asked for: no camera is opened by default")
    source: int | str = Field(
        default=0, description="device index, video file (looped), URL, or 'lavfi:<ffmpeg filtergraph>'"
    )
    width: int | None = Field(default=None, ge=16, description="requested capture width (devices)")
    height: int | None = Field(default=None, ge=16, description="requested capture height (devices)")
    fps: float | None = Field(default=None, gt=0.0, le=240.0, description="pace files/lavfi; None = file's rate")
    loop: bool = Field(default=True, description="files: start again at the end")
    mirror: bool = Field(default=False, description="flip left-right (facing installations); flips flow_x too")
    analysis_width: int = Field(default=160, ge=32, le=1280, description="grey analysis image width, pixels")
    motion_threshold: float = Field(default=15.0, ge=0.0, le=255.0, description="grey levels a pixel must change")
    presence_threshold: float = Field(default=25.0, ge=0.0, le=255.0, description="grey levels from background")
    background_time: float = Field(default=10.0, gt=0.0, description="seconds for the background to adapt")
    flow_min: float = Field(default=0.2, ge=0.0, description="px/frame (analysis size) for a pixel to count as moving")
    attack: float = Field(default=0.05, ge=0.0)
    release: float = Field(default=0.3, ge=0.0)
    gain: float = Field(default=1.0, ge=0.0, description="applied to motion, flow and presence")
    stale_after: float = Field(default=2.0, gt=0.0, description="latest_frame() is None after this long without one")
    reopen_min: float = Field(default=0.5, gt=0.0)
    reopen_max: float = Field(default=10.0, gt=0.0)


def feature_specs(settings: CameraSettings | None = None) -> list[ParamSpec]:
    """The bus parameters this input writes (smoothed by the input, so unsmoothed on the bus)."""
    return [
        ParamSpec("camera.motion", min=0.0, max=1.0, doc="fraction of the frame that changed since the last one"),
        ParamSpec("camera.flow_x", min=-1.0, max=1.0, doc="mean optical flow of moving pixels, frame widths/s, +right"),
        ParamSpec("camera.flow_y", min=-1.0, max=1.0, doc="mean optical flow of moving pixels, frame widths/s, +down"),
        ParamSpec("camera.flow_mag", min=0.0, max=1.0, doc="mean flow speed over the whole frame, frame widths/s"),
        ParamSpec("camera.presence", min=0.0, max=1.0, doc="fraction of the frame unlike the learned background"),
        ParamSpec("camera.brightness", min=0.0, max=1.0, doc="mean grey level, 0 black .. 1 white"),
    ]


def probe_cameras() -> tuple[list[str], str]:
    """(camera descriptions, "") or ([], why not) — for ``installation doctor``; never raises."""
    try:
        import cv2
    except Exception as exc:  # noqa: BLE001
        return [], f"opencv not importable: {exc}"
    nodes = sorted(glob.glob("/dev/video*"))
    if not nodes:
        return [], "no /dev/video* devices (use a file, URL or 'lavfi:' source)"
    out = []
    for node in nodes:
        try:
            index = int(node.removeprefix("/dev/video"))
            cap = cv2.VideoCapture(index)
            try:
                if cap.isOpened():
                    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
                    out.append(f"{index}: {node} ({w}x{h})")
            finally:
                cap.release()
        except Exception:  # noqa: BLE001
            continue
    return out, "" if out else f"{len(nodes)} video nodes, none opens as a capture device"


def list_cameras() -> list[str]:
    """Camera descriptions; an empty list (reason logged as a warning) when none opens."""
    cams, why = probe_cameras()
    if why:
        log.warning("cameras: %s", why)
    return cams


def _open_capture(source: int | str) -> Any:
    """A cv2.VideoCapture for the source (lavfi graphs through FFmpeg), or None when it does not open."""
    import cv2

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


class _Analyzer:
    """Per-frame features on a small grey image; owns the previous frame and the background model."""

    def __init__(self, s: CameraSettings) -> None:
        self.s = s
        self.prev: np.ndarray | None = None
        self.background: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the previous frame (after a reopen or loop, so the jump is not seen as motion)."""
        self.prev = None

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
        if self.prev is not None and self.prev.shape == small.shape:
            diff = cv2.absdiff(small, self.prev)
            out["camera.motion"] = float(np.mean(diff > s.motion_threshold))
            flow = cv2.calcOpticalFlowFarneback(self.prev, small, None, 0.5, 3, 9, 3, 5, 1.1, 0)
            fx, fy = flow[..., 0], flow[..., 1]
            mag = np.hypot(fx, fy)
            moving = mag > s.flow_min
            per_s = 1.0 / (aw * max(dt, 1e-3))  # px/frame -> frame widths per second
            if np.any(moving):
                out["camera.flow_x"] = float(np.mean(fx[moving])) * per_s
                out["camera.flow_y"] = float(np.mean(fy[moving])) * per_s
            out["camera.flow_mag"] = float(np.mean(mag)) * per_s
        self.prev = small
        return out


class CameraInput(ThreadedInput):
    """Camera input: ``start()`` launches the capture thread; features land on the bus, frames in a slot."""

    thread_name = "camera-input"

    def __init__(self, settings: CameraSettings, bus: ParamBus) -> None:
        super().__init__({"frames": 0, "opens": 0, "open_failures": 0, "reopens": 0, "loops": 0,
                          "read_failures": 0, "size": None, "error": ""})
        self.settings = settings
        self.bus = bus
        self._specs = {spec.name: spec for spec in feature_specs(settings)}
        for spec in self._specs.values():
            bus.declare(spec)
        self._followers = {n: Follower(0.0, settings.attack, settings.release) for n in FEATURES}
        self._gain = {n: (1.0 if n == "camera.brightness" else settings.gain) for n in FEATURES}
        self._frame: np.ndarray | None = None
        self._frame_time = -math.inf
        self._values = {n: 0.0 for n in FEATURES}

    # -- public ------------------------------------------------------------------------------------------------
    def latest_frame(self) -> np.ndarray | None:
        """The newest frame as HxWx3 uint8 RGB (read-only, do not modify), or None if none is fresh."""
        with self._lock:
            if self._frame is None or time.monotonic() - self._frame_time > self.settings.stale_after:
                return None
            return self._frame

    def values(self) -> dict[str, float]:
        """The latest smoothed features (the same values written to the bus)."""
        with self._lock:
            return dict(self._values)

    # -- thread ------------------------------------------------------------------------------------------------
    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _is_file(self) -> bool:
        src = self.settings.source
        return isinstance(src, str) and not src.startswith(LAVFI_PREFIX) and os.path.exists(src)

    def _run(self) -> None:
        try:
            import cv2  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            log.error("camera input disabled: opencv not importable: %s", exc)
            with self._lock:
                self._stats.update(state="unavailable", error=str(exc))
            return
        analyzer = _Analyzer(self.settings)
        backoff = self.settings.reopen_min
        while not self._stop.is_set():
            cap = self._open()
            if cap is None:
                self._idle(backoff)
                backoff = min(backoff * 2.0, self.settings.reopen_max)
                continue
            backoff = self.settings.reopen_min
            analyzer.reset()
            try:
                looped = self._read_loop(cap, analyzer)
            except Exception as exc:  # noqa: BLE001 - the show goes on
                log.warning("camera analysis failed: %s", exc, exc_info=True)
                looped = False
            finally:
                cap.release()
            if self._stop.is_set():
                break
            if looped:
                self._bump("loops")
                continue
            if self._is_file() and not self.settings.loop:
                with self._lock:
                    self._stats["state"] = "ended"
                self._idle(math.inf)
                break
            self._bump("reopens")
            log.warning("camera source %r stopped delivering frames; reopening", self.settings.source)
            self._idle(backoff)
        self._decay(math.inf)

    def _open(self) -> Any:
        import cv2

        s = self.settings
        try:
            cap = _open_capture(s.source)
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
            self._bump("open_failures")
            with self._lock:
                self._stats.update(state="waiting", error=f"camera source {s.source!r} {why}")
            log.warning("camera: source %r %s (retrying)", s.source, why)
            return None
        with self._lock:
            self._stats.update(state="running", opens=self._stats["opens"] + 1, error="")
        return cap

    def _read_loop(self, cap: Any, analyzer: _Analyzer) -> bool:
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
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok or frame is None or frame.size == 0:
                if is_file and s.loop:
                    return True
                self._bump("read_failures")
                return False
            now = time.monotonic()
            dt = period if paced or last is None else min(max(now - last, 1.0 / 240.0), 0.5)
            last = now
            if s.mirror:
                frame = cv2.flip(frame, 1)
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            rgb = cv2.cvtColor(frame[..., :3], cv2.COLOR_BGR2RGB)
            rgb.flags.writeable = False
            raw = analyzer.process(frame, dt)
            self._emit(raw, dt)
            with self._lock:
                self._frame, self._frame_time = rgb, now
                self._stats["frames"] += 1
                self._stats["size"] = (rgb.shape[1], rgb.shape[0])
            if paced:
                next_due += period
                wait = next_due - time.monotonic()
                if wait < -0.25:
                    next_due = time.monotonic()  # fell behind: do not try to catch up in a burst
                elif wait > 0:
                    self._stop.wait(wait)
        return False

    def _emit(self, raw: dict[str, float], dt: float) -> None:
        out = {}
        for name in FEATURES:
            spec = self._specs[name]
            v = self._followers[name].step(raw[name] * self._gain[name], dt)
            out[name] = min(max(v, spec.min), spec.max)
        with self._lock:
            self._values = out
        for name, v in out.items():
            self.bus.set(name, v, source="camera")

    def _decay(self, dt: float) -> None:
        """No frames: the features fall towards zero at their release rate."""
        self._emit({n: 0.0 for n in FEATURES}, dt)

    def _idle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        last = time.monotonic()
        while not self._stop.is_set() and time.monotonic() < end:
            self._stop.wait(min(0.05, max(end - time.monotonic(), 0.0)))
            now = time.monotonic()
            self._decay(now - last)
            last = now
