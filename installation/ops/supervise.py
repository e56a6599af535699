"""Supervised threads: every thread the show owns runs through :class:`SupervisedThread`, so none dies unseen; and
the two calls a child process of the show makes so that it never outlives the show (:func:`die_with_parent`) and
ends fast (:func:`leave`).

A supervised thread calls its ``target``; when the target returns, the thread ends (its work is done: a stop, a
sentinel). When it raises, the exception is counted under the thread's name in a :class:`ThreadRegistry`, logged
(the first with its traceback, repeats once a minute with a count) and the target is called again after a backoff
that doubles from ``backoff`` up to ``backoff_max`` seconds (back to the start once a run lasted ``settle_s``). A set
``stop`` event ends the backoff at once and the thread with it. ``/health`` reads the registry: restarts and the last
error by thread name.

A ``SupervisedThread`` has the ``threading.Thread`` methods its owners use (``start``, ``join``, ``is_alive``,
``name``, ``ident``), so it replaces one in place; :meth:`SupervisedThread.inject` raises an exception inside the
running thread (a test kills it that way and sees it come back).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from .logs import RepeatLog

log = logging.getLogger(__name__)

BACKOFF_S = 0.1  # the first restart's wait
BACKOFF_MAX_S = 5.0  # the longest wait between restarts of one thread
SETTLE_S = 30.0  # a run this long forgets the deaths before it (the next restart waits BACKOFF_S again)


class InjectedFault(BaseException):
    """The exception :meth:`SupervisedThread.inject` raises inside a thread (fault drills and tests). Not an
    ``Exception``: the loop's own handlers for the faults they expect must not contain it; it stands for the fault
    nobody expected, which ends the loop."""


class ThreadRegistry:
    """The supervised threads of this process: restarts and the last error by thread name, and those running.

    Counts only grow (a thread object that is gone keeps its counts), so one runtime reports what happened since it
    began with ``restarts(since=...)``. Locked: threads write, the loop and /health read.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._restarts: Counter[str] = Counter()
        self._errors: dict[str, str] = {}
        self._when: dict[str, float] = {}
        self._threads: weakref.WeakSet[SupervisedThread] = weakref.WeakSet()

    def add(self, thread: "SupervisedThread") -> None:
        with self._lock:
            self._threads.add(thread)

    def died(self, name: str, error: BaseException) -> int:
        """Count a death of thread ``name``; returns its deaths so far."""
        with self._lock:
            self._restarts[name] += 1
            self._errors[name] = f"{type(error).__name__}: {error}"[:300]
            self._when[name] = time.monotonic()
            return self._restarts[name]

    def restarts(self, since: Mapping[str, int] | None = None) -> dict[str, int]:
        """Deaths (each followed by a restart unless stopped) by thread name, minus ``since`` (an earlier result)."""
        since = since or {}
        with self._lock:
            counts = dict(self._restarts)
        return {k: n - since.get(k, 0) for k, n in sorted(counts.items()) if n > since.get(k, 0)}

    def last_errors(self, names: Any = None) -> dict[str, str]:
        """The last error of each thread that died (of ``names`` only, when given)."""
        with self._lock:
            return {k: v for k, v in sorted(self._errors.items()) if names is None or k in names}

    def recent(self, within_s: float) -> dict[str, str]:
        """The last error of each thread that died within the last ``within_s`` seconds."""
        now = time.monotonic()
        with self._lock:
            return {k: self._errors[k] for k, t in sorted(self._when.items()) if now - t < within_s}

    def running(self) -> list[str]:
        """Names of the supervised threads alive now."""
        return sorted(t.name for t in self.live())

    def live(self) -> list["SupervisedThread"]:
        """The supervised threads alive now (tests and fault drills)."""
        with self._lock:
            threads = list(self._threads)
        return [t for t in threads if t.is_alive()]

    def find(self, name: str) -> list["SupervisedThread"]:
        """The live supervised threads called ``name``."""
        return [t for t in self.live() if t.name == name]


THREADS = ThreadRegistry()  # this process's; locked (see ThreadRegistry)
_REPEATS = RepeatLog(log, interval=60.0)


