"""Camera features and the img2img source: a device index, a file, a URL or a lavfi graph, read in its own process.

A worker process (:mod:`installation.inputs.camera_worker`) captures and analyses: each frame is shrunk to a small
grey image for motion energy (frame difference), mean optical flow (Farneback, on a smaller image still), presence
(foreground against a slowly learned background) and brightness, each smoothed by an attack/release follower. Here
a reader thread writes them to the bus as ``camera.*`` and keeps the newest frame (RGB, read-only) for
:meth:`CameraInput.latest_frame`; frames cross the pipe only while someone asks for them. Unplug, read errors or end
of file reopen the source in the worker (files loop at once, devices and streams with backoff, counted); if the
worker process dies, the reader thread ends with it (``alive`` turns False) and whoever supervises restarts the
input. Nothing is ever written to disk.

As a part (:mod:`installation.parts`) its ``plan`` hook hands the newest frame to a diffusion scene as its img2img
source (or its controls' image), with the Canny edge maps the scene's canny controls take, made in the worker at the
decoder's size (:mod:`installation.inputs.camera_edges`). Its settings and features are in
:mod:`installation.inputs.camera_settings` (the worker reads them too).
"""

from __future__ import annotations

import glob
import logging
import math
import multiprocessing as mp
import os
import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from installation.bus import ParamBus
from installation.inputs.base import ThreadedInput
from installation.inputs.camera_edges import EdgeSpec, EdgeWants, valid_specs
from installation.inputs.camera_settings import FEATURES, CameraSettings, feature_specs
from installation.parts import Moment, PartContext, register

if TYPE_CHECKING:
    from installation.latent.plan import PathPlan

log = logging.getLogger(__name__)

STOP_WAIT_S = 3.0  # how long stop() waits for the worker process before terminating it
START_GRACE_S = 60.0  # the worker's first message may take this long (it imports numpy and OpenCV), or hang_s


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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def describe_source(source: int | str) -> str:
    """The source for logs and /health, with any password in a URL masked (``rtsp://user:***@host/...``)."""
    if isinstance(source, int):
        return f"device {source}"
    return re.sub(r"^([a-zA-Z][\w+.-]*://[^/:@]*):[^/@]*@", r"\1:***@", source)


