"""The whole loop, headless, on a real EGL context: what a viewer sees, frame by frame."""

from __future__ import annotations

import hashlib
import time

import cv2
import numpy as np
import pytest

from installation.clock import FixedClock, WallClock
from installation.config import ConfigError, load_show
from installation.render.targets import HeadlessTarget, pixels, preload_decoders
from installation.runtime import Runtime
from support import play_while, run_cli, scene_toml, write_show

NO_POST = 'shaders = ["present"]'


def render(cfg, frames: int, fps: int = 20, **kw) -> list[np.ndarray]:
    """Frames of a fixed-step run, read back after each tick."""
    spec = load_show(cfg)
    preload_decoders(s.decoder.type for s in spec.scenes)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(fps), fps=fps, **kw)
    out = []
    try:
        for _ in range(frames):
            rt.step()
            out.append(pixels(target.read(), target.size).copy())
    finally:
        rt.close()
        target.close()
    return out


def test_fixed_step_renders_are_bit_identical_and_move(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    one, two = render(cfg, 12), render(cfg, 12)
    digest = [hashlib.sha1(f.tobytes()).hexdigest() for f in one]
    assert digest == [hashlib.sha1(f.tobytes()).hexdigest() for f in two]
    assert len(set(digest)) == 12  # the path moves: every frame differs
    assert all(f.mean() > 10 for f in one)  # and none is blank


def test_the_perfect_loop_closes(tmp_path):
    # period 2 s at 20 fps: frame n and n + 40 show the same latent (feedback off so no history leaks in).
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present", "grade"]')})
    frames = render(cfg, 47)
    for n in (3, 5, 6):
        assert np.abs(frames[n].astype(int) - frames[n + 40].astype(int)).max() <= 1
    assert np.abs(frames[5].astype(int) - frames[25].astype(int)).max() > 20  # half a lap is elsewhere


@pytest.mark.parametrize("fault", ["raise_every = 3", "nan_every = 2"])
def test_a_failing_decoder_never_blanks_the_output(tmp_path, fault):
    dec = f'type = "faulty"\nresolution = "64x40"\nwidth = 16\ndepth = 2\n{fault}'
    cfg = write_show(tmp_path, {"a": scene_toml(decoder=dec, shaders='["present"]')},
                     extra="[decoder]\nrestart_backoff_s = 0.0\n")
    frames = render(cfg, 16)
    (tmp_path / "clean").mkdir()
    clean = render(write_show(tmp_path / "clean", {"a": scene_toml(shaders='["present"]')}), 16)

    def same(a, b):  # a rebuilt decoder may round one level differently (BLAS alignment), nothing more
        return np.abs(a.astype(int) - b.astype(int)).max() <= 1

    assert all(f.mean() > 10 for f in frames)
    for i, f in enumerate(frames):
        # Each presented frame is a good frame: this tick's render, or the last good one held over a fault.
        assert any(same(f, c) for c in clean[: i + 1])
    assert sum(not same(f, c) for f, c in zip(frames, clean)) >= 4  # faults really happened


def test_live_loop_with_decoder_process(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    try:
        rt = Runtime(spec, target, WallClock(), fps=20)
        stats = rt.run(1.5)
        assert 5 <= stats.presented <= 31  # 1.5 wall-clock seconds at 20 fps, fewer on a busy machine
        assert 1.5 <= stats.loop_s < 5.0
        assert rt.slot.published >= 5
        assert rt.decoder_stats()["frames"] >= 1
        assert pixels(target.read(), target.size).mean() > 10
    finally:
        target.close()


class _SlowDisplay:
    """A target whose swap takes at least 0.1 s: a display (or machine) slower than the show's fps."""

    def __init__(self, target):
        self._t = target
        self.ctx, self.size, self.framebuffer, self.kind = target.ctx, target.size, target.framebuffer, "slow"

    def swap(self):
        self._t.swap()
        time.sleep(0.1)

    def poll(self):
        return []

    def read(self):
        return self._t.read()


def test_live_duration_is_wall_clock_seconds_on_a_slow_display(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present"]')})
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    try:
        rt = Runtime(spec, _SlowDisplay(target), WallClock(), fps=20, inputs=False)
        ended: list[float] = []
        stats = rt.run(1.0, on_tick=lambda _: ended.append(time.perf_counter()))
        # 20 frames take 2 s or more here: a frame count would overrun by a second. By the wall clock the loop stops
        # at the first tick that ends past 1 s: at most one tick (and the wait before it) over, however long ticks
        # take on a loaded machine.
        longest = max(np.diff(ended)) if len(ended) > 1 else stats.loop_s
        assert 1.0 <= stats.loop_s <= 1.0 + longest + 0.05, (stats.loop_s, longest)
        assert 1 <= len(ended) <= 11  # each tick takes 0.1 s or more: no more than 11 can start within the second
    finally:
        target.close()


def test_events_switch_scenes_freeze_and_black_out(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present"]'),
                                "b": scene_toml(decoder='type = "cppn"\nmodel_seed = 5\nresolution = "64x40"\n'
                                                'width = 16\ndepth = 2', shaders='["present"]')})
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20)
    from installation.bus import Event

    def frame():
        rt.step()
        return pixels(target.read(), target.size).copy()

    try:
        frame()
        rt.bus.post(Event("scene.next"))
        frame()
        assert rt.show.scene.name == "b"
        for _ in range(12):  # let the 0.5 s cut crossfade finish
            frame()
        rt.bus.post(Event("freeze", True))
        held = frame()
        assert np.array_equal(frame(), held)
        rt.bus.post(Event("freeze", False))
        assert not np.array_equal(frame(), held)
        rt.bus.post(Event("blackout", True))
        for _ in range(60):  # 3 s at 20 fps: the 1.5 s fade is over
            last = frame()
        assert last.max() <= 1
        rt.bus.post(Event("blackout", False))
        for _ in range(60):
            last = frame()
        assert last.mean() > 10
    finally:
        rt.close()
        target.close()


def test_cli_records_a_video_that_reads_back(tmp_path):
    out = tmp_path / "clip.mp4"
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("run", "--config", str(cfg), "--headless", "--fixed-step", "--duration", "2", "--fps", "15",
                "--size", "160x96", "--record", str(out))
    assert r.returncode == 0, r.stderr
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    assert len(frames) == 30
    assert frames[0].shape == (96, 160, 3)
    assert frames[0].mean() > 10
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 3  # the content moves


def test_cli_live_headless_record(tmp_path):
    out = tmp_path / "live.mp4"
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("run", "--config", str(cfg), "--headless", "--duration", "1", "--record", str(out))
    assert r.returncode == 0, r.stderr
    cap = cv2.VideoCapture(str(out))
    assert 19 <= int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) <= 21  # one second at 20 fps, however fast it presented
    assert "to keep real time" in r.stderr


