"""The contract every registered part keeps, checked the same way for each built-in on a real device or socket.

A new part gets this for free: add its name and the config table that enables it to ENABLE. What is checked is what
the runtime relies on: the part builds from its validated settings, start() returns at once, it is alive while it
runs, stats() is a small JSON-able dict, stop() ends it and may be called twice, and it can be started again (the
supervisor restarts a dead part with stop() then start()). Each supervised thread it starts is killed by an
exception raised inside it and must come back, the part alive throughout.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from installation import parts
from installation.bus import ParamBus
from installation.config import load_show
from installation.ops.supervise import THREADS
from support import scene_toml, wait_until, write_show

LIVE = "lavfi:testsrc2=size=160x120:rate=30,realtime"
ENABLE = {
    "health": "[health]\nenabled = true\nport = 0\n",
    "state": "[state]\nenabled = true\ninterval_s = 0.5\n",
    "osc": "",  # on by default; the test config binds it to port 0
    "audio": '[inputs.audio]\nenabled = true\ndevice = "system"\n',
    "camera": f'[inputs.camera]\nenabled = true\nsource = "{LIVE}"\n',
    "archive": "",  # on by default: a writer thread and a SQLite file in the test's folder
    "vision": "",  # the tiny CLIP checkpoint's table, from the tiny_clip fixture
    "sinks": '[[sinks]]\nkind = "ndi"\nname = "contract"\n',  # an NDI sender (render/ndi.py)
    "web": "[web]\nenabled = true\nport = 0\n",
    "oscquery": "[oscquery]\nenabled = true\nport = 0\nadvertise = false\n",
    "midi": '[inputs.midi]\nenabled = true\napi = "UNIX_JACK"\nport = "no-such-controller"\n',  # waits for it
    "link": "[sync]\nlink = true\n",
    "presets": "",  # on by default: a thread that runs a recall's fade, presets.json beside the config
    "search": "",  # /seek: on with [vision] (the tiny CLIP's table), a thread that answers queries
}
# The supervised threads a part starts (at least these; the fault drill below kills each).
THREADS_OF = {"osc": {"osc-server"}, "audio": {"audio-input"}, "camera": {"camera-input"}, "archive": {"archive"},
              "sinks": {"ndi-contract"}, "midi": {"midi"},
              "presets": {"presets"}, "search": {"search"}}
PASSIVE = {"state"}  # no thread or process of its own (it saves from the loop's tick): alive is always True


def test_every_registered_part_is_under_contract():
    assert set(parts.names()) == set(ENABLE)


@pytest.mark.parametrize("name", sorted(ENABLE))
def test_a_part_starts_runs_reports_stops_and_starts_again(name, tmp_path, request):
    if name in ("audio", "midi"):
        request.getfixturevalue("jack_server")  # a real PortAudio stream on the JACK dummy server
    extra = request.getfixturevalue("tiny_clip").toml() if name in ("vision", "search") else ENABLE[name]
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra=extra)
    spec = load_show(cfg)
    bus = ParamBus(spec.params.values())
    ctx = parts.PartContext(bus=bus, scenes=lambda: [s.name for s in spec.scenes], base_dir=Path(tmp_path),
                            snapshot=lambda: {"status": "ok"}, state=lambda: {"scene": "a"},
                            serve_health=True, keep_state=True, config=spec.config)
    info = parts.info(name)
    part = info.build(info.settings_in(spec.config), ctx)
    assert part is not None, f"{name} did not build although enabled"
    for attempt in range(2):  # the supervisor's restart is stop() then start()
        before = set(THREADS.live())
        started = time.monotonic()
        part.start()
        assert time.monotonic() - started < 10.0  # returns at once: the work runs on its own thread or process
        try:
            assert wait_until(lambda: part.alive, timeout=30)
            mine = [t for t in THREADS.live() if t not in before]
            assert THREADS_OF.get(name, set()) <= {t.name for t in mine}
            for thread in mine if attempt == 0 else ():
                deaths = thread.restarts
                assert thread.inject(), thread.name
                assert wait_until(lambda: thread.restarts == deaths + 1 and thread.is_alive(), timeout=30), \
                    thread.name
                assert part.alive, thread.name
            stats = part.stats()
            assert isinstance(stats, dict) and json.loads(json.dumps(stats)) == stats
            assert all(isinstance(v, int) for v in (stats.get("rejects") or {}).values())
        finally:
            part.stop()
        part.stop()  # idempotent
        assert not part.alive or name in PASSIVE