class SupervisedThread:
    """A daemon thread that runs ``target(*args)`` again when it raises (see the module's doc)."""

    def __init__(self, name: str, target: Callable[..., Any], *args: Any, stop: threading.Event | None = None,
                 backoff: float = BACKOFF_S, backoff_max: float = BACKOFF_MAX_S, settle_s: float = SETTLE_S,
                 registry: ThreadRegistry | None = None) -> None:
        self.name = name
        self._target = target
        self._args = args
        self._stop = stop if stop is not None else threading.Event()
        self.backoff = backoff
        self.backoff_max = max(backoff_max, backoff)
        self.settle_s = settle_s
        self._registry = registry if registry is not None else THREADS
        self.restarts = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    # -- what threading.Thread offers ----------------------------------------------------------------------------
    def start(self) -> None:
        self._registry.add(self)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """bool: the thread runs (its target, or the wait before running it again)."""
        return self._thread.is_alive()

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    @property
    def daemon(self) -> bool:
        return True

    # -- supervision ---------------------------------------------------------------------------------------------
    def halt(self) -> None:
        """No more restarts; a backoff wait in progress ends at once (the running target is not interrupted)."""
        self._stop.set()

    def inject(self, exc: type[BaseException] = InjectedFault) -> bool:
        """Raise ``exc`` inside the running thread at its next Python instruction (a thread blocked in a C call,
        such as a lock or a socket read, gets it when that returns); False when the thread does not run."""
        ident = self._thread.ident
        if ident is None or not self._thread.is_alive():
            return False
        n = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))
        return n == 1

    def _main(self) -> None:
        streak = 0
        while True:
            began = time.monotonic()
            try:
                self._target(*self._args)
                return  # done: a stop, a sentinel, a target with nothing left to do
            except (Exception, InjectedFault) as e:  # noqa: BLE001 - the point of this class: count, log, rerun
                if time.monotonic() - began >= self.settle_s:
                    streak = 0
                delay = min(self.backoff * 2 ** streak, self.backoff_max)
                streak += 1
                self._registry.died(self.name, e)
                self.restarts += 1
                self.last_error = f"{type(e).__name__}: {e}"
                stopping = self._stop.is_set()
                _REPEATS.error(self.name, "thread %s died (%s); %s", self.name, self.last_error,
                               "not restarted: stopping" if stopping else f"restarting in {delay:.1f} s",
                               exc_info=True)
                if stopping or self._stop.wait(delay):
                    return


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Worker:
    """A part whose work is one supervised thread: ``start()`` runs ``self._run`` as ``thread_name`` (restarted when
    it raises), ``stop()`` sets ``self._stop``, joins and calls ``_stopped()``; both idempotent. ``alive``: the
    thread runs. The threaded inputs (:class:`installation.inputs.base.ThreadedInput`) and the presets share it."""

    thread_name = "worker"
    stop_timeout_s = 5.0  # how long stop() waits for the thread before it warns and goes on

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: SupervisedThread | None = None

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread; returns at once."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = supervised(self.thread_name, self._run, stop=self._stop)

    def stop(self) -> None:
        """Stop the thread and release what it holds; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.stop_timeout_s)
            if self._thread.is_alive():
                log.warning("%s thread did not stop within %g s (a blocking read?)", self.thread_name,
                            self.stop_timeout_s)
            self._thread = None
        self._stopped()

    def _stopped(self) -> None:
        """After the thread has ended: a subclass resets its state here."""

    @property
    def alive(self) -> bool:
        """bool: the thread runs (started, and has not ended or died)."""
        thread = self._thread
        return thread is not None and thread.is_alive()


def die_with_parent(parent: int) -> None:
    """In a child process: be killed (SIGKILL) when the parent's thread that started this process ends, as it does
    when the show is killed with kill -9, so that no decoder or camera process (its memory, its GPU memory) outlives
    the show; exits at once when that has happened already (the parent is no longer ``parent``). Linux's
    ``prctl(PR_SET_PDEATHSIG)``; elsewhere the child still ends when its pipes to the parent close."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning("cannot ask to end with the parent process: %s", os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as e:
            log.warning("cannot ask to end with the parent process: %s", e)
    if os.getppid() != parent:
        os._exit(0)  # the parent is gone already: nothing to do, nobody to report to


def leave(code: int = 0) -> None:
    """End a child process now, its work done and its logs flushed, without the interpreter's teardown: a final
    garbage collection over everything torch had loaded took seconds there (more than 6 at a load of 20, so the
    parent gave up waiting for a stop that was in fact finished)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def join_process(proc: Any, timeout: float) -> bool:
    """Wait up to ``timeout`` s for a ``multiprocessing`` process to end; True when it has.

    Two threads joining one child race: both wait in ``waitpid``, one reaps it, the other gets ECHILD, which
    ``multiprocessing`` reads as "not ended", and ``is_alive()`` says True until the first thread has stored the exit
    code. A CI run saw it: the decoder's pipe reader joined the leaving decoder process while ``stop`` did, and the
    show killed a process that had stopped in time ("did not stop in 6 s" 1.6 s after the stop). A child whose pid
    is gone has ended, whoever reaped it."""
    deadline = time.monotonic() + timeout
    proc.join(timeout)
    while proc.exitcode is None:
        try:
            os.kill(proc.pid, 0)  # a running child, or one ended and not yet reaped (then join/exitcode reap it)
        except ProcessLookupError:
            return True  # reaped by another thread's wait
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def supervised(name: str, target: Callable[..., Any], *args: Any, start: bool = True,
               **kwargs: Any) -> SupervisedThread:
    """A :class:`SupervisedThread`, started unless ``start=False``."""
    thread = SupervisedThread(name, target, *args, **kwargs)
    if start:
        thread.start()
    return thread


__all__ = ["BACKOFF_MAX_S", "BACKOFF_S", "InjectedFault", "SETTLE_S", "SupervisedThread", "THREADS",
           "ThreadRegistry", "Worker", "die_with_parent", "join_process", "leave", "supervised"]