def test_a_live_recording_plays_in_real_time(tmp_path):
    """Frames written with their wall-clock times: repeated to fill a slow stretch, skipped when early."""
    from installation.render.record import Recorder

    out = tmp_path / "timed.mp4"
    rec = Recorder(out, (32, 16), 10, preset="ultrafast", crf=0)
    colours = [0, 60, 120, 180, 240]
    times = [5.0, 5.5, 6.0, 6.04, 6.1]  # any origin; 10 fps: due frames 1, 6, 11, 11 (early), 12
    for c, at in zip(colours, times):
        rec.write(np.full((16, 32, 3), c, np.uint8).tobytes(), at)
    assert rec.close()
    assert (rec.frames_written, rec.frames_repeated, rec.frames_skipped, rec.frames_dropped) == (12, 8, 1, 0)
    cap = cv2.VideoCapture(str(out))
    levels = []
    while (got := cap.read())[0]:
        levels.append(int(round(got[1].mean() / 60.0)))
    assert levels == [0] + [1] * 5 + [2] * 5 + [4]


def test_a_live_recording_that_fell_behind_stops_within_seconds(tmp_path):
    """Stopping the show drains a live recorder's queue for at most drain_s and drops the rest (counted): a show at
    load 35 recording 1280x720 once waited minutes on ffmpeg at its stop. The file it leaves still plays."""
    from installation.render.record import Recorder

    out = tmp_path / "behind.mp4"
    rec = Recorder(out, (640, 360), 30, preset="ultrafast")
    noise = np.random.default_rng(0).integers(0, 256, (8, 360, 640, 3), np.uint8)
    for k in range(8):  # 10 s apart: each frame is repeated 300 times to keep real time, 2101 frames queued
        rec.write(noise[k].tobytes(), 10.0 * k)
    start = time.monotonic()
    assert rec.close(drain_s=0.5)
    took = time.monotonic() - start
    assert rec.frames_written + rec.frames_dropped == 2101
    assert rec.frames_dropped > 1000, (rec.frames_written, took)  # writing them all takes ffmpeg 8+ s here
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == rec.frames_written
    assert took < 20, took


