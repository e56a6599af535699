"""OSC server on real UDP loopback: valid control, hostile packets, allow-list, rate limit, feedback, ping."""

from __future__ import annotations

from functools import partial

import socket
import struct
import time

import pytest
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.udp_client import SimpleUDPClient

from installation.bus import ParamBus, ParamSpec
from installation.inputs.osc import OscServer, OscSettings, address_map, bench_latency
from installation.inputs.prompt_guard import PromptGuard, PromptGuardSettings
from support import wait_until

SCENES = ["intro", "storm", "calm"]


def make_bus() -> ParamBus:
    return ParamBus(
        [
            ParamSpec("speed", min=0.0, max=4.0, default=1.0, doc="trajectory speed"),
            ParamSpec("mix", min=0.0, max=1.0, default=0.0),
            ParamSpec("steps", type="int", min=1, max=8, default=2),
            ParamSpec("audio.rms", min=0.0, max=1.0),
        ]
    )


wait_for = partial(wait_until, timeout=3.0, every=0.002)


def msg(address: str, *args) -> bytes:
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build().dgram


def raw(address: str, tags: str, payload: bytes) -> bytes:
    def pad(s: bytes) -> bytes:
        s += b"\0"
        return s + b"\0" * (-len(s) % 4)

    return pad(address.encode()) + pad(("," + tags).encode()) + payload


@pytest.fixture
def served(request):
    """A running server on a free loopback port, its bus, a client and a raw socket; stopped afterwards."""
    overrides = getattr(request, "param", {})
    bus = make_bus()
    server = OscServer(OscSettings(port=0, **overrides), bus, SCENES)
    server.start()
    host, port = server.address
    client = SimpleUDPClient(host, port)
    rawsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield server, bus, client, lambda data: rawsock.sendto(data, (host, port))
    rawsock.close()
    server.stop()
    server.stop()  # idempotent


def applied(server, n):
    return wait_for(lambda: server.stats()["applied"] >= n)


def rejected(server, reason, n=1):
    return wait_for(lambda: server.stats()["rejects"].get(reason, 0) >= n)


def test_param_native_and_norm(served):
    server, bus, client, _ = served
    client.send_message("/param/speed", 2.5)
    client.send_message("/param/mix/norm", 0.25)
    client.send_message("/param/steps", 5)
    assert applied(server, 3)
    assert bus.targets()["speed"] == pytest.approx(2.5)
    assert bus.targets()["mix"] == pytest.approx(0.25)
    assert bus.targets()["steps"] == 5.0
    client.send_message("/norm/speed", 0.5)  # /param/<name>/norm above is the older spelling, still taken
    assert wait_for(lambda: bus.targets()["speed"] == pytest.approx(2.0))


def test_blend_sets_every_reference_weight_at_once_or_none():
    bus = ParamBus([ParamSpec(f"reference.{i}.weight", min=0.0, max=10.0, default=1.0) for i in range(2)])
    server = OscServer(OscSettings(port=0), bus, SCENES)
    server.start()
    try:
        _blend_checks(server, bus, SimpleUDPClient(*server.address))
    finally:
        server.stop()


def _blend_checks(server, bus, client):
    client.send_message("/blend", [0.25, 3.0])
    assert wait_for(lambda: bus.targets()["reference.1.weight"] == 3.0)
    assert bus.targets()["reference.0.weight"] == 0.25
    client.send_message("/blend", [0.5, 0.5, 0.5])  # three images: no scene has a third
    assert rejected(server, "out_of_range")
    client.send_message("/blend", [0.5, 11.0])  # the second is out of range: the first is not applied either
    assert rejected(server, "out_of_range", 2)
    client.send_message("/blend", ["a", 1.0])
    assert rejected(server, "bad_type")
    assert bus.targets()["reference.0.weight"] == 0.25 and bus.targets()["reference.1.weight"] == 3.0


