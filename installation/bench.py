"""``installation bench``: decoder speed alone, inside the running loop, and the presenter's rate.

Figures, not pass/fail: ``decoder_fps`` (guarded decoder in a tight loop at its own resolution), ``runtime_fps``
(frames the decoder delivers inside the full headless loop, uncapped, presenter paced at 60 Hz like a vsync'd
display), ``present_fps`` (presenter frames per second at the output size in that loop) and their ratio.
``--camera SOURCE`` compares that loop with the camera off and on instead (:func:`camera_bench`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from .clock import WallClock
from .config import ShowSpec
from .render.projection import window_size
from .render.targets import HeadlessTarget
from .render.worker import DecoderGuard
from .render.process import default_threads
from .ops.health import rss_mb
from .decoders.base import resolve_device
from .runtime import Runtime
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
    if guard.render(plan.request(0.0, 0)) is None:  # prepare + warm up
        raise RuntimeError(f"the decoder does not render: {guard.stats()}")
    n, good, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += 1
        good += guard.render(plan.request(n / DISPLAY_HZ, n)) is not None  # only real frames count
    elapsed = time.perf_counter() - t0
    guard.close()
    return good / elapsed


def _p99_ms(values: list[float]) -> float | None:
    """The 99th percentile (nearest rank) of ``values`` in seconds, as milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000.0, 2)


def runtime_fps(spec: ShowSpec, seconds: float, device: str, inputs: bool = False,
                load: Any = None) -> dict[str, Any]:
    """Run the real loop headless at the output size for ``seconds``; count decoded and presented frames, and time
    every tick: ``present_ms_p99`` is what one tick costs (clock to swap), ``interval_ms_p99`` the time from one
    tick's start to the next (the pacing a viewer sees). With ``inputs`` the config's enabled inputs run too; the
    loop starts once the camera (if any) has delivered its first frame. ``load(runtime)``, called once the runtime
    has started, may start clients of its parts and returns a callable that stops them (the rig bench)."""
    target = HeadlessTarget(window_size(spec.config)[0])  # [[outputs]]: the window spanning them
    try:
        rt = Runtime(spec, target, WallClock(), fps=DISPLAY_HZ, device=device, max_decoder_fps=0, inputs=inputs)
        counts: dict[str, Any] = {"decoded": 0}
        starts: list[float] = []
        costs: list[float] = []
        step = rt.step

        def timed_step() -> None:
            t0 = time.perf_counter()
            step()
            starts.append(t0)
            costs.append(time.perf_counter() - t0)

        rt.step = timed_step  # type: ignore[method-assign]

        def on_tick(r: Runtime) -> None:
            counts["decoded"] = r.slot.published
            vram = r.decoder_stats().get("vram_mb")  # the decoder process's GPU memory, from its stats
            if vram is not None:
                counts.setdefault("vram_first", vram)
                counts["vram_last"] = vram

        rt.start()
        camera = rt.camera
        if camera is not None:
            deadline = time.monotonic() + 60.0
            while camera.stats().get("frames", 0) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            frames0 = camera.stats().get("frames", 0)
        stop_load = load(rt) if load is not None else None
        decoded0 = rt.slot.published
        cpu0 = time.process_time()
        try:
            stats = rt.run(seconds, on_tick=on_tick)
        finally:
            if stop_load is not None:
                stop_load()
        cpu = time.process_time() - cpu0  # this process only: presenter, its threads, the inputs' readers
        elapsed = stats.loop_s  # the loop alone: shutdown (joining the decoder process) is not part of it
        decoded = counts["decoded"] - decoded0
        renderer = target.ctx.info.get("GL_RENDERER", "?")
    finally:
        target.close()
    intervals = [b - a for a, b in zip(starts, starts[1:])]
    out = {"runtime_fps": decoded / elapsed, "present_fps": stats.presented / elapsed, "late_ticks": stats.late,
           "ticks": stats.ticks, "tick_costs_s": costs, "tick_intervals_s": intervals,
           "present_ms_p99": _p99_ms(costs), "interval_ms_p99": _p99_ms(intervals),
           "process_cpu_ms_per_tick": round(cpu / max(stats.ticks, 1) * 1000.0, 3),
           "gl_renderer": renderer, "loop_vram_mb": [counts.get("vram_first"), counts.get("vram_last")]}
    if camera is not None:
        cam = camera.stats()
        out["camera_fps"] = round((cam.get("frames", 0) - frames0) / elapsed, 2)
        out["camera_error"] = cam.get("error", "")
    return out


