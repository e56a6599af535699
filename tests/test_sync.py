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
import select, sys, time
from installation.bus import ParamBus
from installation.config import load_show
from installation.show import Show
from installation.sync import LinkClock
raw = lambda: time.clock_gettime(time.CLOCK_MONOTONIC_RAW)  # Link's host clock
spec = load_show(sys.argv[2])
bus = ParamBus(spec.params.values())
show = Show(spec, bus)
clock = LinkClock(120.0, join_s=float(sys.argv[1]))
show.update(0.0, 0.0, bus.tick(0.0))  # as Runtime.start(): the first plan, then the show placed on the clock
show.started += clock.now()
clock.align(show, clock.now())
last = clock.now()
steps = []  # (time, length) of the node's recent frames


def tick(t):  # one frame of the node's loop: the show advances as the runtime advances it
    global last
    show.update(t, t - last, bus.tick(t - last))
    steps.append((t, t - last))
    del steps[:-600]
    last = t


print("ready", clock.link.numPeers(), flush=True)
while True:
    if not select.select([sys.stdin], [], [], 1 / 60)[0]:
        tick(clock.now())
        continue
    line = sys.stdin.readline()
    if not line:
        break
    at = float(line)
    while raw() < at - 1 / 60:
        time.sleep(1 / 60)
        tick(clock.now())
    while raw() < at:
        time.sleep(0.0005)
    reads = []
    for _ in range(5):  # the tightest of a few reads: one cut by a preemption says little about the clock
        a = raw(); t = clock.now(); b = raw()
        reads.append((b - a, a, t, b))
        if b - a < 0.0005:
            break
    _, a, t, b = min(reads)
    tick(t - ((a + b) / 2 - at))  # the frame at `at` (show time runs one second per second at the reference tempo)
    longest = max(d for w, d in steps if w > last - 4.0)  # the node's longest frame of the last 4 s
    print(last, show.scene.name, show.tau, clock.link.numPeers(), longest, flush=True)
"""


class Node:
    """One machine of the panorama: a process with its own Link peer and show clock."""

    def __init__(self, join_s: float, config) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", NODE, str(join_s), str(config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", line

    def ask(self, at: float) -> None:
        self.proc.stdin.write(f"{at!r}\n")
        self.proc.stdin.flush()

    def answer(self) -> tuple[float, str, float, int, float]:
        t, scene, tau, peers, longest = self.proc.stdout.readline().split()
        return float(t), scene, float(tau), int(peers), float(longest)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _times(nodes: list[Node], rounds: int = 3, gap: float = 0.5) -> list[list[tuple[float, str, float, int, float]]]:
    out = []
    for _ in range(rounds):
        at = time.clock_gettime(time.CLOCK_MONOTONIC_RAW) + gap
        for n in nodes:
            n.ask(at)
        out.append([n.answer() for n in nodes])
    return out


def _in_step(answers: list[tuple[float, str, float, int, float]]) -> None:
    ts, scenes, taus = [a[0] for a in answers], {a[1] for a in answers}, [a[2] for a in answers]
    assert max(ts) - min(ts) < FRAME, answers  # show time
    # path time (speed 1): a node's path steps once per frame, so at one instant two nodes' positions differ by
    # less than the show-time spread plus one step of the slower node (the frame that crossed the last scene
    # boundary): 1/60 s idle; on a loaded machine a node's frames run longer, and each node reports its longest
    assert max(taus) - min(taus) < FRAME + max(a[4] for a in answers), answers
    assert len(scenes) == 1, answers


def test_three_machines_play_one_show_in_step_and_a_restarted_one_rejoins(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml(duration=2.0), "b": scene_toml(duration=3.0),
                                "c": scene_toml(duration=1.5)})
    nodes = [Node(0.5, cfg)]  # the first founds the session
    try:
        time.sleep(2.5)
        nodes += [Node(10.0, cfg), Node(10.0, cfg)]  # the others join mid-show
        assert wait_until(lambda: all(a[3] == 2 for a in _times(nodes, 1, 0.2)[0]), 20)
        seen_scenes = set()
        for answers in _times(nodes, rounds=8, gap=0.8):  # across scene changes
            _in_step(answers)
            seen_scenes.add(answers[0][1])
        assert len(seen_scenes) >= 2
        nodes[2].close()  # a machine restarts
        time.sleep(1.0)
        nodes[2] = Node(10.0, cfg)
        for answers in _times(nodes):
            _in_step(answers)
            assert answers[2][0] > 5.0  # it came back at the session's time, not at zero
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
