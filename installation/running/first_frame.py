"""The running show's first frame: the show opens on an image, not black, while the decoder starts.

A part of :class:`~installation.runtime.Runtime` (a mixin: it reads the runtime's slot, presenter, output, target
and state keeper). ``Runtime.start`` hands the decoder its first plan and then waits here for its first frame,
showing meanwhile, when the scene's decoder is the embedded CPPN, an in-process preview of the same path
(:mod:`installation.render.first_light`), or else, for a resumed show, the picture saved with its state. With a
frame check configured neither has passed it, so the output stays black until the first checked frame.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..render.first_light import FirstLight
from ..render.process import ProcessWorker

log = logging.getLogger("installation.runtime")


class FirstFrame:
    """:meth:`_await_first_frame` and what it shows while it waits."""

    def _await_first_frame(self, plan: Any, first_frame_timeout: float) -> bool:
        """Wait for the decoder's first frame (True), showing a preview or the saved picture meanwhile; False after
        ``first_frame_timeout`` seconds, a quit or a stop request."""
        # The show clock keeps running meanwhile; the path was extrapolated, so the first tick carries on from it.
        # The wait is sliced so that a stop (a signal) ends it at once.
        deadline = time.monotonic() + first_frame_timeout
        ok = True
        # With a frame check configured, neither the preview nor the saved picture has passed it (the check runs
        # where the decoder runs, on decoded frames): the output stays black until the first checked frame.
        unchecked = self.first_light and not self.frame_check
        if self.first_light and self.frame_check:
            log.info("a frame check is configured: no first-light preview or saved picture; black until the first "
                     "checked frame")
        preview = FirstLight.for_scene(self.show.scene) if unchecked and \
            isinstance(self.worker, ProcessWorker) else None
        # No cheap preview of this decoder (diffusion, GAN): a resumed show opens on the picture saved with its state.
        still = self._saved_still() if preview is None and self.resumed and unchecked else None
        # With a preview the window is redrawn 8 times a second: smooth enough for a picture that barely moves,
        # and it leaves most of the CPU to the decoder process that is starting beside it.
        while self.slot.wait_newer(-1, 0.1 if preview is None else 0.125) is None:
            if preview is not None:
                try:
                    self._preview(preview, plan)
                except Exception:  # noqa: BLE001 - a preview is a nicety: wait for the decoder in the dark instead
                    log.exception("first-light preview failed")
                    preview.close()
                    preview = None
            elif still is not None:
                self.output.show(still, 1.0)
                self.target.swap()
                if "quit" in self.target.poll():
                    self._quit = True
            if self._stopping or self._quit:
                ok = False
                break
            if time.monotonic() >= deadline:
                log.warning("no decoder frame within %.0f s; presenting anyway", first_frame_timeout)
                ok = False
                break
        if preview is not None:
            preview.close()
        if still is not None:
            still.release()
        return ok

    def _saved_still(self) -> Any:
        """The picture saved beside the state as a texture for the output (None: none, or unusable)."""
        try:
            img = self.keeper.saved_frame()
            if img is None:
                return None
            h, w = img.shape[:2]
            self.stats.first_still = True
            return self.target.ctx.texture((w, h), 3, img[::-1].tobytes(), alignment=1)  # GL: bottom row first
        except Exception:  # noqa: BLE001 - a first picture is a nicety; the show starts without it
            log.exception("the picture saved with the state cannot be shown")
            return None

    def _preview(self, preview: FirstLight, plan: Any) -> None:
        """While the decoder process starts: show the in-process preview (render/first_light.py) when one is due."""
        t = self.clock.now()
        frame = preview.frame(plan, t)
        if frame is not None:
            self.presenter.take(frame, t)
        if self.presenter.has_frame:
            self.output.show(self.presenter.render(t, self.bus.targets()), 1.0)
            self.target.swap()
        if "quit" in self.target.poll():
            self._quit = True
