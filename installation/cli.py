"""The ``installation`` command: run, scenes, params, bench, doctor.

Exit status 2 means the config, a scene, a shader or a flag is wrong; the one-line message says which file, which
key and what is allowed. Nothing is opened or loaded before everything has been checked.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import logging
import signal
import sys
from pathlib import Path

from .config import ConfigError, ShowSpec, all_scene_files, check_decoder_files, load_scene, load_show
from .render.glenv import prepare_gl_env
from .render.shaders import ShaderError
from .sizes import parse_size

log = logging.getLogger("installation")

EXIT_CONFIG = 2


def _setup_logging(level: str, spec: ShowSpec | None = None) -> None:
    """stderr always; plus the rotating log file that the config's [log] table names."""
    from .ops import LogSettings, setup_logging

    if spec is None:
        settings, base, secrets = LogSettings(level=level), None, ()
    else:
        settings, base = spec.config.log.model_copy(update={"level": level}), spec.path.resolve().parent
        secrets = (spec.config.web.token,)  # never in a log line, whatever logs it
    setup_logging(settings, base, secrets=secrets)


def _fail(message: str) -> int:
    print(f"installation: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _size_arg(text: str):
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _with_output(spec: ShowSpec, args: argparse.Namespace) -> ShowSpec:
    """Apply --size/--fps/--fullscreen/--display over the config's [output]."""
    update = {}
    for key in ("size", "fps", "display"):
        if getattr(args, key, None) is not None:
            update[key] = getattr(args, key)
    if getattr(args, "fullscreen", False):
        update["fullscreen"] = True
    if update:
        from pydantic import ValidationError

        from .config import OutputConfig

        try:  # validated like the file's own values: --fps 0 gets the same message as fps = 0
            output = OutputConfig.model_validate({**spec.config.output.model_dump(), **update})
        except ValidationError as e:
            err = e.errors()[0]
            raise ConfigError("command line", f"--{err['loc'][0]}", f"{err['msg']} (got {err['input']!r})") from None
        spec.config = spec.config.model_copy(update={"output": output})
    return spec


class _Signals:
    """Signal handlers installed before any slow start-up work: a stop or reload that arrives while the show is
    still loading is remembered and handed to the runtime once it exists (a stop then ends the start-up early)."""

    def __init__(self) -> None:
        self.stop = False
        self.runtime = None

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, *_) -> None:
        self.stop = True
        if self.runtime is not None:
            self.runtime.request_stop()

    def _on_reload(self, *_) -> None:
        # Before the runtime exists the files are being read right now: nothing older to reload.
        if self.runtime is not None:
            self.runtime.request_reload()

    def attach(self, runtime) -> None:
        self.runtime = runtime
        if self.stop:
            runtime.request_stop()


