"""The runtime: wires bus, show, decoder thread, presenter, target and recorder, and runs the loop.

One tick: read the clock, drain the bus, let the show update and hand its plan to the decoder thread (or, with a
fixed-step clock, render that exact frame in lockstep), take the newest frame, draw the chain, record, swap. The
display never waits for the decoder; a fault in a tick is logged and counted and the next tick goes on.

This module is the loop and the supervision of its parts; the running show's other concerns are in
:mod:`installation.running` (the health report, the fault tally and fallback, opening hours, the first frame).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Callable

from . import parts as registry
from .bus import Event, ParamBus, Tick
from .clock import Clock, WallClock
from .config import ConfigError, ShowSpec, builtin_safe_scene, load_show, modulation_for
from .decoders.base import resolve_device
from .modulation import ModMatrix
from .ops import Notifier, Schedule
from .ops.health import HealthServer
from .ops.logs import RepeatLog
from .ops.memory import Trimmer
from .ops.state import StateKeeper
from .ops.supervise import supervised
from .parts import Moment, Part, PartContext, PartInfo
from .render.hooks import HookRunner, apply_result
from .render.calibration import build_output, calibration_path
from .render.outputs import PresentedTap
from .render.projection import presenter_size
from .render.present import Presenter
from .render.record import Recorder
from .render.slot import FrameSlot
from .render.process import ProcessWorker, default_threads
from .render.shader_check import refuse_hanging
from .render.shaders import ShaderError
from .render.targets import Target
from .render.worker import DecoderGuard, DecoderWorker, make_frame
from .running.faults import FaultTally
from .running.first_frame import FirstFrame
from .running.health import HealthReport
from .running.schedule import OpeningHours
from .show import Show

log = logging.getLogger(__name__)

BLACKOUT_FADE = 1.5  # seconds
MAX_TICK_FAULTS = 100  # consecutive failing ticks before the loop gives up
TRIM_EVERY_S = 60.0  # seconds between malloc_trim calls (ops/memory.py Trimmer)
OPS_EVERY = 1.0  # seconds of show time between schedule checks, fault tallies, health and STATUS refreshes
INPUT_BACKOFF_MAX = 60.0  # longest wait before restarting a part (an input) whose worker died; a part may say less
PART_SETTLE_S = 10.0  # a part that ran this long since its last restart is restarted at once when it dies


@dataclass
class _Supervised:
    """The runtime's record of one part: its registration, whether it should be running, and its deaths."""

    info: PartInfo
    running: bool = False  # started by the runtime and not stopped: a part found not alive then has died
    retry_at: float | None = None  # show time of the next restart attempt (None: none pending)
    streak: int = 0  # deaths soon after a restart, and failed restarts, in a row (the delay doubles with each)
    started: float | None = None  # show time of the last restart


@dataclass
class Stats:
    ticks: int = 0
    presented: int = 0
    late: int = 0
    tick_faults: int = 0
    max_frame_gap: float = 0.0  # longest wait (seconds, monotonic) between two new decoder frames while open
    loop_s: float = 0.0  # seconds the presenting loop ran (set when it ends, before shutdown)
    first_still: bool = False  # the start showed the picture saved with the state while the decoder started
    started: float = field(default_factory=time.monotonic)


def _hook_specs(spec: ShowSpec) -> tuple:
    """The decoder's post-render hooks for a show: ``[decoder] hooks`` and those the registered parts ask for."""
    return tuple(spec.config.decoder.hooks) + registry.hook_specs(spec)


def _checks_frames(specs: tuple) -> bool:
    """Whether the hooks include a frame check (a gate that fails closed: ``[vision] blocked`` or a scene's
    ``negative`` concepts): then only frames it passed may reach an output, a sink, the archive or the web."""
    return any(getattr(spec[1], "fail_closed", False) for spec in specs if not isinstance(spec, str))


