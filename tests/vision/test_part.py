"""The [vision] part in the real runtime: OSC /describe and feedback, the prompt audit log with both verdicts,
/health's vision section, the describe loop, hidden prompts that never show, and the frame check holding frames in
the decoder process."""

from __future__ import annotations

import json
import socket
import time

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from installation.clock import FixedClock, WallClock
from installation.config import load_show
from installation.render.targets import HeadlessTarget
from installation.runtime import Runtime
from support import scene_toml, wait_until, write_show


def _recv(sock: socket.socket, timeout: float = 0.05) -> list[tuple[str, list]]:
    out = []
    sock.settimeout(timeout)
    while True:
        try:
            m = OscMessage(sock.recv(65535))
        except (TimeoutError, socket.timeout):
            return out
        out.append((m.address, m.params))


def _steps(rt, until, limit=400):
    for _ in range(limit):
        rt.step()
        if until():
            return True
        time.sleep(0.005)  # let the OSC and vision threads run
    return until()


def test_describe_feedback_audit_and_health(tiny_clip, tmp_path):
    fb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fb.bind(("127.0.0.1", 0))
    scene = scene_toml() + '[[prompts]]\ntext = "a lighthouse"\n'
    cfg = write_show(tmp_path, {"a": scene}, extra=tiny_clip.toml(
        'blocked = ["a weapon"]\nthreshold = 1.0\naudit_log = "audit/prompts.jsonl"\nshow_refusals = true\n')
        + f'[inputs.osc]\nport = 0\nfeedback_host = "127.0.0.1"\nfeedback_port = {fb.getsockname()[1]}\n'
          'structural_interval = 0\n')
    cfg.write_text(cfg.read_text().replace("[inputs.osc]\nport = 0\n", "", 1))
    spec = load_show(cfg)
    assert {"vision.similarity.0", "vision.similarity.3", "vision.blocked"} <= set(spec.params)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=True)
    got: list = []
    try:
        rt.start()
        client = SimpleUDPClient(*rt.osc.address)
        assert _steps(rt, lambda: rt.bus.notes().get("vision.description"), limit=3000)
        reader = rt.part("vision").reader  # done with the frames handed over: the description stays while we ask
        assert wait_until(lambda: reader.idle() and reader.drain(0.1), timeout=30)
        client.send_message("/prompt", "a red boat")
        client.send_message("/prompt", "bad\x07text")  # refused by the prompt guard (a control character)
        client.send_message("/describe", [])
        reply = OscMessage(_recv_reply(client))
        assert reply.address == "/vision/description" and reply.params[0] == rt.bus.notes()["vision.description"]
        assert _steps(rt, lambda: rt.part("vision").refused_prompts == 1 and
                      any(r.get("kind") == "frame_check" for r in _audit(tmp_path)), limit=600)
        assert _steps(rt, lambda: rt.health_snapshot().get("vision", {}).get("refused_count") == 1, limit=60)
        got = _recv(fb, 0.3)
    finally:
        rt.close()
        target.close()
        fb.close()
    records = _audit(tmp_path)
    prompts = [r for r in records if r["kind"] == "prompt"]
    assert [(p["text"], p["guard"], p["frame_check"]) for p in prompts] == [
        ("a red boat", "ok", "pending"), ("bad\x07text", "chars", "not_applied")]
    assert all(p["sender"] == "osc:127.0.0.1" and p["scene"] == "a" and p["time"] for p in prompts)
    check = next(r for r in records if r["kind"] == "frame_check")
    assert check["id"] == prompts[0]["id"] and check["verdict"] == "passed"
    health = rt.health_snapshot()["vision"]
    assert health["description"] and health["worker"]["embedded"] > 0 and health["audit"]["written"] >= 2
    addresses = {a for a, _ in got}
    assert "/vision/description" in addresses and ("/vision/refused", [1]) in got
    assert "/param/vision.similarity.0" in addresses


def _recv_reply(client) -> bytes:
    return client.receive(timeout=5.0)


