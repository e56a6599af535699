#!/usr/bin/env python3
"""Stress harness for the native heap abort (issue 23: ``free(): corrupted unsorted chunks``, exit 134).

It multiplies what every sighting had in common, in several processes at once, with glibc's heap checking on and
core dumps collected, and restarts each process when it dies (counting how, and reading each core with gdb).

Two kinds of worker (``--mode``):

- ``gl``: the show's own GL parts driven as fast as they go (no decoder model, no pacing): the real
  :class:`~installation.render.targets.HeadlessTarget`, :class:`~installation.render.present.Presenter` with every
  shader of ``shaders/``, :class:`~installation.render.outputs.Output` and :class:`PresentedTap` with four sinks
  (a preview that keeps the newest frame, a recorder-like writer thread, an NDI-like RGBA converter thread, a
  thumbnail maker thread). Every "scene" (``--scene-frames`` frames) changes the decoder frame size (among sizes
  whose ``3 * width`` is not a multiple of 4 too) and where frames come from: a thread in this process, or a child
  process through a pipe (as ``[decoder] isolation`` "thread" and "process"). Every ``--reload-frames`` frames the
  shader chain is compiled again (what a SIGHUP reload does); each frame is read back for the sinks; a thread
  runs the garbage collector meanwhile (``__del__`` of anything on another thread).
- ``show``: the real show (``installation run --headless``) with every sink on, scenes of 3 s with decoders of
  different sizes, process and thread isolation alternating between workers, and a SIGHUP reload every
  ``--hup-s`` seconds from this supervisor.

- ``c``: ``scripts/llvmpipe_race.c``, the presenter's GL calls in C without Python (frame texture re-allocated at
  another size every 4 frames, upload, draw, read-back, glFinish), plus ``--flushes`` small draws each followed by
  glFlush and malloc/free churn on the drawing thread: about 2,000 llvmpipe scenes a second per worker here, tens
  of times what the gl mode reaches.

Mesa's threads are the variable: ``--lp-threads unset|N`` sets ``LP_NUM_THREADS`` for the workers (``unset``
removes it, so the runtime's own choice applies; ``1`` was the runtime's choice on a 2-core machine before the
fix; ``0`` rasterises on the calling thread).

    python scripts/heap_stress.py --mode gl --procs 3 --minutes 30 --lp-threads 1 --out stress/gl-lp1

Results: ``<out>/summary.json`` (rewritten as runs end), one folder per worker life with its log, and for each
core dump ``bt.txt`` (``gdb -batch -ex "thread apply all bt"``). Cores beyond ``--keep-cores`` are deleted after
their backtrace is taken. A worker that uses no CPU for ``--hang-s`` is hung: gdb reads its threads into
hang.txt, then SIGABRT leaves a core. Exit 0 when no worker died of a signal, aborted or hung, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MALLOC_DEBUG = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"  # glibc >= 2.34 checks only with this preloaded
ASAN = "/usr/lib/x86_64-linux-gnu/libasan.so.8"  # gcc 12's; `--asan` preloads it into every process of a worker
# Its allocator in place of glibc's: a double or invalid free, and an overflow through memcpy/memset/memmove (what
# Mesa's and numpy's copies use), are reported at the call with both stacks; freed blocks wait in a quarantine, so
# a late write through a stale pointer no longer lands in a live block. Uninstrumented code's own loads and stores
# are not checked. Leak checking is off (Python leaves its objects at exit on purpose).
ASAN_OPTIONS = ("detect_leaks=0:handle_segv=0:allow_user_segv_handler=1:abort_on_error=1:log_path=asan:"
                "malloc_context_size=20:quarantine_size_mb=64")

# Decoder frame sizes a scene change moves between: square and wide, and widths whose RGB rows are not a multiple
# of 4 bytes (161, 97, 333), as the decoder sizes of different scenes are.
FRAME_SIZES = [(256, 256), (161, 97), (320, 180), (512, 288), (97, 61), (333, 333), (128, 72)]


# ----------------------------------------------------------------------------------------------------------------
# the gl worker
# ----------------------------------------------------------------------------------------------------------------

def _frame(size, seq):
    import numpy as np

    w, h = size
    x = (np.arange(w, dtype=np.uint16)[None, :] + seq) % 256
    y = np.arange(h, dtype=np.uint16)[:, None]
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[..., 0] = x
    rgb[..., 1] = y % 256
    rgb[..., 2] = (x + y) % 256
    return rgb


def _torch_frames():
    """Frames from a CPPN-like forward pass in torch (its own threads), as the decoder thread makes them."""
    import torch

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    w1, w2 = torch.randn(3, 32, generator=gen), torch.randn(32, 3, generator=gen)

    def make(size, seq):
        w, h = size
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        inp = torch.stack([xs, ys, torch.full_like(xs, seq * 0.01)], -1).reshape(-1, 3)
        out = torch.sigmoid(torch.sin(inp @ w1) @ w2).reshape(h, w, 3)
        return (out * 255).to(torch.uint8).numpy()

    return make


def _child_frames(conn, size, count):
    """The "decoder process": frames up a pipe, as the decoder process sends them."""
    from installation.render.slot import Frame

    for seq in range(count):
        try:
            conn.send(Frame(_frame(size, seq), seq, 0.0, time.monotonic(), cut=1))
        except (OSError, EOFError, BrokenPipeError):
            return
    conn.close()


def gl_worker(args) -> int:
    import gc
    import multiprocessing as mp
    import queue

    import numpy as np

    from installation.render.outputs import LatestFrame, Output, PresentedTap
    from installation.render.present import Presenter
    from installation.render.shaders import load_dir
    from installation.render.slot import Frame, FrameSlot
    from installation.render.targets import HeadlessTarget

    out_size = tuple(int(v) for v in args.size.split("x"))
    make = _frame
    if args.torch:  # as a show with an in-process decoder: torch (and Triton's LLVM) loaded before Mesa's
        from installation.render.targets import preload_decoders

        preload_decoders(["gan"])
        make = _torch_frames()
    target = HeadlessTarget(out_size)
    shaders = load_dir(ROOT / "shaders")
    chain = [shaders["present"]] + [s for n, s in sorted(shaders.items()) if n != "present"]
    presenter = Presenter(target.ctx, target.size, chain)
    output = Output(target.ctx, target.framebuffer, target.size)
    tap = PresentedTap(output)
    preview = LatestFrame()
    tap.add(preview)
    stop = threading.Event()

    class QueueSink:
        """A sink whose thread uses the bytes after the loop has moved on (recorder, NDI, thumbnails)."""

        def __init__(self, name, work):
            self.q = queue.Queue(maxsize=4)
            self.work = work
            self.done = 0
            self.t = threading.Thread(target=self._run, name=name, daemon=True)
            self.t.start()

        def wants(self, t):
            return True

        def put(self, rgb, size, t):
            try:
                self.q.put_nowait((rgb, size))
            except queue.Full:
                pass

        def _run(self):
            while not stop.is_set():
                try:
                    rgb, size = self.q.get(timeout=0.2)
                except queue.Empty:
                    continue
                self.work(rgb, size)
                self.done += 1

    def record(rgb, size):
        img = np.frombuffer(rgb, np.uint8).reshape(size[1], size[0], 3)[::-1]
        bytes(np.ascontiguousarray(img).data)  # what the recorder writes to ffmpeg

    def ndi(rgb, size):
        img = np.frombuffer(rgb, np.uint8).reshape(size[1], size[0], 3)[::-1]
        rgba = np.empty((size[1], size[0], 4), np.uint8)
        rgba[..., :3] = img
        rgba[..., 3] = 255

    def thumb(rgb, size):
        img = np.frombuffer(rgb, np.uint8).reshape(size[1], size[0], 3)[::-1]
        step = max(1, max(size) // 96)
        np.ascontiguousarray(img[::step, ::step]).tobytes()

    sinks = [QueueSink("recorder", record), QueueSink("ndi", ndi), QueueSink("thumbs", thumb)]
    for s in sinks:
        tap.add(s)

    def collector():
        while not stop.wait(0.05):
            gc.collect()

    threading.Thread(target=collector, name="gc", daemon=True).start()
    slot = FrameSlot()
    ctx = mp.get_context("spawn")
    producer_stop = threading.Event()
    producers = []

    def thread_source(size, cut):
        seq = 0
        while not producer_stop.is_set():
            seq += 1
            slot.publish(Frame(make(size, seq), seq, 0.0, time.monotonic(), cut=cut))
            time.sleep(0.002)

    def pipe_source(size, cut):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child_frames, args=(w, size, 1_000_000), daemon=True)
        p.start()
        w.close()
        try:
            while not producer_stop.is_set():
                if not r.poll(0.1):
                    continue
                f = r.recv()
                slot.publish(Frame(f.rgb, f.seq, 0.0, time.monotonic(), cut=cut))
        except (EOFError, OSError):
            pass
        finally:
            r.close()
            p.kill()
            p.join(5)

    deadline = time.monotonic() + args.seconds
    frames = scenes = reloads = 0
    extra = None
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        if frames % args.scene_frames == 0:  # a scene change: another decoder size, another frame source
            producer_stop.set()
            for p in producers:
                p.join(10)
            producer_stop = threading.Event()
            size = FRAME_SIZES[(scenes + args.index) % len(FRAME_SIZES)]
            src = pipe_source if scenes % 2 else thread_source
            producers = [threading.Thread(target=src, args=(size, scenes), name=src.__name__, daemon=True)]
            producers[0].start()
            scenes += 1
        if frames % args.reload_frames == args.reload_frames // 2:  # a reload: the chain compiled again
            presenter.set_chain(chain)
            reloads += 1
        if frames % 7 == 0:  # textures re-allocated at odd sizes, read back with read_into, released
            if extra is not None:
                extra.release()
            w, h = FRAME_SIZES[frames % len(FRAME_SIZES)]
            extra = target.ctx.texture((w, h), 3, alignment=1)
            extra.write(_frame((w, h), frames).data)
            buf = bytearray(w * h * 3)
            extra.read_into(buf, alignment=1)
        now = time.monotonic() - t0
        presenter.take(slot.latest(), now, transition=0.5)
        output.show(presenter.render(now, {}), 1.0)
        tap.offer(now)
        for _ in range(args.flushes):  # more sinks' read-backs and waits on llvmpipe's fences per frame
            output.read()
            target.swap()
        target.swap()
        frames += 1
    stop.set()
    producer_stop.set()
    for p in producers:
        p.join(10)
    print(json.dumps({"frames": frames, "scenes": scenes, "reloads": reloads, "fps": round(frames / args.seconds, 1),
                      "sink_frames": [s.done for s in sinks], "preview": preview.taken}), flush=True)
    target.close()
    return 0


# ----------------------------------------------------------------------------------------------------------------
# the show worker's config
# ----------------------------------------------------------------------------------------------------------------

def write_show_config(folder: Path, isolation: str, index: int, default: bool = False, ndi: bool = True) -> Path:
    """A copy of config/default.toml for a stress show, every sink on: web preview (a watcher fetches it), state
    picture every second, archive points and thumbnails 4 a second, NDI out (if cyndilib is installed), and the
    recorder (``--record``). ``default``: the default show's own scenes, 5 s each, at its output size; otherwise
    3-second scenes whose CPPN decoders have 7 different sizes, at 320x180."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes_dir = folder / "scenes"
    scenes_dir.mkdir(exist_ok=True)
    text = (ROOT / "config" / "default.toml").read_text()
    if default:
        import tomllib

        names = tomllib.loads(text)["show"]["scenes"]
        for name in names:
            src = (ROOT / "scenes" / f"{name}.toml").read_text()
            (scenes_dir / f"{name}.toml").write_text(_scene_toml(src, duration=5.0))
    else:
        names = []
        src = (ROOT / "scenes" / "aurora.toml").read_text()
        for i, (w, h) in enumerate(FRAME_SIZES):
            name = f"stress{i}"
            names.append(name)
            (scenes_dir / f"{name}.toml").write_text(_scene_toml(src, 3.0, (w, h), 11 + i + index))
        text = text.replace('size = "1280x720"', 'size = "320x180"')
    text = text.replace('scenes = ["aurora", "halo", "tide", "lattice", "nocturne", "voyage", "vigil"]',
                        f"scenes = {json.dumps(names)}")
    text = text.replace('scenes_dir = "../scenes"', 'scenes_dir = "scenes"')
    text = text.replace('shaders_dir = "../shaders"', f'shaders_dir = "{ROOT / "shaders"}"')
    text = text.replace('isolation = "process"', f'isolation = "{isolation}"')
    text = text.replace('[web]                    # the control page for a phone or laptop: http://127.0.0.1:9090/ '
                        '(README "A phone")\nenabled = false', '[web]\nenabled = true')
    text = text.replace("preview_fps = 4.0", "preview_fps = 30.0")
    text = text.replace("point_every = 1.0", "point_every = 0.25")
    text = text.replace('path = "state/show.json" # relative to this file\ninterval_s = 5.0',
                        'path = "state/show.json" # relative to this file\ninterval_s = 1.0')
    keys = ["enabled = true", "preview_fps = 30.0", "point_every = 0.25", "interval_s = 1.0"]
    if ndi:
        try:
            import cyndilib  # noqa: F401
        except ImportError:
            ndi = False
    if ndi:
        # One NDI name per run and worker: two senders of one name on a machine is a refused sender (see ndi.py).
        name = f"{folder.parent.parent.name}-{index}"
        text = text.replace("sinks = []", f'sinks = [{{ kind = "ndi", name = "{name}" }}]', 1)
        keys.append("kind = \"ndi\"")
    for key in keys:
        if key not in text:
            raise SystemExit(f"stress config: could not set {key!r} in config/default.toml")
    path = folder / "stress.toml"
    path.write_text(text)
    return path


