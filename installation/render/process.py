"""The decoder in its own process.

Why a process and not a thread: the presenter's GL calls hold Python's GIL (moderngl does not release it while a
software rasteriser works), which starved a decoder thread to a quarter of its speed on a 2-core machine; and a
decoder that segfaults or runs out of memory takes only its own process down. The child runs the same
:class:`DecoderWorker` and :class:`DecoderGuard` as the thread mode. Plans go down a pipe (about 1 KB each: the
trajectories travel as keys), frames come back up another; if the child dies it is restarted with backoff and
the last good frame stays on screen.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.spawn as mp_spawn
import os
import signal
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator

from ..ops.logs import RepeatLog
from ..ops.memory import Trimmer
from ..ops.supervise import THREADS, SupervisedThread, die_with_parent, join_process, leave, supervised
from .slot import Frame, FrameSlot
from .worker import DecoderGuard, DecoderWorker, Plan

log = logging.getLogger(__name__)

STATS_EVERY = 0.5  # seconds between stats messages from the child


def gl_threads() -> int:
    """Cores left to software GL (llvmpipe) when sharing out the CPU: a quarter of them, at least one. llvmpipe
    rasterises on the loop's own thread (``LP_NUM_THREADS=0``, see :mod:`.glenv`), which needs that core."""
    return max(1, (os.cpu_count() or 2) // 4)


def default_threads(device: str) -> int:
    """Torch threads for a CPU decoder: the cores the presenter's software GL does not use."""
    return max(1, (os.cpu_count() or 2) - gl_threads()) if device == "cpu" else 1


MEMORY_KEYS = ("rss_mb", "vram_mb", "vram_total_mb", "malloc_in_use_mb", "malloc_free_mb", "py_kblocks")


HEAP_EVERY = 10.0  # seconds between readings of the heap: mallinfo2 walks every free chunk (~1 ms on a fragmented one)


def process_memory() -> dict[str, float | None]:
    """This (decoder) process's resident memory and GPU memory, for the parent's health report."""
    from ..ops.health import rss_mb, vram_mb, vram_total_mb

    return {"rss_mb": rss_mb(), "vram_mb": vram_mb(), "vram_total_mb": vram_total_mb()}


def heap_memory() -> dict[str, float | None]:
    """What this (decoder) process's heap holds: glibc's bytes in use and held free, Python's blocks in thousands;
    the soak logs them beside its resident memory."""
    import sys

    from ..ops.memory import malloc_stats

    heap = malloc_stats() or {}
    return {"malloc_in_use_mb": heap.get("in_use_mb"), "malloc_free_mb": heap.get("free_mb"),
            "py_kblocks": sys.getallocatedblocks() / 1000}


def child_sys_path(path: list[str]) -> list[str]:
    """``path`` without the folders that are packages of another entry: only shadows can be found through them.

    opencv-python's loader puts its own folder (``site-packages/cv2``) on ``sys.path`` while ``import cv2`` runs
    and takes it off again afterwards; a child spawned in that moment imported ``cv2/typing`` as ``typing`` and
    died while importing numpy.
    """
    def norm(p: str) -> str:
        return os.path.normpath(os.path.abspath(p or os.curdir))

    roots = {norm(p) for p in path}
    return [p for p in path
            if not (os.path.isfile(os.path.join(norm(p), "__init__.py")) and os.path.dirname(norm(p)) in roots)]


_SPAWN_LOCK = threading.Lock()  # one spawn at a time replaces multiprocessing's preparation step


@contextlib.contextmanager
def _clean_child_path() -> Iterator[None]:
    """Children spawned meanwhile get :func:`child_sys_path` of the parent's path, whatever another thread of the
    parent is importing. The path reaches a spawned child only through ``multiprocessing.spawn``'s preparation
    data, which the child applies before it imports anything, so that is where it is cleaned."""
    with _SPAWN_LOCK:
        original = mp_spawn.get_preparation_data

        def prepared(name: str) -> dict[str, Any]:
            data = original(name)
            if "sys_path" in data:
                data["sys_path"] = child_sys_path(data["sys_path"])
            return data

        mp_spawn.get_preparation_data = prepared
        try:
            yield
        finally:
            mp_spawn.get_preparation_data = original


def start_process(proc: Any) -> None:
    """Start a spawned ``multiprocessing`` process with an import path that does not depend on what the parent
    happens to be importing (see :func:`child_sys_path`). The camera's worker process starts this way too.

    Start it from a thread that lives as long as the process should: a child that calls :func:`die_with_parent`
    is killed when the thread that started it ends (Linux's notion of its parent)."""
    with _clean_child_path():
        proc.start()


class _PipeSlot:
    """The child's side of the frame slot: a sender thread ships the newest frame up the pipe.

    The decoder thread only hands the frame over, so it never waits on the pipe (writing a 512x512 frame took about
    0.6 ms here, 6% of a frame at 110 fps; a 1024x1024 one about 5 ms). Latest wins: a frame not yet sent when a
    newer one arrives is dropped (the presenter would only have shown the newer one) and counted.
    """

    def __init__(self, conn, guard: DecoderGuard) -> None:
        self._conn = conn
        self._guard = guard
        self._lock = threading.Lock()  # one writer on the pipe at a time
        self._cond = threading.Condition()
        self._pending: tuple[Frame, dict | None] | None = None
        self._closed = False
        self._stats_at = 0.0
        self._heap: dict[str, float | None] = {}
        self._heap_at = -HEAP_EVERY
        self.trimmer = Trimmer(60.0)  # the decoder's freed tensors go back to the system between scenes (issue 33)
        self.published = 0
        self.superseded = 0
        self.send_errors = 0
        self._repeats = RepeatLog(log, interval=60.0)
        self._sender = supervised("frame-sender", self._send_loop)

    def publish(self, frame: Frame) -> None:
        self.published += 1
        stats = self._due_stats()
        with self._cond:
            if self._pending is not None:
                self.superseded += 1
                stats = stats or self._pending[1]
            self._pending = (frame, stats)
            self._cond.notify()

    def _due_stats(self) -> dict | None:
        now = time.monotonic()
        if now - self._stats_at < STATS_EVERY:
            return None
        self._stats_at = now
        self.trimmer.maybe()
        if now - self._heap_at >= HEAP_EVERY:
            self._heap_at, self._heap = now, heap_memory()
        return self.stats()

    def stats(self) -> dict:
        return {**self._guard.stats(), "superseded": self.superseded, "send_errors": self.send_errors,
                "thread_restarts": THREADS.restarts(), **process_memory(), **self._heap}

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return  # closed, and everything handed over has been sent
                frame, stats = self._pending
                self._pending = None
            try:
                self.send("frame", frame, stats)
            except (OSError, ValueError, EOFError):
                return  # the parent is gone
            except Exception as e:  # noqa: BLE001 - a frame that cannot be sent is dropped, never the sender
                self.send_errors += 1
                self._repeats.warning("send", "could not send a frame to the presenter (%s), %d so far", e,
                                      self.send_errors)

    def send(self, kind: str, frame: Frame | None, stats: dict | None) -> None:
        with self._lock:
            self._conn.send((kind, frame, stats))

    def send_stats(self) -> None:
        """Stats on a timer too: a decoder that produces no frames (failing, preparing, hung) must still report."""
        stats = self._due_stats()
        if stats is not None:
            self.send("stats", None, stats)

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending, then stop the sender."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._sender.join(timeout)


def _child(plans, frames, device: str, threads: int, origin: float, max_fps: float, backoff: tuple,
           log_level: str = "info", hooks: tuple = (), parent: int = 0) -> None:
    """Entry point of the decoder process: runs until the parent sends None (then it stops its decoder, sends its
    last stats and leaves at once) or goes away (then it leaves at once, or is killed with it)."""
    import faulthandler

    if parent:
        die_with_parent(parent)
    # The parent owns this process's life (it sends None, or kills it): a SIGTERM or Ctrl-C meant for the whole
    # service must not end it first and look like a crash. A native crash here leaves its stacks in the log.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    faulthandler.enable()
    import torch

    from ..ops.logs import LogSettings, setup_logging
    from ..latent.plan import TrajectoryCache

    setup_logging(LogSettings(level=log_level))  # stderr, which the service's journal collects with the parent's

    torch.set_num_threads(threads or default_threads(device))
    guard = DecoderGuard(device, *backoff)
    slot = _PipeSlot(frames, guard)
    from .hooks import HookRunner

    runner = HookRunner(hooks, lambda result: slot.send("hook", None, result))  # beside frames, up the same pipe
    worker = DecoderWorker(guard, slot, lambda: time.perf_counter() - origin, max_fps, on_frame=runner or None,
                           gate=runner.admit if runner.gates else None)
    cache = TrajectoryCache()
    worker.start()
    camera: dict[str, Any] = {}  # the last camera frame received, and its edge maps
    try:
        while True:
            if not plans.poll(STATS_EVERY):
                slot.send_stats()
                continue
            plan = plans.recv()
            if plan is None:
                break
            # Drain: only the newest plan matters.
            while plans.poll():
                nxt = plans.recv()
                if nxt is None:
                    plan = None
                    break
                plan = nxt
            if plan is None:
                break
            plan = cache.attach(plan)
            # The camera frame (with its edge maps) travels only when it changed; plans in between reuse the last
            # one received.
            extras = getattr(plan, "extras", None)
            if extras is not None and "source" in extras:
                camera = {k: extras[k] for k in ("source", "edges") if k in extras}
            elif extras is not None and camera and getattr(plan, "wants_source", False):
                plan = replace(plan, extras={**extras, **camera})
            worker.submit(plan)
            slot.send_stats()
    except (EOFError, OSError):
        leave(0)  # the parent is gone: nobody to stop for or report to
    except BaseException:
        log.exception("the decoder process failed")
        leave(1)
    worker.stop(timeout=3.0)  # a frame in flight may finish; a hung one is not waited for
    runner.close()
    slot.close()
    try:
        slot.send("stats", None, slot.stats())
    except (OSError, ValueError):
        pass
    leave(0)


class ProcessWorker:
    """Same interface as :class:`DecoderWorker`, with the decoder in a child process.

    ``backoff`` is ``([decoder] restart_backoff_s, restart_backoff_max_s)``: the decoder's own rebuilds in the child
    and the restarts of a process that ended both wait ``backoff[0]`` doubling per failure in a row, at most
    ``backoff[1]``. A process that started (its first message arrived) resets the count: a crash after a slow start
    under load waits ``backoff[0]`` again, not a wait that grew while its predecessors were starting.
    """

    def __init__(self, slot: FrameSlot, device: str, origin: float, max_fps: float = 0.0, threads: int = 0,
                 backoff: tuple[float, float] = (0.5, 10.0), hang_s: float = 120.0,
                 log_level: str = "info", hooks: tuple = (),
                 on_hook: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.slot = slot
        self.device = device
        self.origin = origin
        self.max_fps = max_fps
        self.threads = threads
        self.backoff = backoff
        self.hang_s = hang_s  # a prepare or render call longer than this is a hang: the process is killed
        self.log_level = log_level
        self.hooks = tuple(hooks)
        self.on_hook = on_hook  # called on the reader thread with each post-render hook result
        self.hangs = 0
        self.crashes = 0
        self.remote: dict[str, Any] = {"frames": 0, "faults": {}, "restarts": 0, "decoder": None}
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._plans = None
        self._plan: Plan | None = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._reader: SupervisedThread | None = None
        self._restart_at = 0.0
        self._streak = 0  # processes in a row that ended before they started (sent a first message)
        self.started = False  # the current process has started (its first message arrived)
        self.last_delay = 0.0  # the wait before the latest restart, seconds
        self._repeats = RepeatLog(log, interval=60.0)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._spawn()

    def _spawn(self) -> None:
        plans_r, plans_w = self._ctx.Pipe(duplex=False)
        frames_r, frames_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_child, name="installation-decoder", daemon=True,
                                 args=(plans_r, frames_w, self.device, self.threads, self.origin, self.max_fps,
                                       self.backoff, self.log_level, self.hooks, os.getpid()))
        self.started = False
        start_process(proc)
        plans_r.close()
        frames_w.close()
        self._proc, self._plans = proc, plans_w
        self._reader = supervised("decoder-frames", self._read, frames_r, proc)
        if self._plan is not None:
            self._send(self._plan)

    def _read(self, conn, proc) -> None:
        """The reader thread (supervised): receive frames and stats until the child ends; a crash schedules a
        restart. A fault that ends the receiving may have cut a message in half, so the pipe cannot be read on:
        the process is killed and restarted like a crashed one (and this thread, run again, finds the pipe closed
        and ends; the new process has a reader of its own)."""
        if conn.closed:
            return
        try:
            self._receive(conn)
        except BaseException:
            proc.kill()
            self._ended(conn, proc)
            raise
        self._ended(conn, proc)

    def _receive(self, conn) -> None:
        while True:
            try:
                kind, frame, stats = conn.recv()
            except (EOFError, OSError):
                return
            except Exception as e:  # noqa: BLE001 - a message that does not unpickle must not kill the reader
                log.warning("bad message from the decoder process: %s", e)
                continue
            if not self.started:
                self.started = True
                self._streak = 0  # it runs: a restart after its end waits the shortest backoff again
            if kind == "hook":
                try:
                    if self.on_hook is not None:
                        self.on_hook(stats)
                except Exception:  # noqa: BLE001 - a bad hook result must not kill the reader
                    self._repeats.error("hook", "a post-render hook's result could not be applied", exc_info=True)
                continue
            if stats is not None:
                self.remote = stats
            if kind == "frame":
                self.slot.publish(frame)

    def _ended(self, conn, proc) -> None:
        """The child's pipe is done: forget its memory and, unless stopping, schedule its restart."""
        conn.close()
        self._forget_memory()
        join_process(proc, 5)  # stop() may be joining it too: see join_process
        if self._stop.is_set():
            return
        self.crashes += 1
        delay = self.last_delay = self.restart_delay()
        self._streak += 1
        log.error("decoder process ended (exit code %s); restarting in %.1f s", proc.exitcode, delay)
        self._restart_at = time.monotonic() + delay

    def restart_delay(self) -> float:
        """Seconds before the next restart: ``backoff[0]`` after a process that had started, doubling per process
        in a row that ended before starting, at most ``backoff[1]``."""
        return min(self.backoff[0] * 2 ** self._streak, self.backoff[1])

    def _forget_memory(self) -> None:
        """The process is gone and its memory with it: /health must not keep counting it."""
        self.remote = {k: v for k, v in self.remote.items() if k not in MEMORY_KEYS}

    def restart_soon(self) -> None:
        """Start again (after a stop) at the next :meth:`submit`, on the caller's thread of that: the loop's, which
        lives as long as the show, as the process's life is tied to the thread that started it."""
        self._stop.clear()
        self._restart_at = time.monotonic()

    def _maybe_restart(self) -> None:
        if self._stop.is_set() or self.alive or self._restart_at == 0.0:
            return
        if time.monotonic() >= self._restart_at:
            self._restart_at = 0.0
            self._spawn()

    def stop(self, timeout: float = 6.0) -> None:
        self._stop.set()
        if self._plans is not None:
            try:
                with self._send_lock:
                    self._plans.send(None)
            except (OSError, ValueError):
                pass
        if self._proc is not None:
            # It ignores SIGTERM (the service's stop is ours to handle): one that has not left in time is killed.
            if not join_process(self._proc, timeout):
                log.warning("decoder process did not stop in %.0f s; killing it", timeout)
                self._proc.kill()
                self._proc.join(2)
        if self._reader is not None:
            self._reader.join(2)
        if self._plans is not None:
            self._plans.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- per tick ----------------------------------------------------------------------------------------------
    def submit(self, plan: Plan) -> None:
        self._plan = plan
        if self.alive:
            if self.remote.get("busy_s", 0.0) > self.hang_s:
                self.hangs += 1
                log.error("decoder call running for %.0f s: killing the decoder process", self.remote["busy_s"])
                self.remote = {**self.remote, "busy_s": 0.0}
                self._proc.kill()
                return
            self._send(plan)
        else:
            self._maybe_restart()

    def _send(self, plan: Plan) -> None:
        try:
            with self._send_lock:
                self._plans.send(plan)
        except (OSError, ValueError, BrokenPipeError):
            pass  # the reader sees the child end and schedules the restart
