"""NDI video out and in, through ``cyndilib`` (MIT; its wheel bundles the NDI runtime, ``libndi``, under the NDI SDK
licence: free to use and redistribute, "NDI" is Vizrt's trademark; see the README).

Out: ``[[sinks]] kind = "ndi"`` sends what the window shows (the presented canvas, or all projector outputs side by
side) as an NDI source. It is a presented-frame sink (:class:`~.outputs.PresentedTap`): the loop hands it the
read-back bytes and returns at once; the sender thread converts and sends. Latest wins: a frame not yet sent when the
next arrives is dropped and counted, so the render loop never waits on the network.

In: ``[inputs.camera] source = "ndi:<name>"`` reads an NDI source as the camera (features and the img2img source):
:class:`NdiCapture` has the part of ``cv2.VideoCapture`` the camera worker uses. ``<name>`` is the source's full name
(``"HOST (stream)"``) or its stream name alone.

Discovery is mDNS; where that does not reach (another subnet, a container, this sandbox), list the sender's address in
the NDI config's extra IPs (``$NDI_CONFIG_DIR/ndi-config.v1.json``: ``{"ndi": {"networks": {"ips": "10.0.0.5"}}}``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, RootModel

from .. import parts
from ..ops.supervise import SupervisedThread, supervised

log = logging.getLogger(__name__)

NDI_PREFIX = "ndi:"
FIND_S = 5.0  # how long a receiver looks for its source before giving up (the camera retries with backoff)
READ_TIMEOUT_S = 2.0  # a source that sends no new frame for this long counts as stopped (the camera reopens it)


class NdiSinkSettings(BaseModel):
    """One ``[[sinks]]`` entry of kind "ndi"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["ndi"] = "ndi"
    name: str = Field(default="installation", min_length=1, max_length=200)
    fps: float = Field(default=30.0, gt=0, le=240)  # at most this many frames a second are read back and sent
    groups: str = ""  # NDI groups ("" = the public group)
    # Send only this rectangle of the window, x, y, w, h in pixels from its top-left (one projector output's
    # viewport, say); empty: all of it.
    crop: tuple[int, int, int, int] | tuple[()] = ()


class SinksSettings(RootModel[list[NdiSinkSettings]]):
    """``[[sinks]]``: where presented frames go besides the window (today: NDI senders)."""

    root: list[NdiSinkSettings] = []


def _import():
    try:
        import cyndilib  # noqa: F401
    except ImportError as e:
        raise OSError(f"NDI needs cyndilib ({e}): pip install 'installation[ndi]'") from None  # a start-up error


class NdiSink:
    """A presented-frame sink that sends frames as an NDI source from its own thread (latest wins, drops counted)."""

    def __init__(self, settings: NdiSinkSettings) -> None:
        self.settings = settings
        self.period = 1.0 / settings.fps
        self._next: float | None = None
        self._cond = threading.Condition()
        self._frame: tuple[bytes, tuple[int, int]] | None = None
        self._stop = threading.Event()
        self._thread: SupervisedThread | None = None
        self.sent = self.dropped = self.failures = 0
        self.error = ""

    # -- the loop thread: return at once -----------------------------------------------------------------------------
    def wants(self, t: float | None) -> bool:
        return t is None or self._next is None or t >= self._next

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        with self._cond:
            if self._frame is not None:
                self.dropped += 1  # the sender has not taken the previous one yet: the newer wins
            self._frame = (rgb, size)
            self._cond.notify()
        if t is not None:
            self._next = t + self.period if self._next is None or t - self._next > self.period else \
                self._next + self.period

    # -- the sender thread -------------------------------------------------------------------------------------------
    def start(self) -> None:
        _import()
        self._stop.clear()
        self._thread = supervised(f"ndi-{self.settings.name}", self._run, stop=self._stop)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        sender, size = None, None
        try:
            while not self._stop.is_set():
                with self._cond:
                    while self._frame is None and not self._stop.is_set():
                        self._cond.wait(0.5)
                    frame, self._frame = self._frame, None
                if frame is None:
                    continue
                rgb, (w, h) = frame
                img = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1]  # GL rows are bottom first
                if self.settings.crop:
                    x, y, cw, ch = self.settings.crop
                    img = img[y:y + ch, x:x + cw]  # clipped to the window if it reaches past it
                    if img.size == 0:
                        self.failures += 1
                        self.error = f"crop {list(self.settings.crop)} lies outside the {w}x{h} window"
                        continue
                fsize = (img.shape[1], img.shape[0])
                if fsize != size:
                    if sender is not None:
                        sender.close()
                    sender, size = None, None
                    try:
                        sender, size = self._open(fsize), fsize
                    except RuntimeError as e:  # NDI refused the sender: counted, said once, tried again in 1 s
                        self.failures += 1
                        if self.error != str(e):
                            self.error = str(e)
                            log.warning("NDI sink %s: %s; trying again", self.settings.name, e)
                        self._stop.wait(1.0)
                        continue
                rgba = np.empty((size[1], size[0], 4), np.uint8)
                rgba[..., :3] = img
                rgba[..., 3] = 255
                try:
                    if sender.write_video(rgba.ravel()):
                        self.sent += 1
                    else:
                        self.failures += 1
                except Exception as e:  # noqa: BLE001 - count, log once, go on with the next frame
                    self.failures += 1
                    if self.error != str(e):
                        self.error = str(e)
                        log.warning("NDI sink %s: sending failed: %s", self.settings.name, e)
        finally:
            if sender is not None:
                sender.close()

    def _open(self, size: tuple[int, int]):
        from fractions import Fraction

        from cyndilib.audio_frame import AudioSendFrame
        from cyndilib.sender import Sender
        from cyndilib.video_frame import VideoSendFrame
        from cyndilib.wrapper.ndi_structs import FourCC

        s = self.settings
        sender = Sender(s.name, ndi_groups=s.groups, clock_audio=False) if s.groups else \
            Sender(s.name, clock_audio=False)
        vf = VideoSendFrame()
        vf.set_resolution(*size)
        vf.set_fourcc(FourCC.RGBA)
        vf.set_frame_rate(Fraction(s.fps).limit_denominator(1001))
        sender.set_video_frame(vf)
        # When NDI cannot create the sender (NDIlib_send_create returns NULL: another process on this machine already
        # sends under the same name, even from another network namespace; seen twice in issue 23's stress runs),
        # cyndilib's Sender.open cleans up its audio frame without checking there is one and the whole show dies of
        # a SIGSEGV. With an audio frame set (never written, not clocking) it raises
        # MemoryError instead, which is this sink's failure to count.
        sender.set_audio_frame(AudioSendFrame())
        try:
            sender.open()
        except MemoryError:
            raise RuntimeError(f"NDI could not create a sender named {s.name!r}") from None
        log.info("NDI: sending %dx%d as %r", size[0], size[1], s.name)
        return sender

    def stats(self) -> dict[str, Any]:
        return {"name": self.settings.name, "sent": self.sent, "dropped": self.dropped, "failures": self.failures,
                "error": self.error}


