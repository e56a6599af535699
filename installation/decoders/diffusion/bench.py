"""Benchmark for the diffusion decoder: full-frame fps, per-stage milliseconds and GPU memory drift.

The fps figure is the real path (graph replay + readback to a host array, as the core consumes it). Per-stage
figures come from a few extra eager frames with a device synchronisation at each stage edge, since a captured
graph cannot be split into stages.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from .. import DecoderSpec, LatentRequest, create, decoder_class

log = logging.getLogger(__name__)


def _mem(device: torch.device) -> tuple[float, float]:
    if device.type != "cuda":
        return 0.0, 0.0
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device) / 2**20, torch.cuda.memory_reserved(device) / 2**20


def bench(model_dir: str, size: int = 512, steps: int = 1, frames: int = 100, device: str = "cuda",
          taesd: str | None = None, dtype: str = "auto", cuda_graph: bool = True, compile: bool = False,
          profile_frames: int = 5) -> dict:
    """Prepare the decoder on ``model_dir`` at size x size, render ``frames`` frames, return figures as a dict.

    Keys: model, device, dtype, size, steps, frames, cuda_graph, prepare_s, fps, frame_ms {mean, p50, p95, max},
    stages_ms {encode, upload, unet, decode, convert, download} (eager, synchronised), memory_mib
    {allocated_start, reserved_start, allocated_end, reserved_end}, graph_captures.
    """
    cls = decoder_class("diffusion")
    settings = cls.Settings(model=str(model_dir), width=size, height=size, steps=steps, taesd=taesd or "",
                            dtype=dtype, cuda_graph=cuda_graph, compile=compile, local_files_only=True,
                            prompts=(("a lighthouse at dusk, oil painting", 1.0),), similar_max_skip=0)
    dec = create(DecoderSpec("diffusion", settings), device=device)
    t0 = time.perf_counter()
    dec.prepare()
    prepare_s = time.perf_counter() - t0
    dev = dec.device
    alloc0, res0 = _mem(dev)
    rng = np.random.default_rng(0)
    shape = cls.latent_shape(settings)
    zs = [rng.standard_normal(shape).astype(np.float32) for _ in range(8)]
    spec = DecoderSpec("diffusion", settings)
    for n in range(3):  # untimed: allocator growth and first-call effects are start-up, not a frame's cost
        dec.render(LatentRequest(z=zs[n], t=0.0, seq=n, decoder=spec))
    times = []
    for n in range(frames):
        req = LatentRequest(z=zs[n % len(zs)], t=n / 30.0, seq=n, decoder=spec)
        t = time.perf_counter()
        dec.render(req)
        times.append((time.perf_counter() - t) * 1000.0)
    alloc1, res1 = _mem(dev)
    total_s = sum(times) / 1000.0

    # Stage split: eager frames with a sync at each stage edge (graphs off for these frames only).
    saved = dec.programs.use_graphs, dec.use_graphs
    dec.programs.use_graphs = dec.use_graphs = False
    dec.timer.sync = True
    stages: dict[str, list[float]] = {}
    for n in range(profile_frames):
        dec.render(LatentRequest(z=zs[(n + 1) % len(zs)], t=0.0, seq=n, decoder=spec))
        for k, v in dec.timer.ms.items():
            stages.setdefault(k, []).append(v)
    dec.timer.sync = False
    dec.programs.use_graphs, dec.use_graphs = saved
    arr = np.array(times) if times else np.zeros(1)
    out = {
        "model": str(model_dir), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dtype": str(dec.dtype).replace("torch.", ""), "size": size, "steps": steps, "frames": frames,
        "taesd": bool(taesd), "cuda_graph": bool(dec.use_graphs), "compile": compile,
        "prepare_s": round(prepare_s, 3),
        "fps": round(frames / total_s, 2) if total_s > 0 else 0.0,
        "frame_ms": {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)),
                     "p95": float(np.percentile(arr, 95)), "max": float(arr.max())},
        "stages_ms": {k: float(np.median(v)) for k, v in stages.items()},
        "memory_mib": {"allocated_start": alloc0, "reserved_start": res0, "allocated_end": alloc1,
                       "reserved_end": res1},
        "graph_captures": int(dec.programs.captures),
    }
    dec.close()
    return out


COMPARISONS = {
    # guidance 1.5 with a negative prompt: full CFG (2 UNet rows a step) against StreamDiffusion's residual CFG
    "cfg": {"full": {"guidance": 1.5, "cfg": "full"}, "self": {"guidance": 1.5, "cfg": "self"},
            "onetime": {"guidance": 1.5, "cfg": "onetime"}, "none": {"guidance": 0.0}},
    # the steps one after another against one batched UNet call a frame
    "stream": {"sequential": {}, "stream_batch": {"stream_batch": True}},
}


def _noise_image() -> str:
    """A 256x256 noise PNG in a temporary folder (removed at exit): the bench's image prompt."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from PIL import Image

    folder = Path(tempfile.mkdtemp(prefix="bench-ip-"))
    atexit.register(shutil.rmtree, folder, True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(folder / "a.png")
    return str(folder / "a.png")


def compare(model_dir: str, what: str, size: int = 512, steps: int = 2, frames: int = 30, rounds: int = 2,
            device: str = "cuda", taesd: str | None = None, dtype: str = "auto", cuda_graph: bool = True,
            control: str | None = None, ip_adapter: tuple[str, str] | None = None) -> dict:
    """Decoder fps of the variants in ``COMPARISONS[what]`` from one run: all prepared first, then ``rounds`` rounds
    of ``frames`` frames each, the variants in turn within a round, so a drifting load hits them all alike.

    Keys: model, device, device_name, dtype, size, steps, compare, frames, rounds, fps {variant: fps over all its
    frames}, frame_ms_p50 {variant: ms}, ratio {variant: its fps / the first variant's}.
    """
    variants = dict(COMPARISONS)
    if control:  # the control's cost: without, and with it (from the camera: its image stays the first one)
        variants["controls"] = {"none": {}, "control": {"controls": ({"model": str(control)},)}}
    if ip_adapter:  # the image prompt's cost: without, and with one (a noise image)
        variants["ip"] = {"none": {}, "ip": {"ip_adapter": {"path": ip_adapter[0], "image_encoder": ip_adapter[1],
                                                            "images": ({"source": _noise_image()},)}}}
    if what not in variants:
        raise ValueError(f"compare must be one of {', '.join(COMPARISONS)}, controls (with a control folder), ip "
                         f"(with an IP-Adapter file and image encoder), not {what!r}")
    cls = decoder_class("diffusion")
    decs = {}
    try:
        for name, extra in variants[what].items():
            settings = cls.Settings(model=str(model_dir), width=size, height=size, steps=steps, taesd=taesd or "",
                                    dtype=dtype, cuda_graph=cuda_graph, local_files_only=True, similar_max_skip=0,
                                    prompts=(("a lighthouse at dusk, oil painting", 1.0),),
                                    negative_prompt="blurry, low quality", **extra)
            decs[name] = create(DecoderSpec("diffusion", settings), device=device)
            decs[name].prepare()
        first = next(iter(decs.values()))
        rng = np.random.default_rng(0)
        zs = [rng.standard_normal(first.lat_shape).astype(np.float32) for _ in range(8)]
        times: dict[str, list[float]] = {name: [] for name in decs}
        for name, dec in decs.items():  # untimed: first-call effects
            for n in range(3):
                dec.render(LatentRequest(z=zs[n], t=0.0, seq=n, decoder=DecoderSpec("diffusion", dec.settings)))
        for r in range(rounds):
            for name, dec in decs.items():
                spec = DecoderSpec("diffusion", dec.settings)
                for n in range(frames):
                    req = LatentRequest(z=zs[(n + r) % len(zs)], t=n / 30.0, seq=n, decoder=spec)
                    t = time.perf_counter()
                    dec.render(req)
                    times[name].append((time.perf_counter() - t) * 1000.0)
        fps = {name: round(1000.0 * len(v) / sum(v), 2) for name, v in times.items()}
        base = next(iter(fps.values()))
        return {
            "model": str(model_dir), "device": str(first.device),
            "device_name": torch.cuda.get_device_name(first.device) if first.device.type == "cuda" else "cpu",
            "dtype": str(first.dtype).replace("torch.", ""), "size": size, "steps": steps, "compare": what,
            "frames": frames, "rounds": rounds, "fps": fps,
            "frame_ms_p50": {name: round(float(np.percentile(v, 50)), 2) for name, v in times.items()},
            "ratio": {name: round(v / base, 3) if base else None for name, v in fps.items()},
        }
    finally:
        for dec in decs.values():
            dec.close()
