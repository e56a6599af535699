"""First light: the in-process CPPN preview shows the scene while the decoder process starts; the reactive scenes
answer their inputs and rest without them."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import cv2

from installation.bus import ParamBus
from installation.config import load_show, modulation_for
from installation.modulation import ModMatrix
from installation.bench import first_light_measure as measure
from installation.render.first_light import PREVIEW_CUT, FirstLight
from installation.clock import WallClock
from installation.render.targets import HeadlessTarget, pixels
from installation.runtime import Runtime
from installation.show import Show
from installation.sizes import SizeT

from support import scene_toml, write_show


def _first_plan(spec):
    bus = ParamBus(spec.params.values())
    show = Show(spec, bus)
    plan, _ = show.update(0.0, 0.0, bus.tick(0.0))
    return show, plan


def test_the_preview_is_the_live_picture_at_half_the_resolution():
    spec = load_show(only_scene="aurora")
    show, plan = _first_plan(spec)
    preview = FirstLight.for_scene(show.scene)
    frame = preview.frame(plan, 3.0)
    assert frame is not None and frame.cut == PREVIEW_CUT and frame.seq < 0
    assert frame.rgb.shape == (90, 160, 3) and frame.rgb.dtype == np.uint8
    assert preview.frame(plan, 3.1) is None  # at most `fps` a second
    from installation.decoders.cppn import CPPN

    live = CPPN(show.scene.decoder.settings)
    live.prepare()
    full = (live.render(plan.request(3.0, 1)) * 255.0).astype(np.float32)
    small = cv2.resize(full, (160, 90), interpolation=cv2.INTER_AREA)
    assert np.abs(small - frame.rgb).mean() < 6.0  # the same picture (sampled at other points), not another
    other = preview._cppn.render(plan.request(13.0, 2)) * 255.0
    assert np.abs(other - frame.rgb).mean() > 3 * np.abs(small - frame.rgb).mean()  # ten seconds on, it moved
    preview.close()


def test_no_preview_for_a_decoder_that_is_not_the_embedded_cppn(tmp_path):
    dec = 'type = "faulty"\nresolution = "64x40"\nwidth = 16\ndepth = 2'
    spec = load_show(write_show(tmp_path, {"a": scene_toml(decoder=dec)}))
    assert FirstLight.for_scene(spec.scenes[0]) is None


def test_a_picture_is_on_screen_before_the_decoder_process_delivers():
    """The real runtime with its decoder process: the first non-black presented frame comes before the first live
    one (without the preview they come together, see ``installation bench --first-light``)."""
    spec = load_show(only_scene="halo")
    out = spec.config.output.model_copy(update={"size": SizeT(96, 54)})
    spec = replace(spec, config=spec.config.model_copy(update={"output": out}))
    m = measure(spec, preview=True, device="cpu", after_live_s=0.5)
    assert math.isfinite(m["first_non_black_s"]) and math.isfinite(m["first_live_s"]), m
    assert m["first_non_black_s"] < m["first_live_s"], m


def _route(name: str, inputs: dict[str, float], seconds: float = 60.0, dt: float = 0.1,
           onset: float = 10.0) -> dict[str, np.ndarray]:
    """The scene's modulated parameters over ``seconds``, its inputs' features at zero (an input that is off) until
    ``onset`` seconds, then held at ``inputs``."""
    spec = load_show(only_scene=name)
    scene = spec.scenes[0]
    show = Show(spec, ParamBus(spec.params.values()))
    base = show.defaults(scene)
    matrix = ModMatrix.from_settings(modulation_for(spec.config, scene), spec.params, seed=scene.seed)
    trace: dict[str, list[float]] = {}
    for i in range(int(seconds / dt)):
        features = inputs if i * dt >= onset else {k: 0.0 for k in inputs}
        for k, v in matrix.apply({**base, **features}, i * dt, dt).items():
            trace.setdefault(k, []).append(v)
    return {k: np.array(v) for k, v in trace.items()}


def test_nocturne_breathes_alone_and_brightens_and_wanders_with_sound():
    silent = _route("nocturne", {})
    loud = _route("nocturne", {"audio.rms": 0.2, "audio.low": 0.2, "audio.centroid": 1500.0})
    assert np.ptp(silent["palette.ceiling"]) > 0.15  # no microphone: a slow breath still moves it (0.8 .. 1.0)
    assert silent["palette.ceiling"].min() > 0.5  # and it never goes dark
    # the room's level lifts the median pixel's level (the ceiling has no headroom at 1.0): +0.1 at rms 0.2
    assert loud["palette.median"][-100:].mean() > silent["palette.median"][-100:].mean() + 0.07
    assert loud["radius"][-1] > silent["radius"][-1] + 0.2
    # slow: a second after the sound begins (at 10 s), the light has come only part of the way
    assert loud["palette.median"][99] == silent["palette.median"][99]
    assert 0 < loud["palette.median"][110] - silent["palette.median"][110] < 0.6 * 0.1


def test_vigil_rests_without_a_visitor_and_wakes_with_one():
    empty = _route("vigil", {})
    visitor = _route("vigil", {"camera.presence": 0.4, "camera.motion": 0.1, "camera.flow_x": 0.3})
    assert np.ptp(empty["palette.ceiling"]) == 0 and empty["palette.ceiling"][0] == 0.8  # no camera: at rest
    assert visitor["palette.ceiling"][-1] > 0.85 and visitor["detail.lines"][-1] > 0.5
    assert visitor["speed"][-1] > empty["speed"][-1] + 0.5
    assert visitor["palette.drift"][-1] > 0.1


class _Watching(HeadlessTarget):
    """The headless target, keeping what each swap put on the "screen" (a real read-back)."""

    def __init__(self, size):
        super().__init__(size)
        self.shown: list[np.ndarray] = []

    def swap(self):
        self.shown.append(pixels(self.read(), self.size).astype(np.int16))
        super().swap()


class _Every:
    def __init__(self):
        self.frames: list[np.ndarray] = []

    def wants(self, t):
        return True

    def put(self, rgb, size, t):
        self.frames.append(pixels(rgb, size).astype(np.int16))


def test_a_resumed_show_with_a_slow_decoder_opens_on_the_picture_saved_with_its_state(tmp_path):
    """No cheap preview of this decoder (not the embedded CPPN): the picture on the wall, saved beside the state
    with each periodic save, is what a resumed show shows while its decoder process starts."""
    dec = 'type = "faulty"\nresolution = "64x40"\nwidth = 16\ndepth = 2\nprepare_s = 2.0'
    cfg = write_show(tmp_path, {"a": scene_toml(decoder=dec, trajectory='kind = "walk"')},
                     extra="[state]\ninterval_s = 0.5\n[archive]\nenabled = false\n")
    target = HeadlessTarget((160, 96))
    rt = Runtime(load_show(cfg), target, WallClock(), fps=20, keep_state=True, inputs=False)
    seen = _Every()
    rt.tap.add(seen)
    try:
        rt.run(3.0)
    finally:
        rt.close()
        target.close()
    keeper = rt.keeper
    assert keeper.frames_saved >= 1 and keeper.frame_path.is_file(), keeper.stats()
    saved = keeper.saved_frame().astype(np.int16)
    assert saved.shape == (96, 160, 3) and saved.max() > 20
    # exactly one of the presented frames (a lossless read-back of the window), not a blend or a black fade
    assert min(np.abs(f - saved).mean() for f in seen.frames if f.shape == saved.shape) < 0.5

    watching = _Watching((160, 96))
    rt2 = Runtime(load_show(cfg), watching, WallClock(), fps=20, keep_state=True, resume=True, inputs=False)
    try:
        assert rt2.resumed
        rt2.start()  # returns when the first live frame is there, 2 s of prepare() and a process start later
        assert rt2.stats.first_still and watching.shown, "the wait for the decoder showed nothing"
        assert np.abs(watching.shown[0] - saved).mean() < 1.0  # the saved picture, full size, as it was
    finally:
        rt2.close()
        watching.close()
