"""One-shot GPU check of the diffusion decoder, sized for a 15-minute device lease (issue 3's benchmark).

Random-weight models with the real shapes (no downloads): SD-Turbo-shaped UNet (SD 2.1 config) + TAESD at 512,
768 and 1024, one step, fp16, captured CUDA graph; the same at 512 eager as the baseline from the same run; the
512 model inside the full runtime loop (runtime_fps and its ratio to the decoder alone); SDXL-Turbo-shaped at 512;
with --compile, torch.compile + graph at 512; then issue 13's projector outputs on the GPU's GL (`bench --outputs`
at 1920x1080: present p99 with two warped, blended outputs against one plain output); issue 29's comparisons at 512:
full CFG vs residual CFG (2 steps) and 4 steps without and with stream batch (--controls: and one ControlNet's
cost: a still image, canny from a moving camera made in the decoder or taken from the camera's process, depth from
a Depth-Anything-V2-Small-shaped model; --ip: and an image prompt's, an IP-Adapter with a ViT-H/14 image encoder).
Prints a table last and writes
gpu_check.json into $OUT (or --out).

    python scripts/gpu_check.py                 # on the GPU machine (see scripts/gpu_check.sh for the wheels)
    python scripts/gpu_check.py --tiny --device cpu --frames 3    # the same path here, tiny, to check the script
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from installation.decoders.diffusion.bench import bench, compare  # noqa: E402
from installation.decoders.random_models import make_ip_adapter, make_sd21, make_sdxl, make_taesd  # noqa: E402


def loop_fps(model: Path, taesd: Path, size: int, seconds: float) -> dict:
    """The same model inside the full runtime (decoder process, presenter on a headless EGL context)."""
    from installation.bench import diffusion_show, runtime_fps
    from installation.config import load_show

    spec = diffusion_show(load_show(Path(__file__).resolve().parent.parent / "config" / "default.toml"),
                          str(model), str(taesd), size, 1)
    return runtime_fps(spec, seconds, "cuda" if torch_cuda() else "cpu")


def outputs(size: str, seconds: float) -> dict:
    """``installation bench --outputs`` on the default show at ``size``: one plain output, then two warped, blended
    outputs of the same window, two rounds alternating."""
    from installation.bench import outputs_bench
    from installation.config import load_show
    from installation.sizes import parse_size

    spec = load_show(Path(__file__).resolve().parent.parent / "config" / "default.toml")
    spec.config = spec.config.model_copy(update={"output": spec.config.output.model_copy(
        update={"size": parse_size(size)})})
    return outputs_bench(spec, seconds=seconds, rounds=2)


def make_controlnet(model: Path, out: Path, device: str | None, fp16: bool) -> str:
    """A ControlNet made from the folder's UNet (diffusers' ControlNetModel.from_unet), random weights."""
    import diffusers
    import torch

    unet = diffusers.UNet2DConditionModel.from_pretrained(model, subfolder="unet", variant="fp16" if fp16 else None)
    with torch.device(device or "cpu"):
        cn = diffusers.ControlNetModel.from_unet(unet.to(device or "cpu"))
    if fp16:
        cn.to(torch.float16).save_pretrained(out, variant="fp16")
    else:
        cn.save_pretrained(out)
    return str(out)


def make_depth(out: Path, full: bool) -> str:
    """A depth-estimation folder with Depth Anything V2 Small's shapes (a DINOv2-S backbone at 518) and its image
    processor, random weights (tiny: the test suite's shapes)."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    if full:
        backbone = Dinov2Config(image_size=518, patch_size=14, hidden_size=384, num_hidden_layers=12,
                                num_attention_heads=6, mlp_ratio=4, layerscale_value=1.0, out_indices=[3, 6, 9, 12],
                                reshape_hidden_states=False)
        cfg = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=384,
                                  neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32)
        proc = DPTImageProcessor(size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                 resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    else:
        backbone = Dinov2Config(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4,
                                num_attention_heads=2, out_features=["stage1", "stage2", "stage3", "stage4"],
                                reshape_hidden_states=False)
        cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, patch_size=8,
                                  neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, head_hidden_size=8)
        proc = DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False)
    DepthAnythingForDepthEstimation(cfg).save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    return str(out)


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models (checks the script, not the speed)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the full-loop run lasts")
    ap.add_argument("--models", type=Path, default=Path("/tmp/gpu-check-models"))
    ap.add_argument("--no-sdxl", action="store_true", help="skip SDXL-Turbo")
    ap.add_argument("--no-loop", action="store_true", help="skip the full-loop and outputs runs (need EGL, moderngl)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile + graph at the first size (minutes)")
    ap.add_argument("--controls", action="store_true",
                    help="also the cost of one ControlNet (made from the UNet) at the first size, 2 steps")
    ap.add_argument("--ip", action="store_true",
                    help="also the cost of an image prompt (IP-Adapter, ViT-H/14 encoder) at the first size, 2 steps")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-check-out")))
    args = ap.parse_args()
    full = not args.tiny
    t0 = time.perf_counter()
    init = args.device if args.device == "cuda" else None  # random initialisation on the GPU: seconds, not minutes
    sd = make_sd21(args.models / "sd-turbo", full=full, device=init, fp16=full)
    taesd = make_taesd(args.models / "taesd", full=full, device=init, fp16=full)
    sdxl = None if args.no_sdxl else make_sdxl(args.models / "sdxl-turbo", full=full, device=init, fp16=full)
    print(f"models written in {time.perf_counter() - t0:.0f} s", flush=True)
    sizes = (512, 768, 1024) if full else (64,)
    dtype = "float16" if args.device == "cuda" else "float32"
    runs = [("sd-turbo eager (baseline)", sd, sizes[0], False, False)]
    runs += [(f"sd-turbo graph {s}", sd, s, True, False) for s in sizes]
    runs += [("sdxl-turbo graph", sdxl, sizes[0], True, False)] if sdxl else []
    runs += [("sd-turbo compile+graph", sd, sizes[0], True, True)] if args.compile else []
    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)

    def keep(row: dict) -> None:  # written after every run: a lease that ends early still returns the figures
        rows.append(row)
        print(json.dumps(row), flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=1))

    for name, model, size, graph, comp in runs:
        try:
            r = bench(str(model), size=size, steps=1, frames=args.frames, device=args.device, taesd=str(taesd),
                      dtype=dtype, cuda_graph=graph, compile=comp)
        except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others' figures
            r = {"error": f"{type(e).__name__}: {e}"}
        r["name"] = name
        keep(r)
        if name == f"sd-turbo graph {sizes[0]}" and not args.no_loop:
            try:
                loop = loop_fps(sd, taesd, sizes[0], args.seconds)
                loop["ratio"] = round(loop["runtime_fps"] / r["fps"], 3) if r.get("fps") else None
            except Exception as e:  # noqa: BLE001
                loop = {"error": f"{type(e).__name__}: {e}"}
            loop["name"] = f"full loop {sizes[0]} (runtime_fps)"
            keep(loop)
    # Issue 29: full CFG vs residual CFG at 2 steps, and 4 steps without and with stream batch (rounds alternating).
    comparisons = [("cfg", 2), ("stream", 4)] + ([("controls", 2)] if args.controls else []) + \
        ([("ip", 2)] if args.ip else [])
    for what, steps in comparisons:
        try:
            control = make_controlnet(sd, args.models / "controlnet", init, full) if what == "controls" else None
            ip = make_ip_adapter(sd, args.models / "ip-adapter", full, device=init, fp16=full) if what == "ip" \
                else None
            depth = make_depth(args.models / "depth", full) if what == "controls" else None
            r = compare(str(sd), what, size=sizes[0], steps=steps, frames=max(args.frames // 4, 3), rounds=2,
                        device=args.device, taesd=str(taesd), dtype=dtype, control=control, depth=depth,
                        ip_adapter=(ip["path"], ip["image_encoder"]) if ip else None)
        except Exception as e:  # noqa: BLE001
            r = {"error": f"{type(e).__name__}: {e}"}
        r["name"] = f"compare {what} ({steps} steps)"
        keep(r)
    if not args.no_loop:
        try:
            r = outputs("1920x1080" if full else "320x180", args.seconds / 2)
        except Exception as e:  # noqa: BLE001
            r = {"error": f"{type(e).__name__}: {e}"}
        r["name"] = "outputs two vs plain"
        keep(r)
    print(f"\n{'run':<30} {'device':<22} {'size':>5} {'fps':>8} {'p95 ms':>8} {'unet ms':>8} {'decode ms':>9} "
          f"{'alloc MiB start/end':>20}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<30} ERROR {r['error'][:90]}")
        elif "present_ms_p99_two_vs_plain" in r:
            print(f"{r['name']:<30} {r.get('gl_renderer', '?')[:22]:<22} {r['window']:>9} present p99 plain "
                  f"{r['plain_present_ms_p99']} ms, two {r['two_outputs_present_ms_p99']} ms, ratio "
                  f"{r['present_ms_p99_two_vs_plain']}; passes {r['plain_output_pass_ms_median']} / "
                  f"{r['two_outputs_output_pass_ms_median']} ms")
        elif "compare" in r:
            print(f"{r['name']:<30} {r['device_name'][:22]:<22} {r['size']:>5} fps {r['fps']} ratio {r['ratio']}")
        elif "runtime_fps" in r:
            print(f"{r['name']:<30} {r.get('gl_renderer', '?')[:22]:<22} {sizes[0]:>5} {r['runtime_fps']:>8.1f} "
                  f"ratio {r['ratio']}  present {r['present_fps']:.1f} fps  decoder-process VRAM MiB first/last "
                  f"{r.get('loop_vram_mb')}")
        else:
            m = r["memory_mib"]
            print(f"{r['name']:<30} {r['device_name'][:22]:<22} {r['size']:>5} {r['fps']:>8.1f} "
                  f"{r['frame_ms']['p95']:>8.2f} {r['stages_ms'].get('unet', 0):>8.2f} "
                  f"{r['stages_ms'].get('decode', 0):>9.2f} {m['allocated_start']:>9.0f}/{m['allocated_end']:<9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