def _scene_toml(src: str, duration: float, size: tuple[int, int] | None = None, seed: int | None = None) -> str:
    """A scene file with another duration (and decoder resolution and seed when given)."""
    out = []
    for line in src.splitlines():
        key = line.split("=")[0].strip()
        if key == "duration":
            line = f"duration = {duration}"
        elif key == "transition":
            line = f"transition = {min(1.0, duration / 3)}"
        elif key == "seed" and seed is not None:
            line = f"seed = {seed}"
        elif key == "resolution" and size is not None:
            line = f'resolution = "{size[0]}x{size[1]}"'
        out.append(line)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# the supervisor
# ----------------------------------------------------------------------------------------------------------------

def _core_limit() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    os.setsid()


def backtrace(core: Path, exe: str) -> str:
    """Every thread's stack in a core, as the README's troubleshooting recipe reads it."""
    try:
        r = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set debuginfod enabled off", "-ex", "info sharedlibrary",
                            "-ex", "thread apply all bt", exe, str(core)], capture_output=True, text=True,
                            timeout=1800)
    except subprocess.TimeoutExpired:  # a 1 GB core at a load of 80 took longer than 10 minutes: keep the core
        return f"gdb did not finish reading {core} in 30 minutes; read it by hand"
    return r.stdout + r.stderr