def with_camera(spec: ShowSpec, source: int | str | None) -> ShowSpec:
    """The show with OSC and the microphone off, and the camera on ``source`` (None: off)."""
    from dataclasses import replace as dc_replace

    cfg = spec.config
    camera = {"enabled": source is not None, **({"source": source} if source is not None else {})}
    inputs = cfg.inputs.model_copy(update={"osc": cfg.inputs.osc.model_copy(update={"enabled": False}),
                                           "audio": cfg.inputs.audio.model_copy(update={"enabled": False}),
                                           "camera": cfg.inputs.camera.model_copy(update=camera)})
    return dc_replace(spec, config=cfg.model_copy(update={"inputs": inputs}))


def camera_bench(spec: ShowSpec, source: int | str, seconds: float = 10.0, rounds: int = 1) -> dict[str, Any]:
    """The full headless loop with the camera off, then on (``rounds`` times, alternating), in this one process:
    late ticks and the tick p99s for each, and how much worse the camera makes them. ``process_cpu_ms_per_tick``
    is the CPU this (the presenter's) process spends per tick, its threads included: what the camera adds here is
    what can compete with presenting for the GIL; the p99s also feel the cores the camera's own process takes."""
    device = resolve_device(spec.config.decoder.device)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for _ in range(max(1, rounds)):
        runs["off"].append(runtime_fps(with_camera(spec, None), seconds, device, inputs=True))
        runs["on"].append(runtime_fps(with_camera(spec, source), seconds, device, inputs=True))

    out: dict[str, Any] = {"scene": spec.scenes[0].name, "camera_source": str(source), "device": device,
                           "output_size": str(spec.config.output.size), "display_hz": DISPLAY_HZ,
                           "seconds": seconds, "rounds": max(1, rounds)}
    for mode, rs in runs.items():
        out[f"{mode}_ticks"] = sum(r["ticks"] for r in rs)
        out[f"{mode}_late_ticks"] = sum(r["late_ticks"] for r in rs)
        out[f"{mode}_present_ms_p99"] = _p99_ms([c for r in rs for c in r["tick_costs_s"]])
        out[f"{mode}_interval_ms_p99"] = _p99_ms([c for r in rs for c in r["tick_intervals_s"]])
        out[f"{mode}_present_ms_p99_by_round"] = [r["present_ms_p99"] for r in rs]
        out[f"{mode}_late_ticks_by_round"] = [r["late_ticks"] for r in rs]
        out[f"{mode}_process_cpu_ms_per_tick"] = round(sum(r["process_cpu_ms_per_tick"] for r in rs) / len(rs), 3)
        out[f"{mode}_present_fps"] = round(sum(r["present_fps"] for r in rs) / len(rs), 2)
        out[f"{mode}_runtime_fps"] = round(sum(r["runtime_fps"] for r in rs) / len(rs), 2)
    out["camera_fps"] = round(sum(r["camera_fps"] for r in runs["on"]) / len(runs["on"]), 2)
    errors = {r["camera_error"] for r in runs["on"]} - {""}
    if errors:
        out["camera_error"] = "; ".join(sorted(errors))
    for key in ("present_ms_p99", "interval_ms_p99"):
        off, on = out[f"off_{key}"], out[f"on_{key}"]
        out[f"{key}_on_vs_off"] = round(on / off, 3) if off else None
    return out


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


def diffusion_show(spec: ShowSpec, model: str, taesd: str | None, size: int, steps: int) -> ShowSpec:
    """The loaded show with one scene replaced: the diffusion model on a slow walk, presenter chain only."""
    from dataclasses import replace as dc_replace

    from .config import Scene, _SceneBody
    from .decoders import DecoderSpec, decoder_class
    from .latent.trajectories import WalkSettings

    cls = decoder_class("diffusion")
    device = resolve_device(spec.config.decoder.device)
    settings = cls.Settings(model=str(model), taesd=taesd or "", width=size, height=size, steps=steps,
                            local_files_only=True, cuda_graph=device == "cuda",
                            prompts=(("a lighthouse at dusk, oil painting", 1.0),))
    cls.check(settings)
    scene = Scene("bench-diffusion", spec.path, DecoderSpec("diffusion", settings),
                  _SceneBody(trajectory=WalkSettings(), shaders=["present"], duration=0))
    return dc_replace(spec, scenes=[scene])


def upload_ms(size: tuple[int, int], frames: int = 50) -> float:
    """Milliseconds to upload one decoder frame of ``size`` into a GL texture (the presenter's share of a frame)."""
    import numpy as np

    target = HeadlessTarget((64, 64))
    try:
        tex = target.ctx.texture(size, 3, alignment=1)
        rgb = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        tex.write(rgb.data)
        target.swap()
        t0 = time.perf_counter()
        for _ in range(frames):
            tex.write(rgb.data)
        target.swap()
        return (time.perf_counter() - t0) / frames * 1000.0
    finally:
        target.close()


