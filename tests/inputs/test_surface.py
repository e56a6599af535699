"""The control surface without OSC: any transport applies addresses with its own sender, checked and counted alike."""

from __future__ import annotations

from installation.bus import ParamBus, ParamSpec
from installation.inputs.osc import OscSettings
from installation.inputs.surface import ControlSurface, Sender


def make() -> tuple[ControlSurface, ParamBus]:
    bus = ParamBus([ParamSpec("speed", min=0.0, max=4.0, default=1.0), ParamSpec("audio.rms", min=0.0, max=1.0)])
    return ControlSurface(OscSettings(structural_interval=10.0), bus, ["a", "b"]), bus


def test_another_transport_drives_the_same_handlers():
    surface, bus = make()
    journal = bus.subscribe()
    web = Sender("web", "browser-1")
    surface.apply("/param/speed", [2.0], web)
    surface.apply("/param/speed/norm", [0.25], Sender("midi", "nanoKONTROL", 7))
    surface.apply("/param/speed", [9.0], web)  # out of range: dropped, not clamped
    surface.apply("/param/audio.rms", [0.5], web)  # an input's feature: not settable
    surface.apply("/scene/goto", ["b"], web)
    surface.apply("/scene/goto", ["a"], web)  # within the structural interval: held, not lost
    assert bus.targets()["speed"] == 1.0
    sets = [(c.name, c.value, c.source) for c in journal.drain() if c.kind == "set"]
    assert sets == [("speed", 2.0, "web:browser-1"), ("speed", 1.0, "midi:nanoKONTROL")]
    tick = bus.tick(0.0)
    assert [(e.kind, e.value, e.source) for e in tick.events] == [("scene.goto", "b", "web:browser-1")]
    s = surface.stats()
    assert s["messages"] == 6 and s["applied"] == 4 and s["packets"] == 0  # no transport counted packets here
    assert s["rejects"] == {"out_of_range": 1, "unknown_address": 1}


def test_ping_answers_through_the_senders_reply_and_feedback_is_selected_for_the_transport():
    surface, bus = make()
    answers = []
    reply = lambda address, *args: answers.append((address, args))  # noqa: E731
    surface.apply("/ping", [1, "x"], Sender("web", "browser-1", reply=reply))
    surface.apply("/ping", [], Sender("midi", "pad"))  # no way to answer: nothing sent, nothing counted
    assert answers == [("/pong", (1, "x"))] and surface.stats()["pongs"] == 1
    out = surface.feedback_due(bus.targets(), "a", host="10.0.0.9")
    assert ("/scene/current", "a") in out and ("/param/speed", 1.0) in out
    assert not any(address.startswith("/param/audio.") for address, _ in out)  # excluded prefixes
