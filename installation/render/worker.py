"""The decoder guard and the decoder thread.

The guard owns the live decoder: it builds and prepares the one a request names, checks every frame (shape, NaN,
Inf) before it may reach the screen, converts it to 8-bit RGB, and on any fault logs it, counts it, throws the
decoder away and rebuilds it after a backoff that grows with consecutive faults. It returns None instead of a bad
frame, so the slot keeps the last good one. The thread runs the guard as fast as allowed on the newest plan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any, Callable, Mapping, Protocol

import numpy as np

from ..decoders import Decoder, DecoderSpec, LatentRequest, NonFiniteFrame, create
from ..ops.supervise import SupervisedThread, supervised
from .slot import Frame, FrameSlot

log = logging.getLogger(__name__)


class BadFrame(RuntimeError):
    """A decoder returned something that is not an HxWx3 image."""


def to_rgb8(frame: np.ndarray) -> np.ndarray:
    """Check and convert a decoder's output to contiguous HxWx3 uint8; raise on NaN/Inf or a wrong shape."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] not in (3, 4) or frame.size == 0:
        raise BadFrame(f"expected an HxWx3 array, got {getattr(frame, 'shape', type(frame).__name__)}")
    frame = frame[:, :, :3]
    if frame.dtype == np.uint8:
        return np.ascontiguousarray(frame)
    if not np.isfinite(frame).all():
        raise NonFiniteFrame("frame has NaN or Inf values")
    return np.clip(frame * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)


def _is_oom(err: BaseException) -> bool:
    return type(err).__name__ == "OutOfMemoryError" or "out of memory" in str(err).lower()


def _free_cuda_cache() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as e:  # noqa: BLE001 - best effort
        log.warning("could not free the CUDA cache: %s", e)