@pytest.mark.parametrize("served", [{"structural_interval": 0.0}], indirect=True)  # the mapping, not the limit
def test_events(served):
    server, bus, client, _ = served
    client.send_message("/scene/next", None)
    client.send_message("/scene/prev", None)
    client.send_message("/scene/goto", "storm")
    client.send_message("/scene/goto", 2)
    client.send_message("/seed", 1234)
    client.send_message("/freeze", 1)
    client.send_message("/blackout", 0.0)
    client.send_message("/panic", None)
    client.send_message("/prompt", "a quiet   forest at dawn")
    client.send_message("/prompt/1", ["storm clouds", 0.75])
    client.send_message("/prompt/0", "sea")
    assert applied(server, 11)
    events = [(e.kind, e.value) for e in bus.tick(0.0).events]
    assert events == [
        ("scene.next", None),
        ("scene.prev", None),
        ("scene.goto", "storm"),
        ("scene.goto", 2),
        ("seed", 1234),
        ("freeze", True),
        ("blackout", False),
        ("panic", None),
        ("prompt", (None, "a quiet forest at dawn", None)),
        ("prompt", (1, "storm clouds", pytest.approx(0.75))),
        ("prompt", (0, "sea", None)),
    ]
    # /quit is not mapped unless allowed
    client.send_message("/quit", None)
    assert rejected(server, "unknown_address")


@pytest.mark.parametrize("served", [{"structural_interval": 0.0}], indirect=True)
def test_a_touchosc_button_fires_once_per_tap(served):
    """A button sends 1.0 on press and 0.0 on release (TouchOSC, Resolume, QLab): events fire on the press only."""
    server, bus, client, _ = served
    for address in ("/scene/next", "/scene/prev", "/panic"):
        client.send_message(address, 1.0)
        client.send_message(address, 0.0)
    client.send_message("/scene/next", True)  # T
    client.send_message("/scene/next", False)  # F: a release too
    client.send_message("/scene/next", 1)
    client.send_message("/scene/next", 0)
    client.send_message("/scene/next", ["a", "b"])  # two arguments: not a button
    assert wait_for(lambda: server.stats()["messages"] == 11)
    s = server.stats()
    assert s["applied"] == 5 and s["released"] == 5 and s["rejects"] == {"bad_type": 1}
    assert [e.kind for e in bus.tick(0.0).events] == ["scene.next", "scene.prev", "panic", "scene.next",
                                                       "scene.next"]


def test_what_this_show_cannot_do_is_answered_unavailable():
    """/map/goto without the archive, /steer without vision, /midi/learn without MIDI, /blend with no reference
    images, /output/2 on a one-output show: counted as unavailable and fed back, not counted as applied."""
    from installation.inputs.surface import Capabilities

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    bus = make_bus()
    caps = Capabilities(archive=False, vision=False, midi=False, outputs=1)
    settings = OscSettings(port=0, feedback_host="127.0.0.1", feedback_port=rx.getsockname()[1])
    server = OscServer(settings, bus, SCENES, caps=caps)
    server.start()
    try:
        client = SimpleUDPClient(*server.address)
        client.send_message("/map/goto", [0.5, 0.5])
        client.send_message("/steer", "the sea")
        client.send_message("/describe", [])
        client.send_message("/midi/learn", "speed")
        client.send_message("/blend", [0.5])
        client.send_message("/output/2/corner/0", [0.1, 0.1])
        client.send_message("/output/1/corner/0", [0.1, 0.1])  # output 1 exists
        assert wait_for(lambda: server.stats()["messages"] == 7)
        s = server.stats()
        assert s["rejects"] == {"unavailable": 6} and s["applied"] == 1
        server.feedback(bus.targets(), "intro")
        got = [(a, p) for a, p in recv_all(rx) if a == "/unavailable"]
        assert [p[0] for _, p in got] == ["/map/goto", "/steer", "/describe", "/midi/learn", "/blend",
                                          "/output/2/corner/0"]
        assert "archive" in got[0][1][1] and "1 output" in got[5][1][1]
    finally:
        server.stop()
        rx.close()
    rows = [r[0] for r in address_map(bus.specs, SCENES, settings, caps)]
    assert not {"/map/goto", "/steer", "/describe", "/midi/learn", "/blend"} & set(rows)
    assert "/output/<n>/corner/<0-3>" in rows and "/calibrate/on" in rows


