"""First light: a picture within a second of the window opening, not black while the decoder process starts.

The decoder process takes seconds to start (it imports torch, builds the model, warms up): 10-15 s on a busy
2-core machine. Meanwhile, when the scene's decoder is the embedded CPPN, this process renders the very same
model at a fraction of its resolution along the same path (the plan the decoder was handed, extrapolated to now),
a few times a second, and the presenter shows those frames through the scene's own shader chain. A resumed show so
opens on the position it saved. When the first live frame arrives it is a new cut, and the presenter fades into it
from the last preview over the scene's transition: the same image, sharpening.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np

from ..decoders import DecoderSpec
from ..sizes import SizeT
from .slot import Frame

log = logging.getLogger(__name__)

PREVIEW_CUT = -1  # the cut of preview frames: the first live frame (cut >= 0) fades in from them


class Scene(Protocol):
    """What first light reads of a scene (a :class:`installation.config.Scene`, which sits above rendering)."""

    name: str
    decoder: DecoderSpec


class FirstLight:
    """The scene's CPPN in this process at ``scale`` of its resolution, at most ``fps`` frames a second."""

    def __init__(self, scene: Scene, scale: float = 0.5, fps: float = 4.0) -> None:
        from ..decoders.cppn import CPPN

        s = scene.decoder.settings
        w, h = s.resolution
        size = SizeT(max(int(w * scale), 16), max(int(h * scale), 16))
        self.scene = scene.name
        self.period = 1.0 / fps
        self._cppn = CPPN(s.model_copy(update={"resolution": size}))
        self._ready = False
        self._next = -float("inf")
        self._seq = -1  # preview frames count down from -2: the presenter starts out having "shown" seq -1
        self.frames = 0
        self.render_s = 0.0  # seconds spent rendering previews (prepare included)

    @staticmethod
    def for_scene(scene: Scene, **kwargs: Any) -> "FirstLight | None":
        """A preview for ``scene``, or None when its decoder is not the embedded CPPN (nothing cheap to preview)."""
        if scene.decoder.type != "cppn":
            return None
        return FirstLight(scene, **kwargs)

    def frame(self, plan: Any, t: float) -> Frame | None:
        """A preview frame of ``plan`` at show time ``t`` when one is due, else None (a fault is logged: None)."""
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self.period
        t0 = time.perf_counter()
        try:
            with _threads(1):  # leave the other cores to the decoder process starting beside us
                if not self._ready:
                    self._cppn.prepare()
                    self._ready = True
                rgb = self._cppn.render(plan.request(t, 0))
        except Exception:  # noqa: BLE001 - a preview is a nicety: the show goes on without it
            log.exception("first-light preview failed; waiting for the decoder in the dark")
            self._next = float("inf")
            return None
        finally:
            self.render_s += time.perf_counter() - t0
            # The next one a period after this one ended: a render slower than the period (the first one prepares
            # the network; any one at a high load) must not make the next due at once and take the loop thread.
            self._next = max(self._next, time.monotonic() + self.period)
        if not np.isfinite(rgb).all():
            return None
        self._seq -= 1  # negative: never equal to a decoder frame's seq
        self.frames += 1
        rgb8 = np.clip(rgb * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)
        return Frame(rgb8, self._seq, t, now, self.scene, PREVIEW_CUT)

    def close(self) -> None:
        self._cppn.close()


class _threads:
    """torch's intra-op threads set for a block, then put back."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.before)
