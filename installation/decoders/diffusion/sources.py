"""img2img sources on the host: a frame handed over in ``extras`` (the camera) is validated and compared with the
last one on a subsampled copy, so a still camera costs no encode and no device work."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def valid_image(img: Any) -> bool:
    """An HxWx3 uint8 image of a sane size (8..4096 pixels a side)."""
    return (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            and 8 <= img.shape[0] <= 4096 and 8 <= img.shape[1] <= 4096)


class SourceFilter:
    """Validates ``extras[key]`` and tells whether it changed by more than ``threshold`` (mean |diff|, 0..1)."""

    def __init__(self, threshold: float, counters: dict[str, int], key: str = "source",
                 counter: str = "rejected_sources") -> None:
        self.threshold = threshold
        self.counters = counters
        self.key, self.counter = key, counter
        self._prev_small: np.ndarray | None = None

    def take(self, extras: Any) -> np.ndarray | None:
        """The image in extras, or None (absent, or rejected and counted)."""
        src = extras.get(self.key)
        if src is None:
            return None
        if not valid_image(src):
            self.counters[self.counter] += 1
            if self.counters[self.counter] in (1, 100, 10000):
                log.warning("diffusion: rejected extras[%r] (need HxWx3 uint8), %d so far", self.key,
                            self.counters[self.counter])
            return None
        return src

    def changed(self, src: np.ndarray) -> bool:
        """Host-side similarity filter on a subsampled copy: no device work, so no host sync."""
        small = src[::8, ::8].astype(np.int16)
        prev = self._prev_small
        if prev is None or prev.shape != small.shape:
            self._prev_small = small
            return True
        diff = float(np.abs(small - prev).mean()) / 255.0
        if diff <= self.threshold:
            return False
        self._prev_small = small
        return True

    def reset(self) -> None:
        self._prev_small = None