def cmd_run(args: argparse.Namespace) -> int:
    signals = _Signals()
    signals.install()  # first: a stop during the slow start-up below must exit cleanly, not kill the process
    # Caught before this module was imported (entry.py): a stop still stops; a reload is moot, the files load now.
    signals.stop = signals.stop or any(sig in (signal.SIGINT, signal.SIGTERM) for sig in args.early_signals)
    from .clock import FixedClock, WallClock
    from .render.record import Recorder, RecorderError
    from .runtime import Runtime

    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        return _fail(f"--duration must be a positive number of seconds, got {args.duration}")
    if args.fixed_step and args.duration is None:
        return _fail("--fixed-step renders offline: give --duration (seconds of show time)")
    try:
        spec = _with_output(load_show(args.config, only_scene=args.scene), args)
        if args.replay:
            from .archive.commands import with_replay

            spec = with_replay(spec, args.replay)
        from .render.shader_check import refuse_hanging

        # A test draw of each shader in a child process: an endless loop never reaches the loop (a stop ends it).
        refuse_hanging(spec, cancel=lambda: signals.stop)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        return _fail(str(e).strip("'\""))
    out = spec.config.output
    if getattr(args, "calibrate", False) and not spec.config.outputs:
        return _fail(f"{spec.path}: no [[outputs]] to calibrate (see the README's Projection section)")
    from .render.projection import window_size

    size, borderless = window_size(spec.config)  # [[outputs]]: one borderless window over all of them
    _setup_logging(args.log_level or spec.config.log.level, spec)
    from .ops.limits import raise_nofile_limit

    raise_nofile_limit()  # systemd's soft 1024 is too few; before the decoder process and ffmpeg inherit it
    if args.record and (size[0] % 2 or size[1] % 2):
        return _fail(f"--record needs an even output size, got {size[0]}x{size[1]}")
    from .render.targets import preload_decoders

    preload_decoders(s.decoder.type for s in spec.scenes)
    if signals.stop:
        log.info("stopped during start-up")
        return 0
    if args.headless:
        from .render.targets import HeadlessTarget

        target = HeadlessTarget(size)
    else:
        from .render.targets import NoDisplay, WindowTarget

        try:
            target = WindowTarget(size, out.fullscreen and not borderless, out.display,
                                  out.vsync and not args.fixed_step, out.title, out.hide_cursor, borderless=borderless)
        except NoDisplay as e:
            return _fail(str(e))
        except Exception as e:  # noqa: BLE001 - no display is a start-up error, not a crash
            return _fail(f"cannot open a window ({e}); use --headless, or set DISPLAY / SDL_VIDEODRIVER")
    recorder = None
    if args.record:
        rec = spec.config.record
        try:
            # Offline every frame is written; live, frames are written at the recording rate from the wall clock
            # (repeated or skipped as the show keeps up or not), so the video plays in real time.
            recorder = Recorder(args.record, target.size, out.fps, rec.ffmpeg, rec.codec, rec.preset, rec.crf,
                                blocking=args.fixed_step)
        except RecorderError as e:
            target.close()
            return _fail(str(e))
    clock = FixedClock(out.fps) if args.fixed_step else WallClock()
    if spec.config.sync.clock == "link":
        from .sync import clock_for

        clock = clock_for(spec.config, clock)  # the Link session's shared timeline (live runs only)
    live = not args.fixed_step
    from .ops import Notifier

    notifier = Notifier()
    try:
        # A fixed-step render is offline: no state, no opening hours, no health endpoint, no inputs.
        runtime = Runtime(spec, target, clock, fps=out.fps, recorder=recorder, inputs=live, notifier=notifier,
                          keep_state=live, resume=live and not args.no_resume, serve_health=live, schedule=live,
                          only_scene=args.scene)
    except ShaderError as e:  # a shader that does not compile on this GL: a start-up error, not a traceback
        target.close()
        if recorder is not None:
            recorder.close()
        return _fail(str(e))
    except Exception:
        target.close()
        raise
    # Signal handlers only set flags; the loop does the work at its next tick (fade out and save, or reload).
    signals.attach(runtime)
    if getattr(args, "calibrate", False):  # the test patterns from the first frame (render/calibration.py)
        from .bus import Event

        runtime.output.handle_event(Event("calibrate", True, source="cli"))
    if not args.headless:
        from .ops import inhibit_blanking

        inhibit_blanking()
    log.info("running %s on %s at %s, %d fps (%s)", ", ".join(s.name for s in spec.scenes), target.kind,
             "x".join(map(str, target.size)), out.fps,
             "fixed step, from the start: no saved state is resumed or written" if args.fixed_step else
             "live, resumed from the saved state" if runtime.resumed else "live")
    try:
        stats = runtime.run(args.duration)
    except OSError as e:  # an input's or the health endpoint's port is taken: a start-up error
        return _fail(str(e))
    finally:
        target.close()
    log.info("presented %d frames, decoded %d, late %d, decoder faults %s", stats.presented, runtime.slot.published,
             stats.late, runtime.decoder_stats()["faults"] or "none")
    if recorder is not None:
        log.info("recorded %s: %d frames at %d fps (%d repeated and %d skipped to keep real time, %d dropped)",
                 args.record, recorder.frames_written, out.fps, recorder.frames_repeated, recorder.frames_skipped,
                 recorder.frames_dropped)
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    """Run the show headless with faults injected; print figures (and JSON); exit 1 if anything crashed."""
    from .soak import run_soak

    try:
        spec = _with_output(load_show(args.config), args)
    except ConfigError as e:
        return _fail(str(e))
    _setup_logging(args.log_level or "warning")
    result = run_soak(spec, minutes=args.minutes, raise_every=args.raise_every, nan_every=args.nan_every,
                      kill_every_s=args.kill_every, shader_every_s=args.shader_every,
                      input_every_s=args.input_every, reload_every_s=args.reload_every, faults=not args.no_faults,
                      sample_s=args.sample_every, warmup_s=args.warmup, memory_log=args.memory_log,
                      trace=args.tracemalloc)
    for key, value in result.items():
        if key == "memory":
            print("memory (first -> last, per hour after the warm-up / in its second half):")
            for name, m in value.items():
                print(f"  {name:<26} {m['first']:>10} -> {m['last']:<10} {m['per_h']} / {m['per_h_second_half']}")
            continue
        print(f"{key:<28} {value}")
    if args.json:
        print(json.dumps(result))
    return 0 if result["crashes"] == 0 else 1