class Sinks:
    """The ``[[sinks]]`` part: each sink added to the presented-frame tap, started, supervised and stopped."""

    def __init__(self, settings: SinksSettings, tap) -> None:
        self.sinks = [NdiSink(s) for s in settings.root]
        self.tap = tap

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()
            if self.tap is not None and sink not in self.tap.sinks:
                self.tap.add(sink)

    def stop(self) -> None:
        for sink in self.sinks:
            if self.tap is not None:
                self.tap.remove(sink)
            sink.stop()

    @property
    def alive(self) -> bool:
        return all(s.alive for s in self.sinks)

    def stats(self) -> dict[str, Any]:
        return {"sinks": [s.stats() for s in self.sinks],
                "failures": sum(s.failures for s in self.sinks)}


@parts.register("sinks", table="sinks", settings=SinksSettings, order=90)
def build(settings: SinksSettings, ctx: parts.PartContext) -> Sinks | None:
    return Sinks(settings, ctx.presented) if settings.root else None


# -- in -------------------------------------------------------------------------------------------------------------

class NdiCapture:
    """An NDI source read like a ``cv2.VideoCapture`` (``read``, ``get``, ``isOpened``, ``release``): ``read`` waits
    for the next new frame (BGR) and fails after ``READ_TIMEOUT_S`` without one."""

    def __init__(self, name: str, find_s: float = FIND_S) -> None:
        _import()
        from cyndilib.finder import Finder
        from cyndilib.receiver import Receiver
        from cyndilib.video_frame import VideoFrameSync
        from cyndilib.wrapper.ndi_recv import RecvBandwidth, RecvColorFormat

        self.name = name
        self.finder = Finder()
        self.finder.open()
        self.receiver = None
        full = self._find(name, find_s)
        if full is None:
            self.finder.close()
            self.finder = None
            return
        self.receiver = Receiver(color_format=RecvColorFormat.RGBX_RGBA, bandwidth=RecvBandwidth.highest)
        self.frame = VideoFrameSync()
        self.receiver.frame_sync.set_video_frame(self.frame)
        self.receiver.set_source(self.finder.get_source(full))
        self._last: float | None = None

    def _find(self, name: str, seconds: float) -> str | None:
        deadline = time.monotonic() + seconds
        while True:
            for full in self.finder.get_source_names():
                if full == name or full.endswith(f"({name})"):
                    return full
            if time.monotonic() >= deadline:
                return None
            self.finder.wait(0.2)

    def isOpened(self) -> bool:  # noqa: N802 - cv2's name
        return self.receiver is not None

    def get(self, prop: int) -> float:
        return 0.0  # no fps or size promised: the camera measures its own rate

    def read(self) -> tuple[bool, np.ndarray | None]:
        deadline = time.monotonic() + READ_TIMEOUT_S
        while self.receiver is not None and time.monotonic() < deadline:
            self.receiver.frame_sync.capture_video()
            stamp = self.frame.get_timestamp_posix()
            if self.frame.xres and stamp != self._last:
                self._last = stamp
                rgba = np.asarray(self.frame.get_array()).reshape(self.frame.yres, self.frame.xres, 4)
                return True, np.ascontiguousarray(rgba[..., 2::-1])  # RGBA -> BGR, as cv2 gives
            time.sleep(0.004)
        return False, None

    def release(self) -> None:
        """Disconnect and destroy the receiver. cyndilib's ``Receiver`` and its ``FrameSync`` refer to each other, so
        dropping the last reference does not free them: the NDI receive instance (its thread, seven descriptors, and
        on the sender's side four threads and two descriptors for the connection) lived until the garbage
        collector's next full pass, which a big heap makes rare. A camera that reopened its source every 15 s
        leaked that much each time (issue 33). So the cycle is collected here, at once."""
        had = self.receiver is not None or self.finder is not None
        if self.receiver is not None:
            self.receiver.disconnect()
            self.receiver = None
        self.frame = None
        if self.finder is not None:
            self.finder.close()
            self.finder = None
        if had:
            gc.collect()  # tens of ms at most, once per reopen: the receive instance is destroyed now


def open_ndi(source: str) -> NdiCapture | None:
    """``ndi:<name>`` as a capture, or None when no such source is found (the camera retries with backoff)."""
    cap = NdiCapture(source[len(NDI_PREFIX):])
    return cap if cap.isOpened() else None
