"""The frame check is a gate on every path to the wall: with a threshold that holds every frame (the tiny CLIP, a
real run), no non-black frame is presented or reaches a sink, in both isolation modes, while the decoder starts
(the first-light preview, the picture saved with the state) and after a reload that adds a check."""

from __future__ import annotations

import time

import numpy as np
import pytest

from installation.clock import WallClock
from installation.config import load_show
from installation.render.targets import HeadlessTarget, pixels
from installation.runtime import Runtime
from support import scene_toml, write_show

BLACK = 8  # the brightest channel value a "black" presented frame may have
HOLD_ALL = 'blocked = ["anything"]\nthreshold = -1.0\n'  # cosine similarity > -1: every frame is held


class _Watching(HeadlessTarget):
    """The headless target, keeping the brightest value of what each swap put on the "screen" (a real read-back)."""

    def __init__(self, size):
        super().__init__(size)
        self.shown: list[int] = []

    def swap(self):
        self.shown.append(int(pixels(self.read(), self.size).max()))
        super().swap()


class _Sink:
    """A presented-frame sink (what the recorder, NDI, the web preview and the archive receive)."""

    def __init__(self):
        self.brightest: list[int] = []

    def wants(self, t):
        return True

    def put(self, rgb, size, t):
        self.brightest.append(int(pixels(rgb, size).max()))


def _run(rt, seconds: float, until=lambda: False) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        rt.step()
        time.sleep(0.02)


SCENES = {
    "cppn": scene_toml(),  # process isolation: the first-light preview (the CPPN in the show's process)
    "slow": scene_toml('type = "faulty"\nresolution = "64x40"\nwidth = 16\ndepth = 2\nprepare_s = 1.0',
                       'kind = "walk"'),  # no preview: a resumed show would open on the saved picture
}


@pytest.mark.parametrize("isolation,scene", [("process", "cppn"), ("process", "slow"), ("thread", "cppn")])
def test_nothing_unchecked_reaches_the_wall_while_the_decoder_starts(tiny_clip, tmp_path, isolation, scene):
    extra = (f'[decoder]\nisolation = "{isolation}"\nmax_fps = 20\n[state]\ninterval_s = 0.5\n'
             '[archive]\nenabled = false\n')
    cfg = write_show(tmp_path, {"a": SCENES[scene]}, extra=extra)
    target = HeadlessTarget((160, 96))
    rt = Runtime(load_show(cfg), target, WallClock(), fps=20, keep_state=True, inputs=False)
    try:
        rt.run(2.5)  # an earlier run without a check: its picture (bright) is saved beside the state
    finally:
        rt.close()
        target.close()
    assert rt.keeper.saved_frame() is not None and rt.keeper.saved_frame().max() > 20

    cfg.write_text(cfg.read_text() + tiny_clip.toml(HOLD_ALL))
    watching, sink = _Watching((160, 96)), _Sink()
    rt = Runtime(load_show(cfg), watching, WallClock(), fps=20, keep_state=True, resume=True, inputs=False)
    rt.tap.add(sink)
    try:
        assert rt.resumed and rt.frame_check
        assert rt.start(first_frame_timeout=4.0) is False  # every frame held: nothing live arrives
        _run(rt, 60.0, until=lambda: rt.part("vision").blocked >= 1)
        _run(rt, 2.0)
        assert rt.part("vision").blocked >= 1, "the check ran on decoded frames and held them"
        assert not rt.stats.first_still
        assert len(watching.shown) > 20 and len(sink.brightest) > 20
        assert max(watching.shown) <= BLACK, f"{sum(v > BLACK for v in watching.shown)} non-black frames presented"
        assert max(sink.brightest) <= BLACK, f"{sum(v > BLACK for v in sink.brightest)} non-black frames to sinks"
    finally:
        rt.close()
        watching.close()


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_a_reload_that_adds_a_check_blacks_out_the_frames_it_did_not_check(tiny_clip, tmp_path, isolation):
    """The picture on the wall passed no check (there was none); after SIGHUP adds one that holds everything, the
    next presented frame is black, and so is every one after it."""
    cfg = write_show(tmp_path, {"a": scene_toml()},
                     extra=tiny_clip.toml("threshold = -1.0\n") + f'[decoder]\nisolation = "{isolation}"\n'
                     'max_fps = 20\n[archive]\nenabled = false\n')
    watching, sink = _Watching((160, 96)), _Sink()
    rt = Runtime(load_show(cfg), watching, WallClock(), fps=20, inputs=False)
    rt.tap.add(sink)
    try:
        assert rt.start(first_frame_timeout=60.0) is not False and not rt.frame_check
        _run(rt, 30.0, until=lambda: rt.master >= 1.0 and rt.slot.published >= 3)
        assert watching.shown[-1] > BLACK, "shown before the reload"
        scene = tmp_path / "scenes" / "a.toml"
        scene.write_text(scene.read_text() + '[vision]\nnegative = ["anything at all"]\n')
        rt.request_reload()
        shown, sunk = len(watching.shown), len(sink.brightest)
        _run(rt, 60.0, until=lambda: rt.part("vision").blocked >= 1)
        _run(rt, 2.0)
        assert rt.frame_check and rt.part("vision").blocked >= 1
        after = watching.shown[shown:]
        assert len(after) > 20 and max(after) <= BLACK, f"{sum(v > BLACK for v in after)} non-black after the reload"
        assert max(sink.brightest[sunk:]) <= BLACK
    finally:
        rt.close()
        watching.close()
