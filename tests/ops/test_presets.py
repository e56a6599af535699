"""Presets over real OSC (python-osc, UDP): /preset/store keeps the playing scene's parameters beside the config,
/preset/recall glides back to them over the named time; a bad name or an unknown preset is refused and counted,
and a crafted presets file loads without running anything."""

from __future__ import annotations

import json

import pytest
from pythonosc.udp_client import SimpleUDPClient

from installation.bus import ParamBus, ParamSpec
from installation.inputs.osc import OscServer, OscSettings
from installation.ops.presets import Presets, PresetSettings
from support import wait_until


def _bus() -> ParamBus:
    return ParamBus([ParamSpec("speed", max=10.0, default=1.0), ParamSpec("grade.exposure", min=-4, max=4),
                     ParamSpec("audio.rms")])


def test_store_and_recall_over_osc_with_a_fade(tmp_path):
    bus = _bus()
    info = {"a": {"params": ["speed", "audio.rms"], "prompts": False}}  # grade is in no pass of scene a
    presets = Presets(PresetSettings(fade_s=2.0), bus, tmp_path, lambda: {"scene": "a"}, lambda: info)
    osc = OscServer(OscSettings(port=0, structural_interval=0.0), bus, ["a"])
    presets.start()
    osc.start()
    try:
        client = SimpleUDPClient(*osc.address)
        client.send_message("/param/speed", 2.0)
        assert wait_until(lambda: bus.targets()["speed"] == 2.0, 20)
        client.send_message("/preset/store", "calm")
        assert wait_until(lambda: bus.notes()["presets"] == ["calm"], 20)  # published once saved
        saved = json.loads((tmp_path / "presets.json").read_text())["presets"]["calm"]
        assert saved == {"scene": "a", "params": {"speed": 2.0}}  # the scene's own set, no input features
        client.send_message("/param/speed", 8.0)
        assert wait_until(lambda: bus.targets()["speed"] == 8.0, 20)
        client.send_message("/preset/recall", ["nope", 1.0])  # no such preset
        client.send_message("/preset/store", "../etc/passwd")  # not a name
        client.send_message("/preset/recall", ["calm", 0.0])
        assert wait_until(lambda: bus.targets()["speed"] == 2.0, 20)  # sent last: the refusals are counted
        assert osc.stats()["rejects"] == {"out_of_range": 2}
    finally:
        osc.stop()
        presets.stop()
    # a fade is a glide along show time: half way after half the time
    bus.set("speed", 6.0)
    assert presets.recall("calm", 4.0, now=100.0)
    assert bus.targets()["speed"] == 6.0
    assert presets.step(now=102.0) and bus.targets()["speed"] == pytest.approx(4.0)
    assert not presets.step(now=104.5) and bus.targets()["speed"] == pytest.approx(2.0)
    assert presets.stats()["fades_done"] >= 2


def test_a_crafted_presets_file_loads_safely(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "presets.json").write_text(json.dumps({"presets": {
        "ok": {"scene": "a", "params": {"speed": 3, "nope": 1.0, "grade.exposure": "__import__('os')"}},
        "bad name/..": {"params": {"speed": 1.0}},
        "x" * 100: {"params": {}},
        "deep": {"params": [[[[[[]]]]]]},
        "code": f"__import__('pathlib').Path({str(marker)!r}).touch()"}}))
    presets = Presets(PresetSettings(), _bus(), tmp_path)
    assert presets.names == ["ok"] and not marker.exists()
    assert presets._presets["ok"]["params"] == {"speed": 3.0}
    (tmp_path / "presets.json").write_text("{" * 100000)  # malformed, deeply nested
    assert Presets(PresetSettings(), _bus(), tmp_path).names == []