def test_a_window_without_a_display_is_a_start_up_error(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("run", "--config", str(cfg), "--duration", "1",
                env={"DISPLAY": None, "WAYLAND_DISPLAY": None, "SDL_VIDEODRIVER": None})
    assert r.returncode == 2, r.stderr
    assert "no display to open a window on" in r.stderr and "--headless" in r.stderr and "Xvfb" in r.stderr
    assert "running a on window" not in r.stderr


def test_osc_from_another_process_steers_the_live_show(tmp_path):
    import subprocess
    import sys

    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present", "grade"]'), "b": scene_toml()})
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock(), fps=20)
    result = {}

    def send(port: int, *messages: str) -> None:
        code = "from pythonosc.udp_client import SimpleUDPClient; c = SimpleUDPClient('127.0.0.1', %d); " % port
        subprocess.run([sys.executable, "-c", code + "; ".join(messages)], check=True, timeout=60)

    def performer():  # another process plays the show over OSC while the loop runs on this thread
        deadline = time.monotonic() + 60
        while (rt.osc is None or rt.osc.address is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        port = rt.osc.address[1]
        send(port, "c.send_message('/scene/goto', 'b')", "c.send_message('/nope', 1)")
        while rt.show.scene.name != "b" and time.monotonic() < deadline:
            time.sleep(0.05)
        result["scene"] = rt.show.scene.name
        handled = rt.osc.stats()["messages"]
        send(port, "c.send_message('/param/speed/norm', 0.5)", "c.send_message('/param/grade.saturation', 9.0)")
        while rt.osc.stats()["messages"] < handled + 2 and time.monotonic() < deadline:  # both handled
            time.sleep(0.05)
        result["targets"] = rt.bus.targets()
        result["osc"] = rt.osc.stats()

    play_while(rt, target, performer)
    assert result["scene"] == "b"
    assert result["targets"]["speed"] == 5.0
    assert result["targets"]["grade.saturation"] == 1.0  # 9 is out of range: dropped, not applied
    assert result["osc"]["rejects"]["unknown_address"] == 1 and result["osc"]["rejects"]["out_of_range"] == 1


def test_a_diffusion_scene_walks_a_real_model_end_to_end(tmp_path):
    from installation.decoders.random_models import make_sd21, make_taesd

    model, taesd = make_sd21(tmp_path / "sd"), make_taesd(tmp_path / "taesd")
    dec = (f'type = "diffusion"\nmodel = "{model}"\ntaesd = "{taesd}"\nwidth = 64\nheight = 64\n'
           f'prompts = [["a red fox", 1.0], ["blue sea", 0.5]]')
    cfg = write_show(tmp_path, {"a": scene_toml(decoder=dec, trajectory='kind = "walk"', shaders='["present"]')})
    one, two = render(cfg, 6, fps=4), render(cfg, 6, fps=4)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))  # a fixed-step render repeats exactly
    assert len({f.tobytes() for f in one}) == 6  # the walk moves the noise, the image follows
    assert all(f.std() > 1 for f in one)


def test_a_prompt_tour_moves_the_image_while_the_noise_stands_still(tmp_path):
    from installation.decoders.random_models import make_sd21, make_taesd

    model, taesd = make_sd21(tmp_path / "sd"), make_taesd(tmp_path / "taesd")
    dec = (f'type = "diffusion"\nmodel = "{model}"\ntaesd = "{taesd}"\nwidth = 64\nheight = 64\n'
           f'prompts = [["a red fox", 1.0], ["blue sea", 1.0], ["a green hill", 1.0]]')
    still = scene_toml(decoder=dec, trajectory='kind = "still"', shaders='["present"]')
    toured = still + '[prompt_motion]\nkind = "tour"\nperiod = 1.0\nhold = 0.0\n'
    cfg = write_show(tmp_path, {"a": toured})
    one, two = render(cfg, 8, fps=4), render(cfg, 8, fps=4)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))  # path time, not wall time, moves the prompts
    assert len({f.tobytes() for f in one}) >= 6  # the blend moves every frame except where it lands on a prompt
    (tmp_path / "scenes" / "a.toml").write_text(still)
    fixed = render(cfg, 4, fps=4)
    assert len({f.tobytes() for f in fixed}) == 1  # same noise, same prompts: the same image


