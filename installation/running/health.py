"""The running show's health report: what ``/health`` serves, the systemd STATUS line, and the memory figures.

A part of :class:`~installation.runtime.Runtime` (a mixin: its methods read the runtime's state). The loop refreshes
the report once a second of show time (``Runtime._ops``); :meth:`HealthReport.health_snapshot` hands the newest to
any thread (the health endpoint, the web page, OSCQuery). The status is ``ok``, ``degraded`` (a fault within
:data:`DEGRADED_FOR` seconds, or a part or thread that says why) or ``closed`` (outside opening hours).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from .. import parts as registry
from ..ops.health import MemoryWatch, rss_mb, vram_mb, vram_total_mb
from ..ops.supervise import THREADS
from ..render.process import ProcessWorker

DEGRADED_FOR = 60.0  # seconds after a fault during which health says "degraded"


class HealthReport:
    """The report's state (:meth:`_init_health`) and how it is made from the runtime's."""

    def _init_health(self) -> None:
        self.memory = MemoryWatch(rss=self._rss_mb, vram=self._vram_mb, vram_total=self._vram_total_mb)
        self._born = time.monotonic()
        self._health_lock = threading.Lock()
        self._health: dict[str, Any] = {"status": "starting"}

    def _status_line(self) -> str:
        return (f"{'open' if self.open else 'closed'}; scene {self.show.scene.name}; {self.present_fps:.0f} fps; "
                f"decoder {self.decoder_fps:.1f} fps")

    # Memory for /health: this process plus the decoder process (the GPU memory is all there) when it has one.
    def _decoder_memory(self, key: str, here: Callable[[], float | None]) -> float | None:
        """``key`` as the decoder process reported it, or ``here()`` when the decoder runs in this process."""
        worker = getattr(self, "worker", None)
        return worker.remote.get(key) if isinstance(worker, ProcessWorker) else here()

    def _rss_mb(self) -> float | None:
        own = rss_mb()
        return None if own is None else own + (self._decoder_memory("rss_mb", lambda: 0.0) or 0.0)

    def _vram_mb(self) -> float | None:
        return self._decoder_memory("vram_mb", vram_mb)

    def _vram_total_mb(self) -> float | None:
        return self._decoder_memory("vram_total_mb", vram_total_mb)

    def _reasons(self) -> dict[str, str]:
        """What makes the show degraded now: a part that says so in its stats' ``degraded`` (state saves failing or
        stalled), and threads that died within DEGRADED_FOR seconds (with their last error)."""
        reasons = {name: s["degraded"] for name, s in self._part_stats.items() if s.get("degraded")}
        died = self.thread_restarts()
        reasons.update({f"thread.{name}": f"restarted after {error}"
                        for name, error in THREADS.recent(DEGRADED_FOR).items() if name in died})
        return reasons

    def health_snapshot(self) -> dict[str, Any]:
        """The latest health report (refreshed by the loop about once a second); safe from any thread."""
        with self._health_lock:
            return self._health

    def _snapshot(self, t: float) -> dict[str, Any]:
        reasons = self._reasons()
        if not self.open:
            status = "closed"
        elif reasons or self._last_fault_t is not None and t - self._last_fault_t < DEGRADED_FOR:
            status = "degraded"
        else:
            status = "ok"
        pos = self.show.state(t)
        stats = self._part_stats
        inputs = {name: s for name, s in stats.items() if self._supervised[name].info.is_input}
        rejects = {name: sum(s.get("rejects", {}).values()) for name, s in inputs.items()}
        rejects["bus"] = sum(self.bus.stats()["rejects"].values())
        dropped = self.stats.late + (self.recorder.frames_dropped if self.recorder is not None else 0)
        faults = {
            "decoder": {k: v for k, v in self.decoder_faults.items() if k != "process_crash"},
            "decoder_process_crashes": self.decoder_faults.get("process_crash", 0),
            "tick": self.stats.tick_faults,
            "shader": self.faults.get("shader", 0),
            "inputs_rejects": rejects,
            "input_deaths": {k.split(".", 1)[1]: v for k, v in self.faults.items() if k.startswith("input.")},
            "part_deaths": {k.split(".", 1)[1]: v for k, v in self.faults.items() if k.startswith("part.")},
            "part_hooks": {k.split(".", 1)[1]: v for k, v in self.faults.items() if k.startswith("hook.")},
            "thread_restarts": self.thread_restarts(),
            "recorder": self.faults.get("recorder", 0),
            "state_save": stats.get("state", {}).get("failures", 0),
            "fallbacks": self.faults.get("fallback", 0),
            "reload": self.faults.get("reload", 0),
        }
        return {
            "status": status, "reasons": reasons, "uptime_s": round(time.monotonic() - self._born, 1),
            "scene": pos["scene"],
            "show_time_s": round(pos["scene_time"], 2),
            "position": {"scene": pos["scene"], "scene_time_s": round(pos["scene_time"], 2),
                         "tau": round(pos["tau"], 3), "seed": pos["seed"]},
            # What a controller shows besides the parameters: the gates and the prompts playing (web page, OSCQuery).
            "live": {"blackout": self.blackout, "frozen": self.frozen,
                     "prompts": [[str(text), float(weight)] for text, weight in self.show.prompts]},
            "open": self.open, "schedule": self.schedule.describe(self.wall()), "decoder_released": self.released,
            "present_fps": round(self.present_fps, 2), "decoder_fps": round(self.decoder_fps, 2),
            "frames_presented": self.stats.presented, "frames_decoded": self.slot.published,
            "frames_dropped": dropped, "faults": faults, **self.memory.report(),
            "notify": self.notifier.stats(),
            # The other parts' stats under their names ("state": saves and failures, "health": connections).
            **{name: s for name, s in stats.items() if name not in inputs},
            # Each input's own stats (opened, rate, age of its newest delivery, source or device, counters).
            "inputs": {i.name: inputs.get(i.name, {"state": "off"}) for i in registry.infos() if i.is_input},
        }
