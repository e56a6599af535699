"""The prompt audit log: one JSON object per line, append-only, rotated by size, written by its own thread.

``write(record)`` only queues (a full queue drops the record and counts it): the loop never waits on the disk. Each
record reaches the file as one ``os.write`` of a complete line on an ``O_APPEND`` descriptor, so a process killed at
any moment (kill -9) leaves a file of valid JSON lines up to the last record written; nothing is buffered in Python
between the queue and the kernel. When the file would pass ``max_bytes`` it is rotated (``audit.jsonl.1`` ...,
``backups`` kept), like the service log.
"""

from __future__ import annotations

import json
import logging
import os
import queue
from pathlib import Path
from typing import Any

from ..ops.logs import RepeatLog
from ..ops.supervise import SupervisedThread, supervised

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: str | Path, max_bytes: int = 10_000_000, backups: int = 5, queue_size: int = 4096,
                 fsync: bool = False) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync  # also survive a power cut (slower); a kill -9 is survived without it
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(queue_size)
        self._fd: int | None = None
        self._size = 0
        self.written = 0
        self.dropped = 0
        self.errors = 0
        self._repeats = RepeatLog(log, interval=60.0)
        self._thread: SupervisedThread | None = None

    def start(self) -> None:
        """Open (create) the file and start the writer; OSError when the folder cannot be written (start-up)."""
        if self._thread is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        self._thread = supervised("audit-log", self._run)

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._size = os.fstat(self._fd).st_size

    def write(self, record: dict[str, Any]) -> bool:
        """Queue one record; False (counted in ``dropped``) when the writer is behind or stopped."""
        if self._thread is None:
            self.dropped += 1
            return False
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            try:
                self._append((json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
                self.written += 1
            except Exception as e:  # noqa: BLE001 - a full disk must not stop the show; counted
                self.errors += 1
                self._repeats.error("write", "audit log %s: cannot write (%s), %d so far", self.path, e, self.errors)

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            self._open()
        if self._size and self._size + len(line) > self.max_bytes:
            self._rotate()
        view = memoryview(line)
        while view:  # one write for a line in practice; a short write is finished, never left half
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(line)
        if self.fsync:
            os.fsync(self._fd)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = None
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            os.truncate(self.path, 0)
        self._open()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then close; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        thread.join(timeout)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.path), "written": self.written, "dropped": self.dropped, "errors": self.errors}
