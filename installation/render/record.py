"""Recording the presented output to a video file through an ffmpeg subprocess.

Frames are read back from the output framebuffer and queued to a writer thread that pipes raw RGB into ffmpeg.
Offline (``blocking``) every frame is written once. Live, each frame comes with its wall-clock time and is written as
many times as the recording rate asks for by then: repeated when the show presents slower than the rate, skipped when
faster, so the video always plays in real time (both counted); a full queue drops the frame (counted) rather than
stall the display, and the next frame written fills its place. If ffmpeg dies, recording stops with a logged error
and the show goes on.
"""

from __future__ import annotations

import logging
import queue
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ..ops.supervise import supervised

log = logging.getLogger(__name__)


class RecorderError(RuntimeError):
    """Recording cannot start (no ffmpeg, unwritable path)."""


class Recorder:
    def __init__(self, path: Path | str, size: tuple[int, int], fps: float, ffmpeg: str = "ffmpeg",
                 codec: str = "libx264", preset: str = "veryfast", crf: int = 20, blocking: bool = False) -> None:
        exe = shutil.which(ffmpeg)
        if exe is None:
            raise RecorderError(f"ffmpeg not found ({ffmpeg!r}); install it with: sudo apt-get install ffmpeg")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise RecorderError(f"cannot record to {self.path}: folder {self.path.parent} does not exist")
        w, h = size
        if w % 2 or h % 2:
            raise RecorderError(f"recording needs an even width and height, got {w}x{h}")
        self.size = (w, h)
        self.blocking = blocking
        self.fps = float(fps)
        self.frames_written = 0
        self.frames_dropped = 0  # live: not taken (the queue was full); its time is filled by the next frame
        self.frames_repeated = 0  # live: extra copies written to keep real time (the show presented slower)
        self.frames_skipped = 0  # live: presented faster than the recording rate, not needed
        self._t0: float | None = None
        self._due = 0  # live: frames the video holds (or has queued) so far
        self.failed = False
        self._drain_until: float | None = None  # live: set by close(); queued frames after it are dropped
        self._log = tempfile.TemporaryFile()
        cmd = [exe, "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-", "-vf", "vflip", "-c:v", codec]
        if codec in ("libx264", "libx265"):
            cmd += ["-preset", preset, "-crf", str(crf)]
        cmd += ["-pix_fmt", "yuv420p", "-movflags", "+faststart", str(self.path)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log)
        self._queue: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=8)
        self._thread = supervised("recorder", self._pump)

    def write(self, rgb: bytes, at: float | None = None) -> None:
        """Queue one frame (RGB bytes, bottom row first, as read back from GL) presented at wall-clock time ``at``
        (seconds, any origin); without ``at`` the frame is simply the next one of the video."""
        if self.failed:
            return
        if self.blocking:
            self._queue.put((rgb, 1))
            return
        copies = 1
        if at is not None:
            if self._t0 is None:
                self._t0 = at
            due = int(round((at - self._t0) * self.fps)) + 1  # frames the video holds once this one is in
            copies = due - self._due
            if copies <= 0:
                self.frames_skipped += 1
                return
        try:
            self._queue.put_nowait((rgb, copies))
        except queue.Full:
            self.frames_dropped += 1
            return
        self._due += copies
        self.frames_repeated += copies - 1

    # -- as a sink of the presented-frame tap (render/outputs.py) --
    def wants(self, t: float | None) -> bool:
        return not self.failed

    def put(self, rgb: bytes, size: tuple[int, int], t: float | None) -> None:
        self.write(rgb, t)

    def _pump(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self.failed:
                continue
            data, copies = item
            try:
                for i in range(copies):
                    if self._drain_until is not None and time.monotonic() > self._drain_until:
                        self.frames_dropped += copies - i
                        break
                    self._proc.stdin.write(data)
                    self.frames_written += 1
            except (BrokenPipeError, OSError, ValueError) as e:
                self.failed = True
                log.error("recording to %s stopped: ffmpeg is gone (%s)%s", self.path, e, self._stderr())

    def _stderr(self) -> str:
        try:
            self._log.seek(0)
            text = self._log.read().decode(errors="replace").strip()
        except OSError:
            return ""
        return f": {text[-500:]}" if text else ""

    def close(self, timeout: float | None = None, drain_s: float = 5.0) -> bool:
        """Finish the file; True when ffmpeg wrote it cleanly.

        An offline (``blocking``) recording writes every frame it was given. A live one writes what is queued for at
        most ``drain_s`` seconds and drops (and counts) the rest, so a show's stop never waits on a recorder that
        fell behind: at 1280x720 on a loaded machine, eight queued frames, each repeated to keep real time, took
        ffmpeg over two minutes. ffmpeg then has ``timeout`` seconds (live 20, offline 60) to finish the file."""
        if timeout is None:
            timeout = 60.0 if self.blocking else 20.0
        if not self.blocking:
            self._drain_until = time.monotonic() + drain_s
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:  # ffmpeg stopped reading: do not hang the shutdown on it
            log.error("ffmpeg is not taking frames; stopping it")
            self._proc.kill()
        self._thread.join(timeout)
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = -1
        if rc != 0:
            log.error("ffmpeg exited with %s%s", rc, self._stderr())
        self._log.close()
        return rc == 0 and not self.failed
