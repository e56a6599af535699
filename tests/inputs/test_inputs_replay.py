"""A live show steered by a real camera (a lavfi source through a real cv2.VideoCapture in the camera's process) and a
real microphone (a sounddevice stream on the JACK dummy server, fed by a JACK client) is archived with its input
features as the loop consumed them, packed, and replays exactly: every tick of the replay reads the same camera and
microphone values, the same modulated speed, and walks to the same archived points, to the bit."""

from __future__ import annotations

import sqlite3
import zlib

import numpy as np
import pytest

from installation.archive.rerender import render_replay
from installation.archive.store import Store
from installation.clock import WallClock
from installation.config import load_show
from installation.inputs.audio import FEATURES as AUDIO
from installation.inputs.camera import FEATURES as CAMERA
from installation.render.targets import HeadlessTarget
from installation.runtime import Runtime
from support import bench_result, run_cli, scene_toml, wait_until, write_show

LIVE = "lavfi:testsrc2=size=160x120:rate=30,realtime"
WATCHED = (*CAMERA, *AUDIO, "speed")
ROUTES = """
[[modulation.routes]]
source = "audio.rms"
target = "speed"
gain = 3.0
[[modulation.routes]]
source = "camera.brightness"
target = "speed"
gain = 1.0
[[modulation.routes]]
source = "camera.motion"
target = "speed"
gain = 2.0
"""


@pytest.fixture
def consumed(monkeypatch):
    """What every tick of every show in this test read from the bus (after modulation): by runtime, a list of
    (show time, the watched values). Recorded where the loop reads them; nothing is changed."""
    seen: dict[int, list[tuple[float, dict[str, float]]]] = {}
    modulate = Runtime._modulate

    def spy(self, tick, t, dt):
        out = modulate(self, tick, t, dt)
        seen.setdefault(id(self), []).append((t, {n: out.values.get(n) for n in WATCHED}))
        return out

    monkeypatch.setattr(Runtime, "_modulate", spy)
    return seen


def test_a_show_steered_by_a_real_camera_and_microphone_replays_exactly(tmp_path, feeder, consumed):
    cfg = write_show(tmp_path, {"a": scene_toml(trajectory='kind = "loop"\nperiod = 4.0')},
                     extra=f'[decoder]\nisolation = "thread"\n[state]\nenabled = false\n'
                           f'[archive]\npoint_every = 0.25\nbatch_s = 0.25\n'
                           f'[inputs.audio]\nenabled = true\ndevice = "system"\n'
                           f'[inputs.camera]\nenabled = true\nsource = "{LIVE}"\n{ROUTES}')
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    feeder.play("sine", freq=440.0, amp=0.1)
    try:
        rt = Runtime(spec, target, WallClock(), fps=spec.config.output.fps, inputs=True)
        rt.start()
        feeder.connect_to_portaudio(timeout=30)
        assert wait_until(lambda: rt.camera.stats()["frames"] >= 5 and rt.audio.stats()["blocks"] >= 20, 120), \
            (rt.camera.stats(), rt.audio.stats())

        def moved(names: tuple[str, ...], at_least: int) -> bool:
            ticks = consumed.get(id(rt), [])
            return any(len({v[n] for _, v in ticks}) >= at_least for n in names)

        def swell(r: Runtime) -> None:  # the microphone hears a sound that swells and falls, a step per tick
            feeder.amp = 0.1 + 0.4 * (r.stats.ticks % 20) / 20
            # until both inputs have steered (however slowly a loaded machine delivers them) and at least 3 s of
            # show time have passed (12 archived points at 0.25 s; a fast machine steers within 2 s), or a safe cap
            if r.stats.ticks >= 60 and moved(CAMERA, 4) and moved(("audio.rms",), 4) and moved(("speed",), 8) \
                    or r.stats.ticks >= 3000:
                r.request_quit()

        rt.run(None, on_tick=swell)  # live: paced at 20 fps on the wall clock
    finally:
        target.close()
    archive = rt.part("archive")
    assert archive.stats()["failures"] == 0 and archive.stats()["samples"] > 0
    live = consumed.pop(id(rt))
    # the features did steer: both inputs moved during the run, and the speed with them
    for names in (CAMERA, ("audio.rms", "audio.peak")):
        assert any(len({v[n] for _, v in live}) >= 4 for n in names), names
    assert len({v["speed"] for _, v in live}) >= 8

    # The archive holds them packed (no event row per value), at most once per tick each, and as the show used them
    store = Store(archive.path, readonly=True)
    try:
        sid = store.session()["id"]
        ticks = store.ticks(sid)
        journal = list(store.events(sid))
    finally:
        store.close()
    with sqlite3.connect(f"file:{archive.path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT count(*) FROM events WHERE source IN ('camera', 'audio') AND kind='set'").fetchone()
        dtypes = {d for (d,) in db.execute("SELECT dtype FROM samples")}
    assert rows[0] == 0 and dtypes == {"f4"}
    sampled = [c for c in journal if c.get("sampled")]
    assert {c["source"] for c in sampled} == {"camera", "audio"}
    at_tick = set(ticks.tolist())
    assert all(c["t"] in at_tick for c in sampled)  # stamped with the tick that read them
    per_tick: dict[tuple[float, str], int] = {}
    for c in sampled:
        per_tick[(c["t"], c["name"])] = per_tick.get((c["t"], c["name"]), 0) + 1
    assert max(per_tick.values()) == 1
    by_t = dict(live)
    for c in sampled:  # each is exactly what the live tick at its time read (bar modulation: raw features)
        assert by_t[c["t"]][c["name"]] == c["value"], c

    # The replay reads the same at every tick, and walks to the same points
    result = render_replay(archive.path, live_ticks=True)
    replayed = consumed.pop(next(iter(consumed)))
    assert result["timing"] == "live ticks" and result["ticks"] == len(ticks) == len(live)
    assert [t for t, _ in replayed] == [t for t, _ in live]
    differ = [(t, n, v[n], w[n]) for (t, v), (_, w) in zip(live, replayed) for n in WATCHED if v[n] != w[n]]
    assert differ == [], differ[:5]
    assert result["points_compared"] >= 8 and result["points_identical"] == result["points_compared"]
    assert result["latent_max_diff"] == 0