def test_a_diffusion_scene_declares_its_live_parameters_on_the_bus(tmp_path):
    """prompt.<i>.gain, diffusion.strength, lora.<name>.scale... are show parameters: a scene may set them, the
    bus (OSC, modulation) moves them, and the decoder follows."""
    import torch

    from installation.decoders.random_models import make_sd21, make_taesd

    model, taesd = make_sd21(tmp_path / "sd"), make_taesd(tmp_path / "taesd")
    dec = f'type = "diffusion"\nmodel = "{model}"\ntaesd = "{taesd}"\nwidth = 64\nheight = 64\nstrength = 0.7\n'
    two = scene_toml(decoder=dec + 'prompts = [["a red fox", 1.0], ["blue sea", 1.0]]', trajectory='kind = "still"',
                     shaders='["present"]', params='"prompt.0.gain" = 1.5')
    cfg = write_show(tmp_path, {"two": two})
    spec = load_show(cfg)
    assert spec.params["diffusion.strength"].default == 0.7 and "prompt.7.gain" in spec.params
    preload_decoders(["diffusion"])
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(4), fps=4)  # fixed step: the decoder runs in this process, in lockstep
    try:
        rt.step()
        assert rt.bus.targets()["prompt.0.gain"] == 1.5 and rt.bus.targets()["diffusion.strength"] == 0.7
        d = rt.guard._decoder
        fox, sea = d._encode("a red fox")[0], d._encode("blue sea")[0]
        torch.testing.assert_close(d.buf["emb"][-1:], (1.5 * fox + sea) / 2.5)
        mixed = pixels(target.read(), target.size).copy()
        assert rt.bus.set("prompt.1.gain", 0.0)  # a fader down, as /param/prompt.1.gain 0 does
        for _ in range(16):
            rt.step()
        torch.testing.assert_close(d.buf["emb"][-1:], fox, atol=1e-3, rtol=1e-3)  # the release glides to 0
        assert not np.array_equal(pixels(target.read(), target.size), mixed)
    finally:
        rt.close()
        target.close()
    (tmp_path / "scenes" / "two.toml").write_text(two.replace('"prompt.0.gain"', '"lora.ink.scale"'))
    with pytest.raises(ConfigError, match="lora.ink.scale.*unknown parameter"):
        load_show(cfg)  # no LoRA named ink in this scene: not a parameter


def test_a_reload_refuses_bad_files_as_a_counted_reload_fault_and_keeps_the_running_scene(tmp_path, caplog):
    """SIGHUP with a deeply nested scene or shader header was a 'tick failed' (RecursionError), status degraded, and
    faults.reload stayed 0; an empty scene (an editor's truncate-then-write) was installed as a scene of defaults
    (issue 25). Each is now a counted reload fault, one line, and the running show goes on as it was."""
    import logging
    import shutil

    from support import ROOT

    shaders = tmp_path / "shaders"
    shutil.copytree(ROOT / "shaders", shaders)
    cfg = write_show(tmp_path, {"a": scene_toml(shaders='["present", "grade"]'), "b": scene_toml()})
    cfg.write_text(cfg.read_text().replace(f'shaders_dir = "{ROOT / "shaders"}"', 'shaders_dir = "shaders"'))
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20)
    scene_a = (tmp_path / "scenes" / "a.toml").read_text()
    grade = (shaders / "grade.frag").read_text()
    deep = "[" * 5000 + "]" * 5000
    bad = [("scenes/a.toml", f"x = {deep}\n", "nested more than 32 levels"),
           ("scenes/a.toml", "", "empty"),
           ("scenes/a.toml", "\n# saved halfway\n", "empty"),
           ("shaders/grade.frag", '/*{"description": ' + deep + "}*/\n" + grade.split("*/", 1)[1], "nested more"),
           ("shaders/grade.frag", b"\xff" + grade.encode(), "not UTF-8")]
    try:
        for _ in range(3):
            rt.step()
        before = (rt.show.scene.name, rt.show.scene.path, rt.show.seed, rt.show.scene.decoder)
        for n, (name, content, why) in enumerate(bad, 1):
            path = tmp_path / name
            (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="installation"):
                rt.request_reload()
                rt.step()
            assert rt.faults["reload"] == n and rt.stats.tick_faults == 0, (name, caplog.text)
            errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and why in errors[0] and str(path) in errors[0], errors
            assert "Traceback" not in caplog.text
            assert (rt.show.scene.name, rt.show.scene.path, rt.show.seed, rt.show.scene.decoder) == before
            rt.step()
            (tmp_path / "scenes" / "a.toml").write_text(scene_a)
            (shaders / "grade.frag").write_text(grade)
        assert rt._snapshot(rt.clock.now())["faults"]["reload"] == len(bad)
        # A bad shader that no scene chains does not stop a reload: it is left out with one warning.
        (shaders / "spare.frag").write_text('/*{"description": ' + deep + "}*/\nvoid main() {}\n")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="installation"):
            assert rt.reload(rt.clock.now())
        assert "spare" in rt.spec.refused and "spare.frag" in caplog.text
    finally:
        rt.close()
        target.close()
