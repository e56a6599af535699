"""The live map (``[output.map]``): where the show is now, over everything it has visited, in a corner of the window.

The archive part owns it. A background thread reads the session's archived points from the archive file (its own
read-only connection; WAL lets it read while the writer writes), refits a PCA of their latents every ``refit_s``
seconds and draws the map once (path, dots, a few thumbnails) with PIL; a few times a second it marks the current
position on a copy, projecting the latent of the show's current plan with the same fit. The loop thread only ever
uploads a finished picture (latest wins: at most one upload per new picture) and draws one textured quad: no disk,
no numpy and no PIL on the loop thread, so the map cannot cost the main output a frame
(``installation bench --map`` measures present p99 with and without it).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..ops.logs import RepeatLog
from ..ops.supervise import SupervisedThread, supervised
from .maps import _colours, _thumb, bounds, layout, pca_fit, pca_project

log = logging.getLogger(__name__)

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
_VERTEX = """#version 330
uniform vec4 rect;  // x0, y0, x1, y1 in clip space
out vec2 uv;
void main() {
    vec2 c = vec2(gl_VertexID & 1, (gl_VertexID >> 1) & 1);
    uv = vec2(c.x, 1.0 - c.y);  // the picture's top row first
    gl_Position = vec4(mix(rect.xy, rect.zw, c), 0.0, 1.0);
}
"""
_FRAGMENT = """#version 330
uniform sampler2D map;
uniform float opacity;
in vec2 uv;
out vec4 fragColor;
void main() {
    vec4 c = texture(map, uv);
    fragColor = vec4(c.rgb, c.a * opacity);
}
"""


class Fit:
    """A PCA of the archived latents of one shape, and where it puts them on a ``size`` picture."""

    def __init__(self, latents: np.ndarray, size: tuple[int, int], margin: int) -> None:
        self.mean, self.axes = pca_fit(latents)
        y = pca_project(latents, self.mean, self.axes)
        self.lo_hi = bounds(y)
        w, h = size
        self.box = (margin, margin, w - margin, h - margin)
        self.positions = layout(y, self.box, self.lo_hi)

    def where(self, latent: np.ndarray) -> tuple[float, float]:
        y = pca_project(latent.reshape(1, -1).astype(np.float64), self.mean, self.axes)
        return tuple(layout(y, self.box, self.lo_hi)[0])


class LiveMap:
    """See the module's doc. ``settings`` is :class:`~installation.config.MapOverlayConfig`; ``source()`` returns
    the archive file and session once the archive has opened them (``(None, None)`` before)."""

    def __init__(self, settings: Any, source: Any, marks: Any = None) -> None:
        self.settings = settings
        self._source = source
        self._marks = marks or (lambda: ())  # point ids to ring: the best matches of the current /seek
        self._lock = threading.Lock()
        self._current: tuple[Any, float] | None = None  # (plan, t): the show's position, set by the loop thread
        self._picture: np.ndarray | None = None  # the newest finished picture (RGBA, top row first)
        self._version = 0
        self._uploaded = -1
        self._stop = threading.Event()
        self._thread: SupervisedThread | None = None
        self._gl: dict[str, Any] = {}
        self._repeats = RepeatLog(log, interval=60.0)
        self.counts = {"refits": 0, "pictures": 0, "uploads": 0, "draws": 0, "failures": 0}
        self.marked = 0  # /seek matches ringed on the newest picture
        self.points = 0
        self.draw_s = 0.0  # loop-thread time in draw()

    # -- the part's life (the archive starts and stops it) ----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = supervised("live-map", self._run, stop=self._stop)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "points": self.points, "marked": self.marked,
                "draw_ms_total": round(self.draw_s * 1000, 2)}

    # -- the loop thread ----------------------------------------------------------------------------------------------
    def position(self, plan: Any, t: float) -> None:
        """The show's current plan and show time (a reference swap; the map thread computes the latent)."""
        self._current = (plan, t)

    def draw(self, ctx: Any, framebuffer: Any, size: tuple[int, int]) -> None:
        """Draw the newest picture over ``framebuffer`` (GL, the loop thread): upload only when it changed."""
        started = time.perf_counter()
        with self._lock:
            picture, version = self._picture, self._version
        if picture is None:
            return
        if not self._gl:
            prog = ctx.program(vertex_shader=_VERTEX, fragment_shader=_FRAGMENT)
            self._gl = {"prog": prog, "vao": ctx.vertex_array(prog, []), "tex": None}
        h, w = picture.shape[:2]
        tex = self._gl["tex"]
        if tex is None or tex.size != (w, h):
            if tex is not None:
                tex.release()
            tex = self._gl["tex"] = ctx.texture((w, h), 4)
            tex.filter = (ctx.LINEAR, ctx.LINEAR)
        if version != self._uploaded:
            tex.write(picture.tobytes())
            self._uploaded = version
            self.counts["uploads"] += 1
        prog = self._gl["prog"]
        prog["rect"].value = self._rect(size, (w, h))
        prog["opacity"].value = float(self.settings.opacity)
        framebuffer.use()
        ctx.enable(ctx.BLEND)
        ctx.blend_func = ctx.SRC_ALPHA, ctx.ONE_MINUS_SRC_ALPHA
        tex.use(0)
        self._gl["vao"].render(mode=ctx.TRIANGLE_STRIP, vertices=4)
        ctx.disable(ctx.BLEND)
        self.counts["draws"] += 1
        self.draw_s += time.perf_counter() - started

    def _rect(self, size: tuple[int, int], picture: tuple[int, int]) -> tuple[float, float, float, float]:
        """The picture's rectangle in clip space: ``width`` of the window wide, in its corner, ``margin`` inset."""
        W, H = size
        w = self.settings.width * W
        h = w * picture[1] / picture[0]
        m = self.settings.margin * min(W, H)
        left = "left" in self.settings.corner
        top = "top" in self.settings.corner
        x0 = m if left else W - m - w
        y0 = H - m - h if top else m  # GL: y up
        return (2 * x0 / W - 1, 2 * y0 / H - 1, 2 * (x0 + w) / W - 1, 2 * (y0 + h) / H - 1)

    # -- the map thread -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        base = fit = None
        refit_at = 0.0
        trail: list[tuple[float, float]] = []
        period = 1.0 / self.settings.fps
        while not self._stop.wait(period if base is not None else 0.5):
            try:
                now = time.monotonic()
                if now >= refit_at:
                    refit_at = now + self.settings.refit_s
                    made = self._refit()
                    if made is not None:
                        base, fit = made
                        trail = []
                if base is None or self._current is None:
                    continue
                plan, t = self._current
                latent = np.asarray(plan.latent(t), dtype=np.float64).ravel()
                if latent.size != fit.mean.size:
                    continue  # a scene on another decoder: its position is not on this map until the next refit
                trail = (trail + [fit.where(latent)])[-int(self.settings.fps * 8):]
                self._publish(self._mark(base, trail, fit))
            except Exception:  # noqa: BLE001 - a fault in the map never touches the show
                self.counts["failures"] += 1
                self._repeats.error("draw", "live map: drawing failed (%d so far)", self.counts["failures"],
                                    exc_info=True)
                self._stop.wait(5.0)

    def _refit(self) -> tuple[Any, Fit] | None:
        """Read the session's newest points, fit the projection, draw the base picture (None: not enough yet)."""
        from PIL import Image, ImageDraw

        from .store import Store

        path, session = self._source()
        if path is None or session is None or not Path(path).exists():
            return None
        current = self._current
        want = None if current is None else np.asarray(current[0].latent(current[1])).size
        store = Store(path, readonly=True)
        try:
            points = store.points(session, with_thumbs=False, newest=self.settings.points)
            kept = [p for p in points if p.latent is not None and (want is None or p.latent.size == want)]
            self.points = len(kept)
            if len(kept) < 3:
                return None
            stride = max(1, len(kept) // 8)
            shown = list(range(0, len(kept), stride))  # a few thumbnails, spread in time: only those are read
            ids = ",".join(str(int(kept[i].id)) for i in shown)
            thumbs = dict(store.conn.execute(f"SELECT id, thumb FROM points WHERE id IN ({ids})"))
        finally:
            store.close()
        w = int(self.settings.resolution)
        size = (w, int(round(w * 0.625)))
        fit = Fit(np.stack([p.latent.ravel() for p in kept]).astype(np.float64), size, margin=max(8, w // 24))
        fit.index = {p.id: i for i, p in enumerate(kept)}
        pos = fit.positions
        img = Image.new("RGBA", size, (6, 6, 10, 200))
        draw = ImageDraw.Draw(img, "RGBA")
        colours = _colours(kept)
        n = len(kept)
        for i in range(1, n):
            r, g, b = colours[kept[i].scene]
            draw.line([tuple(pos[i - 1]), tuple(pos[i])], fill=(r, g, b, int(40 + 120 * i / (n - 1))), width=1)
        edge = max(16, w // 9)
        for i in shown:
            th = _thumb(thumbs.get(kept[i].id), edge)
            if th is not None:
                img.paste(th, (int(pos[i][0] - th.size[0] / 2), int(pos[i][1] - th.size[1] / 2)))
        for i, p in enumerate(kept):
            r, g, b = colours[p.scene]
            cx, cy = pos[i]
            draw.ellipse([cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5], fill=(r, g, b, 220))
        draw.rectangle([0, 0, size[0] - 1, size[1] - 1], outline=(255, 255, 255, 60))
        self.counts["refits"] += 1
        return img, fit

    def _mark(self, base: Any, trail: list[tuple[float, float]], fit: Fit | None = None) -> np.ndarray:
        """The base picture with the best matches of the current /seek ringed, the recent trail and the current
        position."""
        from PIL import ImageDraw

        img = base.copy()
        draw = ImageDraw.Draw(img, "RGBA")
        marked = 0
        for pid in self._marks():
            i = getattr(fit, "index", {}).get(pid)
            if i is not None:
                x, y = fit.positions[i]
                draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(255, 200, 80, 255), width=2)
                marked += 1
        self.marked = marked
        if len(trail) > 1:
            draw.line(trail, fill=(255, 255, 255, 150), width=2)
        x, y = trail[-1]
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=(255, 255, 255, 255), width=2)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(255, 255, 255, 255))
        return np.asarray(img, dtype=np.uint8)

    def _publish(self, picture: np.ndarray) -> None:
        with self._lock:
            self._picture = np.ascontiguousarray(picture)
            self._version += 1
        self.counts["pictures"] += 1

    def picture(self) -> np.ndarray | None:
        """The newest finished picture (RGBA, top row first), for tests and previews."""
        with self._lock:
            return self._picture


__all__ = ["CORNERS", "Fit", "LiveMap"]