def cmd_scenes(args: argparse.Namespace) -> int:
    """List every scene file and validate it; exit 2 if any is invalid."""
    try:
        spec = load_show(args.config)
    except ConfigError as e:
        return _fail(str(e))
    bad = 0
    playing = {s.name for s in spec.scenes}
    for path in all_scene_files(spec):
        try:
            scene = load_scene(path)
            from .config import check_params

            check_params(scene.params, spec.params, path, "params")
            missing = [s for s in scene.shaders if s not in spec.shaders]
            if missing:
                why = spec.refused.get(missing[0])
                raise ConfigError(path, "shaders", f"shader {missing[0]!r} cannot be used: {why}" if why else
                                  f"no shader {missing[0]!r}")
        except ConfigError as e:
            bad += 1
            print(f"  INVALID  {e}")
            continue
        mark = "*" if scene.name in playing else " "
        dur = "until told" if scene.duration == 0 else f"{scene.duration:g}s"
        print(f"{mark} {scene.name:<14} {scene.decoder.type:<10} {scene.trajectory.kind:<6} {dur:<10} "
              f"{scene.description}")
        try:
            check_decoder_files(scene)
        except ConfigError as e:  # valid, but its model files are not on this machine
            print(f"    needs files first: {e.message}")
    print("(* in the show's play list)")
    return EXIT_CONFIG if bad else 0