@pytest.mark.parametrize("served", [{"allow_quit": True}], indirect=True)
def test_quit_when_allowed(served):
    server, bus, client, _ = served
    client.send_message("/quit", None)
    assert applied(server, 1)
    assert [e.kind for e in bus.tick(0.0).events] == ["quit"]


def test_hostile_packets_are_counted_and_server_keeps_serving(served):
    server, bus, client, send = served
    good = msg("/param/speed", 3.0)
    send(good[:-2])  # truncated float
    send(raw("/param/speed", "f", b""))  # type tag promises a float that is not there
    send(b"\x00\x01garbage")  # neither message nor bundle
    send(b"#bundle\x00\x00\x00")  # bundle cut inside its timetag
    send(raw("/param/speed", "s", b"abc\x00"))  # wrong type
    send(raw("/param/speed", "ff", struct.pack(">ff", 1.0, 2.0)))  # too many args
    send(raw("/seed", "f", struct.pack(">f", 1.5)))  # not an integer
    send(raw("/param/speed", "f", struct.pack(">f", float("nan"))))  # NaN
    send(raw("/param/speed", "f", struct.pack(">f", float("inf"))))  # Inf
    send(msg("/param/speed", 99.0))  # out of range: dropped, not clamped
    send(msg("/param/mix/norm", -0.5))
    send(msg("/scene/goto", "nowhere"))
    send(msg("/scene/goto", 7))
    send(msg("/prompt/9", "x"))  # no such slot
    send(msg("/prompt/1", "ok", 5.0))  # weight out of range
    send(msg("/nope", 1.0))
    send(msg("/param/unknown", 1.0))
    send(msg("/param/audio.rms", 0.5))  # features are not settable over OSC
    send(msg("/*"))  # patterns are off by default: this would otherwise fire /panic, /ping, /scene/next...
    send(msg("/prompt", "x" * 20000))  # huge string: refused by the guard
    send(msg("/param/speed", "y" * 60000))  # near the UDP limit, wrong type
    send(msg("/prompt", "bad\x07bell"))
    send(good)
    assert wait_for(lambda: bus.targets()["speed"] == 3.0)
    r = server.stats()["rejects"]
    assert r.get("malformed", 0) == 4
    assert r.get("bad_type", 0) == 3
    assert r.get("out_of_range", 0) == 8
    assert r.get("unknown_address", 0) == 5
    assert r.get("guard", 0) == 2
    assert server.stats()["guard"] == {"length": 1, "chars": 1}
    assert bus.tick(0.0).events == ()
    assert server.running


def test_bundles_apply_at_once_in_order_whatever_the_timetag(served):
    server, bus, client, send = served
    inner = OscBundleBuilder(IMMEDIATELY)
    inner.add_content(OscMessageBuilder("/param/mix").build())  # no args: bad type, the rest still applies
    inner.add_content(msg_obj("/param/speed", 1.5))
    outer = OscBundleBuilder(time.time() + 3600.0)  # an hour in the future
    outer.add_content(msg_obj("/param/speed", 2.0))
    outer.add_content(msg_obj("/scene/goto", "calm"))
    outer.add_content(inner.build())
    outer.add_content(msg_obj("/param/speed", 3.5))  # last one wins
    t0 = time.monotonic()
    send(outer.build().dgram)
    assert applied(server, 4)
    assert time.monotonic() - t0 < 1.0
    assert bus.targets()["speed"] == 3.5
    assert [e.value for e in bus.tick(0.0).events] == ["calm"]
    assert server.stats()["rejects"] == {"bad_type": 1}


def msg_obj(address, *args):
    b = OscMessageBuilder(address=address)
    for a in args:
        b.add_arg(a)
    return b.build()


