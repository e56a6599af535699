"""One-shot GPU check of the diffusion decoder, sized for a 15-minute device lease (issue 3's benchmark).

Random-weight models with the real shapes (no downloads): SD-Turbo-shaped UNet (SD 2.1 config) + TAESD at 512,
768 and 1024, one step, fp16, captured CUDA graph; the same at 512 eager as the baseline from the same run; and
SDXL-Turbo-shaped at 512. Prints a table last and writes gpu_check.json into $OUT (or --out).

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

from installation.decoders.diffusion_bench import bench  # noqa: E402
from installation.decoders.random_models import make_sd21, make_sdxl, make_taesd  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models (checks the script, not the speed)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--models", type=Path, default=Path("/tmp/gpu-check-models"))
    ap.add_argument("--no-sdxl", action="store_true", help="skip SDXL-Turbo (its random weights take minutes)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-check-out")))
    args = ap.parse_args()
    full = not args.tiny
    t0 = time.perf_counter()
    sd = make_sd21(args.models / "sd-turbo", full=full)
    taesd = make_taesd(args.models / "taesd", full=full)
    sdxl = None if args.no_sdxl else make_sdxl(args.models / "sdxl-turbo", full=full)
    print(f"models written in {time.perf_counter() - t0:.0f} s", flush=True)
    sizes = (512, 768, 1024) if full else (64,)
    dtype = "float16" if args.device == "cuda" else "float32"
    runs = [("sd-turbo eager (baseline)", sd, sizes[0], False)]
    runs += [(f"sd-turbo graph {s}", sd, s, True) for s in sizes]
    runs += [("sdxl-turbo graph", sdxl, sizes[0], True)] if sdxl else []
    rows = []
    for name, model, size, graph in runs:
        try:
            r = bench(str(model), size=size, steps=1, frames=args.frames, device=args.device, taesd=str(taesd),
                      dtype=dtype, cuda_graph=graph)
        except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others' figures
            r = {"error": f"{type(e).__name__}: {e}"}
        r["name"] = name
        rows.append(r)
        print(json.dumps(r), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'run':<28} {'device':<26} {'size':>5} {'fps':>8} {'p95 ms':>8} {'unet ms':>8} {'decode ms':>9} "
          f"{'alloc MiB start/end':>20}")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<28} ERROR {r['error'][:90]}")
            continue
        m = r["memory_mib"]
        print(f"{r['name']:<28} {r['device_name'][:26]:<26} {r['size']:>5} {r['fps']:>8.1f} "
              f"{r['frame_ms']['p95']:>8.2f} {r['stages_ms'].get('unet', 0):>8.2f} "
              f"{r['stages_ms'].get('decode', 0):>9.2f} {m['allocated_start']:>9.0f}/{m['allocated_end']:<9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
