"""Calibrating projector outputs on the wall: test patterns, handles moved by keyboard, mouse or OSC, undo, and a
calibration file beside the config.

The technician's changes never touch the hand-written TOML: they live in ``<config stem>.calibration.json`` next to
it, written atomically (temporary file, fsync, rename: :func:`~installation.files.save_json`) when asked, when
calibration ends, and a second after the last change while calibrating, so a power cut loses at most that second.
At start the file's corners, mesh and blend replace the TOML's for the outputs it names; a file that does not fit
(another show's, edited by hand into nonsense) is logged and ignored, never half-applied and never overwritten
until the next save. JSON keeps every float's shortest round-trip form, so a saved warp comes back bit for bit.

Keys while calibrating (on the output window): Tab / Shift+Tab output, 1-4 corner (top-left, top-right,
bottom-right, bottom-left), G / Shift+G next / previous mesh point, arrows move the handle one output pixel (with
Shift ten), B next blend side, + / - its width, P pattern or picture, R back to the config's values, U or Ctrl+Z
undo, S save. The mouse drags the nearest handle. OSC: see :mod:`installation.inputs.surface`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .. import files
from ..bus import Event
from .projection import (SIDES, BlendSettings, MeshSettings, Projection, Warp, apply, canvas_size, corner_pin,
                         orientation, place, regular_grid)

log = logging.getLogger(__name__)

VERSION = 1
AUTOSAVE_S = 1.0
UNDO_DEPTH = 200
BLEND_STEP = 0.01
PATTERN_MAX = 1024  # widest test pattern texture
MAX_FILE_BYTES = 16 << 20  # a calibration with dense meshes on many outputs stays far below this


def calibration_path(config_path: Path) -> Path:
    """Where a show's calibration lives: beside its config, ``show.toml`` -> ``show.calibration.json``."""
    config_path = Path(config_path)
    return config_path.with_name(f"{config_path.stem}.calibration.json")


def warp_to_json(name: str, w: Warp) -> dict[str, Any]:
    mesh = None if w.mesh is None else {"cols": int(w.mesh.shape[1]), "rows": int(w.mesh.shape[0]),
                                        "points": w.mesh.reshape(-1, 2).tolist(), "interpolation": w.interpolation}
    return {"name": name, "corners": [list(map(float, c)) for c in w.corners], "blend": dict(w.blend), "mesh": mesh}


