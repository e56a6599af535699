"""Injected time: a wall clock for live shows, a fixed-step clock for tests and offline renders."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the runtime needs of a clock: ``now()`` in show seconds, ``advance()`` after each tick (a fixed-step
    clock moves one frame; a live one ignores it), and ``fixed`` (True: frames are rendered in lockstep, one per
    tick, so output is deterministic). A live clock also has ``origin`` (its ``time.perf_counter()`` at zero) for
    a decoder process to share the time base."""

    fixed: bool

    def now(self) -> float: ...

    def advance(self) -> None: ...


class WallClock:
    """Seconds since start, from the monotonic performance counter."""

    fixed = False

    def __init__(self) -> None:
        self.origin = time.perf_counter()  # CLOCK_MONOTONIC: the same reading in a decoder process

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def advance(self) -> None:
        """Live time advances by itself."""


class FixedClock:
    """Frame n is at exactly n / fps, however long it takes to render: deterministic offline output."""

    fixed = True

    def __init__(self, fps: float) -> None:
        self.fps = float(fps)
        self.frame = 0

    def now(self) -> float:
        return self.frame / self.fps

    def advance(self) -> None:
        self.frame += 1
