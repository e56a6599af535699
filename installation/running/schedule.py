"""The running show's opening hours (``[schedule]``, with ``run --schedule``): closed, the show fades to black (or
plays its standby scene) and, once dark, stops decoding and frees the decoder's memory; open again, it takes the
decoder back and plays on from where it was.

A part of :class:`~installation.runtime.Runtime` (a mixin: it reads the runtime's show, decoder worker, guard and
master fade). The loop checks once a second of show time (``Runtime._ops``) against the injected ``wall`` clock; a
clock that fails is counted and never closes the show.
"""

from __future__ import annotations

import logging

from ..ops.schedule import Schedule, ScheduleSettings

log = logging.getLogger("installation.runtime")


class OpeningHours:
    """The schedule's state (:meth:`_init_schedule`) and its once-a-second check (:meth:`_check_schedule`)."""

    def _init_schedule(self, settings: ScheduleSettings, enabled: bool) -> None:
        self._use_schedule = enabled
        self.schedule = Schedule(settings if enabled else ScheduleSettings())
        self.open = True
        self.released = False  # the decoder was stopped while closed
        self._scene_before_close: str | None = None

    def _standby(self) -> str | None:
        s = self.schedule.settings
        return s.standby_scene if s.enabled and s.closed_action == "standby" else None

    def _check_schedule(self, t: float) -> None:
        try:
            is_open = self.schedule.is_open(self.wall())
        except Exception as e:  # noqa: BLE001 - a broken clock never closes the show
            self.faults["schedule"] += 1
            log.warning("schedule check failed (%s); staying %s", e, "open" if self.open else "closed")
            return
        standby = self._standby()
        if self.open and not is_open:
            self.open = False
            self._fade_s = self.schedule.settings.fade_s
            log.info("closing: %s", self.schedule.describe(self.wall()))
            if standby is not None:
                self._scene_before_close = self.show.scene.name
                self.show.goto(standby, t)
        elif not self.open and is_open:
            self.open = True
            self._fade_s = self.schedule.settings.fade_s
            log.info("opening: %s", self.schedule.describe(self.wall()))
            if self.released:
                self._acquire_decoder()
            if standby is not None and self._scene_before_close:
                self.show.goto(self._scene_before_close, t)
        if not self.open and standby is None and not self.released and self.master <= 0.0:
            self._release_decoder()

    def _release_decoder(self) -> None:
        """Closed and faded out: stop decoding and free its memory (the decoder process ends)."""
        self.released = True
        if self.worker is not None:
            self.worker.stop()
        self.guard.close()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        log.info("decoder released while closed")

    def _acquire_decoder(self) -> None:
        self.released = False
        self._await_frame = self.slot.published
        if self.worker is not None:
            self.worker.start()  # with the last plan it had; the next tick submits a fresh one
        log.info("decoder started again")