def _audit(tmp_path):
    path = tmp_path / "audit" / "prompts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_describe_loop_and_hidden_prompts(tiny_clip, tmp_path):
    scene = scene_toml() + ('[[prompts]]\ntext = "a visible sea"\n[vision]\ndescribe_loop = true\nperiod = 0.5\n'
                            'drift_guard = 2\nnegative = ["a hidden fear"]\n'
                            '[[vision.hidden_prompts]]\ntext = "a secret lantern"\nweight = 0.5\n')
    cfg = write_show(tmp_path, {"a": scene}, extra=tiny_clip.toml("threshold = 1.0\n"))
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    journal = rt.bus.subscribe()
    requests = []
    render = rt.guard.render
    rt.guard.render = lambda request: (requests.append(request), render(request))[1]  # a spy: renders as before
    try:
        rt.start()
        assert _steps(rt, lambda: len(rt.part("vision").chain) >= 5, limit=1500)
    finally:
        rt.close()
        target.close()
    chain = list(rt.part("vision").chain)
    loop_prompts = [c.value[1] for c in journal.drain() if c.kind == "event" and c.source == "vision"]
    assert loop_prompts[: len(chain)] == chain[: len(loop_prompts)]
    for i in range(2, len(chain)):
        words = set(chain[i].split(", "))
        assert not words & (set(chain[i - 1].split(", ")) | set(chain[i - 2].split(", ")))
    # the description became the prompt; the hidden prompt is blended into every request after it
    assert len(rt.show.prompts) == 1 and rt.show.prompts[0] in {(chain[-1], 1.0), (chain[-2], 1.0)}
    last = requests[-1].extras["prompts"]
    assert last[-1] == ("a secret lantern", 0.5) and all(p[0] != "a secret lantern" for p in last[:-1])
    # ...and never shown: not in the show's state, health, notes or parameters
    seen = json.dumps([rt.state(), rt.health_snapshot(), rt.bus.notes(), sorted(rt.spec.params)], default=str)
    assert "secret lantern" not in seen and "hidden fear" not in seen


def test_the_frame_check_holds_frames_in_the_decoder_process(tiny_clip, tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()},
                     extra=tiny_clip.toml('blocked = ["anything"]\nthreshold = -1.0\n') +
                     '[decoder]\nisolation = "process"\nmax_fps = 20\n')
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock(), fps=20, inputs=False)

    def step_until(cond, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not cond():
            rt.step()
            time.sleep(0.05)
        return cond()

    try:
        assert rt.start(first_frame_timeout=3.0) is False  # every frame held: nothing reaches the presenter
        assert step_until(lambda: rt.part("vision").blocked >= 5)
        # the decoder went on walking and rendering; its counters reach the health snapshot at its next refresh
        assert step_until(lambda: rt.decoder_stats()["frames"] >= 5 and rt.health_snapshot()["vision"]["blocked"] >= 5)
        assert rt.slot.published == 0 and rt.slot.latest() is None
        assert rt.bus.targets()["vision.blocked"] == 1.0
    finally:
        rt.close()
        target.close()


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_a_reload_that_adds_a_negative_concept_reaches_the_frame_check(tiny_clip, tmp_path, isolation):
    # SIGHUP after a technician adds a negative concept to the playing scene: the decoder-side check gets it (its
    # process restarted with the new hooks, or a new hook runner in this one) and holds the frames it matches
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra=tiny_clip.toml('threshold = -1.0\n') +
                     f'[decoder]\nisolation = "{isolation}"\nmax_fps = 20\n')
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock(), fps=20, inputs=False)

    def run_until(cond, timeout=60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not cond():
            rt.step()
            time.sleep(0.05)
        return cond()

    try:
        assert rt.start(first_frame_timeout=30.0) is not False  # no concepts: no check, frames shown
        pid, hooks = getattr(rt.worker, "pid", None), rt.hooks
        rt.request_reload()  # the same files: nothing to change, nothing restarted
        rt.step()
        assert getattr(rt.worker, "pid", None) == pid and rt.hooks is hooks
        scene = tmp_path / "scenes" / "a.toml"
        scene.write_text(scene.read_text() + '[vision]\nnegative = ["anything at all"]\n')
        rt.request_reload()
        rt.step()
        if isolation == "process":
            assert run_until(lambda: rt.worker.alive and rt.worker.pid != pid)
            assert dict(rt.worker.hooks)["vision"].negative == {"a": ("anything at all",)}
        else:
            assert rt.hooks is not hooks and dict(rt._hook_specs)["vision"].negative == {"a": ("anything at all",)}
        assert run_until(lambda: rt.part("vision").blocked >= 3)  # threshold -1: every frame matches the concept
        published = rt.slot.published
        run_until(lambda: False, timeout=1.0)
        assert rt.slot.published == published  # held: none reaches the presenter any more
    finally:
        rt.close()
        target.close()
