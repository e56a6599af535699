"""The running show's fault tally: the decoder's faults accumulated across its restarts, every contained fault's
time (for the health report's ``degraded``), and the fallback to the safe scene when one scene's decoder keeps
failing.

A part of :class:`~installation.runtime.Runtime` (a mixin: it reads the runtime's show, recorder, part stats and
config). The loop tallies once a second of show time (``Runtime._ops``): more than ``[decoder] fallback_faults``
decoder faults within ``fallback_window_s`` in one scene play the safe scene for ``fallback_retry_s`` (twice as long
at each repeat), then the failing scene again.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any

from ..ops.supervise import THREADS
from ..render.process import ProcessWorker

log = logging.getLogger("installation.runtime")


class FaultTally:
    """The tally's state (:meth:`_init_tally`) and its once-a-second update (:meth:`_tally_faults`)."""

    def _init_tally(self) -> None:
        self._threads_since = THREADS.restarts()  # supervised threads' deaths before this runtime (other shows)
        self._remote_threads: Counter[str] = Counter()  # the decoder process's threads' deaths, across restarts
        self.decoder_faults: Counter[str] = Counter()  # accumulated across decoder (process) restarts
        self._decoder_seen: dict[str, int] = {}
        self._recent: deque[tuple[float, int]] = deque()  # (show time, decoder faults) in the current scene
        self._recent_scene = ""
        self._last_fault_t: float | None = None
        self._fault_total = 0
        self._recorder_failed = False
        self._fallbacks_by_scene: Counter[str] = Counter()

    def _tally_faults(self, t: float) -> None:
        """Accumulate decoder faults across restarts; too many in one scene -> the safe scene."""
        d = self.decoder_stats()
        counts = {**d.get("faults", {}), "process_crash": d.get("process_crashes", 0)}
        new = 0
        for kind, n in counts.items():
            delta = self._decoder_delta(kind, n)
            if delta > 0:
                self.decoder_faults[kind] += delta
                new += delta
        for name, n in d.get("thread_restarts", {}).items():
            self._remote_threads[name] += max(self._decoder_delta(f"thread:{name}", n), 0)
        rec = self.recorder
        if rec is not None and rec.failed and not self._recorder_failed:
            self._recorder_failed = True
            self.faults["recorder"] += 1
        total = sum(self.decoder_faults.values()) + sum(self.faults.values()) + self.stats.tick_faults + \
            sum(s.get("failures", 0) for s in self._part_stats.values()) + \
            sum(self.thread_restarts().values())  # the parts' own (failed state saves) and threads' deaths
        if total > self._fault_total:
            self._last_fault_t = t
        self._fault_total = total
        scene = self.show.scene.name
        if scene != self._recent_scene:
            self._recent.clear()
            self._recent_scene = scene
        cfg = self.spec.config.decoder
        if new:
            self._recent.append((t, new))
        while self._recent and self._recent[0][0] < t - cfg.fallback_window_s:
            self._recent.popleft()
        safe = self._safe
        if cfg.fallback_faults and scene != safe.name and sum(n for _, n in self._recent) >= cfg.fallback_faults:
            log.error("%d decoder faults in scene %s within %.0f s; falling back to the safe scene %r",
                      sum(n for _, n in self._recent), scene, cfg.fallback_window_s, safe.name)
            self.faults["fallback"] += 1
            # Play the safe scene for a while, then retry the failing one; each repeat waits twice as long.
            k = self._fallbacks_by_scene[scene]
            self._fallbacks_by_scene[scene] += 1
            retry = min(cfg.fallback_retry_s * 2 ** k, 86400.0)
            log.error("retrying scene %s in %.0f s", scene, retry)
            self.show.play_detour(safe, t, retry)
            self._recent.clear()

    def _decoder_delta(self, key: str, n: int) -> int:
        """How much the decoder's counter ``key`` grew since the last look (a restarted process counts from 0)."""
        last = self._decoder_seen.get(key, 0)
        self._decoder_seen[key] = n
        return n - last if n >= last else n

    def decoder_stats(self) -> dict[str, Any]:
        """Frames, faults by kind and restarts of the decoder, wherever it runs."""
        if isinstance(self.worker, ProcessWorker):
            return {**self.worker.remote, "process_crashes": self.worker.crashes}
        return self.guard.stats()

    def thread_restarts(self) -> dict[str, int]:
        """Deaths of supervised threads (each restarted) since this runtime was built, by thread name; the decoder
        process's threads included."""
        local = Counter(THREADS.restarts(since=self._threads_since))
        return dict(sorted((local + self._remote_threads).items()))
