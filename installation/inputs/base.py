"""What the threaded inputs share: a worker thread that opens its device and keeps reopening it, and counters."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class ThreadedInput:
    """``start()`` runs ``self._run`` in a daemon thread; ``stop()`` sets ``self._stop`` and joins; both idempotent."""

    thread_name = "input"

    def __init__(self, stats: dict[str, Any]) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stats: dict[str, Any] = {"state": "stopped", **stats}

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Start the worker (it opens the source, and keeps reopening it); returns at once."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker and release the source; safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.warning("%s thread did not stop within 5 s (a blocking read?)", self.thread_name)
            self._thread = None
        self._stopped()

    def _stopped(self) -> None:
        with self._lock:
            self._stats["state"] = "stopped"

    def stats(self) -> dict[str, Any]:
        """A copy of the counters and state."""
        with self._lock:
            return dict(self._stats)
