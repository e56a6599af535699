"""The soak run: the show headless for N minutes (scenes changing every 15 s at most) with faults injected, and figures that say whether it held up.

Faults injected, each at its own rate: decoder exceptions and NaN frames (every CPPN scene runs through the
``faulty`` decoder), the decoder process killed with SIGKILL, a shader that does not compile swapped in, and the
thread of a running input stopped behind its back. The runtime must contain all of them: ``crashes`` counts only
exceptions that escaped (the loop, a thread), and must stay 0.

Memory (issue 33): ``reload_every_s`` reloads the show from disk on that schedule, as SIGHUP does; ``faults=False``
plays the config as written (every part it enables, its state and health, no faulty decoder, no injected faults).
Every ``sample_s`` after the warm-up the run samples each process's resident memory (this one, the decoder's, the
camera's), this process's anonymous memory, malloc's bytes in use, live GL objects, threads and file descriptors;
``memory`` in the report gives each one's first and last value and its slope per hour, over all samples after the
warm-up and over their second half (a slope that only comes from warming up falls in the second half). A
``memory_log`` file gets every sample as a JSON line while the run goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
from array import array
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import parts
from .ops import memory as probes
from .clock import WallClock
from .config import ShowSpec
from .decoders import DecoderSpec
from .decoders.faulty import FaultySettings
from .ops import Trend
from .ops.health import rss_mb
from .render.projection import window_size
from .render.shaders import ShaderFile

log = logging.getLogger(__name__)

SCENE_S = 15.0  # longest a scene plays during a soak
WARMUP = 0.2  # fraction of the run (at most 60 s) before the RSS slope is measured
BROKEN_SHADER = ShaderFile("present", Path("<soak: broken shader>"), "#version 330\nvoid main() { not glsl; }\n")


def faulty_spec(spec: ShowSpec, raise_every: int, nan_every: int) -> ShowSpec:
    """The same show with every CPPN scene decoded by the ``faulty`` CPPN (same weights, faults on schedule).

    A fault rebuilds the decoder and so restarts its frame count: the smaller of two rates would always fire first.
    So scenes alternate: even ones raise, odd ones return NaNs (a show of one scene gets both, the smaller first).
    The fallback to the safe scene is off, so faults keep coming for the whole run (it has its own test).
    """
    scenes = []
    for i, scene in enumerate(spec.scenes):
        if scene.decoder.type == "cppn":
            both = len(spec.scenes) == 1
            settings = FaultySettings(**scene.decoder.settings.model_dump(),
                                      raise_every=raise_every if both or i % 2 == 0 else 0,
                                      nan_every=nan_every if both or i % 2 == 1 else 0)
            scene = replace(scene, decoder=DecoderSpec("faulty", settings))
        # Scenes change every SCENE_S at most, so a short soak passes through all of them (and their faults).
        duration = min(scene.duration or SCENE_S, SCENE_S)
        scenes.append(replace(scene, body=scene.body.model_copy(update={"duration": duration})))
    state = spec.config.state.model_copy(update={"enabled": False})
    health = spec.config.health.model_copy(update={"enabled": False})
    osc = spec.config.inputs.osc.model_copy(update={"port": 0, "host": "127.0.0.1", "feedback_host": ""})
    inputs = spec.config.inputs.model_copy(update={"osc": osc})
    decoder = spec.config.decoder.model_copy(update={"fallback_faults": 0})
    config = spec.config.model_copy(update={"state": state, "health": health, "inputs": inputs, "decoder": decoder})
    return ShowSpec(config, spec.path, scenes, spec.shaders, spec.params, spec.safe)


class _Injector:
    """Called after every tick: injects process kills, broken shaders and input deaths on their schedules."""

    def __init__(self, kill_every_s: float, shader_every_s: float, input_every_s: float,
                 reload_every_s: float = 0.0) -> None:
        self.every = {"kill": kill_every_s, "shader": shader_every_s, "input": input_every_s,
                      "reload": reload_every_s}
        start = time.monotonic()
        self.next = {k: start + v for k, v in self.every.items() if v > 0}
        self.injected = {"decoder_kills": 0, "shader_errors": 0, "input_deaths": 0, "reloads": 0}
        self.memory: MemorySampler | None = None
        self.rss = Trend(3600.0, min_samples=3, min_span_s=5.0, min_interval_s=1.0)
        self.warm_until = start
        self.last_sample = 0.0

    def __call__(self, rt: Any) -> None:
        now = time.monotonic()
        if now >= self.warm_until and now - self.last_sample >= 1.0:
            self.last_sample = now
            self.rss.add(rss_mb())
        if self.memory is not None and now >= self.warm_until:
            self.memory.maybe_sample(rt, now)
        for kind, at in list(self.next.items()):
            if now < at:
                continue
            self.next[kind] = now + self.every[kind]
            if kind == "kill" and getattr(rt.worker, "pid", None) and rt.worker.alive:
                os.kill(rt.worker.pid, signal.SIGKILL)
                self.injected["decoder_kills"] += 1
            elif kind == "shader":
                ok = rt.set_chain_files([BROKEN_SHADER])
                self.injected["shader_errors"] += 1
                if ok:
                    log.error("soak: a broken shader was accepted")
            elif kind == "reload":
                rt.request_reload()  # what SIGHUP does: the next tick reloads
                self.injected["reloads"] += 1
            elif kind == "input":
                part = next((p for name, p in rt.parts.items() if parts.info(name).is_input), None)
                if part is not None and part._thread is not None:
                    part._stop.set()  # the thread ends without stop(): to the runtime it died
                    self.injected["input_deaths"] += 1


def _slope_per_h(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, per hour; None with fewer than 3 or no time between them."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var <= 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in samples) / var * 3600.0


class Series:
    """One memory series' (seconds, value) samples in two flat arrays of doubles, made for ``capacity`` samples at
    the first one: keeping them costs the measured process no Python objects and no growth while it is measured
    (a list of tuples of floats, 104 bytes a sample, read as 1-2 MB/h of the show's own growth in issue 33's soaks;
    ``count.py_kblocks`` rose with it)."""

    __slots__ = ("t", "v", "n")

    def __init__(self, capacity: int) -> None:
        self.t = array("d", bytes(8 * max(capacity, 1)))
        self.v = array("d", bytes(8 * max(capacity, 1)))
        self.n = 0

    def add(self, t: float, value: float) -> None:
        if self.n == len(self.t):  # a run longer than planned: double
            self.t.extend(array("d", bytes(8 * self.n)))
            self.v.extend(array("d", bytes(8 * self.n)))
        self.t[self.n], self.v[self.n] = t, value
        self.n += 1

    def samples(self) -> list[tuple[float, float]]:
        return list(zip(self.t[:self.n], self.v[:self.n]))


class MemorySampler:
    """Samples the memory probes every ``every_s`` (GL objects every ``gl_every_s``: that walk is slower) from the
    loop thread; ``report()`` gives each series' first, last and slopes per hour. ``seconds``: how long it will
    sample, so each series is made at its full size at once."""

    def __init__(self, every_s: float = 10.0, gl_every_s: float = 60.0, log_path: Path | None = None,
                 seconds: float = 3600.0) -> None:
        self.every_s, self.gl_every_s = every_s, gl_every_s
        self.capacity = int(seconds / max(every_s, 1e-3)) + 4
        self.series: dict[str, Series] = {}
        self.start = time.monotonic()
        self.last = -math.inf
        self.last_gl = -math.inf
        self.log_path = log_path
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.threads_first: dict[int, str] | None = None  # Python threads at the first sample: ident -> name
        self.threads: dict[int, str] = {}  # and at the last

    def names(self, rt: Any) -> dict[int, str]:
        out: dict[int, str] = {}
        pid = getattr(rt.worker, "pid", None)
        if pid:
            out[pid] = "decoder"
        camera = rt.parts.get("camera")
        cpid = getattr(camera, "pid", None) if camera is not None else None
        if cpid:
            out[cpid] = "camera"
        return out

    def maybe_sample(self, rt: Any, now: float) -> None:
        if now - self.last < self.every_s:
            return
        self.last = now
        row: dict[str, float] = {}
        names = self.names(rt)
        for name, mb in probes.process_tree(names=names).items():
            row[f"rss.{name}"] = mb
        row["rss.total"] = sum(v for k, v in row.items() if k.startswith("rss."))
        for pid, name in ((None, "self"), *names.items()):  # the children's too: their heap or their libraries?
            sm = probes.smaps(pid)
            if sm:
                row[f"anon.{name}"] = sm["anon_mb"]
                row[f"file.{name}"] = sm["file_mb"]
        heap = probes.malloc_stats()
        if heap:
            row["malloc.in_use"] = heap["in_use_mb"]
            row["malloc.free"] = heap["free_mb"]
        remote = getattr(rt.worker, "remote", None) or {}  # the decoder process's own heap, as it last reported it
        for key, name in (("malloc_in_use_mb", "malloc.in_use.decoder"), ("malloc_free_mb", "malloc.free.decoder"),
                          ("py_kblocks", "count.py_kblocks.decoder")):
            if isinstance(remote.get(key), (int, float)):
                row[name] = remote[key]
        sqlite = probes.sqlite_mb()
        if sqlite is not None:
            row["malloc.sqlite"] = sqlite
        row.update({f"count.{k}": v for k, v in probes.counts().items()})
        self.track_threads(now - self.start)
        if now - self.last_gl >= self.gl_every_s:
            self.last_gl = now
            gl = probes.gl_objects()
            row["gl.total"] = sum(gl.values())
            row.update({f"gl.{k}": v for k, v in gl.items()})
            row.update(self.parts(rt))
            # Those walks list every object (MBs of temporaries): hand them back now, or the next samples read
            # them as resident memory until the runtime's own trim (a 6 MB step every minute in issue 33's runs)
            probes.trim()
        self.record(now - self.start, row)

    def record(self, t: float, row: dict[str, float]) -> None:
        for key, value in row.items():
            series = self.series.get(key)
            if series is None:
                series = self.series[key] = Series(self.capacity)
            series.add(t, float(value))
        if self.log is not None:
            self.log.write(json.dumps({"t": round(t, 1), **{k: round(v, 3) for k, v in row.items()}}) + "\n")

    def track_threads(self, t: float) -> None:
        """Which Python threads came and went: a ``threads.started``/``threads.ended`` line in the memory log when
        the set changes, and :meth:`threads_new` at the end (a count that rose says how many, this says which)."""
        now = {th.ident: f"{th.name} ({type(th).__name__})" for th in threading.enumerate() if th.ident is not None}
        if self.threads_first is None:
            self.threads_first = now
        elif now.keys() != self.threads.keys() and self.log is not None:
            started = sorted(now[i] for i in now.keys() - self.threads.keys())
            ended = sorted(self.threads[i] for i in self.threads.keys() - now.keys())
            self.log.write(json.dumps({"t": round(t, 1), "threads.started": started, "threads.ended": ended}) + "\n")
        self.threads = now

    def threads_new(self) -> list[str]:
        """The Python threads alive at the last sample that were not at the first."""
        first = self.threads_first or {}
        return sorted(name for ident, name in self.threads.items() if ident not in first)

    def parts(self, rt: Any) -> dict[str, float]:
        """Per part: the threads, child processes and live GL objects it holds (``part.<name>.threads`` ...), and
        while tracemalloc traces, the Python KiB allocated from its own source files (``part.<name>.py_kib``:
        the classes it refers to, less files two parts share, such as the bus; the rest is ``part.other``)."""
        row: dict[str, float] = {}
        files: dict[str, set[str]] = {}
        for name, part in list(rt.parts.items()):
            for key, value in probes.held(part).items():
                row[f"part.{name}.{key}"] = value
            files[name] = probes.source_files(part)
        shared = {f for a in files for b in files if a < b for f in files[a] & files[b]}
        traced = probes.traced_by_files({name: fs - shared for name, fs in files.items()})
        row.update({f"part.{name}.py_kib": kib for name, kib in traced.items()})
        return row

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, series in sorted(self.series.items()):
            samples = series.samples()
            half = [s for s in samples if s[0] >= (samples[0][0] + samples[-1][0]) / 2]
            slope, late = _slope_per_h(samples), _slope_per_h(half)
            out[key] = {"first": round(samples[0][1], 2), "last": round(samples[-1][1], 2),
                        "per_h": None if slope is None else round(slope, 2),
                        "per_h_second_half": None if late is None else round(late, 2), "samples": len(samples)}
        return out

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


def run_soak(spec: ShowSpec, minutes: float, raise_every: int = 50, nan_every: int = 37, kill_every_s: float = 20.0,
             shader_every_s: float = 30.0, input_every_s: float = 25.0, reload_every_s: float = 0.0,
             faults: bool = True, sample_s: float = 10.0, warmup_s: float | None = None,
             memory_log: Path | None = None, trace: int = 0) -> dict[str, Any]:
    """Run the show headless for ``minutes`` with faults injected (``faults=False``: the config as written, nothing
    injected), reloading it every ``reload_every_s``; returns the figures (see the module doc). ``trace`` > 0 also
    runs tracemalloc from the end of the warm-up and reports the ``trace`` source lines whose Python allocations
    grew most."""
    from .render.targets import HeadlessTarget
    from .runtime import Runtime

    crashes: list[str] = []
    old_hook = threading.excepthook

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        crashes.append(f"thread {args.thread.name if args.thread else '?'}: {args.exc_type.__name__}")
        old_hook(args)

    threading.excepthook = thread_hook
    seconds = max(minutes * 60.0, 1.0)
    if not faults:
        kill_every_s = shader_every_s = input_every_s = 0.0
    injector = _Injector(kill_every_s, shader_every_s, input_every_s, reload_every_s)
    warm = min(WARMUP * seconds, 60.0) if warmup_s is None else max(warmup_s, 0.0)
    injector.warm_until = time.monotonic() + warm
    injector.memory = MemorySampler(sample_s, log_path=memory_log, seconds=max(seconds - warm, 1.0))
    # The hour-long window of the figure below holds at most 360 samples on a long run (a sample a second filled it
    # with 3,600 tuples over the first hour: growth of its own, in the very hour it measures)
    injector.rss = Trend(3600.0, min_samples=3, min_span_s=5.0, min_interval_s=min(10.0, max(1.0, seconds / 360)))
    tracer = _Tracer(trace, injector.warm_until) if trace > 0 else None
    if spec.config.decoder.isolation == "process":
        from .ops.memory import map_large_blocks

        map_large_blocks()  # as `installation run` does (issue 33)
    rss_start = rss_mb()
    show = faulty_spec(spec, raise_every, nan_every) if faults else spec
    out = show.config.output
    target = HeadlessTarget(window_size(show.config)[0])  # [[outputs]]: the window spanning them
    rt = None
    started = time.monotonic()
    try:
        rt = Runtime(show, target, WallClock(), fps=out.fps, keep_state=not faults, serve_health=not faults)

        def tick(runtime: Any) -> None:
            if tracer is not None:
                tracer.tick()  # before the sampler, so its first sample after the warm-up is traced
            injector(runtime)

        rt.run(seconds, on_tick=tick)
    except Exception as e:  # noqa: BLE001 - this is what the soak counts
        crashes.append(f"loop: {type(e).__name__}: {e}")
        log.exception("soak: the loop died")
    finally:
        threading.excepthook = old_hook
        injector.memory.close()
        target.close()
    elapsed = time.monotonic() - started
    report = rt._snapshot(rt._last_t) if rt is not None else {}
    slope = injector.rss.slope_per_hour()
    return {
        "minutes": round(minutes, 3),
        "presented_fps": round(rt.stats.presented / elapsed, 2) if rt else 0.0,
        "frames": rt.stats.presented if rt else 0,
        "frames_decoded": rt.slot.published if rt else 0,
        "injected": injector.injected,
        "faults_contained": report.get("faults", {}),
        "crashes": len(crashes),
        "crash_details": crashes[:10],
        "rss_mb_start": round(rss_start or 0.0, 1),
        "rss_mb_end": round(rss_mb() or 0.0, 1),
        "rss_mb_per_h_after_warmup": None if slope is None else round(slope, 2),
        "longest_without_new_frame_s": round(rt.stats.max_frame_gap, 3) if rt else None,
        "reload_faults": rt.faults.get("reload", 0) if rt else 0,
        "memory_warmup_s": round(warm, 1),
        "memory": injector.memory.report(),
        "threads_new": injector.memory.threads_new(),
        **({"tracemalloc_growth": tracer.report()} if tracer is not None else {}),
        "python": sys.version.split()[0],
    }


class _Tracer:
    """tracemalloc from ``start_at`` (monotonic) on; ``report()`` lists the source lines whose live allocations grew
    most since then (Python objects only; native memory shows in the ``anon``/``malloc`` series)."""

    def __init__(self, top: int, start_at: float) -> None:
        self.top, self.start_at = top, start_at
        self.base = None

    def tick(self) -> None:
        if self.base is None and time.monotonic() >= self.start_at:
            import tracemalloc

            tracemalloc.start(16)
            self.base = tracemalloc.take_snapshot()

    def report(self) -> list[str]:
        import tracemalloc

        if self.base is None or not tracemalloc.is_tracing():
            return []
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = snap.compare_to(self.base, "lineno")
        return [f"{s.traceback[0].filename}:{s.traceback[0].lineno} {s.size_diff / 1024:+.1f} KiB "
                f"({s.count_diff:+d} blocks)" for s in stats[:self.top]]
