"""The suspects of issue 23 (a heap overwrite detected inside a GL draw), each checked on a real EGL context.

Read for the issue: RGB rows whose ``3 * width`` is not a multiple of 4 (GL's default row alignment is 4: a read-back
or upload with the wrong alignment writes or reads past the buffer); buffers handed to GL or to sinks and then
changed or freed while still used; moderngl objects released by the garbage collector on another thread.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from installation.render.outputs import LatestFrame, Output, PresentedTap
from installation.render.present import Presenter
from installation.render.shaders import load_dir
from installation.render.slot import Frame
from installation.render.targets import HeadlessTarget, pixels

from support import ROOT

ODD = [(161, 97), (97, 61), (333, 7), (1, 1)]  # 3 * width % 4 != 0 for all of them


def _image(size, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _upload(ctx, img: np.ndarray):
    """As the presenter uploads a decoder frame (present.py ``_upload``): RGB, alignment 1, bottom row first."""
    tex = ctx.texture((img.shape[1], img.shape[0]), 3, alignment=1)
    tex.write(np.ascontiguousarray(img[::-1]).data)
    return tex


@pytest.mark.parametrize("size", ODD)
def test_a_read_back_at_an_odd_rgb_width_is_exactly_what_was_drawn(gl_ctx, size):
    """Upload, draw through an Output (the show's blit), read back through the tap into a sink: the sink's bytes are
    exactly w*h*3 long and are the picture, row for row (a 4-byte row alignment would shift every row)."""
    w, h = size
    img = _image(size, w)
    canvas = _upload(gl_ctx, img)
    out_tex = gl_ctx.texture(size, 3)  # what HeadlessTarget draws into
    fbo = gl_ctx.framebuffer(color_attachments=[out_tex])
    output = Output(gl_ctx, fbo, size, fit="stretch")
    tap, sink = PresentedTap(output), LatestFrame()
    tap.add(sink)
    try:
        output.show(canvas)
        tap.offer(None)
        rgb, got_size, _ = sink.frame
        assert got_size == size and len(rgb) == w * h * 3
        assert np.abs(pixels(rgb, size).astype(int) - img).max() <= 1
        buf = bytearray(w * h * 3)  # read_into with the show's alignment fits a buffer of exactly w*h*3
        fbo.read_into(buf, components=3, alignment=1)
        assert bytes(buf) == rgb
    finally:
        output.release()
        for obj in (fbo, out_tex, canvas):
            obj.release()


def test_a_too_small_buffer_is_refused_not_overwritten(gl_ctx):
    """The wrong alignment for a buffer sized w*h*3 is an error from moderngl, not a write past its end."""
    tex = gl_ctx.texture((161, 97), 3)
    fbo = gl_ctx.framebuffer(color_attachments=[tex])
    try:
        buf = bytearray(161 * 97 * 3)
        with pytest.raises(Exception, match="too small"):
            fbo.read_into(buf, components=3, alignment=4)
        with pytest.raises(Exception, match="too small"):
            tex.read_into(buf, alignment=4)
    finally:
        fbo.release()
        tex.release()


def test_the_presenter_copies_a_frame_at_upload_and_a_freed_array_changes_nothing(gl_ctx):
    """A decoder frame at an odd width is uploaded, then its array is overwritten and freed before the draw (as a
    decoder reusing its buffer or a frame dropped at once would): the draw still shows the frame taken."""
    size = (161, 97)
    img = _image(size, 1)
    arr = img.copy()
    p = Presenter(gl_ctx, size, [load_dir(ROOT / "shaders")["present"]], fit="stretch", crossfade=False)
    tex = gl_ctx.texture(size, 3)
    fbo = gl_ctx.framebuffer(color_attachments=[tex])
    try:
        p.take(Frame(arr, 1, 0.0, 0.0), 0.0)
        p._last_rgb = None  # the presenter's own reference too: only GL's copy is left
        arr[:] = 0
        del arr
        gc.collect()
        p.draw(fbo, 0.0, {"present.sharpen": 0.0})
        got = pixels(fbo.read(components=3, alignment=1), size).astype(int)
        assert np.abs(got - img).mean() < 3 and got.max() > 200  # the picture, not the zeros written after
    finally:
        p.release()
        fbo.release()
        tex.release()


def test_sinks_get_bytes_of_their_own_that_the_next_read_back_does_not_touch(gl_ctx):
    """The tap reads back into a new bytes object each time: a sink thread still working on frame A (the NDI
    converter, the recorder's writer, a JPEG for the web preview) never sees frame B written into it."""
    size = (161, 97)
    a, b = _image(size, 2), _image(size, 3)
    out_tex = gl_ctx.texture(size, 3)
    fbo = gl_ctx.framebuffer(color_attachments=[out_tex])
    output = Output(gl_ctx, fbo, size, fit="stretch")
    tap, sink = PresentedTap(output), LatestFrame()
    tap.add(sink)
    canvases = [_upload(gl_ctx, a), _upload(gl_ctx, b)]
    try:
        output.show(canvases[0])
        tap.offer(None)
        held = sink.frame[0]
        held_copy = bytes(bytearray(held))
        output.show(canvases[1])
        tap.offer(None)
        assert sink.frame[0] is not held and isinstance(held, bytes)
        assert held == held_copy  # frame A unchanged after frame B was read back
        assert np.abs(pixels(held, size).astype(int) - a).max() <= 1
        assert np.abs(pixels(sink.frame[0], size).astype(int) - b).max() <= 1
    finally:
        output.release()
        for obj in (fbo, out_tex, *canvases):
            obj.release()


def test_the_garbage_collector_on_another_thread_makes_no_gl_call():
    """moderngl releases an object from ``__del__`` only with ``gc_mode`` "auto" (or queues it with "context_gc");
    the show's contexts keep the default (None), so a GL object collected on a sink's or the decoder's thread is
    never released from there (the show releases its objects itself, on the loop thread)."""
    target = HeadlessTarget((64, 36))
    try:
        assert target.ctx.gc_mode is None
        tex = target.ctx.texture((16, 16), 3)
        glo = tex.glo
        box = [tex]
        del tex

        def drop():
            box.clear()
            gc.collect()

        th = threading.Thread(target=drop)
        th.start()
        th.join()
        assert not box and not target.ctx.objects  # nothing queued for release, nothing released elsewhere
        assert glo > 0
    finally:
        target.close()