@pytest.mark.parametrize("served", [{"patterns": True, "structural_interval": 0.0}], indirect=True)
def test_patterns_when_enabled(served):
    server, bus, client, _ = served
    client.send_message("/scene/{next,prev}", None)
    assert applied(server, 2)
    assert [e.kind for e in bus.tick(0.0).events] == ["scene.next", "scene.prev"]


@pytest.mark.parametrize("served", [{"allow": ("10.0.0.0/8",), "allow_loopback": False}], indirect=True)
def test_allow_list_drops_others(served):
    server, bus, client, _ = served
    client.send_message("/param/speed", 2.0)
    assert rejected(server, "not_allowed")
    server.handle_datagram(msg("/param/speed", 2.0), ("10.1.2.3", 5000))
    assert bus.targets()["speed"] == 2.0


@pytest.mark.parametrize("served", [{"allow": ("192.168.1.0/24",)}], indirect=True)
def test_loopback_stays_allowed_beside_an_allow_list(served):
    """The README's tablet recipe: TouchDesigner on the same laptop keeps working once a tablet's network is allowed
    (python-osc's client, a real UDP socket from 127.0.0.1)."""
    server, bus, client, _ = served
    client.send_message("/ping", [])
    reply = OscMessage(client.receive(timeout=2.0))
    assert reply.address == "/pong"
    client.send_message("/param/speed", 2.0)
    assert wait_for(lambda: bus.targets()["speed"] == 2.0)
    server.handle_datagram(msg("/param/speed", 3.0), ("192.168.1.20", 5000))  # the tablet
    server.handle_datagram(msg("/param/speed", 4.0), ("10.0.0.9", 5000))  # not on the list
    assert bus.targets()["speed"] == 3.0
    assert server.stats()["rejects"] == {"not_allowed": 1}


def test_default_allows_loopback_only(served):
    server, bus, *_ = served
    server.handle_datagram(msg("/param/speed", 2.0), ("192.168.1.20", 5000))
    server.handle_datagram(msg("/param/speed", 2.0), ("::ffff:8.8.8.8", 5000))
    assert server.stats()["rejects"] == {"not_allowed": 2}
    assert bus.targets()["speed"] == 1.0


@pytest.mark.parametrize("served", [{"rate_limit": 5.0, "burst": 10}], indirect=True)
def test_rate_limit_per_sender(served):
    server, bus, client, send = served
    for i in range(60):
        client.send_message("/param/mix", i / 100)
    assert wait_for(lambda: server.stats()["packets"] >= 60)
    s = server.stats()
    assert 10 <= s["applied"] <= 20
    assert s["rejects"]["rate_limited"] == 60 - s["applied"]
    # a bundle cannot smuggle more messages than the bucket holds
    server.handle_datagram(msg("/param/mix", 0.9), ("127.0.0.2", 1))  # another port has its own share
    assert bus.targets()["mix"] == pytest.approx(0.9)


def test_ping_pong_goes_to_sender(served):
    server, bus, client, _ = served
    client.send_message("/ping", [7, "hi"])
    reply = OscMessage(client.receive(timeout=2.0))
    assert reply.address == "/pong" and reply.params == [7, "hi"]


def recv_all(sock: socket.socket, timeout: float = 0.3) -> list[tuple[str, list]]:
    out = []
    sock.settimeout(timeout)
    while True:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return out
        m = OscMessage(data)
        out.append((m.address, m.params))


