"""OSCQuery against clients nobody here wrote: Chromium (driven by Playwright) reads the tree over HTTP and listens
on a websocket while python-osc sends real UDP to the show's OSC port; zeroconf's own resolver finds the services.
The show is the real runtime."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import uuid

import pytest
from pythonosc.osc_message import OscMessage
from pythonosc.udp_client import SimpleUDPClient

from installation.bus import ParamBus, ParamSpec
from installation.clock import WallClock
from installation.config import load_show
from installation.inputs.osc import OscSettings
from installation.inputs.oscquery import OscQueryServer, OscQuerySettings, build_tree
from installation.render.targets import HeadlessTarget
from installation.runtime import Runtime
from support import play_while, scene_toml, wait_until, write_show

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]

LISTEN_JS = """(url) => new Promise((ok, fail) => {
  window.got = [];
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (m) => window.got.push(Array.from(new Uint8Array(m.data)));
  ws.onopen = () => { window.ws = ws; ws.send(JSON.stringify({COMMAND: "LISTEN", DATA: "/param/speed"}));
                      ws.send(JSON.stringify({COMMAND: "LISTEN", DATA: "/norm/radius"})); ok(true); };
  ws.onerror = () => fail("websocket error");
})"""


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _walk(node: dict, out: dict) -> dict:
    out[node["FULL_PATH"]] = node
    for child in node.get("CONTENTS", {}).values():
        _walk(child, out)
    return out


def test_a_browser_reads_the_tree_and_hears_values_set_over_osc(tmp_path):
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (its browsers are not needed)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip("apt-get install chromium: no browser to test with")
    from playwright.sync_api import sync_playwright

    osc_port = _free_udp_port()
    name = f"t-{uuid.uuid4().hex[:8]}"
    cfg = write_show(tmp_path, {"a": scene_toml(), "b": scene_toml()},
                     extra=f'[state]\nenabled = false\n[oscquery]\nenabled = true\nport = 0\nname = "{name}"\n')
    cfg.write_text(cfg.read_text().replace("[inputs.osc]\nport = 0", f"[inputs.osc]\nport = {osc_port}"))
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock(), fps=20, serve_health=True)
    query = rt.part("oscquery")
    seen: dict = {}

    def actor():
        assert wait_until(lambda: query.alive and rt.stats.presented > 5, 60)
        base = query.url
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                assert page.goto(base).status == 200
                seen["tree"] = page.evaluate("fetch('/').then((r) => r.json())")
                seen["targets"] = rt.bus.targets()  # nothing sets parameters here until the OSC below
                seen["host_info"] = page.evaluate("fetch('/?HOST_INFO').then((r) => r.json())")
                seen["value"] = page.evaluate("fetch('/param/speed?VALUE').then((r) => r.json())")
                seen["missing"] = page.evaluate("fetch('/param/nope').then((r) => r.status)")
                page.evaluate(LISTEN_JS, "ws" + base[4:])
                assert wait_until(lambda: query.stats()["listens"] == 2, 20)
                client = SimpleUDPClient("127.0.0.1", osc_port)  # real OSC over UDP
                client.send_message("/param/speed", 2.5)
                client.send_message("/norm/radius", 0.5)
                page.wait_for_function("window.got.length >= 2", timeout=20000)
                seen["heard"] = page.evaluate("window.got")
                # IGNORE: after it, speed's changes no longer arrive (radius's, sent after speed's, still do)
                page.evaluate("window.got = []; window.ws.send(JSON.stringify({COMMAND: 'IGNORE', DATA: "
                              "'/param/speed'})); window.ws.send(JSON.stringify({COMMAND: 'LISTEN', DATA: "
                              "'/param/grade.hue'}))")
                assert wait_until(lambda: query.stats()["listens"] == 3, 20)
                client.send_message("/param/speed", 4.0)
                client.send_message("/norm/radius", 0.25)
                page.wait_for_function("window.got.length >= 1", timeout=20000)
                page.wait_for_timeout(300)
                seen["after_ignore"] = page.evaluate("window.got")
            finally:
                browser.close()

    play_while(rt, target, actor, seconds=180)
    rt.close()

    nodes = _walk(seen["tree"], {})
    for p in spec.params.values():
        if p.name.startswith(OscSettings().exclude_prefixes):
            continue  # inputs' own features: not settable over OSC, so not in the map
        node = nodes[f"/param/{p.name}"]
        assert node["ACCESS"] == 3 and "CONTENTS" not in node, p.name
        if p.type == "bool":  # an on/off parameter is a toggle: TYPE T, no range
            assert node["TYPE"] == "T" and "RANGE" not in node, (p.name, node)
            assert node["VALUE"] == [bool(seen["targets"][p.name])], p.name
            continue
        assert node["RANGE"] == [{"MIN": p.min, "MAX": p.max}], p.name
        assert node["TYPE"] in ("f", "i"), p.name
        assert node["VALUE"] == [pytest.approx(seen["targets"][p.name])], p.name  # the current value
        assert nodes[f"/norm/{p.name}"]["RANGE"] == [{"MIN": 0.0, "MAX": 1.0}]
    assert nodes["/scene/goto"]["RANGE"] == [{"VALS": ["a", "b"]}] and nodes["/scene/goto"]["VALUE"] == ["a"]
    assert {"/scene/next", "/scene/prev", "/prompt/all", "/seed", "/freeze", "/blackout", "/panic"} <= set(nodes)
    # strict: no node is both a method (a TYPE or a VALUE) and a folder (CONTENTS)
    assert not [p for p, n in nodes.items() if "CONTENTS" in n and ("TYPE" in n or "VALUE" in n)]
    assert nodes["/panic"]["ACCESS"] == 0 and "TYPE" not in nodes["/panic"]
    assert nodes["/freeze"]["TYPE"] == "T" and nodes["/freeze"]["VALUE"] == [False]
    assert seen["host_info"]["OSC_PORT"] == osc_port and seen["host_info"]["OSC_TRANSPORT"] == "UDP"
    assert seen["host_info"]["EXTENSIONS"]["LISTEN"] is True
    assert seen["missing"] == 404 and len(seen["value"]["VALUE"]) == 1
    heard = [OscMessage(bytes(b)) for b in seen["heard"]]
    got = {m.address: m.params for m in heard}
    assert got["/param/speed"] == [2.5]
    assert got["/norm/radius"] == [pytest.approx(0.5)]
    after = [OscMessage(bytes(b)).address for b in seen["after_ignore"]]
    assert "/norm/radius" in after and "/param/speed" not in after


def test_mdns_finds_both_services_and_a_failure_to_advertise_is_only_a_warning(monkeypatch, caplog):
    from zeroconf import Zeroconf

    bus = ParamBus([ParamSpec("speed", max=10.0, default=1.0)])
    name = f"t-{uuid.uuid4().hex[:8]}"
    server = OscQueryServer(OscQuerySettings(enabled=True, port=0, name=name), bus, ["a"], OscSettings(port=9555))
    server.start()
    zc = Zeroconf()
    try:
        info = zc.get_service_info("_oscjson._tcp.local.", f"{name}._oscjson._tcp.local.", timeout=15000)
        osc = zc.get_service_info("_osc._udp.local.", f"{name}._osc._udp.local.", timeout=15000)
    finally:
        zc.close()
        server.stop()
    assert info is not None and info.port == server.port and "127.0.0.1" in info.parsed_addresses()
    assert osc is not None and osc.port == 9555

    import zeroconf

    def no_multicast(*a, **k):
        raise OSError(19, "No such device")  # what a host without a multicast route answers

    monkeypatch.setattr(zeroconf, "Zeroconf", no_multicast)
    server = OscQueryServer(OscQuerySettings(enabled=True, port=0, name=name), bus, ["a"], OscSettings(port=9555))
    with caplog.at_level(logging.WARNING, logger="installation.inputs.oscquery"):
        server.start()
        try:
            assert wait_until(lambda: "mDNS advertising failed" in caplog.text, 10)
            assert server.alive and server.stats()["advertised"] == 0
        finally:
            server.stop()


def test_a_listener_hears_path_changed_and_the_playing_scene(tmp_path):
    # a real websocket client (the websockets library's own) against the server: a reload that adds a parameter and
    # a scene changes the namespace -> PATH_CHANGED; LISTEN /scene/goto -> the scene's name when it changes
    from websockets.sync.client import connect

    bus = ParamBus([ParamSpec("speed", max=10.0, default=1.0)])
    scenes, playing = ["a", "b"], {"scene": "a"}
    server = OscQueryServer(OscQuerySettings(enabled=True, port=0, advertise=False), bus, lambda: list(scenes),
                            OscSettings(port=9555), snapshot=lambda: dict(playing))
    server.start()
    try:
        with connect(f"ws://127.0.0.1:{server.port}") as ws:
            ws.send('{"COMMAND": "LISTEN", "DATA": "/scene/goto"}')
            first = OscMessage(ws.recv(timeout=5))  # the playing scene, once the server checks
            assert (first.address, first.params) == ("/scene/goto", ["a"])
            bus.set("speed", 4.0)  # a value is no change of the namespace
            playing["scene"] = "b"
            got = OscMessage(ws.recv(timeout=5))
            assert (got.address, got.params) == ("/scene/goto", ["b"])
            assert server.stats()["path_changes"] == 0
            bus.declare(ParamSpec("glow", max=2.0, default=0.5))
            scenes.append("c")
            message = ws.recv(timeout=5)
            assert isinstance(message, str) and json.loads(message) == {"COMMAND": "PATH_CHANGED", "DATA": "/"}
            assert server.stats()["path_changes"] >= 1
    finally:
        server.stop()


def test_the_projector_outputs_calibration_addresses_are_spelled_out(tmp_path):
    # a client builds a control per node: /output/<n>/... patterns must be real addresses, one set per output
    import urllib.request

    from installation.config import Config
    from installation.inputs.oscquery import build
    from installation.parts import PartContext

    cfg = Config.model_validate({"inputs": {"osc": {"port": 9555}}, "canvas": {"size": "64x32"}, "outputs": [
        {"region": [0, 0, 32, 32]}, {"region": [32, 0, 32, 32], "mesh": {"cols": 3, "rows": 2}}]})
    bus = ParamBus([ParamSpec("speed", max=10.0, default=1.0)])
    server = build(OscQuerySettings(enabled=True, port=0, advertise=False),
                   PartContext(bus=bus, scenes=lambda: ["a"], base_dir=tmp_path, config=cfg))
    server.start()
    try:
        tree = json.load(urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10))
    finally:
        server.stop()
    paths = _walk(tree, {})
    assert not [p for p in paths if "<" in p]
    for n in (1, 2):
        assert {f"/output/{n}/corner/{i}" for i in range(4)} <= set(paths)
        assert paths[f"/output/{n}/blend/left"]["RANGE"] == [{"MIN": 0.0, "MAX": 0.5}]
    assert paths["/output/2/corner/3"]["TYPE"] == "ff"
    assert {p for p in paths if p.startswith("/output/2/mesh/")} == {f"/output/2/mesh/{i}" for i in range(6)}
    assert not [p for p in paths if p.startswith("/output/1/mesh")]
    # a show without projector outputs has none of them
    assert not [p for p in _walk(build_tree(bus, ["a"], OscSettings()), {}) if p.startswith("/output")]


PROBE_JS = """async (hostport) => {
  const out = {};
  try { const r = await fetch(`http://${hostport}/?HOST_INFO`); out.fetch = r.status; out.name = (await r.json()).NAME; }
  catch (e) { out.fetch = "refused"; }
  out.ws = await new Promise((ok) => {
    const ws = new WebSocket(`ws://${hostport}/`);
    ws.onopen = () => { ws.close(); ok("open"); };
    ws.onerror = () => ok("refused");
  });
  return out;
}"""


def test_a_page_from_another_origin_can_neither_read_the_tree_nor_listen():
    """A page from another origin that a visitor opens in Chromium: its fetch of the tree and its websocket are
    refused (403); the same page listed in ``allow_origins`` may do both. Clients that send no Origin (TouchOSC,
    python-oscquery) are not affected, and the server's own origin is always allowed."""
    pytest.importorskip("playwright.sync_api", reason="pip install playwright (its browsers are not needed)")
    if shutil.which(CHROMIUM) is None:
        pytest.skip("apt-get install chromium: no browser to test with")
    import urllib.error
    import urllib.request

    from playwright.sync_api import sync_playwright
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from installation.ops.http import HttpLimits, HttpServer, respond

    async def another_site(request):
        return respond(200, b"<!doctype html><title>another site</title><p>hello", "text/html; charset=utf-8")

    site = HttpServer("another-site", "127.0.0.1", 0, HttpLimits(), another_site)
    site.start()
    origin = f"http://127.0.0.1:{site.port}"
    bus = ParamBus([ParamSpec("speed", max=10.0, default=1.0)])
    strict = OscQueryServer(OscQuerySettings(enabled=True, port=0, advertise=False), bus, ["a"],
                            OscSettings(port=9555))
    listed = OscQueryServer(OscQuerySettings(enabled=True, port=0, advertise=False, allow_origins=(origin,)), bus,
                            ["a"], OscSettings(port=9555))

    def get(server, origin_header=None):
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}/param/speed",
                                     headers={"Origin": origin_header} if origin_header else {})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, r.headers.get("Access-Control-Allow-Origin")
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Access-Control-Allow-Origin")

    strict.start()
    listed.start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                assert page.goto(origin + "/").status == 200
                seen = {name: page.evaluate(PROBE_JS, f"127.0.0.1:{server.port}")
                        for name, server in (("strict", strict), ("listed", listed))}
            finally:
                browser.close()
        # the same requests, as a script would send them: no Origin, another one, the server's own, a listed one
        raw = {"none": get(strict), "other": get(strict, "http://evil.example"),
               "own": get(strict, f"http://127.0.0.1:{strict.port}"), "listed": get(listed, origin.upper()),
               "other_on_listed": get(listed, "http://evil.example")}
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{strict.port}", origin="http://evil.example", open_timeout=20)
        with connect(f"ws://127.0.0.1:{listed.port}", origin=origin, open_timeout=20) as ws:
            ws.send('{"COMMAND": "LISTEN", "DATA": "/param/speed"}')
            assert wait_until(lambda: listed.stats()["listens"] == 1, 20)
            bus.set("speed", 3.0)
            assert OscMessage(ws.recv(timeout=20)).params == [3.0]
        stats = strict.stats()
    finally:
        strict.stop()
        listed.stop()
        site.stop()
    assert seen["strict"] == {"fetch": "refused", "ws": "refused"}, seen
    assert seen["listed"] == {"fetch": 200, "name": "installation", "ws": "open"}, seen
    assert stats["rejects"]["cross_origin"] >= 3 and stats["ws_clients"] == 0, stats
    assert raw == {"none": (200, None), "other": (403, None), "own": (200, None), "listed": (200, origin.upper()),
                   "other_on_listed": (403, None)}, raw
    assert refused.value.response.status_code == 403


