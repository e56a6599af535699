"""Projector outputs through the real GL path (EGL), against answers computed without the code under test (OpenCV's
perspective transform and warp, corners placed by hand for every turn and flip); the calibration file; OSC and keys
reaching a running show; two outputs in a real X window."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import cv2
import moderngl
import numpy as np
import pytest

from installation.bus import Event
from installation.clock import FixedClock, WallClock
from installation.config import Config, ConfigError, load_show
from installation.render.calibration import Calibration, calibration_path
from installation.render.outputs import Output
from installation.render.projection import (RAMP_KNOTS, TESSELLATE, UNIT_CORNERS, BlendSettings, Projection, Warp,
                                            canvas_size, mesh_cuts, place, ramp, ramp_table, reference_output,
                                            regular_grid, window_size)
from installation.render.targets import HeadlessTarget, pixels
from installation.runtime import Runtime

from support import ROOT, play_while, scene_toml, write_show
from test_window import run_and_shoot, xvfb  # noqa: F401  (the X server fixture)

CW, CH = 96, 64


def _canvas() -> np.ndarray:
    """A known canvas: smooth ramps in red and green, a finer pattern in blue."""
    yy, xx = np.mgrid[0:CH, 0:CW]
    return np.dstack([xx * 255 // (CW - 1), yy * 255 // (CH - 1), (xx + 2 * yy) % 32 * 8]).astype(np.uint8)


@pytest.fixture
def canvas_tex(gl_ctx):
    img = _canvas()
    tex = gl_ctx.texture((CW, CH), 3, np.ascontiguousarray(img[::-1]).data, alignment=1)  # GL: bottom row first
    tex.filter = (moderngl.LINEAR, moderngl.LINEAR)
    tex.repeat_x = tex.repeat_y = False
    yield tex
    tex.release()


def _config(*outputs: dict, canvas: str = f"{CW}x{CH}") -> Config:
    return Config.model_validate({"canvas": {"size": canvas}, "outputs": list(outputs)})


def _project(gl_ctx, cfg, tex, base=ROOT, master=1.0, calibration=None):
    """Draw ``tex`` through the config's outputs into a fresh framebuffer; (projection, HxWx3 image, cleanup)."""
    size, _ = window_size(cfg)
    colour = gl_ctx.texture(size, 3)
    fbo = gl_ctx.framebuffer(color_attachments=[colour])
    proj = Projection(gl_ctx, fbo, size, canvas_size(cfg), place(cfg), base)
    if calibration is not None:
        Calibration(proj, calibration).load()
    proj.show(tex, master)
    img = pixels(proj.read(), size).astype(float)

    def cleanup():
        proj.release()
        fbo.release()
        colour.release()

    return proj, img, cleanup


KEYSTONE = {"name": "a", "region": [10, 4, 60, 50], "size": "80x60",
            "corners": [[0.1, 0.05], [0.95, 0.0], [0.85, 0.9], [0.0, 1.0]],
            "blend": {"left": 0.1, "right": 0.25, "black": 0.05}}


