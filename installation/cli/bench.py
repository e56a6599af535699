"""``installation bench``: the speed and memory figures (decoder, loop, presenter, and each subsystem's own bench
by flag), printed and as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import ConfigError, load_show
from .registry import command
from .shared import fail, size_arg, start_logging, with_output


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import run_bench

    try:
        spec = with_output(load_show(args.config, only_scene=args.scene), args)
    except ConfigError as e:
        return fail(str(e))
    start_logging(args.log_level or "warning")
    if args.archive_size:
        from ..archive.bench import archive_size_bench

        camera = int(args.camera) if args.camera is not None and args.camera.isdigit() else args.camera
        mic = int(args.mic) if args.mic is not None and args.mic.isdigit() else args.mic
        try:
            result = archive_size_bench(spec, seconds=args.seconds, camera=camera, mic=mic, osc_rate=args.osc_rate,
                                        signal=args.mic_signal, modes=tuple(args.modes.split(",")))
        except (ImportError, OSError, ValueError) as e:
            return fail(f"--archive-size: {e}")
    elif args.camera is not None:
        from ..bench import camera_bench

        source = int(args.camera) if args.camera.isdigit() else args.camera
        result = camera_bench(spec, source, seconds=args.seconds, rounds=args.rounds)
    elif args.map:
        from ..archive.bench import overlay_bench

        result = overlay_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.archive:
        from ..archive.bench import archive_bench

        result = archive_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.search:
        from ..archive.search import clip_width, search_bench

        try:
            dim = args.dim or clip_width(spec.config.vision.resolved(spec.path.resolve().parent))
            result = search_bench(points=args.points, dim=dim, k=20, queries=max(args.trials // 2, 3),
                                  index=args.index)
        except (ValueError, OSError) as e:
            return fail(f"--search: {e}")
    elif args.steer is not None:
        from ..vision.bench import steer_bench

        try:
            result = steer_bench(spec, args.steer, seconds=args.seconds)
        except ValueError as e:
            return fail(str(e))
    elif args.vision:
        from ..vision.bench import vision_bench

        try:
            result = vision_bench(spec, seconds=args.seconds, rounds=args.rounds)
        except ValueError as e:
            return fail(str(e))
    elif args.outputs:
        from ..bench import outputs_bench

        result = outputs_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.rig:
        from ..rig import rig_bench

        result = rig_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.passes:
        from ..render.pass_bench import pass_costs

        result = pass_costs(spec)
    elif args.first_light:
        from ..bench import first_light_bench

        result = first_light_bench(spec)
    elif args.http is not None:
        from ..ops.http_bench import http_bench

        result = http_bench(slow=args.http, rounds=args.trials * 2)
    elif args.osc_latency:
        from ..bench import osc_latency

        result = osc_latency(spec, trials=args.trials)
    elif args.decoder == "diffusion":
        from ..bench import run_diffusion_bench

        if not args.model:
            return fail("--decoder diffusion needs --model DIR (a diffusers folder; see scripts/make_random_models.py)")
        try:
            if args.compare:
                from ..bench import run_diffusion_compare

                result = run_diffusion_compare(spec, str(args.model), str(args.taesd) if args.taesd else None,
                                               args.decoder_size, args.steps, args.frames, args.compare,
                                               args.rounds, str(args.control) if args.control else None,
                                               str(args.depth) if args.depth else None)
            else:
                result = run_diffusion_bench(spec, str(args.model), str(args.taesd) if args.taesd else None,
                                             args.decoder_size, args.steps, args.frames, args.seconds)
        except (FileNotFoundError, ValueError) as e:
            return fail(str(e))
    else:
        result = run_bench(spec, seconds=args.seconds)
    for key, value in result.items():
        print(f"{key:<16} {value}")
    if args.json:
        print(json.dumps(result))
    return 0


def bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scene", help="scene to measure (default: the show's first)")
    p.add_argument("--size", type=size_arg, help="output size WxH (default: the config's)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds for each measurement")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--decoder", choices=["scene", "diffusion"], default="scene",
                   help="'scene': the scene's own decoder (default); 'diffusion': the model in --model")
    p.add_argument("--model", type=Path, help="diffusers model folder for --decoder diffusion")
    p.add_argument("--taesd", type=Path, help="TAESD (AutoencoderTiny) folder used instead of the full VAE")
    p.add_argument("--decoder-size", type=int, default=512, help="diffusion image size (square), default 512")
    p.add_argument("--steps", type=int, default=1, help="denoising steps per frame")
    p.add_argument("--frames", type=int, default=100, help="frames for the decoder-alone measurement (--compare: "
                   "per variant and round)")
    p.add_argument("--compare", choices=["cfg", "stream", "controls"],
                   help="--decoder diffusion: decoder fps of full CFG vs residual CFG (self, onetime) vs none, of "
                        "the steps without and with stream_batch (--steps 2-4), or without and with --control, "
                        "--rounds rounds alternating in one run, instead")
    p.add_argument("--control", type=Path, help="--compare controls: a ControlNet or T2I-Adapter folder")
    p.add_argument("--depth", type=Path, help="--compare controls: also a depth control, this depth model folder "
                                              "(transformers depth-estimation) run on each camera frame")
    p.add_argument("--osc-latency", action="store_true",
                   help="measure OSC message -> first presented frame that shows it, instead")
    p.add_argument("--trials", type=int, default=10, help="messages per path for --osc-latency (requests: twice "
                   "that for --http)")
    p.add_argument("--http", type=int, metavar="N", nargs="?", const=1000,
                   help="latency of a real request to the health endpoint, the web page and OSCQuery while N "
                        "(default 1000) slow connections from other loopback addresses are held, instead")
    p.add_argument("--passes", action="store_true",
                   help="milliseconds per presented frame of the shader chain, the palette pass's parts in turn")
    p.add_argument("--first-light", action="store_true",
                   help="seconds from opening the output to the first non-black and the first live frame, without "
                        "and with the in-process preview, instead")
    p.add_argument("--camera", metavar="SOURCE",
                   help="compare the full loop with the camera off and on this source (a device index, file, URL "
                        "or 'lavfi:testsrc2=size=320x240:rate=30,realtime'): late ticks and tick p99s, instead")
    p.add_argument("--rounds", type=int, default=1,
                   help="off/on pairs for --camera, --vision, --outputs, --rig and --map, alternating; runs for "
                        "--archive; rounds for --compare (default 1)")
    p.add_argument("--map", action="store_true",
                   help="present p99 with the live map overlay ([output.map]) off and on, --rounds pairs, instead")
    p.add_argument("--archive", action="store_true",
                   help="the archive's cost: fixed-step fps with it paused and recording by turns, its CPU share, "
                        "bytes per hour, replay equality, instead")
    p.add_argument("--archive-size", action="store_true",
                   help="the archive's bytes per hour of show time with no input, OSC, the microphone, the camera "
                        "and all of them on (one live run of --seconds each; --camera SOURCE, --mic DEVICE, "
                        "--osc-rate, --mic-signal), instead")
    p.add_argument("--mic", metavar="DEVICE", help="--archive-size: the microphone (a name or index; default: the "
                   "config's [inputs.audio] device)")
    p.add_argument("--mic-signal", action="store_true",
                   help="--archive-size: play a music-like test signal into the microphone when it is a JACK port")
    p.add_argument("--osc-rate", type=float, default=30.0,
                   help="--archive-size: OSC messages a second (a fader moving), default 30")
    p.add_argument("--modes", default="none,osc,mic,camera,all",
                   help="--archive-size: which of none,osc,mic,camera,all to run (default all five)")
    p.add_argument("--vision", action="store_true",
                   help="decoder fps without and with the [vision] CLIP worker (every_n = 1), alternating phases of "
                        "one run, instead")
    p.add_argument("--search", action="store_true",
                   help="the time and memory of one top-20 search over --points synthetic CLIP embeddings of the "
                        "configured width (exact; with faiss installed, an IVF index and its recall too), instead")
    p.add_argument("--points", type=int, default=1_000_000, help="--search: how many embeddings (default 1000000)")
    p.add_argument("--dim", type=int, default=0, help="--search: embedding width (default: the [vision] model's)")
    p.add_argument("--index", choices=["auto", "faiss", "none"], default="auto",
                   help="--search: also time a faiss IVF index (auto: when faiss is installed)")
    p.add_argument("--steer", metavar="TEXT",
                   help="CLIP similarity to TEXT over --seconds of show time with steering off and on, instead")
    p.add_argument("--outputs", action="store_true",
                   help="present p99 with two warped, blended projector outputs vs one plain output, instead "
                        "(--rounds pairs, alternating)")
    p.add_argument("--rig", action="store_true", help="the loop with the web page, OSCQuery, MIDI and Link off vs "
                   "on (with clients using them), --rounds pairs")


command("bench", help="measure decoder, runtime and presenter speed",
        description="Measure decoder fps alone, decoder fps inside the running loop, presenter fps at the output size "
                    "paced at 60 Hz, and memory.",
        arguments=bench_arguments, run=cmd_bench, defaults={"fps": None, "display": None})