def test_feedback_bounded_and_without_echo():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    now = [100.0]
    bus = make_bus()
    server = OscServer(
        OscSettings(port=0, feedback_host="127.0.0.1", feedback_port=rx.getsockname()[1], feedback_rate=10.0),
        bus,
        SCENES,
        clock=lambda: now[0],
    )
    server.start()
    try:
        client = SimpleUDPClient(*server.address)
        client.send_message("/param/speed", 3.0)  # from 127.0.0.1, the feedback host
        assert applied(server, 1)
        server.feedback(bus.targets(), "intro")
        got = dict((a, p) for a, p in recv_all(rx))
        assert got["/scene/current"] == ["intro"]
        assert "/param/speed" not in got  # not echoed to the sender that set it
        assert got["/param/mix"] == [0.0] and "/param/audio.rms" not in got
        # another source changes mix: sent, but only once per flush period
        bus.set("mix", 0.5, source="lfo")
        server.feedback(bus.targets(), "intro")  # same instant: rate bound, nothing
        assert recv_all(rx, 0.1) == []
        now[0] += 0.1
        server.feedback(bus.targets(), "storm")
        assert sorted(recv_all(rx)) == [("/param/mix", [0.5]), ("/scene/current", ["storm"])]
        # after the echo guard the sender's own value is still not sent back (it already shows it)
        now[0] += 5.0
        server.feedback(bus.targets(), "storm")
        assert recv_all(rx, 0.1) == []
        # a later change of speed by another source is sent
        bus.set("speed", 1.25, source="audio")
        now[0] += 0.1
        server.feedback(bus.targets(), "storm")
        assert recv_all(rx) == [("/param/speed", [1.25])]
        assert server.stats()["feedback_sent"] == 6
    finally:
        server.stop()
        rx.close()


def test_port_in_use_fails_fast():
    bus = make_bus()
    a = OscServer(OscSettings(port=0), bus)
    a.start()
    try:
        b = OscServer(OscSettings(port=a.address[1]), bus)
        with pytest.raises(OSError, match="cannot listen"):
            b.start()
    finally:
        a.stop()


def test_address_map():
    rows = address_map(make_bus().specs, lambda: SCENES, OscSettings(prompt_slots=2))
    addrs = [r[0] for r in rows]
    assert "/param/speed" in addrs and "/norm/speed" in addrs and "/param/speed/norm" not in addrs
    assert not any(a.startswith("/param/audio.") for a in addrs)
    assert {"/scene/next", "/scene/prev", "/scene/goto", "/prompt/all", "/prompt/0", "/prompt/1", "/seed",
            "/freeze", "/blackout", "/panic", "/ping"} <= set(addrs)
    assert "/prompt/2" not in addrs and "/quit" not in addrs
    assert "1=storm" in dict((r[0], r[2]) for r in rows)["/scene/goto"]
    assert all(len(r) == 3 and all(isinstance(x, str) for x in r) for r in rows)


def test_prompt_guard(tmp_path):
    (tmp_path / "block.txt").write_text("# comment\nBadword\nvery bad phrase\n")
    g = PromptGuard(PromptGuardSettings(max_length=40, blocklist="block.txt"), base_dir=tmp_path)
    assert g.check("  Ein   Wald\tim Nebel, früh ").text == "Ein Wald im Nebel, früh"
    assert g.check("海の上の月").ok
    assert g.check("a BADWORD here").reason == "blocked"
    assert g.check("a very  bad phrase").reason == "blocked"
    assert g.check("badwords are words").ok  # whole words only
    assert g.check("x" * 41).reason == "length"
    assert g.check("<script>").reason == "chars"
    assert g.check("zero\u200bwidth").reason == "chars"
    assert g.check("   ").reason == "empty"
    assert g.check(3).reason == "type"
    with pytest.raises(ValueError, match="missing.txt"):
        PromptGuard(PromptGuardSettings(blocklist="missing.txt"), base_dir=tmp_path)


def test_bench_latency_runs(capsys):
    figures = bench_latency(n=30, warmup=5)
    assert figures["n"] == 30 and figures["p50_ms"] > 0
    assert "p99" in capsys.readouterr().out


def test_stats_give_the_packet_rate_and_the_age_of_the_newest_packet(served):
    """What a technician reads in /health's inputs.osc: is anything arriving, and how fast."""
    server, bus, client, _ = served
    first = server.stats()
    assert first["packets_per_s"] == 0.0 and first["last_packet_age_s"] is None
    for i in range(20):
        client.send_message("/param/speed", 1.0 + i / 100)
        time.sleep(0.02)
        server.stats()  # /health polls about once a second; polling more often only sharpens the figures
    assert wait_for(lambda: server.stats()["packets"] >= 20)
    s = server.stats()
    assert s["packets_per_s"] > 5 and s["last_packet_age_s"] < 5