def run_diffusion_bench(spec: ShowSpec, model: str, taesd: str | None, size: int, steps: int, frames: int,
                        seconds: float) -> dict[str, Any]:
    """Decoder figures from the diffusion decoder's own bench, then the same model inside the full loop."""
    from .decoders.diffusion.bench import bench

    import torch

    spec = diffusion_show(spec, model, taesd, size, steps)
    device = resolve_device(spec.config.decoder.device)
    torch.set_num_threads(spec.config.decoder.threads or default_threads(device))  # as the runtime's decoder has
    rss_start = rss_mb()
    dec = bench(model, size=size, steps=steps, frames=frames, device=device, taesd=taesd,
                cuda_graph=device == "cuda")
    dec["stages_ms"]["upload"] = round(upload_ms((size, size)), 3)
    loop = runtime_fps(spec, seconds, device)
    return {
        "decoder": "diffusion", "model": str(model), "taesd": taesd, "device": dec["device"],
        "device_name": dec["device_name"], "dtype": dec["dtype"], "decoder_size": f"{size}x{size}", "steps": steps,
        "output_size": str(spec.config.output.size), "display_hz": DISPLAY_HZ, "seconds": seconds,
        "decoder_fps": dec["fps"], "frame_ms": dec["frame_ms"], "stages_ms": dec["stages_ms"],
        "runtime_fps": round(loop["runtime_fps"], 2), "present_fps": round(loop["present_fps"], 2),
        "ratio": round(loop["runtime_fps"] / dec["fps"], 3) if dec["fps"] else None,
        "memory_mib": dec["memory_mib"], "graph_captures": dec["graph_captures"], "prepare_s": dec["prepare_s"],
        "loop_vram_mb_first_last": loop["loop_vram_mb"],
        "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(rss_mb(), 1), "gl_renderer": loop["gl_renderer"],
    }


def run_diffusion_compare(spec: ShowSpec, model: str, taesd: str | None, size: int, steps: int, frames: int,
                          what: str, rounds: int, control: str | None = None,
                          depth: str | None = None, ip_adapter: tuple[str, str] | None = None) -> dict[str, Any]:
    """The diffusion decoder's fps for full CFG vs residual CFG (``cfg``), or without and with stream batch
    (``stream``), or without and with a control folder (``controls``: still, canny from a moving camera with the
    edges made here or by the camera's process, depth with a ``depth`` model), or without and with an image prompt
    (``ip``: an IP-Adapter file and its image encoder; an image file, the moving camera), from one run (decoder
    alone, rounds alternating)."""
    from .decoders.diffusion.bench import compare

    import torch

    device = resolve_device(spec.config.decoder.device)
    torch.set_num_threads(spec.config.decoder.threads or default_threads(device))
    return compare(model, what, size=size, steps=steps, frames=frames, rounds=rounds, device=device, taesd=taesd,
                   cuda_graph=device == "cuda", control=control, depth=depth, ip_adapter=ip_adapter)