class CameraInput(ThreadedInput):
    """Camera input: ``start()`` launches the reader thread, which starts the worker process and takes its
    messages; features land on the bus, frames in a slot. The thread ends when the worker process ends."""

    thread_name = "camera-input"

    def __init__(self, settings: CameraSettings, bus: ParamBus) -> None:
        super().__init__({"frames": 0, "opens": 0, "open_failures": 0, "reopens": 0, "loops": 0,
                          "read_failures": 0, "frames_sent": 0, "size": None, "error": "",
                          "source": describe_source(settings.source), "worker_starts": 0, "worker_deaths": 0,
                          "hangs": 0, "pid": None})
        self.settings = settings
        self.bus = bus
        for spec in feature_specs(settings):
            bus.declare(spec)
        self._frame: np.ndarray | None = None
        self._edges: dict[EdgeSpec, np.ndarray] | None = None  # the edge maps of ``_frame``
        self._frame_time = -math.inf
        self._edge_specs: tuple[EdgeSpec, ...] = ()  # what the worker is asked for (want_edges)
        self._edge_wants: EdgeWants | None = None  # ... through this, while a worker runs
        self._edges_for: tuple[Any, tuple[EdgeSpec, ...]] = (None, ())  # (the scene's decoder spec, its specs)
        self._values = {n: 0.0 for n in FEATURES}
        self._wanted: Any = None  # the worker's shared "frame last asked for at" (time.monotonic())
        self._proc: Any = None
        self._carry: dict[str, int] = {}  # counters of the worker processes that have ended
        self.last_source: np.ndarray | None = None  # the newest frame handed to the decoder (plan hook)

    # -- public ------------------------------------------------------------------------------------------------
    def latest_frame(self) -> np.ndarray | None:
        """The newest frame as HxWx3 uint8 RGB (read-only, do not modify), or None if none is fresh.

        Asking is what makes the worker send frames (for a couple of seconds after each call), so the first call
        after a while returns None or an older frame and the next ones, a camera frame later, the newest."""
        wanted = self._wanted
        if wanted is not None:
            wanted.value = time.monotonic()
        with self._lock:
            if self._frame is None or time.monotonic() - self._frame_time > self.settings.stale_after:
                return None
            return self._frame

    def latest_edges(self, frame: np.ndarray) -> dict[EdgeSpec, np.ndarray]:
        """The edge maps the worker made of ``frame`` (one from :meth:`latest_frame`), or {} (none asked for, or a
        newer frame has come meanwhile)."""
        with self._lock:
            return dict(self._edges) if self._edges and self._frame is frame else {}

    def want_edges(self, specs: Any) -> None:
        """Ask the worker for these Canny edge maps, ``(width, height, low, high)`` each, beside every frame it
        sends from now on (``()``: none). Cheap to call every tick: only a change reaches the worker."""
        specs = valid_specs(specs)
        with self._lock:
            if specs == self._edge_specs:
                return
            self._edge_specs = specs
            if self._edge_wants is not None:
                self._edge_wants.write(specs)

    def values(self) -> dict[str, float]:
        """The latest smoothed features (the same values written to the bus)."""
        with self._lock:
            return dict(self._values)

    def plan(self, plan: "PathPlan", moment: Moment) -> "PathPlan":
        """The part's plan hook: a diffusion scene's plan gets the newest camera frame as its img2img source (or its
        controls' image) and the edge maps its canny controls take (``extras["edges"]``, asked of the worker as the
        scene changes); other scenes' plans pass. To a decoder process the frame travels only when it is a new one,
        not every tick."""
        self.want_edges(self._scene_edges(moment.scene.decoder))
        if moment.scene.decoder.type != "diffusion":
            return plan
        frame = self.latest_frame()
        if frame is None:
            return plan
        fresh = frame is not self.last_source or not moment.remote_decoder
        self.last_source = frame
        if not fresh:
            return replace(plan, wants_source=True)
        edges = self.latest_edges(frame)
        return replace(plan, wants_source=True,
                       extras={**plan.extras, "source": frame, **({"edges": edges} if edges else {})})

    def _scene_edges(self, decoder: Any) -> tuple[EdgeSpec, ...]:
        """The edge maps a scene's decoder takes from the camera (its kind's ``camera_edges``), kept per scene."""
        if self._edges_for[0] is not decoder:
            from installation.decoders import decoder_kind

            fn = getattr(decoder_kind(decoder.type), "camera_edges", None)
            self._edges_for = (decoder, tuple(fn(decoder.settings)) if fn is not None else ())
        return self._edges_for[1]

    @property
    def pid(self) -> int | None:
        """int | None: the worker process's id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    # -- reader thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        from installation.inputs.camera_worker import run as worker_main
        from installation.render.process import start_process

        ctx = mp.get_context("spawn")
        conn, child_conn = ctx.Pipe(duplex=False)  # messages up
        control_r, stop = ctx.Pipe(duplex=False)  # closing ``stop`` stops the worker
        wanted = ctx.Value("d", -math.inf, lock=False)  # lock-free: a killed worker cannot leave it locked
        edge_wants = EdgeWants(ctx)
        with self._lock:
            edge_wants.write(self._edge_specs)
            self._edge_wants = edge_wants
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        proc = ctx.Process(target=worker_main, name="installation-camera", daemon=True,
                           args=(self.settings, child_conn, control_r, wanted,
                                 level if level in ("debug", "info", "warning", "error") else "info", os.getpid(),
                                 edge_wants))
        try:
            start_process(proc)
        except Exception as exc:  # noqa: BLE001 - counted as a death by the supervisor; retried with backoff
            log.error("camera worker process did not start: %s", exc)
            with self._lock:
                self._stats.update(state="failed", error=f"camera worker did not start: {exc}")
            for c in (conn, child_conn, control_r, stop):
                c.close()
            return
        child_conn.close()
        control_r.close()
        self._proc, self._wanted = proc, wanted
        child: dict[str, Any] = {}
        with self._lock:
            self._stats.update(worker_starts=self._stats["worker_starts"] + 1, pid=proc.pid, state="starting")
        heard, allowed = time.monotonic(), max(self.settings.hang_s, START_GRACE_S)
        try:
            while not self._stop.is_set():
                if not conn.poll(0.1):
                    # It sends at least every IDLE_EVERY while waiting for a source: silence is a hang.
                    if time.monotonic() - heard > allowed:
                        log.error("camera worker process silent for %.0f s (stuck starting, opening or reading): "
                                  "killing it", allowed)
                        with self._lock:
                            self._stats["hangs"] += 1
                        proc.kill()
                        break
                    continue
                try:
                    values, frame, edges, child = conn.recv()
                except (EOFError, OSError):
                    break  # the worker process ended
                heard, allowed = time.monotonic(), self.settings.hang_s
                self._receive(values, frame, edges, child)
        except Exception:  # noqa: BLE001 - a garbled message ends this worker; the supervisor starts another
            log.exception("camera: bad message from the worker process")
        finally:
            self._end(proc, conn, stop, child)

    def _receive(self, values: dict[str, float], frame: np.ndarray | None, edges: dict | None,
                 child: dict[str, Any]) -> None:
        now = time.monotonic()
        if frame is not None:
            frame.flags.writeable = False
            for e in (edges or {}).values():
                e.flags.writeable = False
        with self._lock:
            self._values = values
            if frame is not None:
                self._frame, self._edges, self._frame_time = frame, edges, now
            for key, value in child.items():  # counts add up over the worker processes this input has run
                self._stats[key] = self._carry.get(key, 0) + value if _is_count(value) else value
        for name, v in values.items():  # continuous: journaled as the loop consumes them (float32 values)
            self.bus.set(name, v, source="camera", sampled=True)

    def _end(self, proc: Any, conn: Any, stop: Any, child: dict[str, Any]) -> None:
        """Stop the worker process (terminate, then kill, if it hangs), keep its counts, zero the features."""
        stop.close()
        deadline = time.monotonic() + STOP_WAIT_S
        while proc.is_alive() and time.monotonic() < deadline:
            try:  # keep reading: a worker blocked on a full pipe would never see the stop
                if conn.poll(0.05):
                    conn.recv()
            except (EOFError, OSError):
                proc.join(max(deadline - time.monotonic(), 0.0))
            except Exception:  # noqa: BLE001 - a garbled message while stopping: ignore it
                pass
        if proc.is_alive():
            log.warning("camera worker process did not stop within %.0f s; terminating it", STOP_WAIT_S)
            proc.terminate()
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        conn.close()
        died = not self._stop.is_set()
        if died:
            log.error("camera worker process ended (exit code %s)", proc.exitcode)
        zero = {n: 0.0 for n in FEATURES}
        with self._lock:
            for key, value in child.items():
                if _is_count(value):
                    self._carry[key] = self._carry.get(key, 0) + value
            self._values = zero
            self._frame = self._edges = self._edge_wants = None
            self._stats["pid"] = None
            if died:
                self._stats["worker_deaths"] += 1
                if self._stats["state"] != "unavailable":  # no opencv: the worker says so, and ends
                    self._stats["state"] = "died"
        self._wanted = None
        for name, v in zero.items():
            self.bus.set(name, v, source="camera", sampled=True)


@register("camera", table="inputs.camera", settings=CameraSettings, params=feature_specs, order=12)
def build(settings: CameraSettings, ctx: PartContext) -> CameraInput | None:
    """The camera part: off unless ``[inputs.camera] enabled = true`` (a missing source is retried, not fatal)."""
    return CameraInput(settings, ctx.bus) if settings.enabled else None