def cmd_params(args: argparse.Namespace) -> int:
    """List every parameter a show declares: name, range, default, the scenes it acts in, what it does. A
    parameter no scene's chain or decoder reads (a shader pass in none of the chains) acts in none: setting it
    changes no pixel."""
    from .scene_params import group_of, scene_params

    try:
        spec = load_show(args.config, only_scene=args.scene)
    except ConfigError as e:
        return _fail(str(e))
    acting = {s.name: set(scene_params(s, spec.shaders, spec.params)) for s in spec.scenes}
    print(f"# {'name':<20} {'type':<5} range, default, group, scenes it acts in"
          + (f" (only {args.scene})" if args.scene else ""))
    for name, p in sorted(spec.params.items(), key=lambda kv: (not any(kv[0] in a for a in acting.values()), kv[0])):
        where = [s for s, names in acting.items() if name in names]
        scenes = "all" if where and len(where) == len(acting) else ",".join(where) if where else "none"
        if name.startswith(("audio.", "camera.", "midi.", "link.", "vision.")):
            scenes = "input"  # a part's measurement: a source for routes, not a control
        print(f"{name:<22} {p.type:<5} [{p.min:g}, {p.max:g}] default {p.default:g}  {group_of(name):<7} "
              f"{scenes:<12} {p.doc}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    try:
        spec = _with_output(load_show(args.config, only_scene=args.scene), args)
    except ConfigError as e:
        return _fail(str(e))
    _setup_logging(args.log_level or "warning")
    if args.archive_size:
        from .archive.bench import archive_size_bench

        camera = int(args.camera) if args.camera is not None and args.camera.isdigit() else args.camera
        mic = int(args.mic) if args.mic is not None and args.mic.isdigit() else args.mic
        try:
            result = archive_size_bench(spec, seconds=args.seconds, camera=camera, mic=mic, osc_rate=args.osc_rate,
                                        signal=args.mic_signal, modes=tuple(args.modes.split(",")))
        except (ImportError, OSError, ValueError) as e:
            return _fail(f"--archive-size: {e}")
    elif args.camera is not None:
        from .bench import camera_bench

        source = int(args.camera) if args.camera.isdigit() else args.camera
        result = camera_bench(spec, source, seconds=args.seconds, rounds=args.rounds)
    elif args.map:
        from .archive.bench import overlay_bench

        result = overlay_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.archive:
        from .archive.bench import archive_bench

        result = archive_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.search:
        from .archive.search import clip_width, search_bench

        try:
            dim = args.dim or clip_width(spec.config.vision.resolved(spec.path.resolve().parent))
            result = search_bench(points=args.points, dim=dim, k=20, queries=max(args.trials // 2, 3),
                                  index=args.index)
        except (ValueError, OSError) as e:
            return _fail(f"--search: {e}")
    elif args.steer is not None:
        from .vision.bench import steer_bench

        try:
            result = steer_bench(spec, args.steer, seconds=args.seconds)
        except ValueError as e:
            return _fail(str(e))
    elif args.vision:
        from .vision.bench import vision_bench

        try:
            result = vision_bench(spec, seconds=args.seconds, rounds=args.rounds)
        except ValueError as e:
            return _fail(str(e))
    elif args.outputs:
        from .bench import outputs_bench

        result = outputs_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.rig:
        from .rig import rig_bench

        result = rig_bench(spec, seconds=args.seconds, rounds=args.rounds)
    elif args.passes:
        from .render.pass_bench import pass_costs

        result = pass_costs(spec)
    elif args.first_light:
        from .bench import first_light_bench

        result = first_light_bench(spec)
    elif args.http is not None:
        from .ops.http_bench import http_bench

        result = http_bench(slow=args.http, rounds=args.trials * 2)
    elif args.osc_latency:
        from .bench import osc_latency

        result = osc_latency(spec, trials=args.trials)
    elif args.decoder == "diffusion":
        from .bench import run_diffusion_bench

        if not args.model:
            return _fail("--decoder diffusion needs --model DIR (a diffusers folder; see scripts/make_random_models.py)")
        try:
            if args.compare:
                from .bench import run_diffusion_compare

                result = run_diffusion_compare(spec, str(args.model), str(args.taesd) if args.taesd else None,
                                               args.decoder_size, args.steps, args.frames, args.compare,
                                               args.rounds, str(args.control) if args.control else None,
                                               (str(args.ip_adapter), str(args.image_encoder))
                                               if args.ip_adapter and args.image_encoder else None)
            else:
                result = run_diffusion_bench(spec, str(args.model), str(args.taesd) if args.taesd else None,
                                             args.decoder_size, args.steps, args.frames, args.seconds)
        except (FileNotFoundError, ValueError) as e:
            return _fail(str(e))
    else:
        result = run_bench(spec, seconds=args.seconds)
    for key, value in result.items():
        print(f"{key:<16} {value}")
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_osc_map(args: argparse.Namespace) -> int:
    """Print every OSC address the show answers, with its argument types and what it does."""
    from .inputs.osc import address_map
    from .inputs.surface import capabilities

    try:
        spec = load_show(args.config)
    except ConfigError as e:
        return _fail(str(e))
    osc = spec.config.inputs.osc
    print(f"# OSC on udp://{osc.host}:{osc.port} ({'enabled' if osc.enabled else 'disabled'})")
    for address, types, doc in address_map(spec.params, [s.name for s in spec.scenes], osc,
                                           capabilities(spec.config)):
        print(f"{address:<34} {types:<8} {doc}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import report

    for name, status in report(args.config):
        print(f"{name:<10} {status}")
    return 0


class _Parser(argparse.ArgumentParser):
    """Options anywhere among a command's positionals (``archive info --config C FILE`` as well as ``archive info
    FILE --config C``): argparse's intermixed parsing for every command that has no subcommands of its own."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        nested = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions())
        if self._mixing or nested:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="installation", description="Walk the latent space of a generative model in "
                                "real time, for galleries and live performance.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, default=None, help="config TOML (default: config/default.toml)")
        sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)

    r = sub.add_parser("run", help="run the show in a window or headless", description="Run the show.")
    common(r)
    r.add_argument("--scene", help="play only this scene (a name from `installation scenes`)")
    r.add_argument("--headless", action="store_true", help="render offscreen through EGL, no window")
    r.add_argument("--duration", type=float,
                   help="stop after this many seconds: wall-clock seconds live, show time with --fixed-step "
                        "(duration x fps frames)")
    r.add_argument("--fps", type=int, help="presenter (and recording) frames per second")
    r.add_argument("--fixed-step", action="store_true",
                   help="offline: frame n is rendered at t = n / fps, not in real time; deterministic")
    r.add_argument("--record", type=Path, help="write the output to this video file (mp4) through ffmpeg")
    r.add_argument("--size", type=_size_arg, help="output size WxH, e.g. 1280x720")
    r.add_argument("--display", type=int, help="display index for the window")
    r.add_argument("--fullscreen", action="store_true", help="borderless fullscreen")
    r.add_argument("--no-resume", action="store_true",
                   help="start the show from its beginning instead of the saved state (it is still saved)")
    r.add_argument("--replay", metavar="ARCHIVE", help="play an archived performance (FILE or FILE#SESSION) live, "
                   "looping; see `installation replay` for an offline re-render")
    r.set_defaults(func=cmd_run, calibrate=False)
    cal = sub.add_parser("calibrate", help="run the show with the projector outputs' test patterns to calibrate",
                         description="Run the show with a test pattern on each [[outputs]] entry: move corners and "
                                     "mesh points with the keyboard or mouse (or OSC /output/...), P shows the "
                                     "picture, S saves beside the config (it also saves a second after each change)."
                                     " Keys: see the README's Projection section.")
    for action in r._actions[1:]:  # the same options as run (all but -h)
        cal._add_action(action)
    cal.set_defaults(func=cmd_run, calibrate=True)

    so = sub.add_parser("soak", help="run headless with faults injected and report whether anything crashed",
                        description="Run the show headless at a small size with faults injected (decoder "
                                    "exceptions and NaN frames, decoder process kills, broken shader reloads, input "
                                    "thread deaths); report fps, faults contained, crashes, RSS slope and the "
                                    "longest wait for a new decoder frame.")
    common(so)
    so.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    so.add_argument("--size", type=_size_arg, default="320x180", help="output size WxH (default 320x180)")
    so.add_argument("--fps", type=int, default=30, help="presenter fps (default 30)")
    so.add_argument("--raise-every", type=int, default=50, help="decoder raises on every Nth frame (0 = never)")
    so.add_argument("--nan-every", type=int, default=37, help="decoder returns NaNs on every Nth frame (0 = never)")
    so.add_argument("--kill-every", type=float, default=20.0, help="SIGKILL the decoder process every N s (0 = never)")
    so.add_argument("--shader-every", type=float, default=30.0,
                    help="reload a shader that does not compile every N s (0 = never)")
    so.add_argument("--input-every", type=float, default=25.0,
                    help="kill a running input's thread every N s (0 = never)")
    so.add_argument("--reload-every", type=float, default=0.0,
                    help="reload config, scenes and shaders from disk every N s, as SIGHUP does (0 = never)")
    so.add_argument("--no-faults", action="store_true",
                    help="play the config as written (its parts, state and health on as configured) and inject "
                         "nothing: a memory soak of the show itself")
    so.add_argument("--sample-every", type=float, default=10.0,
                    help="seconds between memory samples (each process, anonymous memory, malloc, GL objects, "
                         "threads, files)")
    so.add_argument("--warmup", type=float, default=None,
                    help="seconds before memory is sampled (default: a fifth of the run, at most 60)")
    so.add_argument("--memory-log", type=Path, help="append every memory sample to this file as a JSON line")
    so.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                    help="trace Python allocations after the warm-up and report the N lines that grew most")
    so.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    so.set_defaults(func=cmd_soak, display=None)

    s = sub.add_parser("scenes", help="list and validate the scene files", description=cmd_scenes.__doc__)
    common(s)
    s.set_defaults(func=cmd_scenes)

    pa = sub.add_parser("params", help="list the parameters (bus names, ranges, defaults)",
                        description=cmd_params.__doc__)
    common(pa)
    pa.add_argument("--scene", help="the parameters when only this scene plays (its decoder's live ones included)")
    pa.set_defaults(func=cmd_params)

    b = sub.add_parser("bench", help="measure decoder, runtime and presenter speed",
                       description="Measure decoder fps alone, decoder fps inside the running loop, presenter fps "
                                   "at the output size paced at 60 Hz, and memory.")
    common(b)
    b.add_argument("--scene", help="scene to measure (default: the show's first)")
    b.add_argument("--size", type=_size_arg, help="output size WxH (default: the config's)")
    b.add_argument("--seconds", type=float, default=10.0, help="seconds for each measurement")
    b.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    b.add_argument("--decoder", choices=["scene", "diffusion"], default="scene",
                   help="'scene': the scene's own decoder (default); 'diffusion': the model in --model")
    b.add_argument("--model", type=Path, help="diffusers model folder for --decoder diffusion")
    b.add_argument("--taesd", type=Path, help="TAESD (AutoencoderTiny) folder used instead of the full VAE")
    b.add_argument("--decoder-size", type=int, default=512, help="diffusion image size (square), default 512")
    b.add_argument("--steps", type=int, default=1, help="denoising steps per frame")
    b.add_argument("--frames", type=int, default=100, help="frames for the decoder-alone measurement (--compare: "
                   "per variant and round)")
    b.add_argument("--compare", choices=["cfg", "stream", "controls", "ip"],
                   help="--decoder diffusion: decoder fps of full CFG vs residual CFG (self, onetime) vs none, of "
                        "the steps without and with stream_batch (--steps 2-4), or without and with --control, or "
                        "without and with an image prompt (--ip-adapter, --image-encoder), "
                        "--rounds rounds alternating in one run, instead")
    b.add_argument("--control", type=Path, help="--compare controls: a ControlNet or T2I-Adapter folder")
    b.add_argument("--ip-adapter", type=Path, help="--compare ip: an IP-Adapter .safetensors file")
    b.add_argument("--image-encoder", type=Path, help="--compare ip: its CLIPVisionModelWithProjection folder")
    b.add_argument("--osc-latency", action="store_true",
                   help="measure OSC message -> first presented frame that shows it, instead")
    b.add_argument("--trials", type=int, default=10, help="messages per path for --osc-latency (requests: twice "
                   "that for --http)")
    b.add_argument("--http", type=int, metavar="N", nargs="?", const=1000,
                   help="latency of a real request to the health endpoint, the web page and OSCQuery while N "
                        "(default 1000) slow connections from other loopback addresses are held, instead")
    b.add_argument("--passes", action="store_true",
                   help="milliseconds per presented frame of the shader chain, the palette pass's parts in turn")
    b.add_argument("--first-light", action="store_true",
                   help="seconds from opening the output to the first non-black and the first live frame, without "
                        "and with the in-process preview, instead")
    b.add_argument("--camera", metavar="SOURCE",
                   help="compare the full loop with the camera off and on this source (a device index, file, URL "
                        "or 'lavfi:testsrc2=size=320x240:rate=30,realtime'): late ticks and tick p99s, instead")
    b.add_argument("--rounds", type=int, default=1,
                   help="off/on pairs for --camera, --vision, --outputs, --rig and --map, alternating; runs for "
                        "--archive; rounds for --compare (default 1)")
    b.add_argument("--map", action="store_true",
                   help="present p99 with the live map overlay ([output.map]) off and on, --rounds pairs, instead")
    b.add_argument("--archive", action="store_true",
                   help="the archive's cost: fixed-step fps with it paused and recording by turns, its CPU share, "
                        "bytes per hour, replay equality, instead")
    b.add_argument("--archive-size", action="store_true",
                   help="the archive's bytes per hour of show time with no input, OSC, the microphone, the camera "
                        "and all of them on (one live run of --seconds each; --camera SOURCE, --mic DEVICE, "
                        "--osc-rate, --mic-signal), instead")
    b.add_argument("--mic", metavar="DEVICE", help="--archive-size: the microphone (a name or index; default: the "
                   "config's [inputs.audio] device)")
    b.add_argument("--mic-signal", action="store_true",
                   help="--archive-size: play a music-like test signal into the microphone when it is a JACK port")
    b.add_argument("--osc-rate", type=float, default=30.0,
                   help="--archive-size: OSC messages a second (a fader moving), default 30")
    b.add_argument("--modes", default="none,osc,mic,camera,all",
                   help="--archive-size: which of none,osc,mic,camera,all to run (default all five)")
    b.add_argument("--vision", action="store_true",
                   help="decoder fps without and with the [vision] CLIP worker (every_n = 1), alternating phases of "
                        "one run, instead")
    b.add_argument("--search", action="store_true",
                   help="the time and memory of one top-20 search over --points synthetic CLIP embeddings of the "
                        "configured width (exact; with faiss installed, an IVF index and its recall too), instead")
    b.add_argument("--points", type=int, default=1_000_000, help="--search: how many embeddings (default 1000000)")
    b.add_argument("--dim", type=int, default=0, help="--search: embedding width (default: the [vision] model's)")
    b.add_argument("--index", choices=["auto", "faiss", "none"], default="auto",
                   help="--search: also time a faiss IVF index (auto: when faiss is installed)")
    b.add_argument("--steer", metavar="TEXT",
                   help="CLIP similarity to TEXT over --seconds of show time with steering off and on, instead")
    b.add_argument("--outputs", action="store_true",
                   help="present p99 with two warped, blended projector outputs vs one plain output, instead "
                        "(--rounds pairs, alternating)")
    b.add_argument("--rig", action="store_true", help="the loop with the web page, OSCQuery, MIDI and Link off vs "
                   "on (with clients using them), --rounds pairs")
    b.set_defaults(func=cmd_bench, fps=None, display=None)

    o = sub.add_parser("osc-map", help="print the OSC address map", description=cmd_osc_map.__doc__)
    common(o)
    o.set_defaults(func=cmd_osc_map)

    from .archive.commands import add_parsers

    add_parsers(sub, common, _size_arg)  # archive ls|info|export, replay, map

    d = sub.add_parser("doctor", help="what this machine offers: GL, torch device, displays, audio, cameras",
                       description="Check GL, torch, displays, ffmpeg, audio and camera devices.")
    common(d)
    d.set_defaults(func=cmd_doctor)

    from .spaces import cli as spaces_cli

    spaces_cli.add_train(sub)
    spaces_cli.add_space(sub)
    return p


def main(argv: list[str] | None = None, early_signals: list[int] | None = None) -> int:
    """``early_signals``: signals caught (by ``entry.main``) before this module was even imported; a run takes over
    the list, so a stop that arrived meanwhile still stops it."""
    # A native crash (a GL driver, a C extension) leaves every thread's Python stack on stderr, i.e. in the journal.
    faulthandler.enable()
    # Mesa's settings (LP_NUM_THREADS=0, issue 23) before any GL context exists and before any child process is
    # started: the decoder's and the camera's processes inherit them.
    prepare_gl_env()
    args = build_parser().parse_args(argv)
    args.early_signals = early_signals if early_signals is not None else []
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
