"""The CLIP worker: the frame check where frames are made, the reader where they are shown.

Two halves. The **frame check** (``admit``, before a frame is published) runs as a post-render hook in the
decoder's process (or thread): it embeds every decoded frame while blocked concepts are configured (the show's
``[vision] blocked`` plus the scene's ``negative``) and holds a frame whose similarity to any of them exceeds the
threshold: the presenter keeps the last safe frame, the walk moves on. It must see every frame before it is
published, so it reads decoded frames, costs the decoder one image embedding per frame, and the model loads before
the first frame. The **reader** (``__call__``) reads what the wall shows: the ``[vision]`` part hands it presented
frames (the canvas after the shader chain, palette and detail included) in the show's process. It never makes the
loop wait: a sampled frame goes to its own thread through a latest-wins slot (a frame not yet taken when a newer one
arrives is skipped and counted), which embeds it, ranks the vocabulary, and reports ``vision.similarity.<i>`` to the
frame's prompt slots as parameters and the description, the top terms and its counters as notes. Frames whose
embedding must be kept (``keep``: the archive's points) queue instead (bounded; an offline render waits for room)
and each comes back as a ``vision.embedding`` event ``{"t": show time, "embedding": [...]}``. The model loads on
the reader's thread while the show starts (frames offered meanwhile are counted in ``loading_skipped``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ..ops.logs import RepeatLog
from ..ops.supervise import supervised
from ..render.slot import Frame
from .clip import ClipModel, similarity
from .describe import Describer, load_vocabulary
from .settings import VisionSettings

log = logging.getLogger(__name__)

STATS_EVERY = 1.0  # seconds between counter notes
CHECK_NOTE_EVERY = 0.25  # seconds between frame-check notes while nothing is blocked
KEEP_MAX = 64  # frames whose embedding is kept (archive points) waiting for the reader
KEEP_WAIT_S = 30.0  # an offline render waits at most this long for room among them


@dataclass(frozen=True)
class VisionHookOptions:
    """What the decoder process needs: the resolved settings and each scene's negative concepts (never shown)."""

    settings: VisionSettings
    negative: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    read: bool = True  # False: the frame check only (the decoder process; the reader runs on presented frames)

    @property
    def fail_closed(self) -> bool:
        """bool: a frame check is configured, so a worker that cannot start must hold every frame."""
        return bool(self.settings.blocked) or any(self.negative.values())


