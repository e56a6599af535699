"""``/seek "text"``: glide the live walk to the archived moment, or the space image, most like a text, and hold it.

The ``search`` part (``[search]``, on while ``[vision]`` is) takes the control surface's ``seek`` notes (OSC,
OSCQuery, the web page) from the bus journal on the loop thread and hands the newest to its own thread, which embeds
the text with the ``[vision]`` CLIP model (loaded on the first request), searches the show's archive (its embedded
points, read incrementally) and the images of the show's space files built with ``--clip`` (scenes with the
``images`` trajectory), and posts where the best result is: its scene (``scene.goto``) and ``seek`` with its seed,
path time, the glide time and hold. The show glides there like a seed jump and holds that moment (path time and
scene timer still, so its latent is the archived one) until ``/seek ""`` (``seek.release``) lets the walk go on,
or a scene change does. The results (scores, times, thumbnails) are published as the ``seek.results`` note (the web
page shows them; ``/seek_pick i`` glides to another). The events it posts are journaled: a replay repeats them.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..bus import MAX_GLIDE, Event
from ..ops.logs import RepeatLog
from ..ops.supervise import Worker
from ..parts import Moment, PartContext, register
from .search import Hit, QueryEncoder, Rows, top, unit_rows
from .store import Store, archive_file

log = logging.getLogger(__name__)

MAX_MISSING = 4096  # recent points without an embedding yet, looked at again on the next search


class SearchSettings(BaseModel):
    """``[search]``: ``/seek`` (needs ``[vision]`` for its CLIP model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    glide: Annotated[float, Field(ge=0.0, le=MAX_GLIDE)] = 4.0  # seconds a /seek glides when not told
    results: Annotated[int, Field(ge=1, le=50)] = 8  # results kept for /seek_pick and shown on the page
    spaces: bool = True  # the images of the show's space files built with --clip, besides the archive


class _ArchiveIndex:
    """The archive's embedded points as one matrix, brought up to date with what was written since."""

    def __init__(self, path: Path, width: int) -> None:
        self.path, self.width = path, width
        self.ids = np.zeros(0, np.int64)
        self.rows = Rows(width)  # an IVF index past INDEX_MIN rows when faiss is installed
        self.last = 0
        self.missing: list[int] = []

    def refresh(self, store: Store) -> None:
        ids, with_clip, matrix = store.embeddings(after=self.last, width=self.width)
        new_ids, new_rows = [with_clip], [matrix.reshape(-1, self.width)]
        if self.missing:  # embeddings that arrived after their point was read
            got = store.points_by_id(self.missing, with_thumbs=False)
            late = [(i, p.clip) for i, p in got.items() if p.clip is not None and len(p.clip) == self.width]
            if late:
                new_ids.append(np.array([i for i, _ in late], np.int64))
                new_rows.append(np.stack([v for _, v in late]))
            self.missing = [i for i in self.missing if i in got and got[i].clip is None]
        if len(ids):
            self.last = int(ids.max())
            have = set(with_clip.tolist())
            self.missing = (self.missing + [int(i) for i in ids if int(i) not in have])[-MAX_MISSING:]
        rows = np.concatenate(new_rows)
        if len(rows):
            self.ids = np.concatenate([self.ids, *new_ids])
            self.rows.add(rows)

    def search(self, store: Store, query: np.ndarray, k: int) -> list[Hit]:
        idx, scores = self.rows.top(query, k * 2)  # thinning may have removed some since they were read
        points = store.points_by_id(self.ids[idx].tolist())
        hits = [Hit(float(s), "point", int(self.ids[i]), p.session, p.t, p.scene, p.seed, p.tau, thumb=p.thumb)
                for i, s in zip(idx, scores) if (p := points.get(int(self.ids[i]))) is not None]
        return hits[:k]


class Seeker(Worker):
    """The ``search`` part. See the module's doc."""

    thread_name = "search"
    stop_timeout_s = 30.0  # a search in progress finishes

    def __init__(self, settings: SearchSettings, ctx: PartContext) -> None:
        super().__init__()
        self.settings, self.ctx, self.bus = settings, ctx, ctx.bus
        self.vision = ctx.config.vision.resolved(ctx.base_dir)
        archive = ctx.config.archive
        folder = Path(archive.path).expanduser()
        self.folder = (folder if folder.is_absolute() else ctx.base_dir / folder) if archive.enabled else None
        self.encoder = QueryEncoder(self.vision)
        self.counts: Counter[str] = Counter()
        self.faults = 0
        self.results: list[Hit] = []
        self.last: dict[str, Any] = {}
        self._sub = None
        self._job: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._scene = ""
        self._config: str | None = None
        self._index: _ArchiveIndex | None = None
        self._spaces: list[tuple[str, Any]] | None = None
        self._repeats = RepeatLog(log, interval=60.0)

    # -- the part ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._sub is None:
            self._sub = self.bus.subscribe(maxlen=1024)
        if self._config is None:
            self._config = (self.ctx.state().get("show") or {}).get("config") or str(self.ctx.base_dir)
        super().start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        super().stop()

    def _stopped(self) -> None:
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    def stats(self) -> dict[str, Any]:
        index = self._index
        return {**self.counts, "failures": self.faults, "indexed": 0 if index is None else len(index.ids),
                "search": "exact" if index is None or index.rows.index is None else "ivf", "last": self.last}

    def tick(self, moment: Moment) -> None:
        """Loop thread: the newest seek request goes to the worker (an older one not yet taken is replaced)."""
        self._scene = moment.scene.name
        if self._sub is None:
            return
        for c in self._sub.drain():
            if c.kind == "note" and c.name == "seek" and isinstance(c.value, dict):
                with self._cond:
                    if self._job is not None:
                        self.counts["replaced"] += 1
                    self._job = dict(c.value)
                    self._cond.notify()

    # -- the worker ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                # woken by a request or a stop; the timeout lets the thread run Python now and then (a fault raised
                # in it, as the supervisor's drill does, lands within half a second, not at the next request)
                self._cond.wait_for(lambda: self._job is not None or self._stop.is_set(), timeout=0.5)
                job, self._job = self._job, None
            if job is None:
                continue
            try:
                self.handle(job)
            except Exception as e:  # noqa: BLE001 - a failing search never stops the show
                self.faults += 1
                self._repeats.warning("seek", "seek %r failed (%s), %d so far", job, e, self.faults)

    def handle(self, job: dict[str, Any]) -> None:
        """One request: ``{"text", "glide"}`` (``""`` lets go) or ``{"pick", "glide"}``."""
        glide = self.settings.glide if job.get("glide") is None else float(job["glide"])
        if "pick" in job:
            pick = int(job["pick"])
            if not 0 <= pick < len(self.results):
                self.counts["pick_missing"] += 1
                return
            self._go(self.results[pick], glide)
            return
        text = str(job.get("text", ""))
        if not text:
            self.bus.post(Event("seek.release", None, "search"))
            self.bus.note("seek.results", {"text": "", "results": []}, "search")
            self.results = []
            self.counts["released"] += 1
            self.last = {}
            return
        query = self.encoder.text(text)
        hits = self.search(query, self.settings.results)
        self.results = hits
        self.counts["searches"] += 1
        self.bus.note("seek.results", {"text": text, "results": [
            {**h.row(), "thumb": base64.b64encode(h.thumb).decode() if h.thumb else ""} for h in hits]}, "search")
        if not hits:
            self.counts["empty"] += 1
            log.info("seek %r: nothing archived or in a space has an embedding yet", text)
            return
        self._go(hits[0], glide)
        self.last = {"text": text, **hits[0].row()}

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` best of the archive's embedded points and the spaces' images together."""
        hits: list[Hit] = []
        if self.folder is not None:
            path = archive_file(self.folder, self._config or "show")
            if path.is_file():
                store = Store(path, readonly=True)
                try:
                    if self._index is None:
                        self._index = _ArchiveIndex(path, query.shape[-1])
                    self._index.refresh(store)
                    hits += self._index.search(store, query, k)
                finally:
                    store.close()
        names = set(self.ctx.scenes())
        hits = [h for h in hits if h.scene in names]  # moments of scenes this show still plays
        for scene, space in self._space_list(query.shape[-1]):
            idx, scores = top(space[0], query, k)
            hits += [Hit(float(s), "image", int(i), scene=scene, seed=int(i), tau=0.0, name=space[1][i],
                         thumb=space[2][i]) for i, s in zip(idx, scores)]
        return sorted(hits, key=lambda h: -h.score)[:k]

    def _space_list(self, width: int) -> list[tuple[str, Any]]:
        """(scene, (embeddings, names, JPEG thumbnails)) of each scene walking a space file built with --clip by a
        model of this width (read once)."""
        if self._spaces is not None or not self.settings.spaces:
            return self._spaces or []
        import cv2

        from ..spaces.space import shared_space

        self._spaces = []
        for scene, info in self.ctx.scene_info().items():  # the playing show's scenes, as the runtime read them
            if not info.get("space"):
                continue
            try:
                space = shared_space(info["space"])
            except Exception as e:  # noqa: BLE001 - the archive is still searched
                log.warning("seek: the space of scene %r could not be read (%s)", scene, e)
                continue
            if not str(space.meta.get("embedding", "")).startswith("clip:") or space.embeddings.shape[1] != width:
                continue
            thumbs = [cv2.imencode(".jpg", np.ascontiguousarray(t[..., ::-1]))[1].tobytes() for t in space.thumbnails]
            self._spaces.append((scene, (unit_rows(space.embeddings), space.names, thumbs)))
        return self._spaces

    def _go(self, hit: Hit, glide: float) -> None:
        if hit.scene is None or hit.seed is None or hit.tau is None:
            self.counts["no_place"] += 1
            return
        if hit.scene != self._scene:
            self.bus.post(Event("scene.goto", hit.scene, "search"))
        self.bus.post(Event("seek", [int(hit.seed), float(hit.tau), float(glide), True], "search"))
        self.counts["seeks"] += 1


@register("search", table="search", settings=SearchSettings, order=3)
def build(settings: SearchSettings, ctx: PartContext) -> Seeker | None:
    """``/seek``: on with ``[vision]`` (its CLIP model embeds the text) unless ``[search] enabled = false``."""
    vision = getattr(ctx.config, "vision", None)
    if not settings.enabled or vision is None or not vision.enabled:
        return None
    return Seeker(settings, ctx)


__all__ = ["SearchSettings", "Seeker"]