def test_sampled_features_are_packed_exactly_and_old_archives_still_read(tmp_path):
    """float32 values stay float32 in 4 bytes; anything else is kept in float64; an archive written before the
    samples table existed opens read-only and lists its events."""
    from installation.archive.store import pack_samples, unpack_samples

    entries = [(0.05, "camera.motion", float(np.float32(0.1234567)), "camera"), (0.05, "audio.rms", 0.0, "audio"),
               (0.1, "camera.motion", 1.0, "camera")]
    row = pack_samples(entries)
    assert row[2] == 3 and row[5] == "f4"
    assert [(e["t"], e["name"], e["value"], e["source"]) for e in unpack_samples(*row[2:])] == entries
    wide = entries + [(0.15, "link.beat", 0.1, "link")]  # 0.1 is no float32
    row = pack_samples(wide)
    assert row[5] == "f8" and [e["value"] for e in unpack_samples(*row[2:])] == [e[2] for e in wide]
    with pytest.raises(ValueError):  # a row whose data does not hold its entries
        unpack_samples(4, *row[3:6], zlib.compress(b"\0" * 7))

    path = tmp_path / "old.sqlite"
    store = Store(path)
    sid = store.new_session("2026-01-01T00:00:00+00:00", "show.toml", ["a"], (16, 16), {})
    store.write_batch(sid, events=[(0.5, "set", "speed", "2.0", "osc:127.0.0.1")],
                      samples=[(0.5, "camera.motion", 0.5, "camera")])
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE samples")
    old = Store(path, readonly=True)
    try:
        assert [e["name"] for e in old.events(sid)] == ["speed"] and old.sessions()[0]["events"] == 1
    finally:
        old.close()


def test_bench_archive_size_prints_bytes_per_hour_with_each_input_on(tmp_path, jack_server):
    """``bench --archive-size``: one live run per input (OSC from a fader the bench moves, the microphone on JACK
    with the bench's test signal, a lavfi camera), each the archive's growth per hour; structure, not speed."""
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra='[decoder]\nisolation = "thread"\n')
    r = run_cli("bench", "--archive-size", "--config", str(cfg), "--seconds", "3", "--mic", "system",
                "--mic-signal", "--camera", LIVE, "--json", timeout=900)
    result = bench_result(r, ["mb_per_hour", "runs"])
    assert list(result["mb_per_hour"]) == ["none", "osc", "mic", "camera", "all"]
    runs = result["runs"]
    # (a short run's file may not fill a page more than its empty self: bytes >= 0; structure, not size)
    assert all(run["bytes_per_hour"] >= 0 and run["show_s"] > 0 and run["ticks_per_s"] > 0 for run in runs.values())
    assert all(set(run["mb_per_hour_by_table"]) >= {"events", "points", "ticks", "samples"} for run in runs.values())
    assert runs["osc"]["osc_sent"] > 0 and runs["osc"]["set_rows_per_s_by_source"].get("osc:127.0.0.1", 0) > 0
    assert runs["mic"]["mic_blocks_per_s"] > 0 and runs["camera"]["camera_fps"] > 0
    for mode in ("mic", "camera", "all"):  # the features went to the packed samples, none to event rows
        assert runs[mode]["samples_per_s"] > 0, mode
        assert not {"audio", "camera"} & set(runs[mode]["set_rows_per_s_by_source"]), mode
    assert runs["none"]["samples_per_s"] == 0
    bad = run_cli("bench", "--archive-size", "--config", str(cfg), "--modes", "none,radio")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "installation: --archive-size: unknown mode 'radio' (choose from none, osc, mic, camera, all)"]
