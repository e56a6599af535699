"""Projector outputs: the canvas split into regions, each corner-pinned, mesh-warped, soft-edge blended and masked.

The show renders one canvas (``[canvas] size``) once per tick. Each ``[[outputs]]`` entry takes a region of it and
draws it into its own viewport of the one window (or headless framebuffer) in one GL pass: a tessellated grid whose
vertices carry where they are in the region (``src``), where they land on the projector (homogeneous, so the
GPU's perspective-correct interpolation is the corner-pin homography exactly) and where they lie across the blend
zones; the fragment shader samples the canvas there and applies the ramps (only in the zones' cells), black-level
lift, brightness, master fade and mask (``shaders/output/warp.*``). Per pixel that is the plain window's blit plus
a multiply-add, so the outputs cost about what one plain output costs (``installation bench --outputs``).

Why one window split into viewports rather than a window per display: one GL context draws everything (the canvas
texture needs no sharing or copying between contexts), there is one swap per frame instead of one vsync wait per
window, and on X11 several monitors of one GPU form one X screen, so a borderless window at (0, 0) spanning them
puts each viewport on its projector. SDL (and so pygame) sees Xvfb's extra screens as one display anyway.

Coordinates: the region is in canvas pixels; ``corners`` (top-left, top-right, bottom-right, bottom-left) and mesh
points are in the output's own 0..1 (or pixels with ``units = "px"``), y down. A source point goes: rotate/flip ->
mesh (bilinear or bicubic between its control points) -> corner pin. :func:`reference_output` is the same in numpy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..sizes import Size

log = logging.getLogger(__name__)

SHADER_DIR = Path(__file__).resolve().parent.parent.parent / "shaders" / "output"
UNIT_CORNERS = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
SIDES = ("left", "right", "top", "bottom")
MAX_MESH = 33
TESSELLATE = 8  # at most this many grid cells per mesh cell (a corner pin needs one: the homography is exact)
RAMP_KNOTS = 128  # segments of an output's blend ramp table (warp.frag)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Point = tuple[float, float]
Width = Annotated[float, Field(ge=0.0, le=0.5)]


class BlendSettings(_Strict):
    """Soft-edge ramps: widths in fractions of the output's region, the projector's gamma, the ramp's S-curve
    exponent and the black-level lift outside the ramps."""

    left: Width = 0.0
    right: Width = 0.0
    top: Width = 0.0
    bottom: Width = 0.0
    gamma: Annotated[float, Field(ge=0.5, le=4.0)] = 2.2
    curve: Annotated[float, Field(ge=1.0, le=8.0)] = 2.0
    black: Annotated[float, Field(ge=0.0, le=0.5)] = 0.0


class MeshSettings(_Strict):
    """A cols x rows grid of warp points, row by row from the top left, in the output's 0..1 (before the corner
    pin); empty ``points`` is the regular grid."""

    cols: Annotated[int, Field(ge=2, le=MAX_MESH)] = 3
    rows: Annotated[int, Field(ge=2, le=MAX_MESH)] = 3
    points: list[Point] = []
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"

    @model_validator(mode="after")
    def _count(self) -> "MeshSettings":
        if self.points and len(self.points) != self.cols * self.rows:
            raise ValueError(f"mesh.points must hold cols x rows = {self.cols * self.rows} points, "
                             f"got {len(self.points)}")
        if any(not (-1.0 <= v <= 2.0) for p in self.points for v in p):
            raise ValueError("mesh.points must lie within -1..2 (0..1 is the output)")
        return self


class OutputSpec(_Strict):
    """One ``[[outputs]]`` entry: a region of the canvas on one projector."""

    name: str = ""
    region: tuple[int, int, int, int] | None = None  # x, y, w, h in canvas pixels; default: the whole canvas
    size: Size | None = None  # the projector's pixels; default: the region's size
    position: tuple[int, int] | None = None  # top-left in the window; default: right of the previous output
    corners: tuple[Point, Point, Point, Point] = UNIT_CORNERS
    units: Literal["norm", "px"] = "norm"
    mesh: MeshSettings | None = None
    blend: BlendSettings = BlendSettings()
    mask: str = ""  # a PNG whose alpha hides parts of the output (0 = black), relative to the config file
    rotate: Literal[0, 90, 180, 270] = 0
    flip: Literal["none", "h", "v", "hv"] = "none"
    brightness: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0


class CanvasConfig(_Strict):
    """``[canvas]``: the size the show renders at; unset, the ``[output]`` size (one plain window, as ever)."""

    size: Size | Literal[""] = ""


# -- layout ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Placed:
    """An output spec resolved against the canvas: its region (canvas px), size and place in the window (px)."""

    index: int
    name: str
    region: tuple[int, int, int, int]
    size: tuple[int, int]
    position: tuple[int, int]
    spec: OutputSpec


def canvas_size(config: Any) -> tuple[int, int]:
    """The canvas size: ``[canvas] size``, or the ``[output]`` size."""
    size = config.canvas.size or config.output.size
    return int(size[0]), int(size[1])


def presenter_size(config: Any, target_size: tuple[int, int]) -> tuple[int, int]:
    """The size the presenter renders the canvas at: the window's (today's single output) unless there is a
    ``[canvas]`` size or there are ``[[outputs]]``."""
    return canvas_size(config) if config.outputs or config.canvas.size else tuple(target_size)


def place(config: Any) -> list[Placed]:
    """Each ``[[outputs]]`` entry's region, size and window position; ValueError naming the entry when a region
    leaves the canvas."""
    cw, ch = canvas_size(config)
    placed: list[Placed] = []
    x_next = 0
    for i, o in enumerate(config.outputs):
        region = o.region or (0, 0, cw, ch)
        x, y, w, h = region
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > cw or y + h > ch:
            raise ValueError(f"outputs[{i}].region {list(region)} must lie inside the canvas {cw}x{ch}")
        size = (int(o.size[0]), int(o.size[1])) if o.size else (w, h)
        pos = o.position or (x_next, 0)
        if pos[0] < 0 or pos[1] < 0:
            raise ValueError(f"outputs[{i}].position {list(pos)} must not be negative")
        x_next = pos[0] + size[0]
        placed.append(Placed(i, o.name or f"output {i + 1}", tuple(region), size, tuple(pos), o))
    return placed


def window_size(config: Any) -> tuple[tuple[int, int], bool]:
    """(window size, borderless): the outputs' bounding box when there are ``[[outputs]]``, else ``[output] size``."""
    if not config.outputs:
        return (int(config.output.size[0]), int(config.output.size[1])), False
    placed = place(config)
    return (max(p.position[0] + p.size[0] for p in placed), max(p.position[1] + p.size[1] for p in placed)), True