# Where each corner of an output's region lands, by rotate (clockwise) and flip, written out by hand: index 0..3 is
# top-left, top-right, bottom-right, bottom-left, as in ``corners``. Turning clockwise by 90 carries the picture's
# top-left to the top-right; a flip swaps left and right ("h") or top and bottom ("v") after the turn.
def _lands_on(rotate: int, flip: str) -> list[int]:
    h_swap, v_swap = {0: 1, 1: 0, 2: 3, 3: 2}, {0: 3, 3: 0, 1: 2, 2: 1}
    out = []
    for k in range(4):
        j = (k + rotate // 90) % 4
        j = h_swap[j] if "h" in flip else j
        out.append(v_swap[j] if "v" in flip else j)
    return out


def _independent_warp(canvas, region, size, corners, rotate=0, flip="none", blend=None, gain=1.0):
    """The output an ideal corner pin draws, computed without the code under test's geometry: OpenCV's
    getPerspectiveTransform between the region's corners (canvas pixels) and the configured corners (output pixels,
    in the order :func:`_lands_on` gives), warpPerspective with linear sampling (pixel centres at +0.5, as in GL),
    the blend ramps (projection.ramp: its own property test is below) at each pixel's source point, and the gain.
    Returns (HxWx3 float image, pixels surely inside the quad, pixels surely outside)."""
    x, y, rw, rh = region
    w, h = size
    src = np.float32([[x, y], [x + rw, y], [x + rw, y + rh], [x, y + rh]])
    to = _lands_on(rotate, flip)
    dst = np.float32([[corners[to[k]][0] * w, corners[to[k]][1] * h] for k in range(4)])
    hom = cv2.getPerspectiveTransform(src, dst)  # pixel edges: (0, 0) is the top-left corner of the first pixel
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    centred = np.linalg.inv(half) @ hom @ half  # OpenCV's pixel (i, j) is the edge point (i + 0.5, j + 0.5)
    img = cv2.warpPerspective(canvas.astype(np.float32), centred, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE).astype(float)
    xs, ys = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    back = cv2.perspectiveTransform(np.c_[xs.ravel(), ys.ravel()][None].astype(np.float64), np.linalg.inv(hom))[0]
    u, v = (back[:, 0] - x) / rw, (back[:, 1] - y) / rh  # each output pixel's place in the region, 0..1
    margin = 0.02 / min(rw, rh)  # pixel centres on the quad's very edge may go either way
    inside = ((u > margin) & (u < 1 - margin) & (v > margin) & (v < 1 - margin)).reshape(h, w)
    outside = ((u < -margin) | (u > 1 + margin) | (v < -margin) | (v > 1 + margin)).reshape(h, w)
    b = {**BlendSettings().model_dump(), **(blend or {})}
    weight, in_zone = np.ones(len(u)), np.zeros(len(u), bool)
    for dist, width in ((u, b["left"]), (1 - u, b["right"]), (v, b["top"]), (1 - v, b["bottom"])):
        if width > 0:
            weight *= ramp(np.clip(dist / width, 0, 1), b["gamma"], b["curve"])
            in_zone |= dist < width
    lift = (b["black"] * ~in_zone).reshape(h, w, 1)
    img = (lift * 255 + (1 - lift) * img * weight.reshape(h, w, 1)) * gain
    img[~inside] = 0.0
    return np.clip(img, 0, 255), inside, outside


@pytest.mark.parametrize("extra", [{}, {"rotate": 90, "flip": "h", "brightness": 0.8}, {"rotate": 270, "flip": "v"},
                                   {"rotate": 180},
                                   {"blend": {"left": 0.3, "right": 0.3, "top": 0.2, "curve": 6, "gamma": 1.8}}],
                         ids=["pin+blend", "rotate90+flip+brightness", "rotate270+flip", "rotate180",
                              "steep ramps on three sides"])
def test_corner_pin_and_blend_match_opencvs_perspective_warp(gl_ctx, canvas_tex, extra):
    spec = {**KEYSTONE, **extra}
    cfg = _config(spec)
    proj, got, cleanup = _project(gl_ctx, cfg, canvas_tex, master=0.75)
    cleanup()
    ref, inside, outside = _independent_warp(_canvas(), spec["region"], (80, 60), spec["corners"],
                                             spec.get("rotate", 0), spec.get("flip", "none"), spec["blend"],
                                             gain=spec.get("brightness", 1.0) * 0.75)
    diff = np.abs(got - ref)[inside]
    assert diff.mean() < 0.6 and diff.max() <= 3, (diff.mean(), diff.max())  # seen: 0.3 and 1.5
    assert got[outside].max() == 0  # black around the quad
    assert inside.sum() > 0.6 * 80 * 60 and outside.sum() > 0.05 * 80 * 60  # both parts are really there
    # and what is compared is really warped and ramped: the plain copy of the region differs by far more
    plain = cv2.resize(_canvas()[4:54, 10:70].astype(np.float32), (80, 60), interpolation=cv2.INTER_LINEAR)
    assert np.abs(plain - ref)[inside].mean() > 10


def test_a_marked_corner_lands_on_its_configured_pixel_for_every_turn_and_flip(gl_ctx):
    """Red marks the region's top-left corner and green its top-right; each must appear at the configured corner
    that the turn and flip send it to, written out by hand (not computed by the code under test)."""
    img = np.full((CH, CW, 3), 40, np.uint8)
    x, y, rw, rh = KEYSTONE["region"]
    img[y:y + 6, x:x + 6] = (255, 0, 0)
    img[y:y + 6, x + rw - 6:x + rw] = (0, 255, 0)
    tex = gl_ctx.texture((CW, CH), 3, np.ascontiguousarray(img[::-1]).data, alignment=1)
    corners = [[0.1, 0.05], [0.95, 0.0], [0.85, 0.9], [0.0, 1.0]]
    at = np.array(corners) * (80, 60)  # the configured corners in output pixels
    expected = {(0, "none"): (0, 1), (90, "none"): (1, 2), (180, "none"): (2, 3), (270, "none"): (3, 0),
                (0, "h"): (1, 0), (0, "v"): (3, 2), (0, "hv"): (2, 3), (90, "h"): (0, 3), (90, "v"): (2, 1),
                (270, "h"): (2, 1), (270, "v"): (0, 3), (180, "h"): (3, 2), (180, "v"): (1, 0),
                (90, "hv"): (3, 0), (180, "hv"): (0, 1), (270, "hv"): (1, 2)}
    try:
        for (rotate, flip), (red_at, green_at) in expected.items():
            assert _lands_on(rotate, flip)[:2] == [red_at, green_at], (rotate, flip)  # the table and the rule agree
            spec = {"region": [x, y, rw, rh], "size": "80x60", "corners": corners, "rotate": rotate, "flip": flip}
            _, got, cleanup = _project(gl_ctx, _config(spec), tex)
            cleanup()
            for colour, corner in ((0, red_at), (1, green_at)):
                mark = (got[:, :, colour] > 150) & (got[:, :, 1 - colour] < 100)
                assert mark.sum() > 10, (rotate, flip, colour)
                centre = np.argwhere(mark).mean(0)[::-1] + 0.5  # (x, y) in output pixels
                dist = np.hypot(*(at - centre).T)
                assert dist.argmin() == corner and dist[corner] < 8, (rotate, flip, colour, centre, dist)
    finally:
        tex.release()


@pytest.mark.parametrize("gamma,curve", [(2.2, 2.0), (1.0, 1.5), (2.2, 8.0), (0.5, 4.0)])
def test_the_ramp_table_is_within_a_level_of_the_ramp(gamma, curve):
    # the pass interpolates the ramp linearly between the table's knots, (i / RAMP_KNOTS)^2
    t = np.linspace(0.0, 1.0, 20001)
    blend = {"gamma": gamma, "curve": curve}
    knots = np.linspace(0.0, 1.0, RAMP_KNOTS + 1) ** 2
    err = np.abs(np.interp(t, knots, ramp_table(blend)) - ramp(t, gamma, curve)) * 255
    assert err.max() < 1.0, err.max()
    # and the ramp itself does what a blend is for: where two projectors overlap, one fading out as the other fades
    # in, their light (the sent level to the power gamma) adds up to full light everywhere, half each in the middle
    light = ramp(t, gamma, curve) ** gamma + ramp(1 - t, gamma, curve) ** gamma
    assert np.abs(light - 1.0).max() < 1e-9 and ramp(np.array([0.5]), gamma, curve)[0] ** gamma == pytest.approx(0.5)
    assert ramp(np.array([0.0]), gamma, curve)[0] == 0.0 and np.all(np.diff(ramp(t, gamma, curve)) >= 0)


def test_a_mesh_is_cut_finely_enough_and_no_finer():
    size = (320, 360)
    ident = Warp(list(map(list, UNIT_CORNERS)), BlendSettings().model_dump(), regular_grid(5, 5))
    assert mesh_cuts(ident.mesh, "bicubic", size) == mesh_cuts(ident.mesh, "bilinear", size) == (1, 1)  # flat
    cylinder = regular_grid(5, 3)
    cylinder[:, :, 1] += 0.05 * np.sin(np.pi * cylinder[:, :, 0])  # curved across only
    nx, ny = mesh_cuts(cylinder, "bicubic", size)
    assert nx > 4 and ny == 1
    bent = ident.copy()
    bent.mesh[1:4, 1:4, 1] += 0.05  # the middle of the surface bulges down by 18 px
    nx, ny = mesh_cuts(bent.mesh, "bicubic", size)
    assert 4 <= nx <= 4 * TESSELLATE and 4 <= ny <= 4 * TESSELLATE
    assert all(n % 4 == 0 for n in mesh_cuts(bent.mesh, "bilinear", size))  # cut at the control points
    # the triangles the GPU draws stay within about the tolerance (0.5 px) of the curved surface: checked on a
    # lattice four times finer than the grid, each point against where its triangle puts it
    verts, draws = bent.grid(size)
    assert len(draws[False, False]) == 6 * nx * ny and sum(map(len, draws.values())) == 6 * nx * ny
    fine = np.stack(np.meshgrid(np.linspace(0, 1, 4 * nx + 1), np.linspace(0, 1, 4 * ny + 1)), -1).reshape(-1, 2)
    nodes = verts[:, 2:4].reshape(ny + 1, nx + 1, 2).astype(float)  # W is 1 without a corner pin
    ix, iy = np.minimum((fine[:, 0] * nx).astype(int), nx - 1), np.minimum((fine[:, 1] * ny).astype(int), ny - 1)
    fx, fy = (fine[:, 0] * nx - ix)[:, None], (fine[:, 1] * ny - iy)[:, None]
    a, b, c, d = nodes[iy, ix], nodes[iy, ix + 1], nodes[iy + 1, ix + 1], nodes[iy + 1, ix]
    drawn = np.where(fx >= fy, a + fx * (b - a) + fy * (c - b), a + fy * (d - a) + fx * (c - d))
    assert (np.abs(drawn - bent.forward(fine)[:, :2]) * size).max() < 0.6
    # the same bulge on a smaller output needs no more cells
    assert all(m <= k for m, k in zip(mesh_cuts(bent.mesh, "bicubic", (80, 90)), (nx, ny)))


def test_corners_in_pixels_equal_corners_in_fractions(gl_ctx, canvas_tex):
    px = [[8, 3], [76, 0], [68, 54], [0, 60]]
    norm = [[x / 80, y / 60] for x, y in px]
    _, a, c1 = _project(gl_ctx, _config({**KEYSTONE, "corners": px, "units": "px"}), canvas_tex)
    _, b, c2 = _project(gl_ctx, _config({**KEYSTONE, "corners": norm}), canvas_tex)
    c1(), c2()
    assert np.abs(a - b).max() <= 1


def test_a_masks_zero_alpha_is_black(gl_ctx, canvas_tex, tmp_path):
    mask = np.zeros((30, 40, 4), np.uint8)
    mask[:, 20:, 3] = 255  # the right half shows, the left is hidden
    mask[:, :, :3] = 255  # colour is ignored: only alpha counts
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    spec = {"region": [0, 0, CW, CH], "size": "80x60", "mask": "mask.png"}
    proj, got, cleanup = _project(gl_ctx, _config(spec), canvas_tex, base=tmp_path)
    cleanup()
    assert got[:, :38].max() == 0  # alpha 0: black, whatever the canvas has there
    assert got[:, 42:].mean() > 60
    ref = reference_output(_canvas(), (0, 0, CW, CH), (80, 60), proj.outputs[0].warp, mask=mask[:, :, 3])
    assert np.abs(got - ref).max() <= 6
    with pytest.raises(ValueError, match="no alpha channel"):
        cv2.imwrite(str(tmp_path / "flat.png"), mask[:, :, :3])
        from installation.render.projection import check_outputs
        check_outputs(_config({**spec, "mask": "flat.png"}), tmp_path)


def test_an_identity_mesh_changes_nothing_and_a_moved_point_moves_the_picture(gl_ctx, canvas_tex):
    base = {"region": [0, 0, CW, CH], "size": "80x60"}
    _, plain, c1 = _project(gl_ctx, _config(base), canvas_tex)
    _, ident, c2 = _project(gl_ctx, _config({**base, "mesh": {"cols": 3, "rows": 3}}), canvas_tex)
    points = regular_grid(3, 3)
    points[1, 1] = (0.65, 0.5)  # the centre of the picture now lands at 65% of the width
    moved_cfg = {**base, "mesh": {"cols": 3, "rows": 3, "points": points.reshape(-1, 2).tolist(),
                                  "interpolation": "bilinear"}}
    _, moved, c3 = _project(gl_ctx, _config(moved_cfg), canvas_tex)
    c1(), c2(), c3()
    assert np.abs(plain - ident).max() <= 2
    centre_red = plain[30, 40, 0]  # red is the canvas's x ramp: the middle column's value
    assert abs(moved[30, 52, 0] - centre_red) <= 4  # found at 65% of 80 px now
    assert abs(plain[30, 52, 0] - centre_red) > 30


def test_two_outputs_show_their_own_regions_in_their_own_viewports(gl_ctx):
    img = np.zeros((CH, CW, 3), np.uint8)
    img[:, : CW // 2] = (255, 0, 0)
    img[:, CW // 2:] = (0, 0, 255)
    tex = gl_ctx.texture((CW, CH), 3, np.ascontiguousarray(img[::-1]).data, alignment=1)
    # The canvas's right half on the left of the window and its left half on the right.
    cfg = _config({"name": "R", "region": [CW // 2, 0, CW // 2, CH], "size": "40x30"},
                  {"name": "L", "region": [0, 0, CW // 2, CH], "size": "40x30", "position": [40, 10]})
    assert window_size(cfg) == ((80, 40), True)
    _, got, cleanup = _project(gl_ctx, cfg, tex)
    cleanup()
    tex.release()
    assert got[15, 20].tolist() == [0, 0, 255] and got[25, 60].tolist() == [255, 0, 0]
    assert got[35, 20].max() == 0 and got[5, 60].max() == 0  # outside both outputs: black


def test_config_errors_name_the_output(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra='[canvas]\nsize = "200x100"\n'
                     '[[outputs]]\nregion = [150, 0, 100, 100]\n')
    with pytest.raises(ConfigError, match=r"outputs.*outputs\[0\]\.region .* inside the canvas 200x100"):
        load_show(cfg)
    cfg.write_text(cfg.read_text().replace("region = [150, 0, 100, 100]", "corners = [[0,0],[1,0],[1,1]]"))
    with pytest.raises(ConfigError, match="outputs"):
        load_show(cfg)
    cfg.write_text(cfg.read_text().replace("corners = [[0,0],[1,0],[1,1]]", 'blend = { left = 0.9 }'))
    with pytest.raises(ConfigError, match=r"outputs\.0\.blend\.left"):
        load_show(cfg)


TWO = ('[canvas]\nsize = "128x48"\n'
       '[[outputs]]\nname = "left"\nregion = [0, 0, 72, 48]\nsize = "64x48"\nblend = { right = 0.12 }\n'
       'corners = [[0.02, 0.0], [1.0, 0.03], [0.97, 1.0], [0.0, 0.96]]\n'
       '[[outputs]]\nname = "right"\nregion = [56, 0, 72, 48]\nsize = "64x48"\nblend = { left = 0.12 }\n'
       'mesh = { cols = 3, rows = 3 }\n')


def test_a_saved_calibration_survives_a_restart_bit_for_bit(gl_ctx, canvas_tex, tmp_path):
    cfg_path = write_show(tmp_path, {"a": scene_toml()}, extra=TWO)
    toml_before = cfg_path.read_bytes()
    spec = load_show(cfg_path)
    path = calibration_path(cfg_path)
    assert path.name == "show.calibration.json" and path.parent == cfg_path.parent
    proj, _, cleanup = _project(gl_ctx, spec.config, canvas_tex, calibration=path)
    cal = proj.calibration
    assert not cal.loaded  # nothing saved yet: the config's warps
    assert cal.handle_event(Event("output.corner", (0, 2, 0.9123456789012345, 0.95)))
    assert cal.handle_event(Event("output.mesh", (1, 4, 0.55, 0.4711)))
    assert cal.handle_event(Event("output.blend", (1, "left", 0.1337)))
    assert not cal.handle_event(Event("output.corner", (0, 0, 0.99, 0.99)))  # would twist the quad: refused
    assert not cal.handle_event(Event("output.corner", (5, 0, 0.1, 0.1)))  # no such output
    assert not cal.handle_event(Event("output.blend", (0, "left", 0.7)))  # out of range
    proj.show(canvas_tex, 1.0)
    shown = proj.read()
    assert cal.save() and path.is_file()
    saved = path.read_bytes()
    warps = [w.copy() for w in proj.warps]
    cleanup()
    assert cfg_path.read_bytes() == toml_before  # the hand-written TOML is never touched

    proj2, _, cleanup2 = _project(gl_ctx, load_show(cfg_path).config, canvas_tex, calibration=path)
    try:
        assert proj2.calibration.loaded
        for a, b in zip(warps, proj2.warps):
            assert a.corners == b.corners and a.blend == b.blend  # exact floats, not approximately
            assert (a.mesh is None and b.mesh is None) or np.array_equal(a.mesh, b.mesh)
        assert proj2.warps[0].corners[2] == [0.9123456789012345, 0.95]
        proj2.show(canvas_tex, 1.0)
        assert proj2.read() == shown  # the same pixels, bit for bit
        assert proj2.calibration.save() and json.loads(path.read_bytes())["outputs"] == \
            json.loads(saved)["outputs"]
        # undo walks back; the file only changes on the next save
        assert proj2.calibration.handle_event(Event("output.corner", (0, 0, 0.2, 0.2)))
        assert proj2.calibration.handle_event(Event("calibrate.undo"))
        assert proj2.warps[0].corners == warps[0].corners
    finally:
        cleanup2()


def test_a_broken_calibration_file_is_ignored_not_half_applied(gl_ctx, canvas_tex, tmp_path, caplog):
    cfg_path = write_show(tmp_path, {"a": scene_toml()}, extra=TWO)
    path = calibration_path(cfg_path)
    good = {"name": "left", "corners": [[0.1, 0.1], [0.9, 0.0], [1.0, 1.0], [0.0, 1.0]], "blend": {}, "mesh": None}
    bad = {"name": "right", "corners": [[0, 0], [1, 0], [1, 1], [float("nan"), 1]]}
    for text in ("{not json", json.dumps({"version": 1, "outputs": [good, bad]}),
                 json.dumps({"version": 99, "outputs": [good]}),
                 json.dumps({"version": 1, "outputs": [good, {**good, "name": [1]}]}),  # was TypeError, exit 1
                 '{"version": 1, "outputs": ' + "[" * 5000 + "]" * 5000 + "}",  # was RecursionError, exit 1
                 json.dumps({"version": 1, "outputs": [{**good, "corners": [[1e400, 0]] * 4}]}).replace("Infinity",
                                                                                                        "1e400")):
        path.write_text(text)
        proj, _, cleanup = _project(gl_ctx, load_show(cfg_path).config, canvas_tex, calibration=path)
        try:
            assert not proj.calibration.loaded
            assert proj.warps[0].corners[0] == [0.02, 0.0]  # the config's, all of them
        finally:
            cleanup()
        assert path.read_text() == text  # left for the technician to look at
    assert "not used" in caplog.text


def test_keys_and_mouse_move_handles_while_calibrating(gl_ctx, canvas_tex, tmp_path):
    cfg_path = write_show(tmp_path, {"a": scene_toml()}, extra=TWO)
    proj, before, cleanup = _project(gl_ctx, load_show(cfg_path).config, canvas_tex,
                                     calibration=calibration_path(cfg_path))
    cal = proj.calibration
    try:
        assert not cal.take_action("key:2")  # not calibrating: keys are the show's
        cal.handle_event(Event("calibrate", True))
        proj.show(canvas_tex, 1.0)
        pattern = pixels(proj.read(), proj.size).astype(float)
        assert np.abs(pattern - before).mean() > 10  # the test patterns replace the picture
        for action in ("key:2", "key:shift+down", "key:left", "next"):
            assert cal.take_action(action)  # the arrows move handles, not scenes
        x, y = proj.warps[0].corners[1]
        assert (x, y) == (pytest.approx(1.0 - 1 / 64), pytest.approx(0.03 + 10 / 48))
        cal.take_action("key:tab")  # the second output; its blend side
        for action in ("key:=", "key:="):
            cal.take_action(action)
        assert proj.warps[1].blend["left"] == pytest.approx(0.14)
        cal.take_action("key:g")
        cal.take_action("key:right")
        assert proj.warps[1].mesh[0, 0, 0] == pytest.approx(1 / 64)
        for _ in range(5):  # five changes: two corner moves, two blend steps, one mesh move
            cal.take_action("key:u")
        assert proj.warps[0].corners[1] == [1.0, 0.03] and proj.warps[1].blend["left"] == 0.12
        # drag output 1's top-left corner (window 0,1) by the mouse to (6, 5): one undo step for the whole drag
        assert cal.take_action("mouse:down:1,1") and cal.take_action("mouse:move:4,3")
        cal.take_action("mouse:move:6,5")
        cal.take_action("mouse:up:6,5")
        assert proj.warps[0].corners[0] == [6 / 64, 5 / 48]
        cal.take_action("key:u")
        assert proj.warps[0].corners[0] == [0.02, 0.0]
        assert cal.take_action("key:s") is True and calibration_path(cfg_path).is_file()
        assert not cal.take_action("quit")  # quit stays the show's
    finally:
        cleanup()


def test_osc_calibrates_a_running_show_and_the_file_is_loaded_at_the_next_start(tmp_path):
    cfg_path = write_show(tmp_path, {"a": scene_toml(shaders='["present"]')}, extra=TWO)
    spec = load_show(cfg_path)
    size, _ = window_size(spec.config)
    target = HeadlessTarget(size)
    rt = Runtime(spec, target, WallClock(), fps=20)
    assert not isinstance(rt.output, Output) and rt.presenter.size == (128, 48)
    result = {}

    def send(port: int, *messages: str) -> None:
        code = "from pythonosc.udp_client import SimpleUDPClient; c = SimpleUDPClient('127.0.0.1', %d); " % port
        subprocess.run([sys.executable, "-c", code + "; ".join(messages)], check=True, timeout=60)

    def technician():
        deadline = time.monotonic() + 60
        while (rt.osc is None or rt.osc.address is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = rt.osc.address[1]
        # outputs are numbered from 1, as on their test patterns
        send(port, "c.send_message('/calibrate', 1)", "c.send_message('/output/1/corner/3', [0.05, 0.9])",
             "c.send_message('/output/2/blend/left', 0.2)", "c.send_message('/output/2/mesh/4', [0.5, 0.45])",
             "c.send_message('/output/8/corner/0', [0.1, 0.1])",  # no such output: unavailable
             "c.send_message('/output/0/corner/0', [0.1, 0.1])",  # there is no output 0: unknown address
             "c.send_message('/output/1/corner/4', [0.1, 0.1])",  # no such corner: unknown address
             "c.send_message('/output/1/blend/left', 0.9)",  # out of range
             "c.send_message('/calibrate/save', [])")
        while not calibration_path(cfg_path).is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        # saved: the save came last, so every message before it has been handled (in order, on the loop thread)
        result["warps"] = [w.copy() for w in rt.output.warps]
        result["calibrating"] = rt.output.calibration.active
        result["osc"] = rt.osc.stats()
        result["bus"] = rt.bus.stats()["rejects"]

    play_while(rt, target, technician)
    w0, w1 = result["warps"]
    f32 = pytest.approx  # OSC carries float32
    assert w0.corners[3] == f32([0.05, 0.9]) and w1.blend["left"] == f32(0.2) and w1.mesh[1, 1].tolist() == \
        f32([0.5, 0.45])
    assert result["calibrating"]
    assert result["osc"]["rejects"]["unknown_address"] == 2 and result["osc"]["rejects"]["out_of_range"] == 1
    assert result["osc"]["rejects"]["unavailable"] == 1 and result["bus"].get("event", 0) == 0
    saved = json.loads(calibration_path(cfg_path).read_text())
    assert saved["outputs"][0]["corners"][3] == w0.corners[3]
    # restart: the calibration is there from the first frame
    spec = load_show(cfg_path)
    target = HeadlessTarget(size)
    rt = Runtime(spec, target, FixedClock(20), fps=20)
    try:
        assert rt.output.warps[0].corners == w0.corners and rt.output.warps[1].blend == w1.blend
        rt.step()
        assert pixels(target.read(), target.size).mean() > 5
    finally:
        rt.close()
        target.close()


def test_no_outputs_is_todays_single_window(tmp_path):
    spec = load_show(write_show(tmp_path, {"a": scene_toml()}))
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20)
    try:
        assert type(rt.output) is Output and rt.presenter.size == target.size
        assert window_size(spec.config) == ((160, 96), False)
        rt.bus.post(Event("calibrate", True, source="test"))
        rt.step()  # nothing to calibrate: the event is counted, the show goes on
        assert rt.bus.stats()["rejects"]["event"] == 1
    finally:
        rt.close()
        target.close()


def test_two_outputs_in_a_real_x_window(tmp_path, xvfb):
    """The show on Xvfb as one borderless window with two viewports: the second output shows the same canvas
    region as the first, mirrored, so its half of the screenshot is the first half flipped, whatever the picture."""

    extra = ('[canvas]\nsize = "160x96"\n[[outputs]]\nregion = [0, 0, 80, 96]\nsize = "160x192"\n'
             '[[outputs]]\nregion = [0, 0, 80, 96]\nsize = "160x192"\nflip = "h"\n')
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present"]')}, extra=extra)
    shot, _ = run_and_shoot(xvfb, tmp_path, ["--config", str(cfg), "--duration", "8"],
                            lambda img: img[:192, :320].std() > 5)
    assert shot is not None, "nothing appeared on the X screen"
    lit = np.argwhere(shot.max(axis=2) > 0)
    assert lit.min(axis=0).tolist() == [0, 0] and lit.max(axis=0).tolist()[:2] <= [191, 319]  # at 0,0; 320x192
    left, right = shot[:192, :160].astype(int), shot[:192, 160:320].astype(int)
    assert np.abs(left - right[:, ::-1]).mean() < 4  # the same region, mirrored, side by side
    assert np.abs(left - right).mean() > 4  # and not merely the same picture twice


def test_the_calibrate_command(tmp_path):
    from support import run_cli

    plain = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("calibrate", "--config", str(plain), "--headless", "--duration", "1")
    assert r.returncode == 2 and "no [[outputs]] to calibrate" in r.stderr
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present"]')}, extra=TWO)
    r = run_cli("calibrate", "--config", str(cfg), "--headless", "--duration", "2", "--no-resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "calibrating 2 outputs" in r.stderr and "on headless at 128x48" in r.stderr
    assert not calibration_path(cfg).exists()  # nothing changed: nothing written


def test_key_names_with_modifiers(gl_ctx, canvas_tex, tmp_path):
    cfg_path = write_show(tmp_path, {"a": scene_toml()}, extra=TWO)
    proj, _, cleanup = _project(gl_ctx, load_show(cfg_path).config, canvas_tex)
    cal = Calibration(proj, None)
    try:
        cal.set_active(True)
        cal.take_action("key:[+]")  # the keypad's plus widens the selected side
        assert proj.warps[0].blend["left"] == pytest.approx(0.01)
        cal.take_action("key:ctrl+shift+z")  # not undo (shift), nothing else either
        assert proj.warps[0].blend["left"] == pytest.approx(0.01)
        cal.take_action("key:ctrl+z")
        assert proj.warps[0].blend["left"] == 0.0
        cal.take_action("key:shift+tab")
        assert cal.output == 1
        proj.show(canvas_tex, 1.0)  # the patterns are redrawn once, at the frame
        assert not cal._redraw
    finally:
        cleanup()


def test_a_turned_output_cuts_its_mesh_along_the_right_axis():
    # a surface curved across the projector only; the picture turned 90 degrees onto it: the source's rows now run
    # down the projector, so it is the source's down direction that needs the cuts
    size = (320, 240)
    cylinder = regular_grid(5, 3)
    cylinder[:, :, 1] += 0.05 * np.sin(np.pi * cylinder[:, :, 0])
    nx, ny = mesh_cuts(cylinder, "bicubic", size)
    assert nx > 1 and ny == 1
    for rotate, cut in ((0, (nx, ny)), (90, (ny, nx)), (180, (nx, ny)), (270, (ny, nx))):
        warp = Warp(list(map(list, UNIT_CORNERS)), BlendSettings().model_dump(), cylinder, rotate=rotate)
        verts, draws = warp.grid(size)
        assert len(verts) == (cut[0] + 1) * (cut[1] + 1), rotate
        # and the drawn surface stays on the curve: each cell's centre against the mesh there
        cols = cut[0] + 1
        nodes = verts[:, 2:4].reshape(-1, cols, 2).astype(float)
        centre_src = (verts[:, :2].reshape(-1, cols, 2)[:-1, :-1] + verts[:, :2].reshape(-1, cols, 2)[1:, 1:]) / 2
        drawn = (nodes[:-1, :-1] + nodes[1:, 1:]) / 2
        exact = warp.forward(centre_src.reshape(-1, 2).astype(float))[:, :2].reshape(drawn.shape)
        assert (np.abs(drawn - exact) * size).max() < 0.6, rotate
