"""Post-render hooks (the tap on decoded frames): run where frames are made, results land on the bus."""

from __future__ import annotations

import time

import numpy as np
import pytest

from installation.bus import ParamBus
from installation.decoders import DecoderSpec
from installation.decoders.cppn import CPPNSettings
from installation.render.hooks import FrameStats, HookRunner, apply_result, hook_params
from installation.render.slot import Frame, FrameSlot
from installation.render.worker import DecoderGuard, DecoderWorker
from installation.sizes import SizeT
from support import wait_until
from test_worker import Plan


def _frame(value: int, seq: int) -> Frame:
    return Frame(np.full((20, 32, 3), value, np.uint8), seq, seq / 10, 0.0)


def test_frame_stats_measures_brightness_and_motion():
    hook = FrameStats()
    first = hook(_frame(0, 1))["params"]
    assert first == {"frame.brightness": 0.0, "frame.motion": 0.0}
    second = hook(_frame(255, 2))["params"]
    assert second["frame.brightness"] == pytest.approx(1.0, abs=1e-3) and second["frame.motion"] == pytest.approx(1.0)
    assert hook(_frame(255, 3))["params"]["frame.motion"] == 0.0


def test_results_land_on_the_bus_with_the_hook_as_source():
    bus = ParamBus(hook_params(["frame_stats"]))
    journal = bus.subscribe()
    runner = HookRunner(["frame_stats"], lambda r: apply_result(bus, r))
    runner(_frame(128, 1))
    assert bus.targets()["frame.brightness"] == pytest.approx(128 / 255, abs=1e-3)
    assert {(c.name, c.source) for c in journal.drain()} == {("frame.brightness", "hook:frame_stats"),
                                                             ("frame.motion", "hook:frame_stats")}
    with pytest.raises(ValueError, match="unknown hook 'clip'; allowed: frame_stats"):
        hook_params(["clip"])


def test_a_failing_hook_is_counted_and_never_costs_a_frame():
    delivered = []
    runner = HookRunner(["frame_stats"], delivered.append)
    runner(Frame(np.zeros((2, 2), np.uint8), 1, 0.0, 0.0))  # not an image: the hook raises inside
    runner(_frame(10, 2))
    assert runner.faults == 1 and runner.runs == 1 and len(delivered) == 1


def test_the_decoder_thread_runs_hooks_on_the_frames_it_makes():
    bus = ParamBus(hook_params(["frame_stats"]))
    slot = FrameSlot()
    runner = HookRunner(["frame_stats"], lambda r: apply_result(bus, r))
    worker = DecoderWorker(DecoderGuard(), slot, time.monotonic, max_fps=50, on_frame=runner)
    worker.submit(Plan(DecoderSpec("cppn", CPPNSettings(resolution=SizeT(32, 20), width=8, depth=2))))
    worker.start()
    try:
        assert wait_until(lambda: runner.runs >= 3, timeout=30)
    finally:
        worker.stop()
    frame = slot.latest()
    luma = (frame.rgb[::4, ::4].astype(np.float32) / 255.0) @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    assert 0.0 < bus.targets()["frame.brightness"] < 1.0
    assert abs(bus.targets()["frame.brightness"] - float(luma.mean())) < 0.2  # the frame it measured, or one before


@pytest.mark.parametrize("isolation", ["lockstep", "thread", "process"])
def test_a_show_with_a_hook_sees_its_decoded_frames_on_the_bus(tmp_path, isolation):
    from installation.clock import FixedClock, WallClock
    from installation.config import load_show
    from installation.render.targets import HeadlessTarget
    from installation.runtime import Runtime
    from support import scene_toml, write_show

    mode = "process" if isolation == "process" else "thread"
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present"]')},
                     extra=f'[decoder]\nisolation = "{mode}"\nhooks = ["frame_stats"]\n')
    spec = load_show(cfg)
    assert {"frame.brightness", "frame.motion"} <= set(spec.params)  # declared: routes and OSC may name them
    target = HeadlessTarget(spec.config.output.size)
    clock = FixedClock(20) if isolation == "lockstep" else WallClock()
    rt = Runtime(spec, target, clock, fps=20, inputs=False)
    journal = rt.bus.subscribe()
    try:
        if isolation == "lockstep":
            for _ in range(5):
                rt.step()
        else:
            rt.start()  # the hooks run in the decoder's thread or process; watch the bus for their results
            assert wait_until(lambda: sum(c.source == "hook:frame_stats" for c in journal.drain()) > 0, timeout=60)
        assert wait_until(lambda: 0.0 < rt.bus.targets()["frame.brightness"] < 1.0, timeout=30)
        if isolation == "lockstep":
            assert any(c.source == "hook:frame_stats" and c.name == "frame.brightness" for c in journal.drain())
    finally:
        rt.close()
        target.close()


def test_an_unknown_hook_is_a_config_error(tmp_path):
    from installation.config import ConfigError, load_show
    from support import scene_toml, write_show

    cfg = write_show(tmp_path, {"a": scene_toml()}, extra='[decoder]\nhooks = ["clip"]\n')
    with pytest.raises(ConfigError, match="decoder.hooks.*unknown hook 'clip'; allowed: frame_stats"):
        load_show(cfg)