def check_outputs(config: Any, base_dir: Path) -> None:
    """Start-up checks beyond the settings model: regions inside the canvas, masks that load. ValueError(key, msg)."""
    place(config)
    for i, o in enumerate(config.outputs):
        if o.mask:
            load_mask(base_dir / o.mask, f"outputs[{i}].mask")
        if o.units == "px" and any(not (-2 * s <= v <= 3 * s) for p in o.corners
                                   for v, s in zip(p, o.size or o.region[2:] if o.region else (1e9, 1e9))):
            raise ValueError(f"outputs[{i}].corners lie far outside the output")


def load_mask(path: Path, key: str = "mask") -> np.ndarray:
    """A mask PNG's alpha as HxW uint8, top row first; ValueError when it is missing or has no alpha channel."""
    import cv2

    if not Path(path).is_file():
        raise ValueError(f"{key}: file {path} not found")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"{key}: {path} is not an image cv2 can read")
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError(f"{key}: {path} has no alpha channel (save it as RGBA PNG; alpha 0 hides)")
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    return np.ascontiguousarray(img[:, :, 3])


# -- geometry (numpy; shared by the GL pass and the reference) ----------------------------------------------------

def homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking the four ``src`` points to the four ``dst`` points (DLT, h33 = 1)."""
    a, b = [], []
    for (x, y), (u, v) in zip(np.asarray(src, float), np.asarray(dst, float)):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        b.append(u)
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b.append(v)
    try:
        h = np.linalg.solve(np.array(a), np.array(b))
    except np.linalg.LinAlgError:
        raise ValueError("corners are degenerate (three on one line, or two the same)") from None
    return np.append(h, 1.0).reshape(3, 3)


def corner_pin(corners) -> np.ndarray:
    """The homography from the unit square to the (top-left, top-right, bottom-right, bottom-left) quad, checked to
    keep the quad convex (a twisted quad folds the picture over itself)."""
    q = np.asarray(corners, float)
    edges = [q[(i + 1) % 4] - q[i] for i in range(4)]
    cross = [a[0] * b[1] - a[1] * b[0] for a, b in zip(edges, edges[1:] + edges[:1])]
    if not (all(c > 1e-9 for c in cross) or all(c < -1e-9 for c in cross)):
        raise ValueError("corners must form a convex quad in the order top-left, top-right, bottom-right, "
                         "bottom-left")
    return homography(np.array(UNIT_CORNERS), q)


def orientation(rotate: int, flip: str) -> np.ndarray:
    """The 3x3 map of the unit square onto itself that turns the picture ``rotate`` degrees clockwise, then flips."""
    c = {0: (1, 0, 0, 1), 90: (0, -1, 1, 0), 180: (-1, 0, 0, -1), 270: (0, 1, -1, 0)}[rotate]
    m = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]]) @ np.array([[c[0], c[1], 0], [c[2], c[3], 0], [0, 0, 1]]) @ \
        np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]])
    fx = -1 if "h" in flip else 1
    fy = -1 if "v" in flip else 1
    f = np.array([[fx, 0, 0.5 - 0.5 * fx], [0, fy, 0.5 - 0.5 * fy], [0, 0, 1]])
    return f @ m


def apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map Nx2 points through a 3x3 projective matrix."""
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]


