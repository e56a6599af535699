"""What the threaded inputs share: a worker thread that opens its device and keeps reopening it, and counters."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from installation.ops.supervise import Worker

# Counters of what an input delivers, and the names its rate and the age of the newest delivery go by in stats().
DELIVERIES = {"frames": ("fps", "last_frame_age_s"), "blocks": ("blocks_per_s", "last_block_age_s"),
              "packets": ("packets_per_s", "last_packet_age_s"), "messages": ("messages_per_s", "last_message_age_s")}
RATE_WINDOW_S = 2.0  # the delivery rate is taken over this many seconds


class RateMeter:
    """Deliveries per second over the last RATE_WINDOW_S, and the age of the newest, from a running count.

    Feed it the count as deliveries happen (:meth:`mark`), or only when asked (``figures(count)``): then the rate
    is over the samples taken and the age only as fine as the asking (about a second for /health). Not locked: the
    caller holds whatever lock guards the count.
    """

    def __init__(self, key: str) -> None:
        self.rate_name, self.age_name = DELIVERIES[key]
        self.last: float | None = None  # time.monotonic() of the newest delivery seen
        self._marks: deque[tuple[float, int]] = deque()  # (time, count) within the window, the newest last
        self._count: int | None = None

    def mark(self, count: int) -> None:
        """The count now (call it when it changes; calls with an unchanged count are ignored)."""
        if count == self._count:
            return
        now = time.monotonic()
        if self._count is not None or count:
            self.last = now
        self._count = count
        self._marks.append((now, count))
        self._prune(now)

    def _prune(self, now: float) -> None:
        while len(self._marks) > 1 and now - self._marks[0][0] > RATE_WINDOW_S:
            self._marks.popleft()

    def figures(self, count: int | None = None) -> dict[str, float | None]:
        """``{rate name: per second, age name: seconds since the newest delivery (None: none yet)}``."""
        if count is not None:
            self.mark(count)
        now = time.monotonic()
        self._prune(now)
        rate = 0.0
        if len(self._marks) >= 2 and now - self._marks[-1][0] <= RATE_WINDOW_S:
            (t0, c0), (t1, c1) = self._marks[0], self._marks[-1]
            # Over the deliveries seen; once they are late (two mean intervals), over the time up to now instead.
            span = t1 - t0 if now - t1 <= 2.0 * (t1 - t0) / max(c1 - c0, 1) else now - t0
            rate = (c1 - c0) / max(span, 1e-9)
        age = None if self.last is None else round(now - self.last, 3)
        return {self.rate_name: round(rate, 2), self.age_name: age}


class _Counters(dict):
    """The stats dict; it also feeds a :class:`RateMeter` whenever its delivery counter (``frames``, ``blocks``)
    is assigned, so the rate and the age of the newest delivery need nothing from the input's own code (inputs
    count with ``stats[key] += 1``, or set the total)."""

    def __init__(self, data: dict[str, Any], key: str | None) -> None:
        super().__init__(data)
        self.key = key
        self.meter = RateMeter(key) if key is not None else None
        if self.meter is not None:
            self.meter.mark(data.get(key, 0))

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if key == self.key and self.meter is not None:
            self.meter.mark(value)

    def figures(self) -> dict[str, float | None]:
        return self.meter.figures() if self.meter is not None else {}


class ThreadedInput(Worker):
    """An input whose device is read by one supervised thread (:class:`~installation.ops.supervise.Worker`: ``start``,
    ``stop``, ``alive``), with counters.

    ``stats()`` adds to the input's counters: ``opened`` (the device is open and delivering: state "running"), and
    from the delivery counter named in DELIVERIES its rate and the age of the newest delivery (``fps`` and
    ``last_frame_age_s`` for frames, ``blocks_per_s`` and ``last_block_age_s`` for audio blocks).
    """

    thread_name = "input"
    delivery_key: str | None = None  # None: the first DELIVERIES key among the counters

    def __init__(self, stats: dict[str, Any]) -> None:
        super().__init__()
        self._lock = threading.Lock()
        key = self.delivery_key or next((k for k in DELIVERIES if k in stats), None)
        self._stats: _Counters = _Counters({"state": "stopped", **stats}, key)

    def _stopped(self) -> None:
        with self._lock:
            self._stats["state"] = "stopped"

    def stats(self) -> dict[str, Any]:
        """A copy of the counters and state, with ``opened`` and the delivery rate and age."""
        with self._lock:
            out = dict(self._stats)
            out.update(self._stats.figures())
        out["opened"] = out.get("state") == "running"
        return out
