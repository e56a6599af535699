"""``installation run``, ``calibrate`` and ``soak``: the show itself, live or offline, and under injected faults."""

from __future__ import annotations

import argparse
import json
import math
import signal
from pathlib import Path

from ..config import ConfigError, load_show
from ..render.shaders import ShaderError
from .registry import command
from .shared import fail, log, size_arg, start_logging, with_output


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
    from ..clock import FixedClock, WallClock
    from ..render.record import Recorder, RecorderError
    from ..runtime import Runtime

    if args.duration is not None and not (math.isfinite(args.duration) and args.duration > 0):
        return fail(f"--duration must be a positive number of seconds, got {args.duration}")
    if args.fixed_step and args.duration is None:
        return fail("--fixed-step renders offline: give --duration (seconds of show time)")
    try:
        spec = with_output(load_show(args.config, only_scene=args.scene), args)
        if args.replay:
            from ..archive.commands import with_replay

            spec = with_replay(spec, args.replay)
        from ..render.shader_check import refuse_hanging

        # A test draw of each shader in a child process: an endless loop never reaches the loop (a stop ends it).
        refuse_hanging(spec, cancel=lambda: signals.stop)
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as e:
        return fail(str(e).strip("'\""))
    out = spec.config.output
    if getattr(args, "calibrate", False) and not spec.config.outputs:
        return fail(f"{spec.path}: no [[outputs]] to calibrate (see the README's Projection section)")
    from ..render.projection import window_size

    size, borderless = window_size(spec.config)  # [[outputs]]: one borderless window over all of them
    start_logging(args.log_level or spec.config.log.level, spec)
    from ..ops.limits import raise_nofile_limit

    raise_nofile_limit()  # systemd's soft 1024 is too few; before the decoder process and ffmpeg inherit it
    if spec.config.decoder.isolation == "process" and not args.fixed_step:
        from ..ops.memory import map_large_blocks

        map_large_blocks()  # frame-sized blocks off this process's heap: they fragmented it (issue 33)
    if args.record and (size[0] % 2 or size[1] % 2):
        return fail(f"--record needs an even output size, got {size[0]}x{size[1]}")
    from ..render.targets import preload_decoders

    preload_decoders(s.decoder.type for s in spec.scenes)
    if signals.stop:
        log.info("stopped during start-up")
        return 0
    if args.headless:
        from ..render.targets import HeadlessTarget

        target = HeadlessTarget(size)
    else:
        from ..render.targets import NoDisplay, WindowTarget

        try:
            target = WindowTarget(size, out.fullscreen and not borderless, out.display,
                                  out.vsync and not args.fixed_step, out.title, out.hide_cursor, borderless=borderless)
        except NoDisplay as e:
            return fail(str(e))
        except Exception as e:  # noqa: BLE001 - no display is a start-up error, not a crash
            return fail(f"cannot open a window ({e}); use --headless, or set DISPLAY / SDL_VIDEODRIVER")
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
            return fail(str(e))
    clock = FixedClock(out.fps) if args.fixed_step else WallClock()
    if spec.config.sync.clock == "link":
        from ..sync import clock_for

        clock = clock_for(spec.config, clock)  # the Link session's shared timeline (live runs only)
    live = not args.fixed_step
    from ..ops import Notifier

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
        return fail(str(e))
    except Exception:
        target.close()
        raise
    # Signal handlers only set flags; the loop does the work at its next tick (fade out and save, or reload).
    signals.attach(runtime)
    if getattr(args, "calibrate", False):  # the test patterns from the first frame (render/calibration.py)
        from ..bus import Event

        runtime.output.handle_event(Event("calibrate", True, source="cli"))
    if not args.headless:
        from ..ops import inhibit_blanking

        inhibit_blanking()
    log.info("running %s on %s at %s, %d fps (%s)", ", ".join(s.name for s in spec.scenes), target.kind,
             "x".join(map(str, target.size)), out.fps,
             "fixed step, from the start: no saved state is resumed or written" if args.fixed_step else
             "live, resumed from the saved state" if runtime.resumed else "live")
    try:
        stats = runtime.run(args.duration)
    except OSError as e:  # an input's or the health endpoint's port is taken: a start-up error
        return fail(str(e))
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
    from ..soak import run_soak

    try:
        spec = with_output(load_show(args.config), args)
    except ConfigError as e:
        return fail(str(e))
    start_logging(args.log_level or "warning")
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


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scene", help="play only this scene (a name from `installation scenes`)")
    p.add_argument("--headless", action="store_true", help="render offscreen through EGL, no window")
    p.add_argument("--duration", type=float,
                   help="stop after this many seconds: wall-clock seconds live, show time with --fixed-step "
                        "(duration x fps frames)")
    p.add_argument("--fps", type=int, help="presenter (and recording) frames per second")
    p.add_argument("--fixed-step", action="store_true",
                   help="offline: frame n is rendered at t = n / fps, not in real time; deterministic")
    p.add_argument("--record", type=Path, help="write the output to this video file (mp4) through ffmpeg")
    p.add_argument("--size", type=size_arg, help="output size WxH, e.g. 1280x720")
    p.add_argument("--display", type=int, help="display index for the window")
    p.add_argument("--fullscreen", action="store_true", help="borderless fullscreen")
    p.add_argument("--no-resume", action="store_true",
                   help="start the show from its beginning instead of the saved state (it is still saved)")
    p.add_argument("--replay", metavar="ARCHIVE", help="play an archived performance (FILE or FILE#SESSION) live, "
                   "looping; see `installation replay` for an offline re-render")