def _scaled(spec: DecoderSpec, halvings: int) -> DecoderSpec:
    """The spec at 1/2**halvings of its resolution (width/height or resolution settings), multiples of 8."""
    if halvings <= 0:
        return spec
    s = spec.settings
    f = 2 ** halvings
    if hasattr(s, "width") and hasattr(s, "height"):
        update = {"width": max(64, s.width // f // 8 * 8), "height": max(64, s.height // f // 8 * 8)}
    elif hasattr(s, "resolution"):
        w, h = s.resolution
        update = {"resolution": (max(16, w // f // 8 * 8), max(16, h // f // 8 * 8))}
    else:
        return spec
    log.warning("decoder %s at reduced resolution after running out of memory: %s", spec.type, update)
    return DecoderSpec(spec.type, type(s).model_validate({**s.model_dump(), **update}))


class DecoderGuard:
    """Builds, prepares, renders and restarts decoders so that no fault reaches the presenter."""

    def __init__(self, device: str = "cpu", backoff: float = 0.5, backoff_max: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._clock = clock
        self._decoder: Decoder | None = None
        self._spec: DecoderSpec | None = None
        self._retry_at = 0.0
        self._streak = 0  # consecutive faults
        self._good = 0
        self._nonfinite_run = 0
        self._busy_since: float | None = None  # when the call in progress (prepare or render) began
        self._oom_steps: dict[DecoderSpec, int] = {}  # halvings of resolution after out-of-memory errors
        self.faults: Counter[str] = Counter()
        self.restarts = 0
        self.frames = 0
        # shutdown() moves the generation on: a prepare() begun before it releases what it built when it ends.
        self._generation = 0
        self._lock = threading.Lock()

    def _ensure(self, spec: DecoderSpec) -> Decoder | None:
        if self._decoder is not None and self._spec == spec:
            return self._decoder
        if self._clock() < self._retry_at:
            return None
        self.close()
        generation = self._generation
        try:
            decoder = create(_scaled(spec, self._oom_steps.get(spec, 0)), device=self.device)
            decoder.prepare()
        except Exception as e:  # noqa: BLE001 - any backend failure is contained here
            self._fault("prepare", e, spec=spec)
            return None
        with self._lock:
            if generation == self._generation:
                self._decoder, self._spec = decoder, spec
                return decoder
        decoder.close()  # shut down while this prepare ran (the stop did not wait for it): nothing may keep it
        return None

    def render(self, request: LatentRequest) -> np.ndarray | None:
        """A checked uint8 frame, or None when there is none to show (fault or backoff)."""
        self._busy_since = time.monotonic()
        try:
            return self._render(request)
        finally:
            self._busy_since = None

    def _render(self, request: LatentRequest) -> np.ndarray | None:
        decoder = self._ensure(request.decoder)
        if decoder is None:
            return None
        try:
            rgb = to_rgb8(decoder.render(request))
        except NonFiniteFrame as e:
            # A decoder that raises this has reset its own state; rebuilding (a model reload) is for repeats only.
            self._fault("nonfinite", e, rebuild=self._nonfinite_run >= 2)
            self._nonfinite_run += 1
            return None
        except Exception as e:  # noqa: BLE001
            self._fault("exception", e, spec=request.decoder)
            return None
        self.frames += 1
        self._good += 1
        self._nonfinite_run = 0
        if self._good >= 30:
            self._streak = 0
        return rgb

    def _fault(self, kind: str, err: BaseException, rebuild: bool = True, spec: DecoderSpec | None = None) -> None:
        if _is_oom(err) and spec is not None:
            # Out of GPU memory: free the caches and come back at a lower resolution (down to a quarter).
            self.faults["oom"] += 1
            self._oom_steps[spec] = min(self._oom_steps.get(spec, 0) + 1, 2)
            self.close()
            _free_cuda_cache()
        self.faults[kind] += 1
        self._streak += 1
        self._good = 0
        n = self.faults[kind]
        if n <= 3 or n % 100 == 0:
            log.warning("decoder fault (%s #%d): %s", kind, n, err, exc_info=n <= 1 and kind != "nonfinite")
        if not rebuild:
            return
        # Throw the decoder away: an exception may have left it in any state.
        self.close()
        if self._spec is not None or kind == "prepare":
            self.restarts += 1
        delay = 0.0 if self._streak <= 1 else min(self.backoff * 2 ** (self._streak - 2), self.backoff_max)
        self._retry_at = self._clock() + delay

    def stats(self) -> dict:
        busy = self._busy_since
        health = getattr(self._decoder, "health", None)  # a decoder's own counters (held control images)
        return {"frames": self.frames, "faults": dict(self.faults), "restarts": self.restarts,
                "decoder": self._spec.type if self._spec else None,
                "busy_s": 0.0 if busy is None else round(time.monotonic() - busy, 3),
                "decoder_health": health() if callable(health) else {}}

    def shutdown(self) -> None:
        """Close, including a decoder still being prepared on another thread (it is released when it is ready)."""
        with self._lock:
            self._generation += 1
            self.close()

    def close(self) -> None:
        if self._decoder is not None:
            try:
                self._decoder.close()
            except Exception as e:  # noqa: BLE001
                log.warning("decoder close failed: %s", e)
        self._decoder = None


class Plan(Protocol):
    """What the update step hands the decoder thread: a pure map from clock time to a request."""

    frozen: bool
    scene: str
    cut: int

    def request(self, t: float, seq: int) -> LatentRequest: ...


def visible_prompts(extras: Mapping[str, Any]) -> tuple[str, ...]:
    """The texts of a request's prompt slots: its prompts without the hidden ones (appended last)."""
    prompts = extras.get("prompts") or ()
    n = len(prompts) - len(extras.get("hidden") or ())
    return tuple(str(p[0]) for p in tuple(prompts)[: max(n, 0)])


def make_frame(rgb: np.ndarray, request: LatentRequest, plan: "Plan") -> Frame:
    """A decoded frame with what it answers: its request's seq and time, the plan's scene and cut, the prompts."""
    return Frame(rgb, request.seq, request.t, time.monotonic(), plan.scene, plan.cut, visible_prompts(request.extras))


class DecoderWorker:
    """Runs the guard in its own thread on the newest plan and publishes frames into the slot."""

    def __init__(self, guard: DecoderGuard, slot: FrameSlot, now: Callable[[], float], max_fps: float = 0.0,
                 on_frame: Callable[[Frame], None] | None = None,
                 gate: Callable[[Frame], bool] | None = None) -> None:
        self.guard = guard
        self.slot = slot
        self.on_frame = on_frame  # post-render hooks (render/hooks.py), on this thread after each published frame
        self.gate = gate  # a frame check before publishing (hooks' admit): False keeps the last frame on screen
        self._now = now
        self.max_fps = max_fps
        self._plan: Plan | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: SupervisedThread | None = None
        self._seq = 0

    def submit(self, plan: Plan) -> None:
        """Latest wins: the thread picks up the newest plan when it starts its next frame."""
        self._plan = plan
        self._wake.set()

    def start(self) -> None:
        # A fresh stop event per thread: one left over from a stop() that timed out keeps its own (set) event and
        # ends once its current call returns, instead of running on beside the new one.
        self._stop = threading.Event()
        self._thread = supervised("decoder", self._loop, self._stop, stop=self._stop)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.guard.shutdown()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def crashes(self) -> int:
        """int: deaths of this worker's decoder thread (each restarted by its supervisor)."""
        return self._thread.restarts if self._thread is not None else 0

    def _loop(self, stop: threading.Event) -> None:
        next_at = 0.0
        while not stop.is_set():
            plan = self._plan
            if plan is None or plan.frozen:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            if self.max_fps > 0:
                wait = next_at - time.monotonic()
                if wait > 0:
                    stop.wait(wait)
                next_at = max(next_at + 1.0 / self.max_fps, time.monotonic())
            self._seq += 1
            request = plan.request(self._now(), self._seq)
            rgb = self.guard.render(request)
            if rgb is None:
                stop.wait(0.01)
                continue
            if stop.is_set():
                return  # stopped during this frame: a newer thread may own the slot now
            frame = make_frame(rgb, request, plan)
            if self.gate is not None and not self.gate(frame):
                continue  # held by the frame check: the slot keeps the last admitted frame
            self.slot.publish(frame)
            if self.on_frame is not None:
                self.on_frame(frame)
