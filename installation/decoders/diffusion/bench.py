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


CAMERA_SIZE = (1024, 576)  # the moving camera frames of the controls comparison (the camera's frame_width)


def camera_frames(n: int = 8, size: tuple[int, int] = CAMERA_SIZE) -> list[np.ndarray]:
    """``n`` RGB frames of a moving picture (a gradient and a bright disc that travels), each unlike the last."""
    import cv2

    w, h = size
    out = []
    for k in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = np.linspace(0, 160, w, dtype=np.uint8)[None, :, None]
        cv2.circle(img, (w // 4 + k * w // (2 * n), h // 2), h // 4, (250, 220, 90), -1)
        cv2.rectangle(img, (w - w // 4 - k * 8, h // 8), (w - w // 8, h // 3), (30, 90, 200), -1)
        out.append(img)
    return out


def _control_variants(control: str, depth: str | None, size: int) -> tuple[dict[str, dict], dict[str, Any]]:
    """The controls comparison: its variants' settings, and the per-frame extras of each that takes the camera
    (frames moving every frame; ``canny_camera`` gets the edge maps as the camera's process sends them)."""
    from ...inputs.camera_edges import canny_edges

    frames = camera_frames()
    spec = (size, size, 100, 200)
    t = time.perf_counter()
    edges = [canny_edges(f, spec) for f in frames]
    canny_ms = (time.perf_counter() - t) * 1000.0 / len(frames)
    canny = {"controls": ({"model": control, "kind": "canny"},)}
    variants = {"none": {}, "control": {"controls": ({"model": control},)},  # a still image: set once
                "canny_decoder": canny, "canny_camera": canny}
    extras = {"canny_decoder": [{"source": f} for f in frames],
              "canny_camera": [{"source": f, "edges": {spec: e}} for f, e in zip(frames, edges)]}
    if depth:
        variants["depth"] = {"controls": ({"model": control, "kind": "depth", "depth_model": depth},)}
        extras["depth"] = [{"source": f} for f in frames]
    return variants, {"extras": extras, "canny_ms": round(canny_ms, 3)}


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
            control: str | None = None, depth: str | None = None,
            ip_adapter: tuple[str, str] | None = None) -> dict:
    """Decoder fps of the variants in ``COMPARISONS[what]`` from one run: all prepared first, then ``rounds`` rounds
    of ``frames`` frames each, the variants in turn within a round, so a drifting load hits them all alike.

    Keys: model, device, device_name, dtype, size, steps, compare, frames, rounds, fps {variant: fps over all its
    frames}, frame_ms_p50 {variant: ms}, ratio {variant: its fps / the first variant's}; for ``controls`` also
    canny_ms (one edge map of a camera frame, made here: what the camera's process now does instead),
    control_image_ms {canny_decoder, canny_camera: the decoder's median ms to turn a camera frame into its control
    image, making the edges itself or taking the camera's} and camera_size.
    """
    variants = dict(COMPARISONS)
    extras: dict[str, list] = {}
    more: dict[str, Any] = {}
    if control:  # the control's cost: without, with a still image, with canny or depth from a moving camera
        variants["controls"], more = _control_variants(str(control), depth, size)
        extras = more.pop("extras")
        more["camera_size"] = list(CAMERA_SIZE)
    if ip_adapter:  # the image prompt's cost: without, with an image file, with the moving camera (at camera_hz)
        ip = {"path": ip_adapter[0], "image_encoder": ip_adapter[1]}
        variants["ip"] = {"none": {}, "image": {"ip_adapter": {**ip, "images": ({"source": _noise_image()},)}},
                          "camera": {"ip_adapter": {**ip, "images": ({"source": "camera"},)}}}
        extras["camera"] = [{"source": f} for f in camera_frames()]
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
                    ext = extras.get(name)
                    req = LatentRequest(z=zs[(n + r) % len(zs)], t=n / 30.0, seq=n, decoder=spec,
                                        extras=ext[(n + r) % len(ext)] if ext else {})
                    t = time.perf_counter()
                    dec.render(req)
                    times[name].append((time.perf_counter() - t) * 1000.0)
        fps = {name: round(1000.0 * len(v) / sum(v), 2) for name, v in times.items()}
        for name in ("canny_decoder", "canny_camera"):  # the decoder's own cost of a camera frame's control image
            if name in decs and extras.get(name):
                spent = []
                for ext in extras[name]:
                    t = time.perf_counter()
                    decs[name]._control_image(0, ext["source"], ext.get("edges"))
                    spent.append((time.perf_counter() - t) * 1000.0)
                more.setdefault("control_image_ms", {})[name] = round(float(np.median(spent)), 3)
        base = next(iter(fps.values()))
        return {
            "model": str(model_dir), "device": str(first.device),
            "device_name": torch.cuda.get_device_name(first.device) if first.device.type == "cuda" else "cpu",
            "dtype": str(first.dtype).replace("torch.", ""), "size": size, "steps": steps, "compare": what,
            "frames": frames, "rounds": rounds, "fps": fps,
            "frame_ms_p50": {name: round(float(np.percentile(v, 50)), 2) for name, v in times.items()},
            "ratio": {name: round(v / base, 3) if base else None for name, v in fps.items()}, **more,
        }
    finally:
        for dec in decs.values():
            dec.close()
