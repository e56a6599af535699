"""``installation bench --vision``: the decoder's fps without and with the CLIP worker, from one run.

One decoder thread (the runtime's :class:`DecoderWorker`, uncapped) renders the show's first scene; the worker is
attached and detached in alternating phases (off, on, off, on, ...) so both figures share the same machine state.
With ``every_n = 1`` every frame is offered to the reader (latest wins on its own thread); with blocked concepts the
frame check runs before each frame is published too (``check`` in the result says whether it did).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..bus import ParamBus
from ..config import ShowSpec
from ..render.hooks import HookRunner
from ..render.process import default_threads
from ..render.slot import FrameSlot
from ..render.worker import DecoderGuard, DecoderWorker
from ..show import Show


def vision_bench(spec: ShowSpec, seconds: float = 10.0, rounds: int = 2, every_n: int = 1) -> dict[str, Any]:
    import torch

    from ..parts import hook_specs
    from ..decoders.base import resolve_device

    settings = spec.config.vision
    if not settings.enabled:
        raise ValueError("bench --vision needs [vision] enabled = true and its weights in the config")
    specs = [(name, opts) for name, opts in hook_specs(spec) if name == "vision"]
    name, opts = specs[0]
    opts = type(opts)(opts.settings.model_copy(update={"every_n": every_n}), opts.negative)
    device = resolve_device(spec.config.decoder.device)
    torch.set_num_threads(spec.config.decoder.threads or default_threads(device))
    runner = HookRunner([(name, opts)], lambda result: None)
    hook = runner.hooks[0]
    if not hook.wait_ready(600.0):
        raise RuntimeError("the CLIP model did not load (see the log)")
    bus = ParamBus(spec.params.values())
    show = Show(spec, bus)
    slot = FrameSlot()
    origin = time.perf_counter()
    worker = DecoderWorker(DecoderGuard(device), slot, lambda: time.perf_counter() - origin, 0.0)
    plan, _ = show.update(0.0, 0.0, bus.tick(0.0))
    worker.submit(plan)
    worker.start()
    frames = {"off": 0, "on": 0}
    spent = {"off": 0.0, "on": 0.0}
    cpu0, load0 = time.process_time(), os.getloadavg()[0]
    try:
        if slot.wait_newer(-1, 120.0) is None:
            raise RuntimeError(f"the decoder does not render: {worker.guard.stats()}")
        phase = seconds / (2 * max(rounds, 1))
        for _ in range(max(rounds, 1)):
            for mode in ("off", "on"):
                worker.on_frame = runner if mode == "on" else None
                worker.gate = runner.admit if mode == "on" and runner.gates else None
                time.sleep(0.2)  # let a frame begun in the other mode finish
                n0, t0 = slot.published + runner.held, time.perf_counter()
                time.sleep(phase)
                frames[mode] += slot.published + runner.held - n0
                spent[mode] += time.perf_counter() - t0
    finally:
        worker.stop()
        runner.close()
    fps = {m: frames[m] / spent[m] if spent[m] else 0.0 for m in frames}
    stats = hook.stats()
    return {"decoder": spec.scenes[0].decoder.type, "device": device, "clip_model": hook.model.name,
            "clip_device": hook.model.device, "every_n": every_n, "check": hook.concepts_for(spec.scenes[0].name) is not None,
            "decoder_fps_without_vision": round(fps["off"], 2), "decoder_fps_with_vision": round(fps["on"], 2),
            "ratio": round(fps["on"] / fps["off"], 3) if fps["off"] else None,
            "embedded": stats["embedded"], "skipped": stats["skipped"], "embed_ms": stats["embed_ms"],
            "embedded_per_s": round(stats["embedded"] / spent["on"], 2) if spent["on"] else 0.0,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_avg_at_start": round(load0, 2), "process_cpu_s": round(time.process_time() - cpu0, 2)}


def steer_bench(spec: ShowSpec, text: str, seconds: float = 30.0, fps: float = 4.0,
                strength: float = 1.0) -> dict[str, Any]:
    """The CLIP similarity of the decoded frames to ``text`` over ``seconds`` of show time (fixed steps of 1/fps),
    with steering off and on, on the show's first scene from the same start: both series from one run.

    ``noise`` is the off series' frame-to-frame noise (the standard deviation of the differences between consecutive
    frames' similarities) and ``gain_sigmas`` the gain in units of it: steering moves the similarity measurably when
    it is 3 or more. ``first_round_s`` is the first round's time (the low-resolution decoder built, the CLIP model
    already loaded, as the show loads it at start) and ``round_ms`` the mean of the rest."""
    import numpy as np
    import torch

    from ..bus import Event
    from ..decoders.base import resolve_device
    from .clip import ClipModel, similarity
    from .steer import Steerer

    settings = spec.config.vision
    if not settings.enabled:
        raise ValueError("bench --steer needs [vision] enabled = true and its weights in the config")
    device = resolve_device(spec.config.decoder.device)
    torch.set_num_threads(spec.config.decoder.threads or default_threads(device))
    clip = ClipModel(settings.resolved(spec.path.resolve().parent))
    target = clip.embed_texts([text])
    scene = spec.scenes[0]
    steer = scene.steer.model_copy(update={"text": text, "strength": strength})
    out: dict[str, Any] = {"text": text, "seconds": seconds, "fps": fps, "decoder": scene.decoder.type,
                           "candidates": steer.candidates, "period": steer.period, "horizon": list(steer.horizon)}
    n = max(int(round(seconds * fps)), 1)
    for mode in ("off", "on"):
        bus = ParamBus(spec.params.values())
        show = Show(spec, bus)
        guard = DecoderGuard(device)
        steerer = Steerer(clip, device)
        series, next_round, times = [], 0.0, []
        try:
            for i in range(n):
                t = i / fps
                plan, _ = show.update(t, 0.0 if i == 0 else 1.0 / fps, bus.tick(0.0 if i == 0 else 1.0 / fps))
                if mode == "on" and show.tau >= next_round:
                    next_round = show.tau + steer.period
                    started = time.perf_counter()
                    verdict = steerer.evaluate(show.scene, show.seed, show.tau, plan.params, text, strength, steer,
                                               show.prompts)
                    times.append(time.perf_counter() - started)
                    if verdict.jump is not None:
                        bus.post(Event("seed", verdict.jump, "steer"))
                rgb = guard.render(plan.request(t, i))
                if rgb is not None:
                    series.append([round(t, 3), round(float(similarity(clip.embed_frames([rgb]), target)[0, 0]), 5)])
        finally:
            guard.close()
            steerer.close()
        sims = np.array([s for _, s in series]) if series else np.zeros(1)
        out[mode] = {"mean": round(float(sims.mean()), 5), "last_half_mean": round(float(sims[len(sims) // 2:].mean()), 5),
                     "rounds": steerer.rounds, "jumps": steerer.jumps, "series": series}
        if times:
            out.update(first_round_s=round(times[0], 3),
                       round_ms=round(1000.0 * float(np.mean(times[1:] or times)), 1))
        if mode == "off":
            out["noise"] = round(float(np.std(np.diff(sims))), 5) if len(sims) > 2 else None
    out["gain"] = round(out["on"]["mean"] - out["off"]["mean"], 5)
    out["gain_sigmas"] = round(out["gain"] / out["noise"], 2) if out["noise"] else None
    out["load_avg"] = round(os.getloadavg()[0], 2)
    return out
