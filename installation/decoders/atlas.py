"""The ``atlas`` decoder: the show's own map as a scene.

Its picture is everything the show has walked so far: the archive's points laid out as the live map lays them out
(a PCA of their latents, scaled into the picture by the points' 1st and 99th percentiles; latents of other lengths
zero-padded, so every scene's points share one map), over a ground that glows where the show went often (the
points' density, blurred), their thumbnails as the points, the path between them, and the newest points glowing
as the current position and its trail. The view drifts slowly across a map larger than
the screen, steered by the scene's own trajectory (a 2-number latent), so a fixed-step render is the same twice.
The scene's shader chain (its palette) colours it like the rest of the show.

The archive is read (read-only, its own connection) from ``archive`` or, when that is empty, from the file the
show's archive part writes (the part passes it in the request's extras). The map is rebuilt from the newest points
every ``refit_s`` seconds of show time; between rebuilds a frame is a crop and a few glows (about a millisecond at
640x360). Until the archive holds ``min_points`` points the show skips the scene in its rotation.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from ..sizes import Size, SizeT
from . import register
from .base import DecoderSettings, LatentRequest, NonFiniteFrame

log = logging.getLogger(__name__)


class AtlasSettings(DecoderSettings):
    """The map's source, size and motion."""

    path_fields = ("archive",)
    archive: Annotated[str, Field(description="an archive file to map; \"\" = the show's own (the archive part's "
                                              "file, every session in it)")] = ""
    resolution: Size = SizeT(640, 360)
    min_points: Annotated[int, Field(ge=3, le=100000, description="the show skips the scene until the archive "
                                                                   "holds this many points")] = 120
    points: Annotated[int, Field(ge=10, le=100000, description="the newest this many points are mapped")] = 2000
    thumbs: Annotated[int, Field(ge=0, le=2000, description="thumbnails drawn at most (newest first, none "
                                                            "covering another by more than a quarter)")] = 160
    thumb: Annotated[float, Field(gt=0.0, le=0.5, description="a thumbnail's long edge, of the screen's height")] = 0.2
    ground: Annotated[float, Field(ge=0.0, le=1.0, description="brightness of the ground where the points lie "
                                                               "densest (their density, blurred)")] = 0.35
    span: Annotated[float, Field(ge=1.0, le=4.0, description="the map's size, in screens: the view drifts over "
                                                             "it")] = 1.8
    trail: Annotated[int, Field(ge=1, le=600, description="the newest this many points glow as the trail")] = 40
    refit_s: Annotated[float, Field(ge=1.0, le=3600.0, description="show seconds between rebuilds of the map")] = 20.0


def _glow(radius: float) -> np.ndarray:
    r = int(math.ceil(radius * 3))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    return np.exp(-(xx * xx + yy * yy) / (2 * radius * radius))


