"""The presenter on a real EGL context: pixels read back are what a viewer would see."""

from __future__ import annotations

import numpy as np
import pytest

from installation.render.present import Presenter, fit_scale
from installation.render.shaders import load_dir
from installation.render.slot import Frame
from installation.render.targets import pixels

from support import ROOT

SHADERS = load_dir(ROOT / "shaders")
NEUTRAL = {"grade.vignette": 0.0, "present.sharpen": 0.0}
SIZE = (128, 72)


def halves(left, right, size=(64, 36)) -> np.ndarray:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    img[:, : size[0] // 2] = left
    img[:, size[0] // 2:] = right
    return img


@pytest.fixture
def target(gl_ctx):
    tex = gl_ctx.texture(SIZE, 3)
    fbo = gl_ctx.framebuffer(color_attachments=[tex])
    yield fbo
    fbo.release()
    tex.release()


def show(p: Presenter, fbo, now: float, values=NEUTRAL, master: float = 1.0) -> np.ndarray:
    p.draw(fbo, now, values, master)
    return pixels(fbo.read(components=3, alignment=1), SIZE)


def chain(*names):
    return [SHADERS[n] for n in names]


def test_frame_reaches_the_output_upright_and_scaled(gl_ctx, target):
    p = Presenter(gl_ctx, SIZE, chain("present", "feedback", "grade"), crossfade=False)
    assert not p.has_frame
    assert show(p, target, 0.0).max() == 0  # nothing decoded yet: black, not garbage
    img = halves((255, 0, 0), (0, 0, 255))
    img[:4] = (0, 255, 0)  # a green band on the top rows
    p.take(Frame(img, 1, 0.0, 0.0), 0.0)
    out = show(p, target, 0.0).astype(int)
    h, w = SIZE[1], SIZE[0]
    assert out[h // 2, w // 4].tolist() == pytest.approx([255, 0, 0], abs=3)
    assert out[h // 2, 3 * w // 4].tolist() == pytest.approx([0, 0, 255], abs=3)
    assert out[1, w // 4][1] > 200 and out[h - 2, w // 4][1] < 30  # top stays top


def test_crossfade_by_age_mixes_the_last_two_frames(gl_ctx, target):
    p = Presenter(gl_ctx, SIZE, chain("present"))
    red, blue = halves((255, 0, 0), (255, 0, 0)), halves((0, 0, 255), (0, 0, 255))
    p.take(Frame(red, 1, 0.0, 0.0), 0.0)
    p.take(Frame(red, 2, 0.0, 0.0), 0.1)  # decoder interval 0.1 s
    p.take(Frame(blue, 3, 0.0, 0.0), 0.2)
    start = show(p, target, 0.2, {"present.sharpen": 0.0})[36, 64].astype(int)
    mid = show(p, target, 0.25, {"present.sharpen": 0.0})[36, 64].astype(int)
    end = show(p, target, 0.35, {"present.sharpen": 0.0})[36, 64].astype(int)
    assert start[0] > 240 and start[2] < 15
    assert 100 < mid[0] < 160 and 100 < mid[2] < 160
    assert end[2] > 240 and end[0] < 15


def test_a_cut_before_anything_was_shown_fades_in_from_the_held_frame(gl_ctx, target):
    p = Presenter(gl_ctx, SIZE, chain("present"), crossfade=False)
    p.take(Frame(halves((255, 0, 0), (255, 0, 0)), 1, 0.0, 0.0, cut=0), 0.0)
    p.take(Frame(halves((0, 255, 0), (0, 255, 0)), 2, 0.0, 0.0, cut=1), 1.0, transition=2.0)
    first = show(p, target, 1.0, {"present.sharpen": 0.0})[36, 64].astype(int)
    half = show(p, target, 2.0, {"present.sharpen": 0.0})[36, 64].astype(int)
    done = show(p, target, 3.1, {"present.sharpen": 0.0})[36, 64].astype(int)
    assert first[0] > 240 and first[1] < 15  # still the old look
    assert 100 < half[0] < 160 and 100 < half[1] < 160
    assert done[1] > 240 and done[0] < 15


def test_a_cut_dissolves_from_the_presented_picture_keeping_light(gl_ctx, target):
    """After a scene change the old scene's picture, as it was presented (its own grade), dissolves into the new
    one; in the middle both are at 0.8 of their strength and the brighter wins, so a bright half and a dark half
    never meet at half light (the mean never dips under the dimmer scene's), nor do two whole pictures add up to
    their sum."""
    p = Presenter(gl_ctx, SIZE, chain("present", "grade"), crossfade=False)
    old = {**NEUTRAL, "present.sharpen": 0.0, "grade.exposure": 1.0}
    p.take(Frame(halves((200, 200, 200), (0, 0, 0)), 1, 0.0, 0.0, cut=0), 0.0)
    before = show(p, target, 0.5, old).astype(int)  # the old scene on screen: bright left, dark right
    p.take(Frame(halves((0, 0, 0), (200, 200, 200)), 2, 0.0, 0.0, cut=1), 1.0, transition=2.0)
    new = {**NEUTRAL, "present.sharpen": 0.0}
    first = show(p, target, 1.0, new).astype(int)
    half = show(p, target, 2.0, new).astype(int)
    done = show(p, target, 3.1, new).astype(int)
    assert np.abs(first - before).max() <= 2  # the held picture, with the old scene's exposure, not the new grade
    assert before[36, 32].mean() > before[36, 96].mean() + 100
    # the middle: the old bright half and the new bright half both lit
    assert 0.75 * before[36, 32].mean() < half[36, 32].mean() < 0.85 * before[36, 32].mean()
    assert 0.75 * done[36, 96].mean() < half[36, 96].mean() < 0.85 * done[36, 96].mean()
    means = [show(p, target, 1.0 + 0.1 * k, new).mean() for k in range(1, 20)]
    assert min(means) >= min(before.mean(), done.mean()) - 2
    assert done[36, 32].mean() < 15 and done[36, 96].mean() > 150


def test_master_fade_goes_to_black(gl_ctx, target):
    p = Presenter(gl_ctx, SIZE, chain("present", "grade"), crossfade=False)
    p.take(Frame(halves((200, 200, 200), (200, 200, 200)), 1, 0.0, 0.0), 0.0)
    assert show(p, target, 0.0, master=0.0).max() == 0
    assert 90 < show(p, target, 0.0, master=0.5)[36, 64].mean() < 110


def test_grade_and_feedback_change_the_picture(gl_ctx, target):
    p = Presenter(gl_ctx, SIZE, chain("present", "feedback", "grade"), crossfade=False)
    p.take(Frame(halves((200, 50, 50), (50, 50, 200)), 1, 0.0, 0.0), 0.0)
    base = show(p, target, 0.0).astype(int)
    grey = show(p, target, 0.0, {**NEUTRAL, "grade.saturation": 0.0}).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 2 and np.abs(base[..., 0] - base[..., 2]).max() > 100
    # Trails: after the frame turns black, feedback keeps a fading wake.
    values = {**NEUTRAL, "feedback.amount": 0.9}
    show(p, target, 0.0, values)
    p.take(Frame(np.zeros((36, 64, 3), np.uint8), 2, 0.0, 0.0), 0.1)
    wake = show(p, target, 0.1, values)
    assert wake.max() > 100
    no_trail = show(p, target, 0.2, NEUTRAL)
    assert no_trail.max() < 5


def test_fit_scale_cover_and_contain():
    assert fit_scale((320, 180), (1280, 720), "cover") == pytest.approx((1.0, 1.0))
    assert fit_scale((512, 512), (1600, 900), "cover") == pytest.approx((1.0, 0.5625))
    assert fit_scale((512, 512), (1600, 900), "contain") == pytest.approx((1600 / 900, 1.0))


def test_work_size_follows_the_decoder_frame(gl_ctx):
    p = Presenter(gl_ctx, (1280, 720), chain("present", "grade"))
    p.take(Frame(np.zeros((180, 320, 3), np.uint8), 1, 0.0, 0.0), 0.0)
    assert p.work_size == (320, 180)
    p.take(Frame(np.zeros((512, 512, 3), np.uint8), 2, 0.0, 0.0), 0.1)
    assert p.work_size == (512, 288)
    p.release()