def worker_env(args, index: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONFAULTHANDLER"] = "1"
    if args.lp_threads == "unset":
        env.pop("LP_NUM_THREADS", None)
    else:
        env["LP_NUM_THREADS"] = args.lp_threads
    if args.gallium:
        env["GALLIUM_DRIVER"] = args.gallium
    if args.asan:
        env["LD_PRELOAD"] = (ASAN + " " + env.get("LD_PRELOAD", "")).strip()
        env["ASAN_OPTIONS"] = ASAN_OPTIONS  # log_path is relative: asan.<pid> in the life's folder
    elif args.check:
        env["GLIBC_TUNABLES"] = ":".join(["glibc.malloc.check=3"] + ([args.tunables] if args.tunables else []))
        env["MALLOC_PERTURB_"] = "165"
        if os.path.exists(MALLOC_DEBUG):
            env["LD_PRELOAD"] = (env.get("LD_PRELOAD", "") + " " + MALLOC_DEBUG).strip()
    env["JACK_NO_START_SERVER"] = "1"
    env["SDL_AUDIODRIVER"] = "dummy"
    return env


def build_c(out: Path) -> Path:
    """Compile scripts/llvmpipe_race.c (the presenter's GL calls in C) for ``--mode c``."""
    exe = out / "llvmpipe_race"
    subprocess.run(["gcc", "-O1", "-g", "-o", str(exe), str(ROOT / "scripts" / "llvmpipe_race.c"), "-lEGL",
                    "-lOpenGL"], check=True)
    return exe


def worker_cmd(args, index: int, life: Path) -> list[str]:
    if args.mode == "c":
        return [str(Path(args.out).resolve() / "llvmpipe_race"), str(args.c_frames), str(args.flushes)]
    if args.mode == "gl":
        return [sys.executable, str(Path(__file__).resolve()), "--worker", "--mode", "gl", "--index", str(index),
                "--seconds", str(args.life_s), "--size", args.size, "--scene-frames", str(args.scene_frames),
                "--reload-frames", str(args.reload_frames), "--flushes", str(args.flushes)] + (["--torch"] if args.torch else [])
    isolation = "process" if index % 2 == 0 else "thread"
    if args.default_show:
        isolation = "process"  # the default show's own setting
    config = write_show_config(life / "show", isolation, index, default=args.default_show)
    show = [sys.executable, "-m", "installation", "run", "--headless", "--config", str(config), "--no-resume",
            "--duration", str(args.life_s), "--record", str(life / "record.mp4")]
    # Its own network namespace: the web page, health and OSC ports of several shows do not collide. A watcher
    # fetches the web preview all the time (the show reads frames back for it only while someone watches); the
    # show's pid goes to show.pid for the supervisor's SIGHUPs; the wrapper exits with the show's status.
    script = ('ip link set lo up; "$@" & SHOW=$!; echo $SHOW > show.pid; '
              'while kill -0 $SHOW 2>/dev/null; do '
              'LD_PRELOAD= curl -s -m 2 -o /dev/null http://127.0.0.1:9090/preview.jpg; '
              'LD_PRELOAD= curl -s -m 2 -o /dev/null http://127.0.0.1:9080/health; sleep 0.1; done; wait $SHOW')
    # (curl without the preloads: it is not under test, and under --asan it hung on its first request for good)
    return ["unshare", "-n", "sh", "-c", script, "sh", *show]


class Supervisor:
    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.lives = 0
        self.runs: list[dict] = []
        self.cores_kept = 0
        self.started = time.time()

    def summary(self) -> dict:
        ends = {}
        for r in self.runs:
            ends[r["end"]] = ends.get(r["end"], 0) + 1
        worker_s = sum(r["seconds"] for r in self.runs)
        aborts = sum(1 for r in self.runs if r["end"] in ("SIGABRT", "exit 134"))
        hangs = sum(1 for r in self.runs if r["end"] == "hang")
        crashes = sum(1 for r in self.runs if r["end"].startswith("SIG") and r["end"] not in ("SIGKILL", "SIGTERM"))
        return {"mode": self.args.mode, "lp_threads": self.args.lp_threads, "gallium": self.args.gallium,
                "malloc_check": self.args.check and not self.args.asan, "asan": self.args.asan,
                "asan_reports": sum(len(r.get("asan", ())) for r in self.runs), "procs": self.args.procs,
                "started": time.ctime(self.started),
                "wall_h": round((time.time() - self.started) / 3600, 3), "worker_h": round(worker_s / 3600, 3),
                "lives": len(self.runs), "ends": ends, "heap_aborts": aborts, "native_crashes": crashes, "hangs": hangs,
                "crashes_per_worker_h": round(crashes / (worker_s / 3600), 3) if worker_s else None,
                "cores": [r["core"] for r in self.runs if r.get("core")],
                "first_frames": [r["first_frame"] for r in self.runs if r.get("first_frame")]}

    def write(self) -> None:
        with self.lock:
            (self.out / "summary.json").write_text(json.dumps(self.summary(), indent=1))

    def slot(self, index: int, deadline: float) -> None:
        while time.time() < deadline - 5:
            with self.lock:
                self.lives += 1
                life = self.out / f"life-{self.lives:04d}-w{index}"
            life.mkdir()
            cmd = worker_cmd(self.args, index, life)
            env = worker_env(self.args, index)
            start = time.time()
            with open(life / "log.txt", "wb") as log:
                p = subprocess.Popen(cmd, cwd=life, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     preexec_fn=_core_limit)
                next_hup = start + self.args.hup_s if self.args.mode == "show" else float("inf")
                cpu, still_since, hung = -1, time.time(), False
                while p.poll() is None:
                    if time.time() > deadline + 120:
                        os.killpg(p.pid, signal.SIGKILL)
                    now_cpu = _cpu_ticks(self._worker_pid(p, life))
                    if now_cpu != cpu or now_cpu < 0:  # it ran, or it has ended and its wrapper is ending: not hung
                        cpu, still_since = now_cpu, time.time()
                    elif not hung and time.time() - still_since > self.args.hang_s:
                        hung = True  # no CPU used for hang_s: every thread waits; read them, then abort it (core)
                        pid = self._worker_pid(p, life)
                        r = subprocess.run(["gdb", "-batch", "-nx", "-p", str(pid), "-ex", "thread apply all bt"],
                                           capture_output=True, text=True, timeout=900)
                        (life / "hang.txt").write_text(r.stdout + r.stderr)
                        try:
                            os.kill(pid, signal.SIGABRT)
                        except ProcessLookupError:  # it ended meanwhile
                            pass
                    if time.time() >= next_hup:
                        self._hup(life)
                        next_hup += self.args.hup_s
                    time.sleep(0.5)
            rc = p.returncode
            if rc > 128 and self.args.mode == "show" and rc - 128 in signal.valid_signals():
                rc = 128 - rc  # the show's wrapper shell reports a show killed by signal N as exit 128+N
            end = f"exit {rc}" if rc >= 0 else signal.Signals(-rc).name
            run = {"life": life.name, "seconds": round(time.time() - start, 1), "end": "hang" if hung else end}
            reports = sorted(str(f.relative_to(life)) for f in life.rglob("asan.*"))
            if reports:
                run["asan"] = reports
            cores = sorted(life.glob("core*"))
            if cores:
                exe = self._exe(cores[0])
                bt = backtrace(cores[0], exe)
                (life / "bt.txt").write_text(bt)
                run["first_frame"] = _first_frames(bt)
                with self.lock:
                    keep = self.cores_kept < self.args.keep_cores or bt.startswith("gdb did not finish")
                    self.cores_kept += keep
                if keep:
                    run["core"] = str(cores[0])
                else:
                    for c in cores:
                        c.unlink()
            for junk in ("record.mp4",):
                if (life / junk).exists():
                    (life / junk).unlink()
            if rc == 0 and not cores and not self.args.keep_clean:
                shutil.rmtree(life / "show", ignore_errors=True)
            with self.lock:
                self.runs.append(run)
            self.write()
            print(json.dumps(run), flush=True)

    def _exe(self, core: Path) -> str:
        """The executable a core came from (gdb needs it): the C program, or the Python that ran the worker or
        the show."""
        if self.args.mode == "c":
            return str(self.out / "llvmpipe_race")
        return sys.executable if os.path.exists(sys.executable) else shutil.which("python3")

    def _worker_pid(self, p, life: Path) -> int:
        """The process to watch: the show (its pid in show.pid) or the worker itself."""
        if self.args.mode == "show":
            try:
                return int((life / "show.pid").read_text())
            except (FileNotFoundError, ValueError):
                return p.pid
        return p.pid

    @staticmethod
    def _hup(life: Path) -> None:
        """SIGHUP to the show (its pid is in show.pid, written by the wrapper)."""
        try:
            os.kill(int((life / "show.pid").read_text()), signal.SIGHUP)
        except (ProcessLookupError, FileNotFoundError, ValueError):
            pass

    def run(self) -> int:
        if self.args.mode == "c":
            build_c(self.out)
        deadline = time.time() + self.args.minutes * 60
        threads = [threading.Thread(target=self.slot, args=(i, deadline), daemon=True) for i in range(self.args.procs)]
        for i, t in enumerate(threads):
            t.start()
            time.sleep(1.0 + i)  # staggered, so lives end at different times
        for t in threads:
            t.join()
        self.write()
        s = self.summary()
        print(json.dumps(s, indent=1))
        return 0 if not (s["native_crashes"] or s["heap_aborts"] or s["hangs"] or s["asan_reports"]) else 1


def _cpu_ticks(pid: int) -> int:
    """CPU time (user + system, all threads) a process has used so far, in clock ticks; -1 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return -1


def _first_frames(bt: str) -> str:
    """The crashing thread's top frames (the one in abort/raise), for the summary."""
    block = []
    for chunk in bt.split("\nThread "):
        if "abort" in chunk or "raise" in chunk or "SIGSEGV" in chunk:
            block = [ln.strip() for ln in chunk.splitlines() if ln.strip().startswith("#")][:14]
            break
    return " | ".join(block)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("gl", "show", "c"), default="gl",
                    help="gl: the show's GL parts; show: real shows; c: scripts/llvmpipe_race.c (no Python)")
    ap.add_argument("--c-frames", type=int, default=20000, help="c mode: frames per worker life")
    ap.add_argument("--procs", type=int, default=3, help="workers at once")
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock minutes for the whole run")
    ap.add_argument("--life-s", type=float, default=300.0, help="seconds each worker life lasts before a restart")
    ap.add_argument("--lp-threads", default="unset", help="LP_NUM_THREADS for the workers: 'unset' or a number")
    ap.add_argument("--gallium", default="", help="GALLIUM_DRIVER for the workers (e.g. softpipe); '' = default")
    ap.add_argument("--no-check", dest="check", action="store_false", help="without glibc's malloc checking")
    ap.add_argument("--asan", action="store_true", help="AddressSanitizer's allocator preloaded into the workers "
                    "instead of glibc's checks (reports: asan.<pid> in each life's folder)")
    ap.add_argument("--default-show", action="store_true",
                    help="show mode: the default show's scenes (5 s each) at its own size instead of the stress scenes")
    ap.add_argument("--tunables", default="", help="more glibc tunables, e.g. 'glibc.malloc.tcache_count=0:"
                    "glibc.malloc.mxfast=0' so a freed small block goes to the unsorted bin, where a stray write "
                    "into it is noticed (in tcache or a fastbin, a write at offset 8 goes unseen)")
    ap.add_argument("--hang-s", type=float, default=180.0,
                    help="a worker that uses no CPU for this long is hung: gdb reads its threads (hang.txt), then it "
                         "is sent SIGABRT for a core")
    ap.add_argument("--hup-s", type=float, default=10.0, help="show mode: seconds between SIGHUP reloads")
    ap.add_argument("--out", default="stress/run", help="folder for logs, cores, backtraces and summary.json")
    ap.add_argument("--keep-cores", type=int, default=3, help="cores kept (the rest deleted after gdb read them)")
    ap.add_argument("--keep-clean", action="store_true", help="keep the folders of lives that ended cleanly")
    ap.add_argument("--size", default="320x180", help="gl mode: output size")
    ap.add_argument("--scene-frames", type=int, default=40, help="gl mode: frames per scene")
    ap.add_argument("--reload-frames", type=int, default=60, help="gl mode: frames between chain reloads")
    ap.add_argument("--torch", action="store_true", help="gl mode: torch loaded first, frames from a torch pass")
    ap.add_argument("--flushes", type=int, default=0, help="gl mode: extra read-backs and finishes per frame; c mode: small draws and flushes per frame")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(ROOT))
        return gl_worker(args)
    return Supervisor(args).run()


if __name__ == "__main__":
    sys.exit(main())
