"""The runtime: wires bus, show, decoder thread, presenter, target and recorder, and runs the loop.

One tick: read the clock, drain the bus, let the show update and hand its plan to the decoder thread (or, with a
fixed-step clock, render that exact frame in lockstep), take the newest frame, draw the chain, record, swap. The
display never waits for the decoder; a fault in a tick is logged and counted and the next tick goes on.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass, field, replace
from typing import Any

from .bus import Event, ParamBus, Tick
from .clock import FixedClock, WallClock
from .config import ShowSpec, modulation_for
from .modulation import ModMatrix
from .render.present import Presenter
from .render.record import Recorder
from .render.slot import Frame, FrameSlot
from .render.process import ProcessWorker, default_threads
from .render.worker import DecoderGuard, DecoderWorker
from .show import Show

log = logging.getLogger(__name__)

BLACKOUT_FADE = 1.5  # seconds
MAX_TICK_FAULTS = 100  # consecutive failing ticks before the loop gives up


def resolve_device(choice: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        log.warning("decoder.device is 'cuda' but torch sees no GPU; using the CPU")
        return "cpu"
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Stats:
    ticks: int = 0
    presented: int = 0
    late: int = 0
    tick_faults: int = 0
    started: float = field(default_factory=time.monotonic)


class Runtime:
    """A show running on a target. ``run()`` plays until the duration, a quit, or forever."""

    def __init__(self, spec: ShowSpec, target: Any, clock: WallClock | FixedClock | None = None, *,
                 fps: float | None = None, recorder: Recorder | None = None, device: str | None = None,
                 max_decoder_fps: float | None = None, show_order: str | None = None, inputs: bool = True) -> None:
        cfg = spec.config
        self.spec = spec
        self.target = target
        self.fps = float(fps or cfg.output.fps)
        self.clock = clock or WallClock()
        self.lockstep = bool(getattr(self.clock, "fixed", False))
        self.recorder = recorder
        self.bus = ParamBus(spec.params.values())
        self.show = Show(spec, self.bus, order=show_order)
        self.device = resolve_device(device or cfg.decoder.device)
        threads = cfg.decoder.threads or default_threads(self.device)
        backoff = (cfg.decoder.restart_backoff_s, cfg.decoder.restart_backoff_max_s)
        self.guard = DecoderGuard(self.device, *backoff)
        self.slot = FrameSlot()
        # Decoding faster than the display is wasted work: cap at the output rate unless told otherwise (0 = none).
        cap = (cfg.decoder.max_fps or self.fps) if max_decoder_fps is None else max_decoder_fps
        self.worker: DecoderWorker | ProcessWorker | None = None
        if self.lockstep or cfg.decoder.isolation == "thread":
            import torch

            torch.set_num_threads(threads)
            if not self.lockstep:
                self.worker = DecoderWorker(self.guard, self.slot, self.clock.now, cap)
        else:
            self.worker = ProcessWorker(self.slot, self.device, self.clock.origin, cap, threads, backoff)
        self._chain: tuple[str, ...] = tuple(self.show.scene.shaders)
        self.presenter = Presenter(target.ctx, target.size, [spec.shaders[n] for n in self._chain], cfg.output.fit,
                                   cfg.output.work_scale, crossfade=not self.lockstep)
        self.use_inputs = inputs
        self.osc = self.audio = self.camera = None
        self._matrix: ModMatrix | None = None
        self._matrix_scene: str | None = None
        self.frozen = False
        self.blackout = False
        self.master = 1.0  # output brightness, ramped linearly so a blackout really reaches black
        self._quit = False
        self._started = False
        self._last_t = 0.0
        self._seq = 0
        self._consecutive_faults = 0
        self.stats = Stats()

    # -- events ------------------------------------------------------------------------------------------------
    def _handle(self, ev: Event) -> None:
        if ev.kind == "freeze":
            self.frozen = bool(ev.value)
        elif ev.kind == "blackout":
            self.blackout = bool(ev.value)
        elif ev.kind == "panic":
            self.blackout = True
            self.master = 0.0
            self.frozen = False
            self.bus.reset(self.show.defaults())
        elif ev.kind == "quit":
            self._quit = True
        elif ev.kind != "onset":  # onsets reach the show through modulation routes, not directly
            self.bus.reject("event")

    def request_quit(self) -> None:
        self._quit = True

    # -- one tick ----------------------------------------------------------------------------------------------
    def step(self) -> None:
        t = self.clock.now()
        dt = max(t - self._last_t, 0.0)
        self._last_t = t
        self.stats.ticks += 1
        try:
            self._step(t, dt)
            self._consecutive_faults = 0
        except Exception:  # noqa: BLE001 - fail soft: the next tick tries again
            self.stats.tick_faults += 1
            self._consecutive_faults += 1
            log.exception("tick failed (%d in a row)", self._consecutive_faults)
            if self._consecutive_faults >= MAX_TICK_FAULTS:
                raise
        self.clock.advance()

    def _step(self, t: float, dt: float) -> None:
        for action in self.target.poll():
            if action == "quit":
                self._quit = True
            elif action in ("next", "prev"):
                self.bus.post(Event(f"scene.{action}", source="keyboard"))
        tick = self._modulate(self.bus.tick(dt), t, dt)
        plan, rest = self.show.update(t, dt, tick, frozen=self.frozen)
        for ev in rest:
            self._handle(ev)
        scene = self.show.scene
        if self.camera is not None and scene.decoder.type == "diffusion":
            frame = self.camera.latest_frame()
            if frame is not None:
                plan = replace(plan, extras={**plan.extras, "source": frame})
        if tuple(scene.shaders) != self._chain:
            self._chain = tuple(scene.shaders)
            self.presenter.set_chain([self.spec.shaders[n] for n in self._chain])
        if self.lockstep:
            self._seq += 1
            rgb = self.guard.render(plan.request(t, self._seq))
            if rgb is not None:
                self.slot.publish(Frame(rgb, self._seq, t, time.monotonic(), plan.scene, plan.cut))
        else:
            self.worker.submit(plan)
        if not self.frozen:
            self.presenter.take(self.slot.latest(), t, transition=scene.transition)
        step = dt / BLACKOUT_FADE
        self.master = min(max(self.master + (step if not self.blackout else -step), 0.0), 1.0)
        self.presenter.draw(self.target.framebuffer, t, tick.values, self.master)
        if self.recorder is not None:
            self.recorder.write(self.target.read())
        self.target.swap()
        self.stats.presented += 1
        if self.osc is not None:
            self.osc.feedback(self.bus.targets(), scene.name)

    def _modulate(self, tick: Tick, t: float, dt: float) -> Tick:
        """Apply the scene's modulation matrix (config routes + scene routes) to this tick's values."""
        scene = self.show.scene
        if self._matrix_scene != scene.name:
            self._matrix = ModMatrix.from_settings(modulation_for(self.spec.config, scene), self.spec.params,
                                                   seed=scene.seed)
            self._matrix_scene = scene.name
        if not self._matrix.routes:
            return tick
        values = {**tick.values, **self._matrix.apply(tick.values, t, dt)}
        return Tick(values, tick.events + tuple(self._matrix.take_events()), tick.changed)

    # -- inputs ------------------------------------------------------------------------------------------------
    def _start_inputs(self) -> None:
        """Start the enabled inputs. A port that cannot be bound is a start-up error (raised); devices are not."""
        from .inputs import AudioInput, CameraInput, OscServer

        cfg = self.spec.config.inputs
        if cfg.osc.enabled:
            self.osc = OscServer(cfg.osc, self.bus, lambda: [s.name for s in self.spec.scenes],
                                 base_dir=str(self.spec.path.resolve().parent))
            self.osc.start()
        if cfg.audio.enabled:
            self.audio = AudioInput(cfg.audio, self.bus)
            self.audio.start()
        if cfg.camera.enabled:
            self.camera = CameraInput(cfg.camera, self.bus)
            self.camera.start()

    def _stop_inputs(self) -> None:
        for part in (self.osc, self.audio, self.camera):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - shutting down: log and go on
                    log.exception("stopping an input failed")

    # -- the loop ----------------------------------------------------------------------------------------------
    def start(self, first_frame_timeout: float = 60.0) -> bool:
        """Start inputs and the decoder, and wait for its first frame, so the show opens on an image, not black."""
        if self._started:
            return True
        self._started = True
        if self.use_inputs:
            self._start_inputs()
        if self.worker is None:
            return True
        plan, _ = self.show.update(0.0, 0.0, self.bus.tick(0.0))
        self.worker.submit(plan)
        self.worker.start()
        # The show clock keeps running meanwhile; the path was extrapolated, so the first tick carries on from it.
        ok = self.slot.wait_newer(-1, first_frame_timeout) is not None
        if not ok:
            log.warning("no decoder frame within %.0f s; presenting anyway", first_frame_timeout)
        return ok

    def run(self, duration: float | None = None) -> Stats:
        """Present at ``fps`` until ``duration`` seconds of show time (n = duration * fps frames) or a quit."""
        frames = None if duration is None else max(int(round(duration * self.fps)), 1)
        self.start()
        self.stats = Stats()
        period = 1.0 / self.fps
        origin = time.perf_counter()
        n = 0
        try:
            while not self._quit and (frames is None or n < frames):
                if not self.lockstep:
                    deadline = origin + n * period
                    wait = deadline - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    elif wait < -period:
                        self.stats.late += 1
                self.step()
                n += 1
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self._stop_inputs()
        if self.worker is not None:
            self.worker.stop()
        else:
            self.guard.close()
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None

    def decoder_stats(self) -> dict[str, Any]:
        """Frames, faults by kind and restarts of the decoder, wherever it runs."""
        if isinstance(self.worker, ProcessWorker):
            return {**self.worker.remote, "process_crashes": self.worker.crashes}
        return self.guard.stats()

    def health(self) -> dict[str, Any]:
        g = self.decoder_stats()
        inputs = {name: part.stats() for name, part in (("osc", self.osc), ("audio", self.audio),
                                                          ("camera", self.camera)) if part is not None}
        return {"scene": self.show.scene.name, "frames_presented": self.stats.presented,
                "frames_decoded": self.slot.published, "late_ticks": self.stats.late, "tick_faults":
                self.stats.tick_faults, "decoder": g, "bus": self.bus.stats(), "inputs": inputs,
                "rss_mb": round(rss_mb(), 1)}