def _catmull(p0, p1, p2, p3, t):
    t = t[..., None]
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2 + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3)


def mesh_eval(grid: np.ndarray, st: np.ndarray, kind: str = "bicubic") -> np.ndarray:
    """Points ``st`` (Nx2 in 0..1) through a rows x cols x 2 control grid, bilinear or Catmull-Rom bicubic (which
    passes through every control point, like bilinear)."""
    rows, cols = grid.shape[:2]
    gx = np.clip(st[:, 0], 0, 1) * (cols - 1)
    gy = np.clip(st[:, 1], 0, 1) * (rows - 1)
    ix = np.minimum(gx.astype(int), cols - 2)
    iy = np.minimum(gy.astype(int), rows - 2)
    tx, ty = gx - ix, gy - iy
    if kind == "bilinear":
        a = grid[iy, ix] * (1 - tx)[:, None] + grid[iy, ix + 1] * tx[:, None]
        b = grid[iy + 1, ix] * (1 - tx)[:, None] + grid[iy + 1, ix + 1] * tx[:, None]
        return a * (1 - ty)[:, None] + b * ty[:, None]
    # Ghost points extrapolated linearly past the edges, so that an even grid maps exactly onto itself.
    g = np.concatenate([2 * grid[:1] - grid[1:2], grid, 2 * grid[-1:] - grid[-2:-1]], axis=0)
    g = np.concatenate([2 * g[:, :1] - g[:, 1:2], g, 2 * g[:, -1:] - g[:, -2:-1]], axis=1)
    rows_at = [_catmull(*[g[iy + 1 + dy, ix + 1 + dx] for dx in (-1, 0, 1, 2)], tx) for dy in (-1, 0, 1, 2)]
    return _catmull(*rows_at, ty)


