"""Ableton Link (the real Link library through linkpython-extern, peers on loopback): three processes agree on show
time at the same instant within a display frame, a restarted one rejoins in step; in the real runtime the link.*
sources move and a scene change waits for the bar line."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from pythonosc.udp_client import SimpleUDPClient

from installation.clock import WallClock
from installation.config import load_show
from installation.render.targets import HeadlessTarget
from installation.runtime import Runtime
from support import ROOT, play_while, scene_toml, wait_until, write_show

pytest.importorskip("link", reason="pip install linkpython-extern")

FRAME = 1.0 / 60.0
NODE = """
import sys, time
from installation.sync import LinkClock
raw = lambda: time.clock_gettime(time.CLOCK_MONOTONIC_RAW)  # Link's host clock
clock = LinkClock(120.0, join_s=float(sys.argv[1]))
print("ready", clock.link.numPeers(), flush=True)
for line in sys.stdin:
    at = float(line)
    while raw() < at:
        time.sleep(0.0005)
    a = raw(); t = clock.now(); b = raw()
    print(t - ((a + b) / 2 - at), b - a, clock.link.numPeers(), flush=True)  # show time at `at` (1 s per s)
"""


class Node:
    """One machine of the panorama: a process with its own Link peer and show clock."""

    def __init__(self, join_s: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", NODE, str(join_s)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", line

    def ask(self, at: float) -> None:
        self.proc.stdin.write(f"{at!r}\n")
        self.proc.stdin.flush()

    def answer(self) -> tuple[float, float, int]:
        t, spread, peers = self.proc.stdout.readline().split()
        return float(t), float(spread), int(peers)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _times(nodes: list[Node], rounds: int = 3) -> list[list[tuple[float, float, int]]]:
    out = []
    for _ in range(rounds):
        at = time.clock_gettime(time.CLOCK_MONOTONIC_RAW) + 0.5
        for n in nodes:
            n.ask(at)
        out.append([n.answer() for n in nodes])
    return out


def test_three_machines_agree_on_show_time_and_a_restarted_one_rejoins_in_step():
    nodes = [Node(join_s=0.5)]  # the first founds the session
    try:
        nodes += [Node(join_s=10.0), Node(join_s=10.0)]  # the others join it before their shows start
        assert wait_until(lambda: all(p == 2 for *_, p in _times(nodes, 1)[0]), 20)
        for answers in _times(nodes):
            ts = [t for t, _, _ in answers]
            assert max(ts) - min(ts) < FRAME, answers
            assert ts[0] > 0.5  # the founder's time, not a fresh start at zero
        nodes[2].close()  # a machine restarts
        time.sleep(1.0)
        nodes[2] = Node(join_s=10.0)
        for answers in _times(nodes):
            ts = [t for t, _, _ in answers]
            assert max(ts) - min(ts) < FRAME, answers
            assert ts[2] > 2.0  # it came back at the session's time, not at zero
    finally:
        for n in nodes:
            n.close()


def test_link_sources_move_and_a_scene_change_waits_for_the_bar(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml(), "b": scene_toml()}, extra="""[state]
enabled = false
[sync]
link = true
tempo = 240.0
quantum = 4.0
[modulation]
routes = [{ source = "link.phase", target = "grade.hue", gain = 0.2 }]
""")
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock(), fps=20, serve_health=True)
    part = rt.part("link")
    seen: dict = {}

    def actor():
        assert wait_until(lambda: part.alive and rt.stats.presented > 5, 60)
        phases = set()
        wait_until(lambda: phases.add(round(rt.bus.targets()["link.phase"], 2)) or len(phases) > 5, 20)
        seen["phases"] = len(phases)
        seen["tempo"] = rt.bus.targets()["link.tempo"]
        # ask for the next scene just after a bar line: it must wait for the next one (a bar is 1 s at 240 BPM)
        assert wait_until(lambda: 0.1 < part.stats()["phase"] < 0.4, 20)
        SimpleUDPClient(*rt.osc.address).send_message("/scene/next", [])
        seen["held"] = wait_until(lambda: part.stats()["held"] == 1, 10) and rt.show.scene.name == "a"
        assert wait_until(lambda: rt.show.scene.name == "b", 10)
        seen["phase_at_change"] = part.stats()["phase"]
        seen["stats"] = part.stats()

    play_while(rt, target, actor, seconds=120)
    rt.close()
    assert seen["phases"] > 5 and seen["tempo"] == pytest.approx(240.0)
    assert seen["held"]
    assert seen["phase_at_change"] < 0.3  # changed at the bar line, not when asked
    assert seen["stats"]["released"] == 1 and seen["stats"]["held"] == 0
