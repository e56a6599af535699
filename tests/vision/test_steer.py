"""Steer by meaning: steering raises the CLIP objective (random weights: still well defined), /steer over OSC bends
the live walk by seed glides, "" releases it, and the text goes through the prompt guard and the audit."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from pythonosc.udp_client import SimpleUDPClient

from installation.clock import FixedClock
from installation.config import load_show
from installation.render.targets import HeadlessTarget
from installation.runtime import Runtime
from installation.vision.bench import steer_bench
from installation.vision.steer import low_res
from support import scene_toml, wait_until, write_show

SCENE = scene_toml(decoder='type = "cppn"\nresolution = "64x48"\nwidth = 16\ndepth = 3',
                   trajectory='kind = "walk"') + "[steer]\ncandidates = 5\nperiod = 3.0\n"


@pytest.mark.parametrize("kind", ["walk", "loop"])
def test_steering_raises_the_objective_measurably(tiny_clip, tmp_path, kind):
    scene = SCENE.replace('kind = "walk"', f'kind = "{kind}"')
    spec = load_show(write_show(tmp_path, {"a": scene}, extra=tiny_clip.toml()))
    result = steer_bench(spec, "a red circle", seconds=18, fps=4)
    off, on = result["off"], result["on"]
    assert len(off["series"]) == len(on["series"]) == 72
    assert off["series"][0] == on["series"][0]  # the same start
    assert off["rounds"] == 0 and on["rounds"] >= 5 and on["jumps"] >= 1
    # the gain is at least three times the off series' own frame-to-frame noise, computed here from the series
    sims = np.array([s for _, s in off["series"]])
    noise = float(np.std(np.diff(sims)))
    assert result["noise"] == pytest.approx(noise, abs=1e-5)
    assert result["gain"] >= 3 * noise, result["gain_sigmas"]
    json.dumps(result)


def test_candidates_render_at_a_lower_resolution_with_the_aspect_kept(tmp_path):
    spec = load_show(write_show(tmp_path, {"a": SCENE}))
    assert tuple(low_res(spec.scenes[0].decoder, 2).settings.resolution) == (32, 24)
    assert low_res(spec.scenes[0].decoder, 1) == spec.scenes[0].decoder


def test_steer_over_osc_bends_the_walk_and_releases(tiny_clip, tmp_path):
    cfg = write_show(tmp_path, {"a": SCENE}, extra=tiny_clip.toml('audit_log = "audit.jsonl"\n'))
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=True)
    journal = rt.bus.subscribe()
    vision = rt.part("vision")
    try:
        rt.start()
        client = SimpleUDPClient(*rt.osc.address)
        client.send_message("/steer", ["a red circle", 1.0])
        client.send_message("/steer", ["bad\x01", 0.5])  # refused by the prompt guard
        client.send_message("/steer", ["a red circle", 2.0])  # strength out of range
        deadline = time.monotonic() + 120
        while vision.steer.rounds < 1 and time.monotonic() < deadline:
            rt.step()
            time.sleep(0.01)
        assert vision.steer._thread.inject()  # a fault in the steering thread: raised when it next wakes
        while vision.steer.rounds < 3 and time.monotonic() < deadline:
            rt.step()
            time.sleep(0.01)
        assert vision.steer._thread.restarts == 1 and rt.thread_restarts() == {"vision-steer": 1}
        assert vision.steer.rounds >= 3 and vision.steer.text == "a red circle", vision.steer.stats()
        seeds = [c.value for c in journal.drain() if c.kind == "event" and c.source == "vision.steer"]
        assert len(seeds) == vision.steer.jumps >= 1
        for _ in range(5):
            rt.step()
        assert rt.show.seed == seeds[-1]  # the show glides to the winning path
        steer = rt.health_snapshot()["vision"]["steer"]
        assert steer["period"] == 3.0 and steer["period_s"] >= 3.0 - 1e-6 and steer["round_ms"] > 0  # as achieved
        client.send_message("/steer", [""])
        assert wait_until(lambda: (rt.step(), vision.steer.text == "")[1], timeout=30)
        rounds = vision.steer.rounds
        for _ in range(150):  # 7.5 path seconds: more than two periods
            rt.step()
        assert vision.steer.rounds == rounds  # released: no more rounds
        stats = rt.osc.stats()
        assert stats["rejects"].get("guard") == 1 and stats["rejects"].get("out_of_range") == 1
    finally:
        rt.close()
        target.close()
    audited = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["slot"], r["text"], r["guard"]) for r in audited if r["kind"] == "prompt"] == [
        ("steer", "a red circle", "ok"), ("steer", "bad\x01", "chars")]
