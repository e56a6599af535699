"""``installation bench``: decoder speed alone, inside the running loop, and the presenter's rate.

Figures, not pass/fail: ``decoder_fps`` (guarded decoder in a tight loop at its own resolution), ``runtime_fps``
(frames the decoder delivers inside the full headless loop, uncapped, presenter paced at 60 Hz like a vsync'd
display), ``present_fps`` (presenter frames per second at the output size in that loop) and their ratio.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from .clock import WallClock
from .config import ShowSpec
from .render.targets import HeadlessTarget
from .render.worker import DecoderGuard
from .render.process import default_threads
from .runtime import Runtime, resolve_device, rss_mb
from .show import Show
from .bus import ParamBus

log = logging.getLogger(__name__)

DISPLAY_HZ = 60


def decoder_fps(spec: ShowSpec, seconds: float, device: str) -> float:
    """Frames per second of the guarded decoder alone, on the show's first scene's path."""
    import torch

    torch.set_num_threads(spec.config.decoder.threads or default_threads(device))  # as the runtime's decoder has
    bus = ParamBus(spec.params.values())
    show = Show(spec, bus)
    guard = DecoderGuard(device)
    plan, _ = show.update(0.0, 0.0, bus.tick(0.0))
    guard.render(plan.request(0.0, 0))  # prepare + warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
        guard.render(plan.request(n / DISPLAY_HZ, n))
    elapsed = time.perf_counter() - t0
    guard.close()
    return n / elapsed


def runtime_fps(spec: ShowSpec, seconds: float, device: str) -> dict[str, Any]:
    """Run the real loop headless at the output size for ``seconds``; count decoded and presented frames."""
    target = HeadlessTarget(spec.config.output.size)
    try:
        rt = Runtime(spec, target, WallClock(), fps=DISPLAY_HZ, device=device, max_decoder_fps=0, inputs=False)
        rt.start()
        decoded0 = rt.slot.published
        t0 = time.perf_counter()
        stats = rt.run(seconds)
        elapsed = time.perf_counter() - t0
        decoded = rt.slot.published - decoded0
        renderer = target.ctx.info.get("GL_RENDERER", "?")
    finally:
        target.close()
    return {"runtime_fps": decoded / elapsed, "present_fps": stats.presented / elapsed, "late_ticks": stats.late,
            "gl_renderer": renderer}


def run_bench(spec: ShowSpec, seconds: float = 10.0) -> dict[str, Any]:
    device = resolve_device(spec.config.decoder.device)
    scene = spec.scenes[0]
    rss_start = rss_mb()
    dec = decoder_fps(spec, seconds, device)
    loop = runtime_fps(spec, seconds, device)
    res = getattr(scene.decoder.settings, "resolution", None)
    return {
        "scene": scene.name,
        "decoder": scene.decoder.type,
        "device": device,
        "decoder_size": str(res) if res is not None else None,
        "output_size": str(spec.config.output.size),
        "display_hz": DISPLAY_HZ,
        "seconds": seconds,
        "decoder_fps": round(dec, 2),
        "runtime_fps": round(loop["runtime_fps"], 2),
        "present_fps": round(loop["present_fps"], 2),
        "ratio": round(loop["runtime_fps"] / dec, 3) if dec else None,
        "late_ticks": loop["late_ticks"],
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_end": round(rss_mb(), 1),
        "gl_renderer": loop["gl_renderer"],
        "cpu_count": os.cpu_count(),
    }