def warp_from_json(entry: Any, base: Warp) -> Warp:
    """A saved output's warp over ``base`` (its orientation and brightness stay the config's); ValueError if unusable."""
    if not isinstance(entry, dict):
        raise ValueError("an output entry is not an object")
    corners = entry.get("corners")
    if not (isinstance(corners, list) and len(corners) == 4 and all(
            isinstance(c, list) and len(c) == 2 and all(_num(v) and -1.0 <= v <= 2.0 for v in c) for c in corners)):
        raise ValueError("corners must be four [x, y] pairs within -1..2")
    corner_pin(corners)  # convex, not degenerate
    blend = BlendSettings.model_validate(entry.get("blend") or {}).model_dump()
    w = base.copy()
    w.corners = [[float(x), float(y)] for x, y in corners]
    w.blend = blend
    mesh = entry.get("mesh")
    if mesh is not None:
        m = MeshSettings.model_validate(mesh)
        w.mesh = np.array(m.points, float).reshape(m.rows, m.cols, 2) if m.points else regular_grid(m.cols, m.rows)
        w.interpolation = m.interpolation
    return w


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class Calibration:
    """The live warps of a :class:`~.projection.Projection` and how a technician changes them."""

    def __init__(self, projection, path: Path | None) -> None:
        self.proj = projection
        projection.calibration = self
        self.path = None if path is None else Path(path)
        self.defaults = [w.copy() for w in projection.warps]  # the config's, for R (reset)
        self.active = False
        self.output = 0
        self.handle: tuple[str, int] = ("corner", 0)
        self.side = 0
        self._undo: list[list[Warp]] = []
        self._dirty_at: float | None = None
        self._drag: tuple[int, str, int] | None = None
        self._redraw = False
        self.saves = 0
        self.loaded = False
        self.counts: Counter[str] = Counter()

    # -- the file --------------------------------------------------------------------------------------------------
    def load(self) -> bool:
        """Apply the saved calibration, all of it or (when it does not fit this show) none; True when applied."""
        if self.path is None or not self.path.is_file():
            return False
        try:
            data = files.load_json(self.path, max_bytes=MAX_FILE_BYTES)
            if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("outputs"), list):
                raise ValueError(f"not a version {VERSION} calibration")
            saved = {}
            for e in data["outputs"]:
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    raise ValueError("an output entry is not an object with a \"name\" string")
                saved[e["name"]] = e
            warps = []
            for out in self.proj.outputs:
                entry = saved.get(out.placed.name)
                warps.append(out.warp if entry is None else warp_from_json(entry, out.warp))
        except FileNotFoundError:
            return False
        except (OSError, ValueError, TypeError, ArithmeticError) as e:  # pydantic's ValidationError is a ValueError
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, files.FileError):
                why = e.why
            log.warning("calibration %s not used (%s); the config's warps apply until the next save", self.path, why)
            return False
        for out, w in zip(self.proj.outputs, warps):
            out.warp = w
        unknown = set(saved) - {o.placed.name for o in self.proj.outputs}
        if unknown:
            log.warning("calibration %s names outputs this show does not have: %s", self.path,
                        ", ".join(map(str, sorted(unknown, key=str))))
        self.loaded = True
        log.info("calibration loaded from %s", self.path)
        return True

    def snapshot(self) -> dict[str, Any]:
        return {"outputs": [warp_to_json(o.placed.name, o.warp) for o in self.proj.outputs]}

    def save(self) -> bool:
        """Write the calibration atomically; a failure is logged and counted, the show goes on."""
        self._dirty_at = None
        if self.path is None:
            return False
        try:
            files.save_json(self.path, self.snapshot(), version=VERSION)
        except (OSError, TypeError, ValueError) as e:
            self.counts["save_failures"] += 1
            log.error("calibration not saved to %s: %s", self.path, e)
            return False
        self.saves += 1
        log.info("calibration saved to %s", self.path)
        return True

    def tick(self) -> None:
        """From the loop (the projection's show): redraw the patterns after changes, save a second after the last."""
        if self._redraw and self.active:
            self.draw_patterns()
        if self._dirty_at is not None and time.monotonic() - self._dirty_at >= AUTOSAVE_S:
            self.save()

    # -- changes (each one undoable) -------------------------------------------------------------------------------
    def _change(self, n: int) -> Warp:
        self._undo.append([w.copy() for w in self.proj.warps])
        del self._undo[:-UNDO_DEPTH]
        self._dirty_at = time.monotonic()
        self.counts["changes"] += 1
        return self.proj.outputs[n].warp

    def _changed(self) -> None:
        self._redraw = True  # the patterns show the handles: redrawn once at the next frame, however many changes

    def set_corner(self, n: int, i: int, x: float, y: float) -> bool:
        if not (0 <= n < len(self.proj.outputs) and 0 <= i < 4 and _num(x) and _num(y)):
            return False
        corners = [list(c) for c in self.proj.outputs[n].warp.corners]
        corners[i] = [float(x), float(y)]
        try:
            corner_pin(corners)
        except ValueError:
            return False  # a twisted or degenerate quad is refused, not drawn
        self._change(n).corners = corners
        self._changed()
        return True

    def set_mesh(self, n: int, i: int, x: float, y: float) -> bool:
        if not (0 <= n < len(self.proj.outputs)) or not (_num(x) and _num(y) and -1 <= x <= 2 and -1 <= y <= 2):
            return False
        mesh = self.proj.outputs[n].warp.mesh
        if mesh is None or not 0 <= i < mesh.shape[0] * mesh.shape[1]:
            return False
        w = self._change(n)
        w.mesh = w.mesh.copy()
        w.mesh[i // mesh.shape[1], i % mesh.shape[1]] = (float(x), float(y))
        self._changed()
        return True

    def set_blend(self, n: int, side: str, width: float) -> bool:
        if not (0 <= n < len(self.proj.outputs)) or side not in SIDES or not (_num(width) and 0 <= width <= 0.5):
            return False
        w = self._change(n)
        w.blend = {**w.blend, side: float(width)}
        self._changed()
        return True

    def reset(self, n: int) -> None:
        self._change(n)
        self.proj.outputs[n].warp = self.defaults[n].copy()
        self._changed()

    def undo(self) -> bool:
        if not self._undo:
            return False
        for out, w in zip(self.proj.outputs, self._undo.pop()):
            out.warp = w
        self._dirty_at = time.monotonic()
        self._changed()
        return True

    def set_active(self, on: bool) -> None:
        if on == self.active:
            return
        self.active = on
        self.proj.show_pattern = on
        if on:
            self.draw_patterns()
            log.info("calibrating %d outputs (test patterns on)", len(self.proj.outputs))
        else:
            if self._dirty_at is not None:
                self.save()
            log.info("calibration ended")

    # -- the runtime's events and the window's actions ---------------------------------------------------------------
    def handle_event(self, ev: Event) -> bool:
        """A bus event for calibration (``calibrate``, ``calibrate.save``, ``calibrate.undo``, ``output.corner``,
        ``output.mesh``, ``output.blend``); False when it is not one or cannot apply (the runtime counts it)."""
        kind, v = ev.kind, ev.value
        if kind == "calibrate":
            self.set_active(bool(v))
            return True
        if kind == "calibrate.save":
            return self.save()
        if kind == "calibrate.undo":
            return self.undo()
        if kind == "output.corner":
            return self.set_corner(*v)
        if kind == "output.mesh":
            return self.set_mesh(*v)
        if kind == "output.blend":
            return self.set_blend(*v)
        return False

    def take_action(self, action: str) -> bool:
        """A window action while calibrating (keys, mouse, and the arrows' next/prev): True when consumed."""
        if not self.active or action == "quit":
            return False
        if action in ("next", "prev"):
            return True  # the arrow keys move handles now, not scenes
        kind, _, rest = action.partition(":")
        if kind == "key":
            self._key(rest)
        elif kind == "mouse":
            self._mouse(rest)
        else:
            return False
        return True

    def _key(self, key: str) -> None:
        mods = set()
        while key.startswith(("ctrl+", "shift+")) and len(key) > len(key.split("+", 1)[0]) + 1:
            head, key = key.split("+", 1)
            mods.add(head)
        name, shift = key, "shift" in mods
        n = len(self.proj.outputs)
        out = self.proj.outputs[self.output]
        moves = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
        if name == "tab":
            self.output = (self.output + (-1 if shift else 1)) % n
            self.handle = ("corner", 0)
        elif name in ("1", "2", "3", "4"):
            self.handle = ("corner", int(name) - 1)
        elif name == "g" and out.warp.mesh is not None:
            count = out.warp.mesh.shape[0] * out.warp.mesh.shape[1]
            i = self.handle[1] if self.handle[0] == "mesh" else (-1 if not shift else 0)
            self.handle = ("mesh", (i + (-1 if shift else 1)) % count)
        elif name in moves:
            self._nudge(moves[name], 10 if shift else 1)
            return
        elif name == "b":
            self.side = (self.side + 1) % 4
        elif name in ("+", "=", "[+]", "-", "[-]"):
            side = SIDES[self.side]
            step = -BLEND_STEP if name in ("-", "[-]") else BLEND_STEP
            self.set_blend(self.output, side, round(min(max(out.warp.blend[side] + step, 0.0), 0.5), 6))
            return
        elif name == "p":
            self.proj.show_pattern = not self.proj.show_pattern
        elif name == "r":
            self.reset(self.output)
        elif name == "u" or (name == "z" and "ctrl" in mods and not shift):  # (Ctrl+Shift+Z is redo elsewhere)
            self.undo()
        elif name == "s":
            self.save()
        else:
            return
        self._redraw = True

    def _nudge(self, d: tuple[int, int], px: int) -> None:
        out = self.proj.outputs[self.output]
        w, h = out.placed.size
        kind, i = self.handle
        if kind == "corner":
            x, y = out.warp.corners[i]
            self.set_corner(self.output, i, x + d[0] * px / w, y + d[1] * px / h)
        else:  # a mesh point lives before the corner pin: move it by a pixel's worth there, roughly
            m = out.warp.mesh
            x, y = m[i // m.shape[1], i % m.shape[1]]
            self.set_mesh(self.output, i, x + d[0] * px / w, y + d[1] * px / h)

    def _handles(self, n: int) -> list[tuple[str, int, np.ndarray]]:
        """Every handle of output ``n`` with its place on the output (0..1)."""
        w = self.proj.outputs[n].warp
        found = [("corner", i, np.array(c, float)) for i, c in enumerate(w.corners)]
        if w.mesh is not None:
            pts = apply(corner_pin(w.corners), w.mesh.reshape(-1, 2))
            found += [("mesh", i, p) for i, p in enumerate(pts)]
        return found

    def _mouse(self, rest: str) -> None:
        what, _, pos = rest.partition(":")
        try:
            mx, my = (float(v) for v in pos.split(","))
        except ValueError:
            return
        if what == "up":
            self._drag = None
            return
        for out in self.proj.outputs:
            p = out.placed
            if p.position[0] <= mx < p.position[0] + p.size[0] and p.position[1] <= my < p.position[1] + p.size[1]:
                break
        else:
            return
        n = p.index
        at = np.array([(mx - p.position[0]) / p.size[0], (my - p.position[1]) / p.size[1]])
        if what == "down":
            scale = np.array(p.size, float)
            near = min(self._handles(n), key=lambda h: float(np.linalg.norm((h[2] - at) * scale)))
            if np.linalg.norm((near[2] - at) * scale) > 40:
                return
            self.output, self.handle = n, (near[0], near[1])
            self._drag = (n, near[0], near[1])
            self._undo.append([w.copy() for w in self.proj.warps])  # one undo step per drag
            self._redraw = True
        elif what == "move" and self._drag is not None and self._drag[0] == n:
            _, kind, i = self._drag
            depth = len(self._undo)
            if kind == "corner":
                self.set_corner(n, i, float(at[0]), float(at[1]))
            else:
                m = apply(np.linalg.inv(corner_pin(out.warp.corners)), at[None, :])[0]
                self.set_mesh(n, i, float(m[0]), float(m[1]))
            del self._undo[depth:]  # the drag's moves share the step taken at mouse down

    # -- test patterns -------------------------------------------------------------------------------------------------
    def draw_patterns(self) -> None:
        """(Re)make every output's test pattern texture: grid, circles, its number, blend zones and handles."""
        self._redraw = False
        for n, out in enumerate(self.proj.outputs):
            img = self.pattern(n)
            h, w = img.shape[:2]
            if out.pattern is None or out.pattern.size != (w, h):
                if out.pattern is not None:
                    out.pattern.release()
                out.pattern = self.proj.ctx.texture((w, h), 3, alignment=1)
                out.pattern.filter = (0x2601, 0x2601)
            out.pattern.write(np.ascontiguousarray(img[::-1]).data)

    def pattern(self, n: int) -> np.ndarray:
        """Output ``n``'s pattern in its region's aspect (RGB, top row first)."""
        import cv2

        out = self.proj.outputs[n]
        rw, rh = out.placed.region[2:]
        s = min(1.0, PATTERN_MAX / max(rw, rh))
        w, h = max(int(rw * s), 16), max(int(rh * s), 16)
        img = np.full((h, w, 3), 32, np.uint8)
        warp = out.warp
        for k, side in enumerate(SIDES):  # blend zones tinted, their inner edge marked
            width = warp.blend[side]
            if width <= 0:
                continue
            span = int(round(width * (w if k < 2 else h)))
            box = {0: (0, 0, span, h), 1: (w - span, 0, w, h), 2: (0, 0, w, span), 3: (0, h - span, w, h)}[k]
            tint = (120, 40, 40) if k != self.side or n != self.output else (160, 90, 30)
            cv2.rectangle(img, box[:2], (box[2] - 1, box[3] - 1), tint, -1)
        for i in range(17):
            x, y = round(i * (w - 1) / 16), round(i * (h - 1) / 16)
            cv2.line(img, (x, 0), (x, h - 1), (150, 150, 150), 1)
            cv2.line(img, (0, y), (w - 1, y), (150, 150, 150), 1)
        r = max(min(w, h) // 8, 4)
        for i in range(1, 4):
            for j in range(1, 4):
                cv2.circle(img, (i * w // 4, j * h // 4), r, (255, 255, 255), 2, cv2.LINE_AA)
        text = str(n + 1)
        scale = h / 80
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(int(scale * 2), 1))
        cv2.putText(img, text, ((w - tw) // 2, (h + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 220, 0),
                    max(int(scale * 2), 1), cv2.LINE_AA)
        inv = np.linalg.inv(orientation(warp.rotate, warp.flip))  # handles sit where they land on the output
        size = max(min(w, h) // 30, 3)
        marks = [("corner", i, p) for i, p in enumerate(apply(inv, np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)))]
        if warp.mesh is not None:
            rows, cols = warp.mesh.shape[:2]
            marks += [("mesh", i, p) for i, p in enumerate(apply(inv, regular_grid(cols, rows).reshape(-1, 2)))]
        for kind, i, p in marks:
            c = (int(np.clip(p[0], 0, 1) * (w - 1)), int(np.clip(p[1], 0, 1) * (h - 1)))
            selected = n == self.output and self.handle == (kind, i)
            colour = (255, 255, 0) if selected else (0, 255, 255) if kind == "corner" else (255, 0, 255)
            cv2.circle(img, c, size * (2 if kind == "corner" else 1), colour, -1 if selected else 2, cv2.LINE_AA)
        return img

    def stats(self) -> dict[str, Any]:
        return {"calibrating": self.active, "saves": self.saves, "loaded": self.loaded, **self.counts}


def build_output(target, config: Any, base_dir: Path, calibration_path: Path | None = None):
    """The runtime's output: today's plain :class:`~.outputs.Output` with no ``[[outputs]]``, else a
    :class:`~.projection.Projection` with its calibration (``calibration_path``: the saved warps, loaded when
    present)."""
    from .outputs import Output

    if not config.outputs:
        return Output(target.ctx, target.framebuffer, target.size, fit="stretch")
    placed = place(config)
    proj = Projection(target.ctx, target.framebuffer, target.size, canvas_size(config), placed, base_dir)
    Calibration(proj, calibration_path).load()
    return proj