def test_python_oscquery_browses_reads_sets_and_listens(tmp_path):
    """python-oscquery (strict: it refuses a node with both a value and CONTENTS) finds the show by mDNS, browses
    the whole tree of a show's real parameter set from /, reads every value, and sets a parameter through the OSC
    address and port it found (python-osc, real UDP to the show's OSC server); a websocket LISTENs to it, and an OSC
    packet sent over that websocket applies like one over UDP."""
    pytest.importorskip("pythonoscquery", reason="pip install python-oscquery (a test dependency)")
    import requests
    from pythonoscquery.osc_query_browser import OSCQueryBrowser
    from pythonoscquery.osc_query_client import OSCQueryClient
    from pythonoscquery.shared.osc_access import OSCAccess
    from websockets.sync.client import connect

    from installation.inputs.osc import OscServer, _encode
    from installation.inputs.surface import Capabilities

    spec = load_show(write_show(tmp_path, {"a": scene_toml(shaders='["present", "feedback", "palette", "detail"]'),
                                           "b": scene_toml()}))
    bus = ParamBus(spec.params.values())
    name = f"t-{uuid.uuid4().hex[:8]}"
    import ifaddr

    # mDNS advertises this machine's LAN addresses (loopback only in a sandbox); the client sends from the one it found,
    # so the OSC server lets this machine's own addresses in, as a technician lets a LAN controller in with `allow`
    here = tuple(ip.ip for a in ifaddr.get_adapters() for ip in a.ips if isinstance(ip.ip, str))
    osc_settings = OscSettings(host="0.0.0.0", port=0, allow=here)
    osc = OscServer(osc_settings, bus, ["a", "b"])
    osc.start()
    osc_settings = osc_settings.model_copy(update={"port": osc.address[1]})
    caps = Capabilities(archive=True, vision=False, midi=False, outputs=0)
    query = OscQueryServer(OscQuerySettings(enabled=True, host="0.0.0.0", port=0, name=name), bus, ["a", "b"],
                           osc_settings, snapshot=lambda: {"scene": "a", "live": {"blackout": False, "frozen": True}},
                           caps=caps)
    query.start()
    seen: dict = {}
    try:
        browser = OSCQueryBrowser()
        try:
            assert wait_until(lambda: any(svc.name.startswith(name) for svc in browser.get_discovered_oscquery()), 30)
            svc = next(svc for svc in browser.get_discovered_oscquery() if svc.name.startswith(name))
        finally:
            browser.zc.close()
        client = OSCQueryClient(svc)
        hi = client.get_host_info()
        root = client.query_node("/")  # raises on a node that is both a method and a folder
        nodes = {}

        def walk(node):
            nodes[node.full_path] = node
            for child in node.contents or ():
                walk(child)

        walk(root)
        base = f"http://127.0.0.1:{query.port}"
        with requests.Session() as http:  # one kept-alive connection, as a client reading a tree would
            values = {path: http.get(base + path + "?VALUE", timeout=20) for path in nodes}
        targets = bus.targets()
        with connect(f"ws://127.0.0.1:{query.port}", open_timeout=20) as ws:
            ws.send('{"COMMAND": "LISTEN", "DATA": "/param/speed"}')
            ws.send('{"COMMAND": "LISTEN", "DATA": "/norm/radius"}')
            assert wait_until(lambda: query.stats()["listens"] == 2, 20)
            SimpleUDPClient(hi.osc_ip, hi.osc_port).send_message(nodes["/param/speed"].full_path, 3.5)
            seen["heard"] = OscMessage(ws.recv(timeout=20))
            ws.send(_encode("/norm/radius", 0.25))  # OSC over the websocket, as the proposal allows
            seen["heard_ws"] = OscMessage(ws.recv(timeout=20))
            ws.send(_encode("/ping", 7))
            seen["pong"] = OscMessage(ws.recv(timeout=20))
            ws.send(b"\x00garbage")
            assert wait_until(lambda: query.stats()["osc"]["rejects"].get("malformed", 0) == 1, 20)
            seen["query_stats"] = query.stats()
    finally:
        query.stop()
        osc.stop()

    assert hi.osc_port == osc.settings.port or hi.osc_port == osc_settings.port
    assert hi.osc_ip in here and hi.osc_ip != "0.0.0.0"  # where this client reached the show (an advertised address)
    for path, node in nodes.items():
        assert not (node.contents and node.value), path
        r = values[path]
        if node.access in (OSCAccess.READONLY_VALUE, OSCAccess.READWRITE_VALUE):
            assert r.status_code == 200 and len(r.json()["VALUE"]) == len(node.value), path
        else:
            assert r.status_code == 204, (path, r.status_code)  # write-only, a folder or a no-argument method
    for p in spec.params.values():
        if not p.name.startswith(OscSettings().exclude_prefixes):
            assert nodes[f"/param/{p.name}"].value == [pytest.approx(targets[p.name])], p.name
            assert f"/norm/{p.name}" in nodes
    assert nodes["/param/detail.dither"].type == [bool]  # a boolean parameter is T/F
    assert nodes["/map/goto"].type == [float, float] and nodes["/blackout"].type == [bool]
    assert nodes["/freeze"].value == [True] and nodes["/freeze"].access == OSCAccess.READWRITE_VALUE
    assert nodes["/seed"].access == OSCAccess.WRITEONLY_VALUE
    assert nodes["/scene/next"].access == OSCAccess.NO_VALUE and nodes["/ping"].access == OSCAccess.NO_VALUE
    assert "/steer" not in nodes and "/midi/learn" not in nodes  # vision and MIDI are off in this show
    assert (seen["heard"].address, seen["heard"].params) == ("/param/speed", [3.5])
    assert seen["heard_ws"].address == "/norm/radius" and seen["heard_ws"].params == [pytest.approx(0.25)]
    assert (seen["pong"].address, seen["pong"].params) == ("/pong", [7])
    assert seen["query_stats"]["osc"]["applied"] == 2 and seen["query_stats"]["rejects"]["bad_commands"] == 0


def test_the_tree_says_which_parameters_act_in_the_playing_scene():
    """A parameter no pass of the playing scene reads (grade.* on the shipped scenes) says so in its description;
    the shape a client builds from does not change with the scene (no PATH_CHANGED for that)."""
    from installation.inputs.oscquery import shape

    bus = ParamBus([ParamSpec("speed", max=10.0, default=1.0, doc="how fast"),
                    ParamSpec("grade.exposure", min=-4, max=4, doc="stops")])
    a = build_tree(bus, ["a"], OscSettings(), "a", acting=["speed"])
    nodes = _walk(a, {})
    assert nodes["/param/grade.exposure"]["DESCRIPTION"].startswith("not in the playing scene (a)")
    assert nodes["/norm/grade.exposure"]["DESCRIPTION"].startswith("not in the playing scene (a)")
    assert not nodes["/param/speed"]["DESCRIPTION"].startswith("not in")
    assert shape(a) == shape(build_tree(bus, ["a"], OscSettings(), "a", acting=["speed", "grade.exposure"]))