def osc_latency(spec: ShowSpec, trials: int = 10, size: tuple[int, int] = (640, 360)) -> dict[str, Any]:
    """Milliseconds from an OSC message leaving a client to the first presented frame that shows its effect.

    Two paths: a presenter parameter (``grade.saturation``, one display frame at most) and a decoder parameter
    (``temperature`` with the path stopped, so the only change on screen is the message's: one decoder frame plus
    one display frame at most). The loop runs live, headless, paced at 60 Hz; each presented frame is read back.
    """
    import socket
    import statistics

    import numpy as np
    from pythonosc.osc_message_builder import OscMessageBuilder

    from .render.targets import pixels

    cfg = spec.config
    osc = cfg.inputs.osc.model_copy(update={"enabled": True, "port": 0, "host": "127.0.0.1"})
    config = cfg.model_copy(update={"inputs": cfg.inputs.model_copy(update={"osc": osc}),
                                    "params": {**cfg.params, "speed": 0.0}})
    scene = spec.scenes[0]
    scene = type(scene)(scene.name, scene.path, scene.decoder, scene.body.model_copy(
        update={"params": {k: v for k, v in scene.params.items() if k != "speed"}, "duration": 0.0}))
    from dataclasses import replace as dc_replace

    spec = dc_replace(spec, config=config, scenes=[scene])
    device = resolve_device(cfg.decoder.device)
    target = HeadlessTarget(size)
    rt = Runtime(spec, target, WallClock(), fps=DISPLAY_HZ, device=device)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    results: dict[str, list[float]] = {"presenter_ms": [], "decoder_ms": []}
    try:
        rt.start()
        addr = rt.osc.address
        period = 1.0 / DISPLAY_HZ
        state = {"n": 0, "origin": time.perf_counter()}

        def tick() -> np.ndarray:
            deadline = state["origin"] + state["n"] * period
            wait = deadline - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            state["n"] += 1
            rt.step()
            return pixels(target.read(), target.size)

        def settle(frames: int = 90) -> np.ndarray:
            for _ in range(frames):
                img = tick()
            return img

        def measure(address: str, value: float, key: str) -> None:
            before = settle()
            msg = OscMessageBuilder(address)
            msg.add_arg(float(value))
            sent = time.perf_counter()
            client.sendto(msg.build().dgram, addr)
            for _ in range(DISPLAY_HZ * 5):
                img = tick()
                if np.abs(img.astype(np.int16) - before.astype(np.int16)).max() > 1:
                    results[key].append((time.perf_counter() - sent) * 1000.0)
                    return

        for i in range(trials):
            measure("/param/grade.saturation", 0.2 if i % 2 == 0 else 1.0, "presenter_ms")
            measure("/param/temperature", 1.6 if i % 2 == 0 else 1.0, "decoder_ms")
        decoder_frame_ms = 1000.0 / max(rt.decoder_stats().get("frames", 1) / max(time.perf_counter()
                                                                                   - state["origin"], 1e-9), 1e-9)
    finally:
        client.close()
        rt.close()
        target.close()
    out: dict[str, Any] = {"trials": trials, "output_size": f"{size[0]}x{size[1]}", "display_hz": DISPLAY_HZ,
                           "decoder_frame_ms": round(decoder_frame_ms, 1),
                           "target_ms": round(decoder_frame_ms + 1000.0 / DISPLAY_HZ, 1)}
    for key, values in results.items():
        if values:
            out[key] = {"p50": round(statistics.median(values), 1), "max": round(max(values), 1), "n": len(values)}
    return out


def outputs_bench(spec: ShowSpec, seconds: float = 10.0, rounds: int = 1) -> dict[str, Any]:
    """Present p99 of the full headless loop with one plain output, then with two warped, blended outputs filling
    the same window from the same canvas (a keystone on one, a bicubic mesh on the other, a soft-edged overlap),
    ``rounds`` times alternating in this one process: the cost of the projector passes."""
    import statistics
    from dataclasses import replace as dc_replace

    from .render.projection import OutputSpec

    cfg = spec.config
    w, h = cfg.output.size
    half, overlap = w // 2, w // 16
    width = round(2 * overlap / (half + overlap), 4)
    bend = [[x, y + (0.03 if 0 < x < 1 else 0.0)] for y in (0, 0.25, 0.5, 0.75, 1) for x in (0, 0.25, 0.5, 0.75, 1)]
    outputs = [OutputSpec.model_validate(o) for o in (
        {"name": "left", "region": [0, 0, half + overlap, h], "size": [half, h], "blend": {"right": width},
         "corners": [[0.03, 0.0], [1.0, 0.02], [0.98, 1.0], [0.0, 0.97]]},
        {"name": "right", "region": [half - overlap, 0, half + overlap, h], "size": [w - half, h],
         "blend": {"left": width, "black": 0.02}, "mesh": {"cols": 5, "rows": 5, "points": bend}})]
    plain = dc_replace(spec, config=cfg.model_copy(update={"outputs": [], "canvas": cfg.canvas.model_copy(
        update={"size": ""})}))
    two = dc_replace(spec, config=cfg.model_copy(update={"outputs": outputs, "canvas": cfg.canvas.model_copy(
        update={"size": cfg.output.size})}))
    device = resolve_device(cfg.decoder.device)
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "two_outputs": []}
    for _ in range(max(1, rounds)):
        runs["plain"].append(runtime_fps(plain, seconds, device))
        runs["two_outputs"].append(runtime_fps(two, seconds, device))
    out: dict[str, Any] = {"scene": spec.scenes[0].name, "window": str(cfg.output.size), "canvas": str(cfg.output.size),
                           "display_hz": DISPLAY_HZ, "seconds": seconds, "rounds": max(1, rounds)}
    for mode, rs in runs.items():
        out[f"{mode}_ticks"] = sum(r["ticks"] for r in rs)
        costs = [c for r in rs for c in r["tick_costs_s"]]
        out[f"{mode}_present_ms_p50"] = round(statistics.median(costs) * 1000.0, 2) if costs else None
        out[f"{mode}_present_ms_p99"] = _p99_ms(costs)
        out[f"{mode}_present_ms_p99_by_round"] = [r["present_ms_p99"] for r in rs]
        out[f"{mode}_present_fps"] = round(sum(r["present_fps"] for r in rs) / len(rs), 2)
        out[f"{mode}_late_ticks"] = sum(r["late_ticks"] for r in rs)
    a, b = out["plain_present_ms_p99"], out["two_outputs_present_ms_p99"]
    out["present_ms_p99_two_vs_plain"] = round(b / a, 3) if a else None
    out.update(output_pass_ms(two.config))
    out["gl_renderer"] = runs["plain"][0]["gl_renderer"]
    return out