@dataclass
class Warp:
    """The live, calibratable part of one output (in its own 0..1): corners, mesh grid (rows x cols x 2, or None),
    blend. Built from the TOML, replaced by the calibration file's values where it has them."""

    corners: list[list[float]]
    blend: dict[str, float]
    mesh: np.ndarray | None = None
    interpolation: str = "bicubic"
    rotate: int = 0
    flip: str = "none"
    brightness: float = 1.0

    @classmethod
    def from_spec(cls, o: OutputSpec, size: tuple[int, int]) -> "Warp":
        scale = (size[0], size[1]) if o.units == "px" else (1.0, 1.0)
        corners = [[float(x) / scale[0], float(y) / scale[1]] for x, y in o.corners]
        mesh = None
        if o.mesh is not None:
            m = o.mesh
            if m.points:
                mesh = np.array(m.points, float).reshape(m.rows, m.cols, 2)
            else:
                mesh = regular_grid(m.cols, m.rows)
        return cls(corners, o.blend.model_dump(), mesh, o.mesh.interpolation if o.mesh else "bicubic", o.rotate,
                   o.flip, o.brightness)

    def copy(self) -> "Warp":
        return Warp([list(c) for c in self.corners], dict(self.blend), None if self.mesh is None else self.mesh.copy(),
                    self.interpolation, self.rotate, self.flip, self.brightness)

    def forward(self, src: np.ndarray) -> np.ndarray:
        """Source points (Nx2, 0..1 of the region) -> homogeneous output points (Nx3, 0..1 of the output)."""
        p = apply(orientation(self.rotate, self.flip), src)
        if self.mesh is not None:
            p = mesh_eval(self.mesh, p, self.interpolation)
        return np.c_[p, np.ones(len(p))] @ corner_pin(self.corners).T

    def grid(self, size: tuple[int, int] = (1024, 1024), cuts: tuple[int, int] | None = None
             ) -> tuple[np.ndarray, dict[tuple[bool, bool], np.ndarray]]:
        """The tessellated output (``size``: its pixels): vertices (src u, v, X, Y, W, then the position across the
        horizontal and the vertical blend zone, 0..1, 1 outside, as float32) and the triangle indices of its cells
        by (in a horizontal zone, in a vertical zone): ``(False, False)`` is the interior. The grid is cut at the
        zones' edges, so that in every cell the positions across the zones are linear in the source, as the GPU
        interpolates them. ``cuts``: the mesh's (across, down) from :func:`mesh_cuts`, when already known."""
        nx, ny = cuts or ((1, 1) if self.mesh is None else mesh_cuts(self.mesh, self.interpolation, size))
        if self.rotate in (90, 270):
            nx, ny = ny, nx  # the cuts are the mesh's (across, down) on the output; the grid's are the source's
        b = self.blend
        u = _cuts(np.linspace(0.0, 1.0, nx + 1), [b["left"], 1.0 - b["right"]])
        v = _cuts(np.linspace(0.0, 1.0, ny + 1), [b["top"], 1.0 - b["bottom"]])
        su, sv = np.meshgrid(u, v)
        src = np.c_[su.ravel(), sv.ravel()]
        verts = np.c_[src, self.forward(src), zone_position(src, b)].astype("f4")
        k = np.arange(len(v) * len(u)).reshape(len(v), len(u))
        a, bb, c, d = k[:-1, :-1].ravel(), k[:-1, 1:].ravel(), k[1:, 1:].ravel(), k[1:, :-1].ravel()
        cells = np.c_[a, bb, c, a, c, d].astype("i4")
        centres = np.c_[((su[:-1, :-1] + su[:-1, 1:]) / 2).ravel(), ((sv[:-1, :-1] + sv[1:, :-1]) / 2).ravel()]
        across = zone_position(centres, b) < 1.0
        return verts, {(zx, zy): cells[(across[:, 0] == zx) & (across[:, 1] == zy)].ravel()
                       for zx in (False, True) for zy in (False, True)}


