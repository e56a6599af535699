"""Supervised threads and the repeat-limited log: a thread that raises is counted and runs again, one that returns
ends, a stop ends the backoff; a fault that repeats is logged once per interval with a count."""

from __future__ import annotations

import logging
import threading

import pytest

from installation.ops.logs import RepeatLog
from installation.ops.supervise import InjectedFault, SupervisedThread, ThreadRegistry, supervised

from support import wait_until


def test_a_thread_that_raises_is_counted_and_runs_again(caplog):
    registry = ThreadRegistry()
    runs = []
    done = threading.Event()

    def work():
        runs.append(1)
        if len(runs) < 3:
            raise OSError(24, "Too many open files")
        done.set()  # the third run returns: the thread ends

    with caplog.at_level(logging.ERROR, logger="installation.ops.supervise"):
        t = supervised("t-raises", work, backoff=0.01, registry=registry)
        assert done.wait(10)
        t.join(5)
    assert not t.is_alive() and len(runs) == 3 and t.restarts == 2
    assert registry.restarts() == {"t-raises": 2}
    assert registry.last_errors() == {"t-raises": "OSError: [Errno 24] Too many open files"}
    assert "t-raises" in registry.recent(60) and registry.recent(0) == {}
    # the first death with its traceback; the second within the minute is held back, not logged again
    died = [r for r in caplog.records if "thread t-raises died" in r.getMessage()]
    assert len(died) == 1 and died[0].exc_info is not None
    assert registry.restarts(since={"t-raises": 1}) == {"t-raises": 1}


def test_backoff_doubles_up_to_its_bound_and_a_stop_ends_it():
    registry = ThreadRegistry()
    stop = threading.Event()
    t = SupervisedThread("t-backoff", lambda: 1 / 0, stop=stop, backoff=0.02, backoff_max=0.08, registry=registry)
    t.start()
    assert wait_until(lambda: t.restarts >= 6, timeout=10)  # 0.02 + 0.04 + 0.08 + 0.08 ...: bounded, it goes on
    stop.set()
    t.join(2)
    assert not t.is_alive()
    # a long backoff is cut short by the stop
    slow = supervised("t-slow", lambda: 1 / 0, backoff=60.0, registry=registry)
    assert wait_until(lambda: slow.restarts == 1, timeout=5)
    slow.halt()
    slow.join(2)
    assert not slow.is_alive() and slow.restarts == 1


def test_an_injected_exception_kills_the_running_loop_and_it_comes_back():
    registry = ThreadRegistry()
    stop = threading.Event()
    turns = []

    def loop():
        turns.append(0)
        while not stop.wait(0.01):
            turns[-1] += 1

    t = supervised("t-inject", loop, stop=stop, backoff=0.01, registry=registry)
    try:
        assert wait_until(lambda: turns and turns[0] > 3, timeout=5)
        assert registry.running() == ["t-inject"] and registry.find("t-inject") == [t]
        assert t.inject()
        assert wait_until(lambda: len(turns) == 2 and turns[1] > 3, timeout=5)  # a second run, working
        assert registry.restarts() == {"t-inject": 1}
        assert registry.last_errors()["t-inject"].startswith(InjectedFault.__name__)
    finally:
        stop.set()
        t.join(2)
    assert not t.inject()  # not running: nothing to inject into
    assert registry.running() == []


def test_a_thread_that_returns_is_not_restarted():
    registry = ThreadRegistry()
    t = supervised("t-returns", lambda: None, registry=registry)
    t.join(5)
    assert not t.is_alive() and t.restarts == 0 and registry.restarts() == {}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_repeat_log_logs_once_per_interval_with_a_count(caplog):
    clock = Clock()
    logger = logging.getLogger("test.repeat")
    repeats = RepeatLog(logger, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.repeat"):
        for i in range(1257):
            try:
                raise OSError(24, "Too many open files")
            except OSError as e:
                repeats.warning("accept", "accept failed: %s", e, exc_info=True)
            clock.t += 0.008  # 1,257 in about 10 s, as the probe saw
        assert repeats.warning("other", "something else")  # another key is logged at once
    lines = [r for r in caplog.records if r.name == "test.repeat"]
    assert [r.getMessage() for r in lines] == [
        "accept failed: [Errno 24] Too many open files",
        "accept failed: [Errno 24] Too many open files (1250 more like this in the last 10 s)",
        "something else",
    ]
    assert lines[0].exc_info is not None and lines[1].exc_info is None  # one traceback, not one per attempt
    assert repeats.held("accept") == 5
    repeats.reset("accept")  # cleared: the next occurrence is news again
    assert repeats.warning("accept", "accept failed again") and repeats.held("accept") == 0


@pytest.mark.parametrize("level", ["warning", "error"])
def test_repeat_log_levels(caplog, level):
    repeats = RepeatLog(logging.getLogger("test.levels"), interval=60.0)
    with caplog.at_level(logging.WARNING, logger="test.levels"):
        getattr(repeats, level)("k", "x")
    assert caplog.records[-1].levelname == level.upper()


def test_an_event_loops_repeated_fault_is_logged_once_per_interval(tmp_path):
    """What an asyncio server logs when no file descriptor is left: the loop's own handler, a traceback per accept
    attempt. setup_logging's filter on the asyncio logger lets one through a minute, with the count."""
    import asyncio
    import io

    from installation.ops.logs import LogSettings, setup_logging

    stream = io.StringIO()
    logger = logging.getLogger("test.loop-root")
    setup_logging(LogSettings(), logger=logger, stream=stream)
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(logger.handlers[0])
    try:
        loop = asyncio.new_event_loop()
        try:
            for _ in range(500):
                try:
                    raise OSError(24, "Too many open files")
                except OSError as e:
                    loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": e})
        finally:
            loop.close()
    finally:
        asyncio_log.removeHandler(logger.handlers[0])
        setup_logging(LogSettings(), logger=logger, stream=io.StringIO())
    text = stream.getvalue()
    assert text.count("socket.accept() out of system resource") == 1 and text.count("Traceback") == 1


def _linger(seconds: float) -> None:
    import time
    time.sleep(seconds)


def test_join_process_sees_a_child_another_thread_reaped():
    """The race a CI run lost: two threads join the leaving decoder process; one reaps it, the other's waitpid gets
    ECHILD, and multiprocessing says 'alive' until the first has stored the exit code. Here the other thread is
    held at that point (it reaped the child with waitpid and stored nothing): ended all the same."""
    import multiprocessing as mp
    import os
    import threading

    from installation.ops.supervise import join_process

    proc = mp.get_context("fork").Process(target=_linger, args=(0.3,))
    proc.start()
    reaper = threading.Thread(target=os.waitpid, args=(proc.pid, 0))
    reaper.start()
    reaper.join(10)
    proc.join(5)
    assert proc.is_alive()  # what the show saw (and then it killed a process that had stopped)
    assert join_process(proc, 5)

    slow = mp.get_context("fork").Process(target=_linger, args=(30,))
    slow.start()
    assert not join_process(slow, 0.3) and slow.is_alive()  # one that does not leave in time: False
    slow.kill()
    assert join_process(slow, 10) and slow.exitcode == -9
