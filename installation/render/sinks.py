"""What takes presented frames (:class:`FrameSink`), and the simplest one (:class:`LatestFrame`): no GL here, so a
part that only keeps frames (the web preview) is imported, and its settings checked, without moderngl."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class FrameSink(Protocol):
    """Takes presented frames. ``put`` must return at once (queue or drop, and count what it drops)."""

    def wants(self, t: float | None) -> bool: ...

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None: ...


class LatestFrame:
    """A sink that keeps only the newest presented frame, at most ``max_fps`` a second (a preview, a snapshot)."""

    def __init__(self, max_fps: float = 0.0) -> None:
        self.period = 1.0 / max_fps if max_fps > 0 else 0.0
        self._next = None
        self.frame: tuple[bytes, tuple[int, int], float | None] | None = None
        self.taken = 0

    def wants(self, t: float | None) -> bool:
        return t is None or self._next is None or t >= self._next

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        self.frame = (rgb, size, t)
        self.taken += 1
        if t is not None:
            self._next = t + self.period
