"""The soak run: the show headless for N minutes (scenes changing every 15 s at most) with faults injected, and figures that say whether it held up.

Faults injected, each at its own rate: decoder exceptions and NaN frames (every CPPN scene runs through the
``faulty`` decoder), the decoder process killed with SIGKILL, a shader that does not compile swapped in, and the
thread of a running input stopped behind its back. The runtime must contain all of them: ``crashes`` counts only
exceptions that escaped (the loop, a thread), and must stay 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import parts
from .clock import WallClock
from .config import ShowSpec
from .decoders import DecoderSpec
from .decoders.faulty import FaultySettings
from .ops import Trend
from .ops.health import rss_mb
from .render.shaders import ShaderFile

log = logging.getLogger(__name__)

SCENE_S = 15.0  # longest a scene plays during a soak
WARMUP = 0.2  # fraction of the run (at most 60 s) before the RSS slope is measured
BROKEN_SHADER = ShaderFile("present", Path("<soak: broken shader>"), "#version 330\nvoid main() { not glsl; }\n")


def faulty_spec(spec: ShowSpec, raise_every: int, nan_every: int) -> ShowSpec:
    """The same show with every CPPN scene decoded by the ``faulty`` CPPN (same weights, faults on schedule).

    A fault rebuilds the decoder and so restarts its frame count: the smaller of two rates would always fire first.
    So scenes alternate: even ones raise, odd ones return NaNs (a show of one scene gets both, the smaller first).
    The fallback to the safe scene is off, so faults keep coming for the whole run (it has its own test).
    """
    scenes = []
    for i, scene in enumerate(spec.scenes):
        if scene.decoder.type == "cppn":
            both = len(spec.scenes) == 1
            settings = FaultySettings(**scene.decoder.settings.model_dump(),
                                      raise_every=raise_every if both or i % 2 == 0 else 0,
                                      nan_every=nan_every if both or i % 2 == 1 else 0)
            scene = replace(scene, decoder=DecoderSpec("faulty", settings))
        # Scenes change every SCENE_S at most, so a short soak passes through all of them (and their faults).
        duration = min(scene.duration or SCENE_S, SCENE_S)
        scenes.append(replace(scene, body=scene.body.model_copy(update={"duration": duration})))
    state = spec.config.state.model_copy(update={"enabled": False})
    health = spec.config.health.model_copy(update={"enabled": False})
    osc = spec.config.inputs.osc.model_copy(update={"port": 0, "host": "127.0.0.1", "feedback_host": ""})
    inputs = spec.config.inputs.model_copy(update={"osc": osc})
    decoder = spec.config.decoder.model_copy(update={"fallback_faults": 0})
    config = spec.config.model_copy(update={"state": state, "health": health, "inputs": inputs, "decoder": decoder})
    return ShowSpec(config, spec.path, scenes, spec.shaders, spec.params, spec.safe)


class _Injector:
    """Called after every tick: injects process kills, broken shaders and input deaths on their schedules."""

    def __init__(self, kill_every_s: float, shader_every_s: float, input_every_s: float) -> None:
        self.every = {"kill": kill_every_s, "shader": shader_every_s, "input": input_every_s}
        start = time.monotonic()
        self.next = {k: start + v for k, v in self.every.items() if v > 0}
        self.injected = {"decoder_kills": 0, "shader_errors": 0, "input_deaths": 0}
        self.rss = Trend(3600.0, min_samples=3, min_span_s=5.0, min_interval_s=1.0)
        self.warm_until = start
        self.last_sample = 0.0

    def __call__(self, rt: Any) -> None:
        now = time.monotonic()
        if now >= self.warm_until and now - self.last_sample >= 1.0:
            self.last_sample = now
            self.rss.add(rss_mb())
        for kind, at in list(self.next.items()):
            if now < at:
                continue
            self.next[kind] = now + self.every[kind]
            if kind == "kill" and getattr(rt.worker, "pid", None) and rt.worker.alive:
                os.kill(rt.worker.pid, signal.SIGKILL)
                self.injected["decoder_kills"] += 1
            elif kind == "shader":
                ok = rt.set_chain_files([BROKEN_SHADER])
                self.injected["shader_errors"] += 1
                if ok:
                    log.error("soak: a broken shader was accepted")
            elif kind == "input":
                part = next((p for name, p in rt.parts.items() if parts.info(name).is_input), None)
                if part is not None and part._thread is not None:
                    part._stop.set()  # the thread ends without stop(): to the runtime it died
                    self.injected["input_deaths"] += 1


def run_soak(spec: ShowSpec, minutes: float, raise_every: int = 50, nan_every: int = 37, kill_every_s: float = 20.0,
             shader_every_s: float = 30.0, input_every_s: float = 25.0) -> dict[str, Any]:
    """Run the show headless for ``minutes`` with faults injected; returns the figures (see the module doc)."""
    from .render.targets import HeadlessTarget
    from .runtime import Runtime

    crashes: list[str] = []
    old_hook = threading.excepthook

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        crashes.append(f"thread {args.thread.name if args.thread else '?'}: {args.exc_type.__name__}")
        old_hook(args)

    threading.excepthook = thread_hook
    seconds = max(minutes * 60.0, 1.0)
    injector = _Injector(kill_every_s, shader_every_s, input_every_s)
    injector.warm_until = time.monotonic() + min(WARMUP * seconds, 60.0)
    rss_start = rss_mb()
    show = faulty_spec(spec, raise_every, nan_every)
    out = show.config.output
    target = HeadlessTarget(out.size)
    rt = None
    started = time.monotonic()
    try:
        rt = Runtime(show, target, WallClock(), fps=out.fps)
        rt.run(seconds, on_tick=injector)
    except Exception as e:  # noqa: BLE001 - this is what the soak counts
        crashes.append(f"loop: {type(e).__name__}: {e}")
        log.exception("soak: the loop died")
    finally:
        threading.excepthook = old_hook
        target.close()
    elapsed = time.monotonic() - started
    report = rt._snapshot(rt._last_t) if rt is not None else {}
    slope = injector.rss.slope_per_hour()
    return {
        "minutes": round(minutes, 3),
        "presented_fps": round(rt.stats.presented / elapsed, 2) if rt else 0.0,
        "frames": rt.stats.presented if rt else 0,
        "frames_decoded": rt.slot.published if rt else 0,
        "injected": injector.injected,
        "faults_contained": report.get("faults", {}),
        "crashes": len(crashes),
        "crash_details": crashes[:10],
        "rss_mb_start": round(rss_start or 0.0, 1),
        "rss_mb_end": round(rss_mb() or 0.0, 1),
        "rss_mb_per_h_after_warmup": None if slope is None else round(slope, 2),
        "longest_without_new_frame_s": round(rt.stats.max_frame_gap, 3) if rt else None,
        "python": sys.version.split()[0],
    }
