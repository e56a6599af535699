#!/usr/bin/env python
"""Write random-weight diffusers folders (SD-Turbo / SD 2.1, SDXL-Turbo, LCM, TAESD) for offline GPU benchmarks.

Tiny shapes by default (seconds, a few MB); ``--full`` writes the real configs (several GB, minutes), e.g.:

    python scripts/make_random_models.py --full --out /data/random-models
    installation bench --decoder diffusion --model /data/random-models/sd-turbo --json
    python -c "from installation.decoders.diffusion.bench import bench; import json; print(json.dumps(bench(
        '/data/random-models/sd-turbo', 512, 1, 200, 'cuda', taesd='/data/random-models/taesd'), indent=2))"
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from installation.decoders import random_models  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("random-models"), help="folder to write into")
    ap.add_argument("--full", action="store_true", help="real model shapes instead of tiny ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="run the random initialisation here (cuda: seconds, not minutes)")
    ap.add_argument("--fp16", action="store_true", help="write float16 'fp16' variant files (half the bytes)")
    ap.add_argument("--only", choices=["sd-turbo", "sdxl-turbo", "lcm", "taesd"], action="append",
                    help="write only these (repeatable); default all")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kw = {"device": args.device, "fp16": args.fp16}
    makers = {
        "sd-turbo": lambda p: random_models.make_sd21(p, args.full, args.seed, **kw),
        "sdxl-turbo": lambda p: random_models.make_sdxl(p, args.full, args.seed, **kw),
        "lcm": lambda p: random_models.make_sd21(p, args.full, args.seed, lcm=True, **kw),
        "taesd": lambda p: random_models.make_taesd(p, args.full, args.seed, **kw),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in args.only or list(makers):
        out[name] = str(makers[name](args.out / name))
    (args.out / "models.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