class VisionHook:
    """Frame check (gate) and latest-wins reader of decoded frames; see the module docstring."""

    name = "vision"
    every = 1  # the runner offers every frame; every_n sampling and skips are counted here

    def __init__(self, options: VisionHookOptions, model: ClipModel | None = None) -> None:
        self.settings = options.settings
        self.options = options
        self.model: ClipModel | None = None
        self._blocked: dict[str, np.ndarray] = {}
        self._blocked_all: np.ndarray | None = None
        self._ready = threading.Event()
        if model is not None or options.fail_closed:
            self._load(model)  # a frame check must be ready before the first frame may be shown
        self.loading_skipped = 0  # frames offered while the model was still loading on the vision thread
        self._deliver: Callable[[dict[str, Any]], None] = lambda result: None
        self._cond = threading.Condition()
        self._pending: tuple[Frame, np.ndarray | None] | None = None
        self._keep: deque[Frame] = deque()
        self.kept = self.keep_dropped = 0
        self.wait_for_room = False  # an offline render: keep() waits for room rather than drop
        self._closed = False
        self._keeping = False
        self._failed = False  # the model did not load on the reader's thread
        self._gate_emb: tuple[int, np.ndarray] | None = None
        self.offered = self.embedded = self.skipped = self.checked = self.blocked = self.faults = 0
        self.embed_ms = 0.0
        self._repeats = RepeatLog(log, interval=60.0)
        self._description = ""
        self._check_note_at = 0.0
        self._stats_at = 0.0
        self._thread = supervised("vision", self._run)

    def _load(self, model: ClipModel | None = None) -> None:
        """The model, the vocabulary's and the concepts' embeddings (raises what loading raises)."""
        s, options = self.settings, self.options
        self.model = model or ClipModel(s)
        groups = load_vocabulary(s.vocabulary)
        terms = [t for ts in groups.values() for t in ts]
        self.describer = Describer(groups, self.model.embed_texts(terms), s.top_k)
        self._blocked = {scene: self.model.embed_texts(list(s.blocked) + list(neg))
                         for scene, neg in options.negative.items() if neg}
        self._blocked_all = self.model.embed_texts(list(s.blocked)) if s.blocked else None
        self._ready.set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the model has loaded (False after ``timeout`` seconds, or when it failed to load)."""
        return self._ready.wait(timeout)

    def bind(self, deliver: Callable[[dict[str, Any]], None]) -> None:
        self._deliver = deliver

    # -- the frame check (decoder thread, before publishing) ---------------------------------------------------
    def concepts_for(self, scene: str) -> np.ndarray | None:
        """The blocked concepts' embeddings for a scene (the show's plus its negatives), or None: no check."""
        return self._blocked.get(scene, self._blocked_all)

    def admit(self, frame: Frame) -> bool:
        concepts = self.concepts_for(frame.scene)
        if concepts is None:
            return True
        emb = self._embed(frame)
        self._gate_emb = (frame.seq, emb)
        score = float(similarity(emb[None], concepts).max())
        self.checked += 1
        ok = score <= self.settings.threshold
        if not ok:
            self.blocked += 1
            log.warning("frame check: frame %d of scene %s held (similarity %.3f > %.3f), %d held so far",
                        frame.seq, frame.scene, score, self.settings.threshold, self.blocked)
        now = time.monotonic()
        if not ok or now - self._check_note_at >= CHECK_NOTE_EVERY:
            self._check_note_at = now
            self._deliver({"params": {"vision.blocked": 0.0 if ok else 1.0},
                           "notes": {"vision.frame_check": {"t": round(frame.t, 3), "scene": frame.scene,
                                                            "verdict": "passed" if ok else "blocked",
                                                            "checked": self.checked, "blocked": self.blocked}}})
        return ok

    def _embed(self, frame: Frame) -> np.ndarray:
        t0 = time.perf_counter()
        emb = self.model.embed_frames([frame.rgb])[0]
        ms = (time.perf_counter() - t0) * 1000.0
        self.embed_ms = ms if self.embed_ms == 0.0 else 0.9 * self.embed_ms + 0.1 * ms
        return emb

    # -- the reader (decoder thread hands over; the vision thread works) ---------------------------------------
    def keep(self, frame: Frame) -> None:
        """A frame whose embedding is kept (an archive point): queued, never replaced by a newer one; a full queue
        drops it (counted) in a live show and is waited on in an offline render."""
        with self._cond:
            if self._failed:  # the model did not load: nothing will take them
                self.keep_dropped += 1
                return
            if len(self._keep) >= KEEP_MAX and self.wait_for_room:
                self._cond.wait_for(lambda: len(self._keep) < KEEP_MAX or self._closed, KEEP_WAIT_S)
            if len(self._keep) >= KEEP_MAX or self._closed:
                self.keep_dropped += 1
                return
            self._keep.append(frame)
            self._cond.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait until every kept frame's embedding was delivered (False after ``timeout`` seconds)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._failed or (not self._keep and not self._keeping), timeout)

    def idle(self) -> bool:
        """Whether a frame handed over now would be read: the model loaded and no frame waiting."""
        return self._ready.is_set() and self._pending is None

    def pass_over(self) -> None:
        """A sampled frame not handed over (the reader is busy or loading): counted as if it had been."""
        self.offered += 1
        if self._ready.is_set():
            self.skipped += 1
        else:
            self.loading_skipped += 1

    def __call__(self, frame: Frame) -> None:
        if not self.options.read:
            return None  # the frame check alone (the decoder process): the reader reads presented frames
        self.offered += 1
        if not self._ready.is_set():
            self.loading_skipped += 1  # without a frame check the show does not wait for the model to load
            return None
        if (self.offered - 1) % self.settings.every_n:
            return None
        gate = self._gate_emb
        emb = gate[1] if gate is not None and gate[0] == frame.seq else None
        with self._cond:
            if self._pending is not None:
                self.skipped += 1  # latest wins: the worker was still busy with an older frame
            self._pending = (frame, emb)
            self._cond.notify_all()
        return None

    def _run(self) -> None:
        if not self.options.read:
            return  # the frame check alone: it runs on the decoder's thread
        if not self._ready.is_set():
            try:
                self._load()
            except Exception as e:  # noqa: BLE001 - no reading, but the show goes on (no frame check is configured)
                self.faults += 1
                with self._cond:
                    self._failed = True
                    self.keep_dropped += len(self._keep)
                    self._keep.clear()
                    self._cond.notify_all()
                log.error("vision: the CLIP model could not load (%s); no descriptions or similarities", e)
                return
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._keep or self._closed)
                if self._closed:
                    return
                keep, self._keeping = list(self._keep), True
                self._keep.clear()
                self._cond.notify_all()
                frame, emb = self._pending or (None, None)
                self._pending = None
            try:
                for kept in keep:
                    e = self._embed(kept)
                    self.kept += 1
                    self._deliver({"events": [("vision.embedding", {"t": kept.t, "embedding": e.tolist()})]})
                    if frame is not None and emb is None and kept.seq == frame.seq:
                        emb = e
                if frame is not None:
                    self._read(frame, emb)
            except Exception as e:  # noqa: BLE001 - the reader never dies; it counts and goes on
                self.faults += 1
                self._repeats.warning("read", "vision reader failed (%s), %d so far", e, self.faults)
            finally:
                with self._cond:
                    self._keeping = False
                    self._cond.notify_all()

    def _read(self, frame: Frame, emb: np.ndarray | None) -> None:
        if emb is None:
            emb = self._embed(frame)
        self.embedded += 1
        reading = self.describer.read(emb)
        params = {f"vision.similarity.{i}": 0.0 for i in range(self.settings.prompt_slots)}
        texts = frame.prompts[: self.settings.prompt_slots]
        if texts:
            sims = similarity(emb[None], self.model.embed_texts(texts))[0]
            params.update({f"vision.similarity.{i}": float(v) for i, v in enumerate(sims)})
        notes: dict[str, Any] = {}
        line = reading.description
        if line != self._description:
            self._description = line
            notes["vision.description"] = line
            notes["vision.reading"] = {"t": round(frame.t, 3), "scene": frame.scene, "top": reading.top,
                                       "ranked": dict(reading.ranked)}
        now = time.monotonic()
        if now - self._stats_at >= STATS_EVERY:
            self._stats_at = now
            notes["vision.stats"] = self.stats()
        self._deliver({"params": params, "notes": notes})

    def stats(self) -> dict[str, Any]:
        model = self.model
        return {"model": model.name if model else None, "device": model.device if model else None,
                "offered": self.offered, "loading_skipped": self.loading_skipped,
                "embedded": self.embedded, "skipped": self.skipped, "kept": self.kept,
                "keep_dropped": self.keep_dropped, "checked": self.checked,
                "blocked": self.blocked, "faults": self.faults, "embed_ms": round(self.embed_ms, 2),
                "texts_cached": model.cached_texts if model else 0, "every_n": self.settings.every_n}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(5)
