"""The latest-wins frame slot between the decoder thread and the presenter."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    """A finished frame: HxWx3 uint8 RGB (top row first), the request it answers and when it was made.

    ``cut`` changes when consecutive frames are not meant to blend (another decoder after a scene change);
    ``prompts`` are the texts of the prompt slots it was rendered with (hidden prompts never appear here).
    """

    rgb: np.ndarray
    seq: int
    t: float
    produced: float
    scene: str = ""
    cut: int = 0
    prompts: tuple[str, ...] = ()


class FrameSlot:
    """Holds only the newest frame; publishing never blocks on the reader and the last good frame stays."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self.published = 0

    def publish(self, frame: Frame) -> None:
        with self._cond:
            self._frame = frame
            self.published += 1
            self._cond.notify_all()

    def latest(self) -> Frame | None:
        return self._frame

    def wait_newer(self, seq: int, timeout: float) -> Frame | None:
        """The newest frame once its seq differs from ``seq``, or None after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None and self._frame.seq != seq, timeout)
            f = self._frame
        return f if f is not None and f.seq != seq else None