def output_pass_ms(config: Any, frames: int = 30) -> dict[str, Any]:
    """Median milliseconds of the output passes alone (GL finished), plain blit vs the config's outputs, on one
    canvas texture at a quarter of the window's size (the presenter's usual work size), alternating."""
    import statistics
    from pathlib import Path

    from .render.outputs import Output
    from .render.projection import Projection, canvas_size, place, window_size

    size, _ = window_size(config)
    target = HeadlessTarget(size)
    try:
        ctx = target.ctx
        canvas = ctx.texture((max(size[0] // 4, 8), max(size[1] // 4, 8)), 4)
        plain = Output(ctx, target.framebuffer, size, fit="stretch")
        proj = Projection(ctx, target.framebuffer, size, canvas_size(config), place(config), Path("."))  # no masks here
        times: dict[str, list[float]] = {"plain": [], "two_outputs": []}
        for _ in range(frames):
            for key, out in (("plain", plain), ("two_outputs", proj)):
                ctx.finish()
                t0 = time.perf_counter()
                out.show(canvas, 1.0)
                ctx.finish()
                times[key].append(time.perf_counter() - t0)
        plain.release()
        proj.release()
        canvas.release()
    finally:
        target.close()
    return {f"{k}_output_pass_ms_median": round(statistics.median(v) * 1000.0, 2) for k, v in times.items()}


# -- bench --first-light ------------------------------------------------------------------------------------
def first_light_measure(spec: Any, preview: bool, device: str, size: tuple[int, int] | None = None,
            after_live_s: float = 1.0) -> dict[str, Any]:
    """Seconds from opening the output (a headless framebuffer here, the window's stand-in) to the first non-black
    presented frame and to the first live decoder frame on screen, with or without the preview; the real runtime
    with its decoder process, inputs off. Every presented frame is read back to judge it."""
    from .render.first_light import PREVIEW_CUT
    from .render.slot import Frame
    from .render.targets import pixels

    size = size or tuple(spec.config.output.size)
    t0 = time.perf_counter()
    target = HeadlessTarget(size)
    marks: dict[str, float] = {}
    rt = None
    try:
        rt = Runtime(spec, target, WallClock(), device=device, inputs=False, first_light=preview)
        swap, take = target.swap, rt.presenter.take

        def timed_swap() -> None:
            swap()
            if "non_black" not in marks and pixels(target.read(), target.size).max() > 8:
                marks["non_black"] = time.perf_counter() - t0

        def timed_take(frame: Frame | None, now: float, transition: float = 0.0) -> bool:
            taken = take(frame, now, transition)
            if taken and frame is not None and frame.cut != PREVIEW_CUT and "live" not in marks:
                marks["live"] = time.perf_counter() - t0
            return taken

        target.swap = timed_swap  # type: ignore[method-assign]
        rt.presenter.take = timed_take  # type: ignore[method-assign]
        rt.start()
        rt.run(after_live_s)
    finally:
        if rt is not None:
            rt.close()
        target.close()
    return {"preview": preview, "first_non_black_s": round(marks.get("non_black", float("nan")), 3),
            "first_live_s": round(marks.get("live", float("nan")), 3)}


def first_light_bench(spec: Any) -> dict[str, Any]:
    """``installation bench --first-light``: :func:`first_light_measure` without the preview (as before it
    existed), then with it, on the show's first scene at the config's output size."""
    device = resolve_device(spec.config.decoder.device)
    out: dict[str, Any] = {"scene": spec.scenes[0].name, "output_size": str(spec.config.output.size)}
    for preview in (False, True):
        m = first_light_measure(spec, preview, device)
        key = "preview" if preview else "no_preview"
        out[f"{key}_first_non_black_s"] = m["first_non_black_s"]
        out[f"{key}_first_live_s"] = m["first_live_s"]
    return out