@register("atlas")
class Atlas:
    """See the module's doc."""

    Settings = AtlasSettings

    def __init__(self, settings: AtlasSettings, device: str = "cpu") -> None:
        self.settings = settings
        self._map: np.ndarray | None = None  # the whole map, float32 RGB, top row first
        self._trail: np.ndarray = np.zeros((0, 2), np.float32)  # newest last, map pixels
        self._built_t: float | None = None
        self._source: tuple[str, Any] | None = None
        self.points = 0
        self.builds = 0

    @classmethod
    def latent_shape(cls, settings: AtlasSettings) -> tuple[int, ...]:
        return (2,)  # where the view is over the map

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.settings.resolution)

    @classmethod
    def check(cls, settings: AtlasSettings) -> None:
        if settings.archive and not Path(settings.archive).is_file():
            raise FileNotFoundError(f"archive {settings.archive} not found")

    @classmethod
    def ready(cls, settings: AtlasSettings, points: int) -> bool:
        """Whether the map has enough to show: ``points`` held by the show's archive, or those in ``archive``."""
        if settings.archive:
            import sqlite3

            try:
                conn = sqlite3.connect(f"file:{settings.archive}?mode=ro", uri=True)
                try:
                    points = int(conn.execute("SELECT count(*) FROM points").fetchone()[0])
                finally:
                    conn.close()
            except sqlite3.Error:
                return False
        return points >= settings.min_points

    def prepare(self) -> None:
        w, h = self.size
        self._glow_small, self._glow_big = _glow(max(h / 180, 1.0)), _glow(max(h / 40, 2.0))

    # -- the map ------------------------------------------------------------------------------------------------
    def _archive(self, request: LatentRequest) -> tuple[str, Any] | None:
        if self.settings.archive:
            return self.settings.archive, None
        given = request.extras.get("archive") if request.extras else None
        return (str(given[0]), None) if given and given[0] else None

    def _build(self, path: str, own_scene: str) -> None:
        """Read the newest points and draw the map (background, path, thumbnails); keep the trail's places."""
        import cv2

        from ..archive.maps import _thumb, bounds, layout, pca_fit, pca_project
        from ..archive.store import Store

        s = self.settings
        w, h = self.size
        mw, mh = int(round(w * s.span)), int(round(h * s.span))
        canvas = np.zeros((mh, mw, 3), np.float32)
        if not Path(path).is_file():
            self._map, self._trail, self.points = canvas, np.zeros((0, 2), np.float32), 0
            return
        store = Store(path, readonly=True)
        try:
            pts = [p for p in store.points(None, with_thumbs=False, newest=s.points)
                   if p.latent is not None and p.scene != own_scene]
            pts.sort(key=lambda p: p.id)
            self.points = len(pts)
            if len(pts) < 3:
                self._map, self._trail = canvas, np.zeros((0, 2), np.float32)
                return
            dim = max(p.latent.size for p in pts)
            x = np.zeros((len(pts), dim))
            for i, p in enumerate(pts):
                x[i, :p.latent.size] = p.latent.ravel()
            mean, axes = pca_fit(x)
            y = pca_project(x, mean, axes)
            margin = 0.08 * min(mw, mh)
            pos = layout(y, (margin, margin, mw - margin, mh - margin), bounds(y)).astype(np.float32)
            edge = max(8, int(s.thumb * h))
            chosen: list[int] = []
            for i in range(len(pts) - 1, -1, -1):  # newest first: the map shows where the show is lately
                if len(chosen) >= s.thumbs:
                    break
                if all(max(0.0, edge - abs(pos[i][0] - pos[j][0])) * max(0.0, edge - abs(pos[i][1] - pos[j][1]))
                       <= edge * edge / 4 for j in chosen):
                    chosen.append(i)
            thumbs = {}
            if chosen:
                ids = ",".join(str(int(pts[i].id)) for i in chosen)
                thumbs = dict(store.conn.execute(f"SELECT id, thumb FROM points WHERE id IN ({ids})"))
        finally:
            store.close()
        # the ground: where the show went often glows (the points' density, blurred, a square root so a lone
        # point still shows), then the path through them in time, faint, the thumbnails, a dot at every point
        if s.ground > 0:
            q = 4
            dens = np.zeros((mh // q + 1, mw // q + 1), np.float32)
            np.add.at(dens, (np.clip(pos[:, 1] // q, 0, mh // q).astype(int),
                             np.clip(pos[:, 0] // q, 0, mw // q).astype(int)), 1.0)
            dens = cv2.GaussianBlur(dens, (0, 0), max(0.08 * mh / q, 1.0))
            dens = np.sqrt(dens / max(float(dens.max()), 1e-12))
            canvas += s.ground * cv2.resize(dens, (mw, mh), interpolation=cv2.INTER_LINEAR)[..., None]
        line = np.round(pos).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [line], False, (0.28, 0.28, 0.28), 1, cv2.LINE_AA)
        for i in reversed(chosen):  # the newest on top
            img = _thumb(thumbs.get(pts[i].id), edge)
            if img is None:
                continue
            t = np.asarray(img, np.float32) / 255.0
            th, tw = t.shape[:2]
            x0, y0 = int(pos[i][0] - tw / 2), int(pos[i][1] - th / 2)
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + tw, mw), min(y0 + th, mh)
            if xb > xa and yb > ya:
                # lit over the ground: a thumbnail's dark parts do not cut holes in it
                np.maximum(canvas[ya:yb, xa:xb], t[ya - y0:yb - y0, xa - x0:xb - x0], out=canvas[ya:yb, xa:xb])
        for cx, cy in pos:
            cv2.circle(canvas, (int(cx), int(cy)), max(1, h // 180), (0.55, 0.55, 0.55), -1, cv2.LINE_AA)
        self._map = canvas
        self._trail = pos[-s.trail:]

    # -- a frame --------------------------------------------------------------------------------------------------
    def render(self, request: LatentRequest) -> np.ndarray:
        """HxWx3 float32 in 0..1: the view of the map at this time, the trail and the current position glowing."""
        import cv2

        s = self.settings
        w, h = self.size
        source = self._archive(request)
        t = float(request.t)
        stale = self._built_t is None or abs(t - self._built_t) >= s.refit_s or source != self._source or \
            (self.points < 3 and abs(t - self._built_t) >= 0.25)  # nothing mapped yet: look again soon
        if stale:
            self._source = source
            self._built_t = t
            self._build(source[0] if source else "", request.scene or "atlas")
            self.builds += 1
        assert self._map is not None
        mh, mw = self._map.shape[:2]
        z = np.asarray(request.z, np.float64).reshape(-1)[:2]
        if not np.isfinite(z).all():
            raise NonFiniteFrame("atlas: the view's position is not finite")
        z = np.tanh(z)
        cx = mw / 2 + z[0] * (mw - w) / 2
        cy = mh / 2 + z[1] * (mh - h) / 2
        frame = cv2.getRectSubPix(self._map, (w, h), (float(cx), float(cy)))
        x0, y0 = cx - w / 2, cy - h / 2
        n = len(self._trail)
        for k, (px, py) in enumerate(self._trail):
            newest = k == n - 1
            glow = self._glow_big if newest else self._glow_small
            level = 1.0 if newest else 0.25 + 0.45 * (k + 1) / n
            r = glow.shape[0] // 2
            gx, gy = int(round(px - x0)), int(round(py - y0))
            xa, ya, xb, yb = max(gx - r, 0), max(gy - r, 0), min(gx + r + 1, w), min(gy + r + 1, h)
            if xb > xa and yb > ya:
                frame[ya:yb, xa:xb] += level * glow[ya - gy + r:yb - gy + r, xa - gx + r:xb - gx + r, None]
        return np.clip(frame, 0.0, 1.0, out=frame)

    def close(self) -> None:
        self._map = None


__all__ = ["Atlas", "AtlasSettings"]