class Runtime(HealthReport, FaultTally, OpeningHours, FirstFrame):
    """A show running on a target. ``run()`` plays until the duration, a quit, a stop request, or forever.

    Its subsystems are parts (:mod:`installation.parts`), built from the config by the registry in start order:
    the health endpoint (``serve_health``), the show state on disk (``keep_state``, ``resume``), then the inputs
    (``inputs``). The runtime starts them, supervises them (a part whose worker died is counted and restarted with
    a backoff), reports their stats, calls their hooks and stops them in reverse order; it knows none by name
    except the state part, which it resumes from. Also optional: opening hours (``[schedule]``, checked against the
    injected ``wall`` clock) and systemd notifications (``notifier``). Periodic work runs once a second of show
    time, from the loop thread.
    """

    def __init__(self, spec: ShowSpec, target: Target, clock: Clock | None = None, *,
                 fps: float | None = None, recorder: Recorder | None = None, device: str | None = None,
                 max_decoder_fps: float | None = None, show_order: str | None = None, inputs: bool = True,
                 wall: Callable[[], datetime] | None = None, notifier: Notifier | None = None,
                 keep_state: bool = False, resume: bool = False, serve_health: bool = False,
                 schedule: bool = False, only_scene: str | None = None, first_light: bool = True) -> None:
        cfg = spec.config
        self.spec = spec
        self.target = target
        self.fps = float(fps or cfg.output.fps)
        self.clock = clock or WallClock()
        self.lockstep = bool(getattr(self.clock, "fixed", False))
        self.recorder = recorder
        self.bus = ParamBus(spec.params.values(), clock=self.clock.now)  # the journal is stamped in show time
        self._order = show_order
        self._only_scene = only_scene
        self.show = Show(spec, self.bus, order=show_order)
        self.device = resolve_device(device or cfg.decoder.device)
        threads = cfg.decoder.threads or default_threads(self.device)
        backoff = (cfg.decoder.restart_backoff_s, cfg.decoder.restart_backoff_max_s)
        self.guard = DecoderGuard(self.device, *backoff)
        self.slot = FrameSlot()
        # Decoding faster than the display is wasted work: cap at the output rate unless told otherwise (0 = none).
        cap = (cfg.decoder.max_fps or self.fps) if max_decoder_fps is None else max_decoder_fps
        self.worker: DecoderWorker | ProcessWorker | None = None
        # Post-render hooks run where frames are made; what they learn lands on the bus like any input's features.
        hook_specs = self._hook_specs = _hook_specs(spec)
        local = self.lockstep or cfg.decoder.isolation == "thread"
        self.hooks = HookRunner(hook_specs if local else (), self._hook_result)
        if local:
            import torch

            torch.set_num_threads(threads)
            if not self.lockstep:
                self.worker = DecoderWorker(self.guard, self.slot, self.clock.now, cap, on_frame=self.hooks or None,
                                            gate=self.hooks.admit if self.hooks.gates else None)
        else:
            self.worker = ProcessWorker(self.slot, self.device, self.clock.origin, cap, threads, backoff,
                                        hang_s=cfg.decoder.hang_s, log_level=cfg.log.level, hooks=hook_specs,
                                        on_hook=self._hook_result)
        self._chain: tuple[str, ...] = tuple(self.show.scene.shaders)
        chain = [spec.shaders[n] for n in self._chain]
        self.presenter = Presenter(target.ctx, presenter_size(cfg, target.size), chain, cfg.output.fit,
                                   cfg.output.work_scale, crossfade=not self.lockstep,
                                   detail_scale=cfg.output.detail_scale or None)
        for chain in {tuple(sc.shaders) for sc in spec.scenes} - {self._chain}:
            self.presenter.check([spec.shaders[n] for n in chain])  # every scene's chain compiles, or fail at start
        # The canvas goes to the window (or headless framebuffer): plain, or split into [[outputs]] with their warps
        # and calibration; sinks see what it shows.
        self.output = build_output(target, cfg, spec.path.resolve().parent, calibration_path(spec.path))
        self.tap = PresentedTap(self.output)
        if recorder is not None:
            self.tap.add(recorder)
        self.use_inputs = inputs
        self.first_light = first_light  # preview the CPPN in this process while the decoder process starts
        # A frame check gates every picture: no unchecked preview or saved still while the decoder starts.
        self.frame_check = _checks_frames(hook_specs)
        self._matrix: ModMatrix | None = None
        self._matrix_scene: str | None = None
        self.frozen = False
        self.blackout = False
        self.master = 1.0  # output brightness, ramped linearly so a blackout really reaches black
        self._fade_s = BLACKOUT_FADE  # length of the current ramp (a blackout, a stop, or the schedule's fade)
        self._quit = False
        self._started = False
        self._stopping = False
        self._reload = False
        self._last_t = 0.0
        self._seq = 0
        self._consecutive_faults = 0
        self.stats = Stats()
        # -- unattended operation --
        self.wall = wall or (lambda: datetime.now(timezone.utc))
        self.notifier = notifier or Notifier(env={})  # no socket: every call is a no-op
        self._await_frame: float | None = None  # stay dark until a frame newer than this arrives (reopening, a reload)
        self._init_schedule(cfg.schedule, schedule)
        self.trimmer = Trimmer(TRIM_EVERY_S)  # free heap memory handed back to the system once a minute (issue 33)
        self.faults: Counter[str] = Counter()  # contained faults by part, besides the decoder's own
        self._repeats = RepeatLog(log, interval=60.0)  # faults that repeat (a failing hook, restart): a line a minute
        self._init_tally()
        self._ops_at: float | None = None
        self._marks = (0.0, 0, 0)  # (show time, presented, published) at the last ops tick
        self.present_fps = self.decoder_fps = 0.0
        self._frame_mark = (0, time.monotonic())  # (published, when) of the newest decoder frame seen
        self.ready_sent = False
        self._init_health()
        self._closed = False
        self._safe = spec.safe or builtin_safe_scene()
        # -- parts: built now, started by start(), stopped by close() --
        ctx = PartContext(bus=self.bus, scenes=lambda: [s.name for s in self.spec.scenes],
                          base_dir=spec.path.resolve().parent, snapshot=self.health_snapshot, state=self.state,
                          serve_health=serve_health, keep_state=keep_state, only_scene=only_scene,
                          presented=self.tap, config=cfg, clock=self.clock, scene_info=self.scene_info)
        self.parts: dict[str, Part] = registry.build_all(cfg, ctx, inputs=inputs)
        self._supervised = {name: _Supervised(registry.info(name)) for name in self.parts}
        self._part_stats: dict[str, dict[str, Any]] = {}  # each part's stats at the last ops tick
        hooks = [(name, getattr(part, "plan", None), getattr(part, "tick", None)) for name, part in self.parts.items()]
        self._plan_hooks = [(name, fn) for name, fn, _ in hooks if callable(fn)]
        self._event_hooks = [(name, getattr(p, "events")) for name, p in self.parts.items()
                             if callable(getattr(p, "events", None))]
        self._tick_hooks = [(name, fn) for name, _, fn in hooks if callable(fn)]
        self._overlay_hooks = [(name, getattr(p, "overlay")) for name, p in self.parts.items()
                               if callable(getattr(p, "overlay", None))]
        self.resumed = False
        if resume:
            saved = self.keeper.load()
            other = None if saved is None else self._other_show(saved.get("show"))
            if other:
                log.warning("not resuming %s: it was saved by another show (%s); starting from the beginning",
                            self.keeper.path, other)
            elif saved is not None:
                self.resumed = self.show.restore(saved, 0.0)
                if not self.resumed:
                    log.warning("saved scene %r is not in this show; starting from the beginning", saved.get("scene"))
                self._chain = tuple(self.show.scene.shaders)
                self.set_chain(self._chain)

    def scene_info(self) -> dict[str, dict[str, Any]]:
        """Scene name -> {"params": the parameters that act in it (its chain's uniforms, its decoder's, the core
        ones), "prompts": whether its decoder reads prompts, "description"}."""
        from .scene_params import scene_info

        spec = self.spec
        return {s.name: scene_info(s, spec.shaders, spec.params) for s in spec.scenes}

    # -- events ------------------------------------------------------------------------------------------------
    def _handle(self, ev: Event) -> None:
        if ev.kind == "freeze":
            self.frozen = bool(ev.value)
        elif ev.kind == "blackout":
            self.blackout = bool(ev.value)
            self._fade_s = BLACKOUT_FADE
        elif ev.kind == "panic":
            self.blackout = True
            self.master = 0.0
            self.frozen = False
            self.bus.reset(self.show.defaults(), source="panic")
        elif ev.kind == "quit":
            self._quit = True
        elif ev.kind.startswith(("calibrate", "output.")) and getattr(self.output, "handle_event", None) and \
                self.output.handle_event(ev):
            pass  # projector calibration (render/calibration.py)
        elif ev.kind not in ("onset", "map.goto", "midi.learn", "preset.store", "preset.recall"):  # onsets go
            # through modulation routes; the archive takes map.goto, the MIDI part learn events and the presets part
            # its own, from the bus journal
            self.bus.reject("event")

    def _hook_result(self, result: dict[str, Any]) -> None:
        """A post-render hook's result (from the decoder thread, or the decoder process's pipe reader)."""
        apply_result(self.bus, result)

    def request_quit(self) -> None:
        """Stop at the next tick, without a fade."""
        self._quit = True

    def request_stop(self) -> None:
        """Fade out (the blackout ramp, at most BLACKOUT_FADE seconds) and then stop; safe from a signal handler."""
        self._stopping = True

    def request_reload(self) -> None:
        """Reload config, scenes and shaders from disk at the next tick; safe from a signal handler."""
        self._reload = True

    # -- one tick ----------------------------------------------------------------------------------------------
    def step(self) -> None:
        t = self.clock.now()
        dt = max(t - self._last_t, 0.0)
        self._last_t = t
        self.stats.ticks += 1
        try:
            if self._reload:
                self._reload = False
                self.reload(t)
            self._step(t, dt)
            self._consecutive_faults = 0
        except Exception:  # noqa: BLE001 - fail soft: the next tick tries again
            self.stats.tick_faults += 1
            self._consecutive_faults += 1
            log.exception("tick failed (%d in a row)", self._consecutive_faults)
            if self._consecutive_faults >= MAX_TICK_FAULTS:
                raise
        if self._tick_hooks:
            self._tick_parts(t, dt)
        try:
            self._ops(t)
        except Exception:  # noqa: BLE001 - health, state and schedule never stop the show
            self.faults["ops"] += 1
            self._repeats.error("ops", "periodic unattended-operation work failed (%d so far)", self.faults["ops"],
                                exc_info=True)
        self.clock.advance()

    def _step(self, t: float, dt: float) -> None:
        for action in self.target.poll():
            if getattr(self.output, "take_action", None) and self.output.take_action(action):
                continue  # a key or the mouse while calibrating projector outputs
            if action == "quit":
                self._quit = True
            elif action in ("next", "prev"):
                self.bus.post(Event(f"scene.{action}", source="keyboard"))
        tick = self._modulate(self.bus.tick(dt, t), t, dt)
        for name, hook in self._event_hooks:  # parts that hold events back (Link: scene changes on the bar)
            try:
                tick = replace(tick, events=tuple(hook(tick.events, Moment(t, dt, self.show.scene))))
            except Exception:  # noqa: BLE001 - a part's fault never stops the show: the events go through
                self._hook_failed(name, "events hook")
        plan, rest = self.show.update(t, dt, tick, frozen=self.frozen)
        for ev in rest:
            self._handle(ev)
        scene = self.show.scene
        if self._plan_hooks:  # parts that add decoder inputs (the camera's img2img source)
            moment = Moment(t, dt, scene, isinstance(self.worker, ProcessWorker))
            for name, hook in self._plan_hooks:
                try:
                    plan = hook(plan, moment)
                except Exception:  # noqa: BLE001 - a part's fault never stops the show: the plan goes without it
                    self._hook_failed(name, "plan hook")
        if tuple(scene.shaders) != self._chain:
            self._chain = tuple(scene.shaders)
            self.set_chain(self._chain)
        if self.released:
            pass  # closed: no decoding; black frames keep the watchdog fed
        elif self.lockstep:
            self._seq += 1
            request = plan.request(t, self._seq)
            rgb = self.guard.render(request)
            if rgb is not None:
                frame = make_frame(rgb, request, plan)
                if self.hooks.admit(frame):  # the frame check (a gate hook) may hold it: the last frame stays
                    self.slot.publish(frame)
                    if self.hooks:
                        self.hooks(frame)
        else:
            self.worker.submit(plan)
        self._track_frames()
        if self._await_frame is not None and self.slot.published > self._await_frame:
            self._await_frame = None
        if not self.frozen and not self.released and self._await_frame is None:
            self.presenter.take(self.slot.latest(), t, transition=scene.transition)
        dark = self.blackout or self._stopping or (not self.open and self._standby() is None) or \
            self._await_frame is not None
        step = dt / self._fade_s if self._fade_s > 0 else 1.0
        self.master = min(max(self.master + (step if not dark else -step), 0.0), 1.0)
        self.output.show(self.presenter.render(t, tick.values), self.master)
        for name, draw in self._overlay_hooks:  # parts that draw over the window (the live map), GL on this thread
            try:
                draw(self.target.ctx, self.target.framebuffer, self.target.size)
            except Exception:  # noqa: BLE001 - a part's fault never stops the show
                self._hook_failed(name, "overlay", "overlay")
        self.tap.offer(None if self.lockstep else t)  # the recorder (and any sink) by wall-clock time when live
        self.target.swap()
        self.stats.presented += 1
        self._presented()

    def _tick_parts(self, t: float, dt: float) -> None:
        """Each part's per-tick hook (OSC feedback, state saves), after the frame; a failing one is counted."""
        moment = Moment(t, dt, self.show.scene, isinstance(self.worker, ProcessWorker))
        for name, hook in self._tick_hooks:
            try:
                hook(moment)
            except Exception:  # noqa: BLE001 - a part's fault never stops the show
                self._hook_failed(name, "tick hook")

    def _hook_failed(self, name: str, what: str, kind: str = "hook") -> None:
        """Count a part's hook that raised (the show goes on without it); one that fails every tick is logged with
        its traceback once, then a line a minute with the count."""
        key = f"{kind}.{name}"
        self.faults[key] += 1
        self._repeats.error(f"{key}.{what}", "part %s: %s failed (%d so far)", name, what, self.faults[key],
                            exc_info=True)

    def _track_frames(self) -> None:
        """The longest time without a new decoder frame while the decoder should be producing (open, not frozen)."""
        now = time.monotonic()
        published, since = self._frame_mark
        if self.slot.published != published or self.released or self.frozen:
            self._frame_mark = (self.slot.published, now)
        elif published > 0:
            self.stats.max_frame_gap = max(self.stats.max_frame_gap, now - since)

    def _presented(self) -> None:
        """systemd: READY=1 once a decoder frame is on screen, WATCHDOG=1 after every presented frame."""
        if not self.ready_sent and (self.presenter.has_frame or self.released):
            self.ready_sent = True
            self.notifier.ready(self._status_line())
        self.notifier.watchdog()

    def set_chain(self, names: tuple[str, ...] | list[str]) -> bool:
        """Switch the shader chain by names; see :meth:`set_chain_files`."""
        missing = [n for n in names if n not in self.spec.shaders]
        if missing:
            self.faults["shader"] += 1
            log.error("shader chain %s not changed: no shader %r", list(names), missing[0])
            return False
        return self.set_chain_files([self.spec.shaders[n] for n in names])

    def set_chain_files(self, shaders: list) -> bool:
        """Switch the shader chain; one that does not compile keeps the previous program (logged, counted)."""
        try:
            self.presenter.set_chain(shaders)
        except ShaderError as e:
            self.faults["shader"] += 1
            log.error("shader chain not changed, keeping the previous program: %s", e)
            return False
        return True

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

    # -- reload ------------------------------------------------------------------------------------------------
    def reload(self, t: float) -> bool:
        """Load config, scenes and shaders again (SIGHUP). A bad config keeps the running show; a good one
        replaces scenes, shaders and parameters and keeps the current scene (and its position) if it still exists.
        Output size, inputs, health and state settings need a restart.
        """
        self.notifier.reloading()
        try:
            try:
                new = load_show(self.spec.path, only_scene=self._only_scene)
                new.config = new.config.model_copy(update={k: getattr(self.spec.config, k) for k in
                                                           ("output", "canvas", "outputs")})
                # A test draw in a child process, of what changed since the last one (a stop cancels it).
                refuse_hanging(new, cancel=lambda: self._stopping or self._quit)
            except ConfigError as e:
                self.faults["reload"] += 1
                log.error("reload failed, the show goes on with the old config: %s", e)
                return False
            except Exception as e:  # noqa: BLE001 - a loader bug on an odd file: still a reload fault, not a tick's
                self.faults["reload"] += 1
                log.error("reload failed on an unexpected error, the show goes on with the old config: %s: %s",
                          type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "")
                log.debug("the unexpected reload error", exc_info=True)
                return False
            for name, p in new.params.items():
                if self.bus.spec(name) != p:
                    self.bus.declare(p)
            state = self.state()
            show = Show(new, self.bus, order=self._order)
            show.cut = self.show.cut + 1  # a clean cut, never a blend between the old and the new path objects
            if not show.restore(state, t):
                show.started = t
                log.warning("reload: scene %r is gone; playing %s", state["scene"], show.scene.name)
            self.spec, self.show = new, show
            self._reload_hooks(new)
            self._safe = new.safe or builtin_safe_scene()
            self._matrix_scene = None
            self._chain = tuple(show.scene.shaders)
            self.set_chain(self._chain)
            if self._use_schedule:
                self.schedule = Schedule(new.config.schedule)
            log.info("reloaded %s: %s", new.path, ", ".join(s.name for s in new.scenes))
            return True
        finally:
            self.notifier.ready(self._status_line())

    def _reload_hooks(self, spec: ShowSpec) -> None:
        """After a reload: when the post-render hooks' options changed (a scene's ``[vision] negative`` concepts,
        ``[decoder] hooks``), the decoder gets them: a new hook runner here, or its process stopped on a thread of
        its own and started again with them by the loop (the last frame stays on screen until the new one
        publishes; a frame check holds frames until its model is loaded again)."""
        specs = _hook_specs(spec)
        if specs == self._hook_specs:
            return
        self._hook_specs = specs
        self.frame_check = checked = _checks_frames(specs)
        worker = self.worker
        if checked:
            # What is on screen passed the old check at most: black (no fade), and no frame is taken until the new
            # check is in place (below) and has passed one.
            self.presenter.forget()
            self.master = 0.0
            self._await_frame = math.inf
        if isinstance(worker, ProcessWorker):
            log.info("reload: the decoder's hooks changed; restarting the decoder process with them")

            def restart() -> None:
                worker.stop()
                worker.hooks = specs
                if checked:
                    self._await_frame = self.slot.published  # the old process's frames are all in
                worker.restart_soon()  # the loop thread starts it: a child dies with the thread that started it

            supervised("decoder-restart", restart)
            return
        old, self.hooks = self.hooks, HookRunner(specs, self._hook_result)
        if worker is not None:
            worker.gate = self.hooks.admit if self.hooks.gates else None
            worker.on_frame = self.hooks or None
        if checked:  # the decoder thread may still publish one frame its old gate passed
            self._await_frame = self.slot.published + (worker is not None)
        old.close()
        log.info("reload: the decoder's hooks changed; now %s",
                 ", ".join(spec if isinstance(spec, str) else spec[0] for spec in specs) or "none")

    # -- periodic unattended work ------------------------------------------------------------------------------
    def _ops(self, t: float) -> None:
        """Once a second: schedule, fault tallies, parts' supervision, health, STATUS."""
        if self._ops_at is not None and t - self._ops_at < OPS_EVERY:
            return
        self._ops_at = t
        self._check_schedule(t)
        self._part_stats = {name: part.stats() for name, part in self.parts.items()}
        self._tally_faults(t)
        self._supervise(t)
        t0, presented0, published0 = self._marks
        if t > t0:
            self.present_fps = (self.stats.presented - presented0) / (t - t0)
            self.decoder_fps = (self.slot.published - published0) / (t - t0)
        self._marks = (t, self.stats.presented, self.slot.published)
        self.trimmer.maybe()
        self.memory.sample()
        snapshot = self._snapshot(t)
        with self._health_lock:
            self._health = snapshot
        self.notifier.status(self._status_line())

    def _supervise(self, t: float) -> None:
        """A part whose worker died (not ``alive`` while it should run) is counted once and restarted: at once when it
        had run PART_SETTLE_S since its last restart, else after a delay that doubles (1 s, 2 s, ...) with each quick
        death or failed restart in a row, up to the part's ``restart_max_s`` (INPUT_BACKOFF_MAX when it has none: a
        socket that can be reopened at once, the OSC input's, says 1 s)."""
        for name, part in self.parts.items():
            sup = self._supervised[name]
            if not sup.running or sup.retry_at is None and part.alive:
                continue
            if sup.retry_at is None:  # a death, seen for the first time
                self.faults[sup.info.fault_key] += 1
                if sup.started is None or t - sup.started >= PART_SETTLE_S:
                    sup.streak = 0  # it had run a good while: its earlier deaths are forgotten
                sup.retry_at = t + self._restart_delay(part, sup)
                log.error("%s %s stopped unexpectedly; restarting in %.0f s",
                          "input" if sup.info.is_input else "part", name, sup.retry_at - t)
            if t < sup.retry_at:
                continue
            try:
                part.stop()
                part.start()
            except Exception as e:  # noqa: BLE001 - try again later; one death, however many attempts
                sup.retry_at = t + self._restart_delay(part, sup)
                self._repeats.warning(f"restart.{name}", "restarting %s failed (%s); trying again in %.0f s", name,
                                      e, sup.retry_at - t)
                continue
            sup.started, sup.retry_at = t, None
            self._repeats.reset(f"restart.{name}")

    @staticmethod
    def _restart_delay(part: Part, sup: _Supervised) -> float:
        """The wait before the next restart attempt of ``part``; each call counts one more in its streak."""
        cap = float(getattr(part, "restart_max_s", INPUT_BACKOFF_MAX))
        delay = min(2.0 ** (sup.streak - 1), cap) if sup.streak else 0.0
        sup.streak += 1
        return delay

    # -- parts -------------------------------------------------------------------------------------------------
    def part(self, name: str) -> Any:
        """The running part registered as ``name``, or None (disabled, or not built: inputs off)."""
        return self.parts.get(name)

    @property
    def osc(self) -> Any:
        """The OSC part (:class:`~installation.inputs.osc.OscServer`), or None."""
        return self.parts.get("osc")

    @property
    def audio(self) -> Any:
        """The microphone part, or None."""
        return self.parts.get("audio")

    @property
    def camera(self) -> Any:
        """The camera part, or None."""
        return self.parts.get("camera")

    @property
    def health_server(self) -> HealthServer | None:
        """The health endpoint part, or None when not served."""
        return self.parts.get("health")

    @property
    def keeper(self) -> StateKeeper:
        """The state part: saves the show position (when kept) and is where the runtime resumes from."""
        return self.parts["state"]

    def _start_parts(self) -> None:
        """Start every part in order. A port that cannot be bound is a start-up error (raised); devices are not."""
        for name, part in self.parts.items():
            part.start()
            self._supervised[name].running = True

    def _stop_parts(self) -> None:
        """Stop every part in reverse order (the inputs first, the state's last save, then health)."""
        for name, part in reversed(self.parts.items()):
            self._supervised[name].running = False
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - shutting down: log and go on
                log.exception("stopping part %s failed", name)

    # -- the loop ----------------------------------------------------------------------------------------------
    def start(self, first_frame_timeout: float = 60.0) -> bool:
        """Start the parts (health endpoint, state, inputs) and the decoder, and wait for its first frame, so the
        show opens on an image, not black. A port that cannot be bound raises OSError (a start-up error)."""
        if self._started:
            return True
        self._started = True
        self._start_parts()
        if self.worker is None:
            return True
        plan, _ = self.show.update(0.0, 0.0, self.bus.tick(0.0))
        self.worker.submit(plan)
        self.worker.start()
        ok = self._await_first_frame(plan, first_frame_timeout)
        # The scene's own clock starts when it is on screen: a slow decoder start (a model load, a busy machine)
        # must not use up the first scene's duration before anyone saw it.
        self.show.started += self.clock.now()
        align = getattr(self.clock, "align", None)  # a clock shared by several machines (Link) places the show
        if callable(align):
            align(self.show, self.clock.now())
        return ok

    def run(self, duration: float | None = None, on_tick: Callable[["Runtime"], None] | None = None) -> Stats:
        """Present at ``fps`` until ``duration`` seconds, a quit, or a stop request (after its fade). Live, the
        duration is wall-clock seconds of presenting; with a fixed-step clock it is show time (n = duration * fps
        frames). ``on_tick`` is called after every tick (the soak run injects faults there)."""
        frames = None if duration is None or not self.lockstep else max(int(round(duration * self.fps)), 1)
        self.stats = Stats()
        self.start()
        period = 1.0 / self.fps
        origin = started = time.perf_counter()
        end = None if duration is None or self.lockstep else started + duration
        n = 0
        stop_by: float | None = None
        try:
            while not self._quit and (frames is None or n < frames) and (end is None or time.perf_counter() < end):
                if self._stopping:
                    if not self.presenter.has_frame:
                        break  # nothing on screen yet: nothing to fade
                    if stop_by is None:
                        stop_by = self.clock.now() + BLACKOUT_FADE + 0.1
                        self._fade_s = BLACKOUT_FADE
                        log.info("stopping: fading out")
                    if self.master <= 0.0 or self.clock.now() >= stop_by:
                        break
                if not self.lockstep:
                    deadline = origin + n * period
                    wait = deadline - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    elif wait < -period:
                        # Behind by more than a frame (a stall, or a display slower than fps): count it and
                        # resynchronise, rather than bursting ticks to catch up.
                        self.stats.late += 1
                        origin = time.perf_counter() - n * period
                self.step()
                if on_tick is not None:
                    on_tick(self)
                n += 1
            self.stats.loop_s = time.perf_counter() - started
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        """Tell systemd, stop the parts (inputs, the state's last save, health), decoder and recorder; safe to call
        twice."""
        if self._closed:
            return
        self._closed = True
        self.notifier.stopping()
        self._stop_parts()
        if self.worker is not None:
            self.worker.stop()
        else:
            self.guard.close()
        self.hooks.close()
        if self.recorder is not None:
            self.tap.remove(self.recorder)
            self.recorder.close()
            self.recorder = None

    # -- state and health --------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The show position to resume from: scene, time in scene, path time, seed, prompts, parameter targets, and
        which show this is (its config and scene list), so that another show never resumes from it."""
        state = self.show.state(self._last_t)
        state["params"] = {k: v for k, v in self.bus.targets().items() if math.isfinite(v)}
        state["show"] = self._identity()
        return state

    def _identity(self) -> dict[str, Any]:
        return {"config": str(self.spec.path.resolve()), "scenes": [s.name for s in self.spec.scenes]}

    def _other_show(self, saved: Any) -> str | None:
        """Why a saved state's show is not this one (config file, scene list), or None when it is (or predates
        the identity: such a file is trusted by its scene name, as before)."""
        if saved is None:
            return None
        mine = self._identity()
        if saved.get("config") != mine["config"]:
            return f"config {saved.get('config')}"
        if saved.get("scenes") != mine["scenes"]:
            return f"scenes {', '.join(saved.get('scenes') or [])}"
        return None