def mesh_cuts(grid: np.ndarray, interpolation: str, size: tuple[int, int], tol_px: float = 0.5) -> tuple[int, int]:
    """How many grid cells (across, down) a mesh warp is drawn with on its output of ``size`` pixels: the fewest
    whose triangles stay within ``tol_px`` of the mesh's surface (1 x 1 for a flat mesh; a surface curved only
    across, like a cylinder, is cut only across), at most TESSELLATE per mesh cell and one per 4 pixels. A CPU
    rasteriser pays for every triangle edge it draws. A bilinear mesh bends at its control points, so once it
    needs cutting it is cut there (a whole number of grid cells per mesh cell)."""
    cells = (grid.shape[1] - 1, grid.shape[0] - 1)
    limits = [max(1, min(c * TESSELLATE, s // 4)) for c, s in zip(cells, size)]
    probes = [np.linspace(0.0, 1.0, 4 * c + 1) for c in cells]  # the control points and three between each two

    def more(n: int, err: float, axis: int) -> int:
        want = max(n + 1, int(np.ceil(n * np.sqrt(err / tol_px))))  # a chord's error falls with the square
        if interpolation == "bilinear":
            want = cells[axis] * -(-want // cells[axis])
        return min(want, limits[axis])

    n = [1, 1]
    for axis in (0, 1):  # first each direction on its own: the lines along it, against the surface
        while n[axis] < limits[axis] and (err := _chord_px(grid, interpolation, n, probes, size, axis)) > tol_px / 2:
            n[axis] = more(n[axis], 2 * err, axis)
    while (err := _chord_px(grid, interpolation, n, probes, size)) > tol_px and n != limits:  # then the triangles
        n = [more(n[axis], err, axis) for axis in (0, 1)]
    return n[0], n[1]


def _chord_px(grid: np.ndarray, interpolation: str, n: list[int], probes: list[np.ndarray], size: tuple[int, int],
              along: int | None = None) -> float:
    """How far (output pixels) the surface drawn as an n[0] x n[1] grid of triangle pairs (a, b, c), (a, c, d) strays
    from the mesh's own, at the ``probes`` lattice and the middle of every drawn cell and edge; or with ``along``
    (0: across, 1: down) how far straight lines along that direction between the grid's cuts stray from it."""
    u = [np.linspace(0.0, 1.0, k + 1) for k in n]
    at = [np.unique(np.r_[p, (x[:-1] + x[1:]) / 2]) for p, x in zip(probes, u)]
    if along is not None:  # the lines of the probe lattice along that axis, cut only along it
        at[1 - along], u[1 - along] = probes[1 - along], probes[1 - along]
    gx, gy = np.meshgrid(*at)
    pts = np.c_[gx.ravel(), gy.ravel()]
    ux, uy = np.meshgrid(*u)
    nodes = mesh_eval(grid, np.c_[ux.ravel(), uy.ravel()], interpolation).reshape(len(u[1]), len(u[0]), 2)
    idx, frac = [], []
    for axis in (0, 1):
        cuts = u[axis]
        i = np.clip(np.searchsorted(cuts, pts[:, axis], side="right") - 1, 0, len(cuts) - 2)
        idx.append(i)
        frac.append(((pts[:, axis] - cuts[i]) / (cuts[i + 1] - cuts[i]))[:, None])
    (ix, iy), (fx, fy) = idx, frac
    if along is not None:  # the points lie on the lines: straight between the cuts along them
        line = np.searchsorted(u[1 - along], pts[:, 1 - along])
        drawn = nodes[line, ix] * (1 - fx) + nodes[line, ix + 1] * fx if along == 0 else \
            nodes[iy, line] * (1 - fy) + nodes[iy + 1, line] * fy
    else:
        a, b, c, d = nodes[iy, ix], nodes[iy, ix + 1], nodes[iy + 1, ix + 1], nodes[iy + 1, ix]
        drawn = np.where(fx >= fy, a + fx * (b - a) + fy * (c - b), a + fy * (d - a) + fx * (c - d))
    return float((np.abs(drawn - mesh_eval(grid, pts, interpolation)) * np.asarray(size, float)).max())


def zone_position(src: np.ndarray, blend: dict[str, float]) -> np.ndarray:
    """Nx2: where each source point lies across the horizontal and the vertical blend zone (0 at the edge, 1 at
    the zone's inner side and beyond)."""
    def across(d_low, d_high, low, high):
        t = np.ones(len(src))
        if low > 0:
            t = np.minimum(t, d_low / low)
        if high > 0:
            t = np.minimum(t, d_high / high)
        return np.clip(t, 0.0, 1.0)

    x, y = src[:, 0], src[:, 1]
    return np.c_[across(x, 1 - x, blend["left"], blend["right"]), across(y, 1 - y, blend["top"], blend["bottom"])]


def _cuts(base: np.ndarray, extra) -> np.ndarray:
    """The sorted union of two sets of cuts in 0..1, without near-duplicates."""
    return np.unique(np.round(np.clip(np.r_[base, extra], 0.0, 1.0), 7))


def regular_grid(cols: int, rows: int) -> np.ndarray:
    """The identity mesh: rows x cols x 2 points evenly over 0..1."""
    gx, gy = np.meshgrid(np.linspace(0, 1, cols), np.linspace(0, 1, rows))
    return np.dstack([gx, gy]).astype(float)


def ramp(t: np.ndarray, gamma: float, curve: float) -> np.ndarray:
    """The blend ramp (as in warp.frag): an S-curve of exponent ``curve`` in light, sent as light^(1/gamma)."""
    t = np.clip(t, 0.0, 1.0)
    f = np.where(t < 0.5, 0.5 * (2 * t) ** curve, 1 - 0.5 * (2 * (1 - t)) ** curve)
    return f ** (1.0 / gamma)


def ramp_table(blend: dict[str, float]) -> np.ndarray:
    """The ramp at the knots the pass interpolates between, (i / RAMP_KNOTS)^2 for i = 0..RAMP_KNOTS, float32.
    Linear between them it is within a level of 255 of :func:`ramp` for gamma <= 2.2 and curves 1.5..8, except for
    extreme settings at the zone's outermost pixels (curve 1 with gamma 4: up to 11 levels there)."""
    return ramp(np.linspace(0.0, 1.0, RAMP_KNOTS + 1) ** 2, blend["gamma"], blend["curve"]).astype("f4")


def blend_weight(src: np.ndarray, blend: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(weight, in a blend zone) at source points Nx2."""
    d = {"left": src[:, 0], "right": 1 - src[:, 0], "top": src[:, 1], "bottom": 1 - src[:, 1]}
    w = np.ones(len(src))
    zone = np.zeros(len(src), bool)
    for side in SIDES:
        width = blend[side]
        if width > 0:
            w = w * ramp(d[side] / width, blend["gamma"], blend["curve"])
            zone |= d[side] < width
    return w, zone


def sample_bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """GL_LINEAR sampling with clamp-to-edge of an HxWxC float image (top row first) at uv Nx2 (y down)."""
    h, w = img.shape[:2]
    x = np.clip(uv[:, 0] * w - 0.5, 0, w - 1)
    y = np.clip(uv[:, 1] * h - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def reference_output(canvas: np.ndarray, region: tuple[int, int, int, int], size: tuple[int, int], warp: Warp,
                     mask: np.ndarray | None = None, gain: float = 1.0) -> np.ndarray:
    """What the GL pass draws, in numpy, for a warp without a mesh: each output pixel's centre through the inverse
    corner pin and orientation, the canvas sampled there, times the blend ramps (and lift), gain and mask.
    ``canvas`` HxWx3 uint8 (top row first); returns HxWx3 float in 0..255 of the output, black outside the quad."""
    if warp.mesh is not None:
        raise ValueError("the reference covers corner pins, not meshes")
    w, h = size
    xs, ys = np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h)
    out_pts = np.c_[xs.ravel(), ys.ravel()]
    inv = np.linalg.inv(corner_pin(warp.corners) @ orientation(warp.rotate, warp.flip))
    src = apply(inv, out_pts)
    inside = np.all((src >= 0) & (src <= 1), axis=1)
    ch, cw = canvas.shape[:2]
    x, y, rw, rh = region
    uv = np.c_[(x + src[:, 0] * rw) / cw, (y + src[:, 1] * rh) / ch]
    col = sample_bilinear(canvas.astype(float) / 255.0, uv)
    wgt, zone = blend_weight(src, warp.blend)
    lift = warp.blend["black"] * (1 - zone)
    col = (lift[:, None] + (1 - lift[:, None]) * col * wgt[:, None]) * gain
    if mask is not None:
        col = col * sample_bilinear(mask[:, :, None].astype(float) / 255.0, out_pts)
    col[~inside] = 0.0
    return (np.clip(col, 0, 1) * 255.0).reshape(h, w, 3)


# -- GL -------------------------------------------------------------------------------------------------------------

@dataclass
class _OutputGL:
    placed: Placed
    warp: Warp
    geometry: list = field(default_factory=list)  # (program, vao, index count, in a blend zone) per draw
    buffers: list = field(default_factory=list)
    mask: Any = None
    ramp: bytes = b""  # the blend ramp table (see ramp_table), when the output blends
    pattern: Any = None  # the calibration test pattern texture, while calibrating
    drawn: Any = None  # the warp the geometry holds (rebuilt when it changes)
    covers: bool = False  # the warped picture fills the whole viewport (no black around it to clear)
    cuts: tuple = ()  # (mesh bytes, interpolation, (across, down)): mesh_cuts of the last mesh, kept while it stays


class Projection:
    """Every ``[[outputs]]`` entry drawn into its viewport of one framebuffer, one pass each; the same face as
    :class:`~.outputs.Output` (``show``, ``read``, ``size``, ``release``), so the runtime and the presented-frame
    tap do not care which they have. ``calibration`` (see :mod:`.calibration`) holds the live warps.

    Each output's warp (corner pin, mesh, blend ramps) lives in its grid's vertices, rebuilt only when the warp
    changes; per frame an output's fragments cost one canvas sample and a multiply-add, like the plain window's
    blit (plus one mask fetch with a mask). Earlier designs measured on llvmpipe: the ramps computed per fragment
    cost 4-6 times the blit; a float "warp map" fetched per fragment, then the canvas sampled where it said, twice.
    """

    def __init__(self, ctx, framebuffer, size: tuple[int, int], canvas: tuple[int, int], placed: list[Placed],
                 base_dir: Path, warps: list[Warp] | None = None, level: float = 1.0, name: str = "projection") -> None:
        self.ctx, self.framebuffer, self.name = ctx, framebuffer, name
        self.size = (int(size[0]), int(size[1]))
        self.canvas = (int(canvas[0]), int(canvas[1]))  # the size the regions refer to (the texture may be smaller)
        self.calibration = None  # a .calibration.Calibration when the runtime drives one
        self.level = float(level)
        self.frames = 0
        self.geometry_builds = 0
        self._programs: dict[tuple[bool, bool, bool], Any] = {}  # (ZONE_X, ZONE_Y, MASK) -> the pass with those
        self.outputs: list[_OutputGL] = []
        for i, p in enumerate(placed):
            out = _OutputGL(p, warps[i] if warps else Warp.from_spec(p.spec, p.size))
            if p.spec.mask:
                alpha = load_mask(base_dir / p.spec.mask)
                out.mask = ctx.texture((alpha.shape[1], alpha.shape[0]), 1, np.ascontiguousarray(alpha[::-1]).data,
                                       alignment=1)
                out.mask.filter = (0x2601, 0x2601)  # GL_LINEAR
                out.mask.repeat_x = out.mask.repeat_y = False
            self.outputs.append(out)
        self.show_pattern = False
        # Where every output fills its whole viewport and the viewports fill the window, nothing needs clearing.
        self._gaps = sum(p.size[0] * p.size[1] for p in placed) != self.size[0] * self.size[1]
        # Build the grids now (a bad warp fails here, at start), not in the first tick.
        for out in self.outputs:
            self._build(out)
        framebuffer.clear(0.0, 0.0, 0.0, 1.0)

    @property
    def warps(self) -> list[Warp]:
        return [o.warp for o in self.outputs]

    def _build(self, out: _OutputGL) -> None:
        """Rebuild an output's grid when its warp changed (calibration); a warp that cannot be drawn (a twisted
        quad, points sent to infinity) keeps the last good one."""
        if out.drawn is not None and _same(out.drawn, out.warp):
            return
        try:
            w = out.warp
            # How finely to cut the mesh is worked out again only when the mesh changed (not for a corner or a blend).
            key = None if w.mesh is None else (w.mesh.tobytes(), w.interpolation)
            if key is not None and out.cuts[:2] != key:
                out.cuts = (*key, mesh_cuts(w.mesh, w.interpolation, out.placed.size))
            verts, draws = w.grid(out.placed.size, out.cuts[2] if key is not None else None)
            if not np.all(np.isfinite(verts)):
                raise ValueError("the corners send points to infinity")
        except ValueError as e:
            if out.drawn is None:
                raise ValueError(f"{out.placed.name}: {e}") from None
            log.warning("%s: %s; keeping the last good warp", out.placed.name, e)
            out.warp = out.drawn.copy()
            return
        self._release_geometry(out)
        vbo = self.ctx.buffer(verts.tobytes())
        out.buffers.append(vbo)
        for (zx, zy), idx in draws.items():
            if len(idx):
                prog = self._program(zx, zy, out.mask is not None)
                ibo = self.ctx.buffer(idx.tobytes())
                layout = (vbo, "2f 3f 2f", "in_src", "in_pos", "in_zone") if prog.get("in_zone", None) else \
                    (vbo, "2f 3f 8x", "in_src", "in_pos")  # the interior's pass does not read the zone
                vao = self.ctx.vertex_array(prog, [layout], ibo)
                out.buffers.append(ibo)
                out.geometry.append((prog, vao, len(idx), zx or zy))
        out.ramp = ramp_table(w.blend).tobytes()
        out.covers = w.mesh is None and np.allclose(apply(corner_pin(w.corners), np.array(UNIT_CORNERS)),
                                                    UNIT_CORNERS)
        out.drawn = w.copy()
        self.geometry_builds += 1

    def _program(self, zone_x: bool, zone_y: bool, mask: bool):
        """The warp pass with the ZONE_X, ZONE_Y and MASK defines as asked (compiled once each)."""
        key = (zone_x, zone_y, mask)
        if key not in self._programs:
            head, rest = (SHADER_DIR / "warp.frag").read_text().split("\n", 1)
            defines = "".join(f"#define {d}\n" for d, on in zip(("ZONE_X", "ZONE_Y", "MASK"), key) if on)
            self._programs[key] = self.ctx.program(vertex_shader=(SHADER_DIR / "warp.vert").read_text(),
                                                          fragment_shader=f"{head}\n{defines}{rest}")
        return self._programs[key]

    @staticmethod
    def _release_geometry(out: _OutputGL) -> None:
        for _, vao, _, _ in out.geometry:
            vao.release()
        for buf in out.buffers:
            buf.release()
        out.geometry, out.buffers = [], []

    def show(self, canvas, master: float = 1.0) -> None:
        """Draw the canvas (black when there is none yet) through every output's warp, faded to level * master."""
        if self.calibration is not None:
            self.calibration.tick()
        for out in self.outputs:
            self._build(out)
        fb = self.framebuffer
        fb.use()
        fb.viewport = (0, 0, *self.size)
        if canvas is None and not self.show_pattern:
            fb.clear(0.0, 0.0, 0.0, 1.0)
            return
        if self._gaps or not all(o.covers for o in self.outputs):
            fb.clear(0.0, 0.0, 0.0, 1.0)
        level = min(max(self.level * master, 0.0), 1.0)
        cw, ch = self.canvas
        for out in self.outputs:
            p = out.placed
            src = out.pattern if self.show_pattern and out.pattern is not None else canvas
            if src is None:
                continue
            vp = (p.position[0], self.size[1] - p.position[1] - p.size[1], p.size[0], p.size[1])
            fb.viewport = vp
            src.use(0)
            if out.mask is not None:
                out.mask.use(1)
            x, y, rw, rh = p.region
            region = (x / cw, y / ch, rw / cw, rh / ch) if src is canvas else (0.0, 0.0, 1.0, 1.0)
            gain = out.warp.brightness * (1.0 if src is out.pattern else level)
            for prog, vao, count, in_zone in out.geometry:
                prog["canvas"].value = 0
                prog["region"].value = region
                prog["gain"].value = gain
                prog["lift"].value = 0.0 if in_zone else float(out.warp.blend["black"])
                if in_zone:
                    prog["table"].write(out.ramp)
                if out.mask is not None:
                    prog["mask"].value = 1
                    prog["viewport"].value = tuple(float(v) for v in vp)
                vao.render(vertices=count)
        fb.viewport = (0, 0, *self.size)
        self.frames += 1

    def handle_event(self, ev) -> bool:
        """A calibration event from the bus (see :meth:`.calibration.Calibration.handle_event`)."""
        return self.calibration is not None and self.calibration.handle_event(ev)

    def take_action(self, action: str) -> bool:
        """A window action (a key, the mouse) while calibrating: True when consumed."""
        return self.calibration is not None and self.calibration.take_action(action)

    def read(self) -> bytes:
        """The whole window: RGB bytes, bottom row first (GL order)."""
        return self.framebuffer.read(viewport=(0, 0, *self.size), components=3, alignment=1)

    def release(self) -> None:
        for out in self.outputs:
            self._release_geometry(out)
            for obj in (out.mask, out.pattern):
                if obj is not None:
                    obj.release()
        for prog in self._programs.values():
            prog.release()


def _same(a: Warp, b: Warp) -> bool:
    return a.corners == b.corners and a.blend == b.blend and a.interpolation == b.interpolation and \
        a.rotate == b.rotate and a.flip == b.flip and \
        ((a.mesh is None and b.mesh is None) or (a.mesh is not None and b.mesh is not None and
                                                 np.array_equal(a.mesh, b.mesh)))
