"""The canvas and its outputs on a real EGL context, and the presented-frame tap with real sinks."""

from __future__ import annotations

import numpy as np
import pytest

from installation.render.outputs import FrameSink, LatestFrame, Output, PresentedTap
from installation.render.present import Presenter
from installation.render.record import Recorder
from installation.render.shaders import load_dir
from installation.render.slot import Frame
from installation.render.targets import pixels

from support import ROOT

SHADERS = load_dir(ROOT / "shaders")
NEUTRAL = {"grade.vignette": 0.0, "present.sharpen": 0.0}
CANVAS = (128, 72)


@pytest.fixture
def fbos(gl_ctx):
    made = []

    def make(size):
        tex = gl_ctx.texture(size, 3)
        fbo = gl_ctx.framebuffer(color_attachments=[tex])
        made.append((fbo, tex))
        return fbo

    yield make
    for fbo, tex in made:
        fbo.release()
        tex.release()


def _presenter(gl_ctx, colour=(200, 120, 40)) -> Presenter:
    p = Presenter(gl_ctx, CANVAS, [SHADERS["present"], SHADERS["grade"]], crossfade=False)
    p.take(Frame(np.full((36, 64, 3), colour, np.uint8), 1, 0.0, 0.0), 0.0)
    return p


def test_one_canvas_many_outputs_each_with_its_fit_and_level(gl_ctx, fbos):
    p = _presenter(gl_ctx)
    canvas = p.render(0.0, NEUTRAL)
    assert canvas is not None and canvas.size[0] / canvas.size[1] == pytest.approx(CANVAS[0] / CANVAS[1], abs=0.02)
    main = Output(gl_ctx, fbos(CANVAS), CANVAS, fit="stretch")
    wide = Output(gl_ctx, fbos((160, 40)), (160, 40), fit="contain")  # a wider projector: pillarboxed
    dim = Output(gl_ctx, fbos(CANVAS), CANVAS, fit="stretch", level=0.5)
    for out in (main, wide, dim):
        out.show(canvas, master=1.0)
    a = pixels(main.read(), main.size).astype(int)
    w = pixels(wide.read(), wide.size).astype(int)
    d = pixels(dim.read(), dim.size).astype(int)
    assert a[36, 64].tolist() == pytest.approx([200, 120, 40], abs=3)
    assert w[20, 80].tolist() == pytest.approx([200, 120, 40], abs=3)  # the middle shows the canvas
    assert w[20, 2].max() == 0 and w[20, 157].max() == 0  # and the sides are black bars
    assert d[36, 64].tolist() == pytest.approx([100, 60, 20], abs=3)  # its own level
    main.show(canvas, master=0.0)  # the master fade applies to every output
    assert pixels(main.read(), main.size).max() == 0
    main.show(None)
    assert pixels(main.read(), main.size).max() == 0  # no canvas yet: black, not garbage
    with pytest.raises(ValueError, match="fit must be one of"):
        Output(gl_ctx, fbos(CANVAS), CANVAS, fit="zoom")


def test_the_tap_reads_back_only_for_sinks_that_want_the_frame(gl_ctx, fbos):
    p = _presenter(gl_ctx)
    out = Output(gl_ctx, fbos(CANVAS), CANVAS, fit="stretch")
    tap = PresentedTap(out)
    out.show(p.render(0.0, NEUTRAL))
    tap.offer(0.0)
    assert tap.reads == 0  # nobody asked: no read-back, no cost
    preview = LatestFrame(max_fps=10)
    assert isinstance(preview, FrameSink)
    tap.add(preview)
    for t in (0.0, 0.05, 0.1, 0.12, 0.2):
        tap.offer(t)
    assert preview.taken == 3 and tap.reads == 3 and preview.frame[2] == 0.2
    rgb, size, _ = preview.frame
    assert size == CANVAS and pixels(rgb, size)[36, 64].tolist() == pytest.approx([200, 120, 40], abs=3)
    tap.remove(preview)
    tap.offer(1.0)
    assert tap.reads == 3


def test_the_recorder_is_a_sink_of_the_tap(gl_ctx, fbos, tmp_path):
    import cv2

    p = _presenter(gl_ctx)
    out = Output(gl_ctx, fbos(CANVAS), CANVAS, fit="stretch")
    tap = PresentedTap(out)
    rec = Recorder(tmp_path / "tap.mp4", CANVAS, 10, preset="ultrafast")
    tap.add(rec)
    for i in range(5):
        out.show(p.render(i / 10, NEUTRAL))
        tap.offer(i / 10)
    assert rec.close()
    cap = cv2.VideoCapture(str(tmp_path / "tap.mp4"))
    ok, img = cap.read()
    assert ok and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    assert img[36, 64][::-1].tolist() == pytest.approx([200, 120, 40], abs=8)  # BGR from OpenCV