def soak_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--size", type=size_arg, default="320x180", help="output size WxH (default 320x180)")
    p.add_argument("--fps", type=int, default=30, help="presenter fps (default 30)")
    p.add_argument("--raise-every", type=int, default=50, help="decoder raises on every Nth frame (0 = never)")
    p.add_argument("--nan-every", type=int, default=37, help="decoder returns NaNs on every Nth frame (0 = never)")
    p.add_argument("--kill-every", type=float, default=20.0, help="SIGKILL the decoder process every N s (0 = never)")
    p.add_argument("--shader-every", type=float, default=30.0,
                   help="reload a shader that does not compile every N s (0 = never)")
    p.add_argument("--input-every", type=float, default=25.0,
                   help="kill a running input's thread every N s (0 = never)")
    p.add_argument("--reload-every", type=float, default=0.0,
                   help="reload config, scenes and shaders from disk every N s, as SIGHUP does (0 = never)")
    p.add_argument("--no-faults", action="store_true",
                   help="play the config as written (its parts, state and health on as configured) and inject "
                        "nothing: a memory soak of the show itself")
    p.add_argument("--sample-every", type=float, default=10.0,
                   help="seconds between memory samples (each process, anonymous memory, malloc, GL objects, "
                        "threads, files)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before memory is sampled (default: a fifth of the run, at most 60)")
    p.add_argument("--memory-log", type=Path, help="append every memory sample to this file as a JSON line")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="N",
                   help="trace Python allocations after the warm-up and report the N lines that grew most")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")


command("run", help="run the show in a window or headless", description="Run the show.", arguments=run_arguments,
        run=cmd_run, defaults={"calibrate": False})
command("calibrate", help="run the show with the projector outputs' test patterns to calibrate",
        description="Run the show with a test pattern on each [[outputs]] entry: move corners and mesh points with "
                    "the keyboard or mouse (or OSC /output/...), P shows the picture, S saves beside the config (it "
                    "also saves a second after each change). Keys: see the README's Projection section.",
        arguments=run_arguments, run=cmd_run, defaults={"calibrate": True})  # the same options as run
command("soak", help="run headless with faults injected and report whether anything crashed",
        description="Run the show headless at a small size with faults injected (decoder exceptions and NaN frames, "
                    "decoder process kills, broken shader reloads, input thread deaths); report fps, faults "
                    "contained, crashes, RSS slope and the longest wait for a new decoder frame.",
        arguments=soak_arguments, run=cmd_soak, defaults={"display": None})
