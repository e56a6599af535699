"""Canny edge maps of camera frames at a decoder's size, made in the camera's own process.

A scene's decoder says which edge maps it takes from the camera (:meth:`DiffusionKind.camera_edges`: one
``(width, height, low, high)`` per distinct canny control); the camera input passes that to its worker process
through a small shared array (:class:`EdgeWants`), and the worker ships each map beside the frame it was made from,
as ``extras["edges"] = {(width, height, low, high): HxW uint8}``. The decoder takes a map as it is; for a frame that
came without one (a test's, or the first frame after a scene change) it runs :func:`canny_edges` itself: one
function, so both give the same bits.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

EdgeSpec = tuple[int, int, int, int]  # (width, height, low, high)
EDGE_SPECS_MAX = 4  # as many as a scene's controls


def canny_edges(rgb: np.ndarray, spec: EdgeSpec) -> np.ndarray:
    """The edges (HxW uint8, 0 or 255) of an RGB uint8 image at ``spec``'s size: INTER_AREA resize, grey, Canny."""
    import cv2

    w, h, low, high = spec
    if rgb.shape[:2] != (h, w):
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.Canny(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), low, high)


def valid_specs(specs: Iterable[Any]) -> tuple[EdgeSpec, ...]:
    """Distinct well-formed specs, sorted, at most :data:`EDGE_SPECS_MAX` (sizes 8..4096, thresholds 0..1000)."""
    out = set()
    for spec in specs:
        try:
            w, h, low, high = (int(v) for v in spec)
        except (TypeError, ValueError):
            continue
        if 8 <= w <= 4096 and 8 <= h <= 4096 and 0 <= low <= 1000 and 0 <= high <= 1000:
            out.add((w, h, low, high))
    return tuple(sorted(out))[:EDGE_SPECS_MAX]


class EdgeWants:
    """The edge maps the parent wants, in a lock-free shared int array (a worker killed mid-read leaves no lock
    held): ``[version, count, w, h, low, high, ...]``, the version odd while the parent writes (a seqlock). The
    parent writes (:meth:`write`); the worker reads (:meth:`read`) once per frame sent and keeps what it had while a
    write is under way, so a torn read never reaches it."""

    def __init__(self, ctx: Any) -> None:
        self.array = ctx.Array("i", 2 + 4 * EDGE_SPECS_MAX, lock=False)
        self._seen = -1
        self._specs: tuple[EdgeSpec, ...] = ()

    def write(self, specs: tuple[EdgeSpec, ...]) -> None:
        a = self.array
        specs = valid_specs(specs)
        a[0] += 1
        a[1] = len(specs)
        for k, spec in enumerate(specs):
            a[2 + 4 * k: 6 + 4 * k] = list(spec)
        a[0] += 1

    def read(self) -> tuple[EdgeSpec, ...]:
        a = self.array
        version = a[0]
        if version == self._seen or version % 2:
            return self._specs
        n = min(max(a[1], 0), EDGE_SPECS_MAX)
        specs = valid_specs(tuple(a[2 + 4 * k: 6 + 4 * k]) for k in range(n))
        if a[0] == version:
            self._seen, self._specs = version, specs
        return self._specs

