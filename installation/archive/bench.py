"""``installation bench --archive``: what the archive costs and whether its replays are exact.

- fps with the archive paused and recording by turns in one fixed-step, unpaced run (blocks of a sixth of a second
  of show time, so adjacent blocks see the same machine load), so the loop's whole cost (decoding in lockstep, the shader
  chain, the read-back of a point's frame) shows; ``rounds`` such runs;
- bytes per hour of show time at the defaults (the "on" runs' files over their show time);
- a replay's equality: a short fixed-step run re-rendered from its archive, frame by frame (SHA-1 of the RGB).

``installation bench --map`` (:func:`overlay_bench`): what the live map over the window costs the loop.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..clock import FixedClock
from ..config import ShowSpec
from .rerender import render_replay


class _Hashes:
    def __init__(self) -> None:
        self.hashes: list[str] = []

    def wants(self, t):
        return True

    def put(self, rgb, size, t):
        self.hashes.append(hashlib.sha1(rgb).hexdigest())


def _run(spec: ShowSpec, folder: Path, seconds: float | None, frames: int | None = None, sink: Any = None,
         block: int = 0) -> dict[str, Any]:
    """A fixed-step, unpaced run with the archive on; with ``block``, it is paused and recording by turns, ``block``
    ticks each, and each block's wall time is kept (adjacent blocks see the same machine load)."""
    from ..render.targets import HeadlessTarget
    from ..runtime import Runtime

    cfg = spec.config
    archive = cfg.archive.model_copy(update={"enabled": True, "path": str(folder), "replay": ""})
    run_spec = replace(spec, config=cfg.model_copy(update={"archive": archive}))
    fps = cfg.output.fps
    target = HeadlessTarget(cfg.output.size)
    rt = Runtime(run_spec, target, FixedClock(fps), fps=fps, inputs=False)
    part = rt.part("archive")
    if sink is not None:
        rt.tap.add(sink)
    n = 0
    blocks: list[tuple[bool, float]] = []  # (recording, seconds) per block
    try:
        rt.start()
        started = mark = time.perf_counter()
        while (frames is not None and n < frames) or (seconds is not None and time.perf_counter() - started < seconds):
            if block and n % block == 0:
                now = time.perf_counter()
                if n:
                    blocks.append((not part.paused, now - mark))
                mark = now
                part.paused = (n // block) % 2 == 0  # paused first, then recording, by turns
            rt.step()
            n += 1
        wall = time.perf_counter() - started
    finally:
        rt.close()
        target.close()
    return {"frames": n, "wall": wall, "blocks": blocks, "stats": part.stats(), "path": part.path}


ROW = 40  # SQLite's own bytes per row (header, rowid, index entry), about


def _payload(path: Path) -> tuple[float, float, float]:
    """Bytes per point, per tick and per event in an archive file (payload plus row overhead)."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        n, pb = db.execute("SELECT count(*), coalesce(sum(length(latent) + coalesce(length(thumb), 0) + "
                           "coalesce(length(prompts), 0) + length(shape) + length(scene) + 24), 0) FROM points")\
            .fetchone()
        k, tb = db.execute("SELECT coalesce(sum(n), 0), coalesce(sum(length(data) + 24), 0) FROM ticks").fetchone()
        e, eb = db.execute("SELECT count(*), coalesce(sum(length(value) + length(name) + length(source) + 24), 0) "
                           "FROM events").fetchone()
    return (pb + n * ROW) / max(n, 1), tb / max(k, 1), (eb + e * ROW) / max(e, 1)


def archive_bench(spec: ShowSpec, seconds: float = 10.0, rounds: int = 1) -> dict[str, Any]:
    fps = spec.config.output.fps
    block = max(fps // 6, 2)  # short blocks, many pairs; a point lands in every sixth recording block at 1 s
    with tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp:
        runs = [_run(spec, Path(tmp) / f"r{r}", seconds, block=block) for r in range(max(rounds, 1))]
        blocks = [b for run in runs for b in run["blocks"]]
        off = [s for rec, s in blocks if not rec]
        on = [s for rec, s in blocks if rec]
        pairs = [p_off / p_on for (r1, p_off), (r2, p_on) in zip(blocks[::2], blocks[1::2]) if not r1 and r2]
        sizes = [_payload(run["path"]) for run in runs]
        point_b = sum(p for p, _, _ in sizes) / len(sizes)
        tick_b = sum(t for _, t, _ in sizes) / len(sizes)
        event_b = max(e for _, _, e in sizes)
        stats = runs[-1]["stats"]
        hook_s = sum(run["stats"]["loop_hook_s"] for run in runs)
        cpu_s = sum(run["stats"]["writer_cpu_s"] for run in runs)
        on_ticks = len(on) * block
        # the replay's equality: a short run, then its replay, frame by frame
        live = _Hashes()
        src = _run(spec, Path(tmp) / "eq", None, frames=max(int(fps * 3), 2), sink=live)
        again = _Hashes()
        replay = render_replay(src["path"], on_frame=lambda rgb, t: again.put(rgb, None, t), live_ticks=True)
        same = sum(a == b for a, b in zip(live.hashes, again.hashes))
    w, h = spec.config.output.size
    a = spec.config.archive
    # Live, a tick's time is 8 bytes that do not compress, plus a row per batch (a slow fixed-step run's few ticks
    # per batch, or its regular times that do compress, would misstate it)
    live_tick_b = 8.0 + (ROW + 24) / max(fps * a.batch_s, 1.0)
    per_hour = point_b * 3600 / a.point_every + (live_tick_b * fps * 3600 if a.ticks else 0)
    pairs.sort()
    return {
        "size": f"{w}x{h}", "fps_setting": fps, "scene": spec.scenes[0].name, "block_ticks": block,
        "blocks": f"{len(off)} off, {len(on)} on",
        "fps_archive_off": round(len(off) * block / sum(off), 2) if off else None,
        "fps_archive_on": round(on_ticks / sum(on), 2) if on else None,
        "fps_ratio": round(sum(off) / len(off) / (sum(on) / len(on)), 4) if off and on else None,
        "fps_ratio_median_pair": round(pairs[len(pairs) // 2], 4) if pairs else None,
        # the archive's own work as a share of the recording blocks' time: noise-free where the fps ratio is not
        "archive_cpu_share": round((hook_s + cpu_s) / sum(on), 5) if on else None,
        "loop_hook_us_per_tick": round(hook_s / on_ticks * 1e6, 1) if on_ticks else None,
        "bytes_per_point": int(point_b), "bytes_per_tick": round(tick_b, 2), "bytes_per_live_tick": round(live_tick_b, 2), "bytes_per_event": int(event_b),
        # at the defaults: a point a second, every tick's time; events as the performance makes them (not counted)
        "bytes_per_hour": int(per_hour), "mb_per_day": round(per_hour * 24 / 1e6, 1),
        "points_written": stats.get("points"), "points_dropped": stats.get("points_dropped", 0),
        "replay_frames_identical": f"{same}/{len(live.hashes)}" if len(again.hashes) == len(live.hashes)
        else f"{same}/{len(live.hashes)} (replay rendered {len(again.hashes)})",
        "replay_points_identical": f"{replay.get('points_identical', 0)}/{replay.get('points_compared', 0)}",
    }


# -- ``installation bench --archive-size``: the file's growth with each input on ------------------------------------

SIZE_MODES = ("none", "osc", "mic", "camera", "all")
DEFAULT_CAMERA = "lavfi:testsrc2=size=320x240:rate=30,realtime"


def _with_inputs(spec: ShowSpec, folder: Path, mode: str, camera: int | str, mic: int | str | None) -> ShowSpec:
    """The show with the archive in ``folder`` and only the inputs ``mode`` names on (OSC on a free loopback port
    for "osc" and "all"); the web page, OSCQuery, MIDI, Link and the state file off."""
    cfg = spec.config
    osc = mode in ("osc", "all")
    audio = mode in ("mic", "all")
    cam = mode in ("camera", "all")
    inputs = cfg.inputs.model_copy(update={
        "osc": cfg.inputs.osc.model_copy(update={"enabled": osc, "port": 0, "host": "127.0.0.1"}),
        "audio": cfg.inputs.audio.model_copy(update={"enabled": audio, **({"device": mic} if mic is not None
                                                                           else {})}),
        "camera": cfg.inputs.camera.model_copy(update={"enabled": cam, "source": camera}),
        "midi": cfg.inputs.midi.model_copy(update={"enabled": False})})
    archive = cfg.archive.model_copy(update={"enabled": True, "path": str(folder), "replay": ""})
    update = {"inputs": inputs, "archive": archive, "web": cfg.web.model_copy(update={"enabled": False}),
              "oscquery": cfg.oscquery.model_copy(update={"enabled": False}),
              "sync": cfg.sync.model_copy(update={"link": False})}
    return replace(spec, config=cfg.model_copy(update=update))


class _Signal:
    """A JACK client playing something like music into PortAudio's inputs (the microphone on a JACK server): a
    click on every beat at 120 BPM over two sines whose level swells and falls every 4 s, and a little noise."""

    def __init__(self) -> None:
        import jack
        import numpy as np

        self.np = np
        self.client = jack.Client("archive-bench-signal", no_start_server=True)
        self.port = self.client.outports.register("out")
        self.sr = self.client.samplerate
        self.n = 0
        self.rng = np.random.default_rng(0)
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        np = self.np
        t = (self.n + np.arange(frames)) / self.sr
        self.n += frames
        swell = 0.05 + 0.2 * (0.5 - 0.5 * np.cos(2 * np.pi * t / 4.0))
        x = swell * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 1760 * t))
        x += 0.01 * self.rng.standard_normal(frames)
        x[(t % 0.5) < 0.004] += 0.6
        self.port.get_array()[:] = x

    def connect(self) -> None:
        for p in self.client.get_ports("PortAudio", is_audio=True, is_input=True):
            if self.port not in self.client.get_all_connections(p):
                try:
                    self.client.connect(self.port, p)
                except Exception:  # noqa: BLE001 - connected meanwhile
                    pass

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def _compact_bytes(path: Path) -> tuple[int, int, dict[str, int]]:
    """(bytes of the archive file compacted, bytes of the same file with every row but its session's removed, and
    for each table the bytes it takes: the compacted file less the compacted file without that table's rows)."""
    import sqlite3

    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'") if r[0] != "sessions"]

    def size(emptied: list[str]) -> int:
        copy = path.with_name(f"{path.stem}-copy.sqlite")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            db.execute("VACUUM INTO ?", (str(copy),))
        if emptied:
            db = sqlite3.connect(copy)
            try:
                for table in emptied:
                    db.execute(f"DELETE FROM {table}")
                db.commit()
                db.execute("VACUUM")
            finally:
                db.close()
        n = copy.stat().st_size
        copy.unlink()
        return n

    full = size([])
    return full, size(tables), {t: full - size([t]) for t in tables}


def _size_run(spec: ShowSpec, folder: Path, mode: str, seconds: float, camera: int | str, mic: int | str | None,
              osc_rate: float, signal: Any) -> dict[str, Any]:
    """One live-paced run with ``mode``'s inputs on; the archive's growth per hour of show time."""
    import sqlite3
    import threading

    from ..clock import WallClock
    from ..render.targets import HeadlessTarget
    from ..runtime import Runtime
    from .store import Store

    run_spec = _with_inputs(spec, folder, mode, camera, mic)
    cfg = run_spec.config
    target = HeadlessTarget(cfg.output.size)
    notes: dict[str, Any] = {}
    try:
        rt = Runtime(run_spec, target, WallClock(), fps=cfg.output.fps, inputs=True)
        rt.start()
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:  # the inputs deliver before the measured stretch starts
            waiting = (rt.camera is not None and rt.camera.stats().get("frames", 0) == 0) or \
                (rt.audio is not None and rt.audio.stats().get("blocks", 0) == 0)
            if not waiting:
                break
            if signal is not None and rt.audio is not None:
                signal.connect()
            time.sleep(0.05)
        if signal is not None and rt.audio is not None:
            signal.connect()
        stop = threading.Event()
        sender = None
        if rt.osc is not None and osc_rate > 0:
            from pythonosc.udp_client import SimpleUDPClient

            client = SimpleUDPClient(*rt.osc.address)

            def fader() -> None:  # a performer moving a fader back and forth, a sweep every 4 s
                i = 0
                while not stop.wait(1.0 / osc_rate):
                    i += 1
                    u = (i / osc_rate / 4.0) % 2.0
                    client.send_message("/param/speed", 0.5 + (u if u <= 1.0 else 2.0 - u))
                    notes["osc_sent"] = i

            sender = threading.Thread(target=fader, name="bench-fader", daemon=True)
            sender.start()
        cam0 = rt.camera.stats().get("frames", 0) if rt.camera is not None else 0
        blocks0 = rt.audio.stats().get("blocks", 0) if rt.audio is not None else 0
        try:
            stats = rt.run(seconds)
        finally:
            stop.set()
            if sender is not None:
                sender.join(5)
        if rt.camera is not None:
            notes["camera_fps"] = round((rt.camera.stats().get("frames", 0) - cam0) / max(stats.loop_s, 1e-9), 1)
            notes["camera_error"] = rt.camera.stats().get("error", "")
        if rt.audio is not None:
            notes["mic_blocks_per_s"] = round((rt.audio.stats().get("blocks", 0) - blocks0) /
                                              max(stats.loop_s, 1e-9), 1)
        path = rt.part("archive").path
    finally:
        target.close()
    store = Store(path, readonly=True)
    try:
        sess = store.session()
        first = (sess.get("first") or {}).get("t") or 0.0
        span = float(sess.get("last_t") or 0.0) - float(first)
        sid = sess["id"]
        events = store.conn.execute("SELECT count(*) FROM events WHERE session=?", (sid,)).fetchone()[0]
        by_source = dict(store.conn.execute(  # parameter sets only (a microphone's onsets are events of its own)
            "SELECT source, count(*) FROM events WHERE session=? AND kind='set' GROUP BY source", (sid,)).fetchall())
        ticks = len(store.ticks(sid))
    finally:
        store.close()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:  # payload bytes (plus ROW for a row's own overhead), not pages: per-unit costs a short run can tell
        row_bytes = db.execute("SELECT coalesce(sum(length(value) + length(name) + length(source) + 24), 0) "
                               "FROM events WHERE source != 'archive'").fetchone()[0]
        rows = db.execute("SELECT count(*) FROM events WHERE source != 'archive'").fetchone()[0]
        try:
            samples, sample_bytes = db.execute(
                "SELECT coalesce(sum(n), 0), coalesce(sum(length(data) + length(names) + length(sources) + 40), 0) "
                f"+ count(*) * {ROW} FROM samples").fetchone()
        except sqlite3.Error:  # an archive without the samples table
            samples, sample_bytes = 0, 0
    finally:
        db.close()
    notes["payload_bytes_per_event_row"] = round(row_bytes / rows + ROW, 1) if rows else None
    notes["payload_bytes_per_sample"] = round(sample_bytes / samples, 2) if samples else None
    full, empty, tables = _compact_bytes(path)
    grown = full - empty
    per_hour = grown / max(span, 1e-9) * 3600.0
    return {"show_s": round(span, 2), "bytes": grown, "bytes_per_hour": int(per_hour),
            "mb_per_hour": round(per_hour / 1e6, 2),
            # what each table holds, per hour (pages: a short run's figures are coarse, 4 kB steps)
            "mb_per_hour_by_table": {t: round(b / max(span, 1e-9) * 3600.0 / 1e6, 2) for t, b in tables.items()},
            "bytes_per_event_row": round(tables.get("events", 0) / events, 1) if events else None,
            "bytes_per_sample": round(tables.get("samples", 0) / samples, 2) if samples else None,
            "ticks_per_s": round(ticks / max(span, 1e-9), 1),
            "event_rows_per_s": round(events / max(span, 1e-9), 1),
            "set_rows_per_s_by_source": {k: round(v / max(span, 1e-9), 1) for k, v in sorted(by_source.items())},
            "samples_per_s": round(samples / max(span, 1e-9), 1), **notes}


def archive_size_bench(spec: ShowSpec, seconds: float = 30.0, camera: int | str | None = None,
                       mic: int | str | None = None, osc_rate: float = 30.0, signal: bool = False,
                       modes: tuple[str, ...] = SIZE_MODES) -> dict[str, Any]:
    """The archive's growth per hour of show time with no input, OSC (a fader moved ``osc_rate`` times a second),
    the microphone, the camera and all of them on: one live-paced run of ``seconds`` each, the file compacted and
    measured (less the same file with its rows removed). ``signal``: play a music-like test signal into the
    microphone when it is a JACK port (a machine without a sound card)."""
    unknown = [m for m in modes if m not in SIZE_MODES]
    if unknown or not modes:
        raise ValueError(f"unknown mode {unknown[0] if unknown else ''!r} (choose from {', '.join(SIZE_MODES)})")
    camera = camera if camera is not None else DEFAULT_CAMERA
    sig = None
    if signal and any(m in ("mic", "all") for m in modes):
        try:
            sig = _Signal()
        except Exception as e:  # noqa: BLE001 - no JACK-Client, no server: one line, exit 2
            raise OSError(f"--mic-signal needs a running JACK server and JACK-Client ({type(e).__name__}: {e})") \
                from None
    runs: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="archive-size-") as tmp:
            for mode in modes:
                runs[mode] = _size_run(spec, Path(tmp) / mode, mode, seconds, camera, mic, osc_rate, sig)
    finally:
        if sig is not None:
            sig.close()
    w, h = spec.config.output.size
    return {"size": f"{w}x{h}", "fps_setting": spec.config.output.fps, "scene": spec.scenes[0].name,
            "seconds": seconds, "camera": str(camera), "mic": str(mic if mic is not None else "default"),
            "osc_per_s": osc_rate, "mic_signal": "bench's JACK test signal" if sig is not None else "as it hears",
            "mb_per_hour": {m: r["mb_per_hour"] for m, r in runs.items()}, "runs": runs}


def overlay_bench(spec: Any, seconds: float = 10.0, rounds: int = 1) -> dict[str, Any]:
    """Present p99 of the full headless loop with the live map off and on (``rounds`` pairs, alternating, one
    process), on a throwaway archive, refitting four times a run so that refits fall inside the measured time."""
    from ..bench import _p99_ms, runtime_fps
    from ..decoders.base import resolve_device

    cfg = spec.config
    refit_s = max(1.0, seconds / 4)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    maps: list[dict[str, Any]] = []

    def watch(rt: Any) -> Any:
        live_map = rt.parts["archive"].live_map
        return lambda: maps.append(live_map.stats())
    with tempfile.TemporaryDirectory() as tmp:
        device = resolve_device(cfg.decoder.device)
        for i in range(max(1, rounds)):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                archive = cfg.archive.model_copy(update={"enabled": True, "path": f"{tmp}/{mode}{i}",
                                                         "point_every": 0.25})
                overlay = cfg.output.map.model_copy(update={"enabled": mode == "on", "refit_s": refit_s})
                output = cfg.output.model_copy(update={"map": overlay})
                run = replace(spec, config=cfg.model_copy(update={"archive": archive, "output": output}))
                runs[mode].append(runtime_fps(run, seconds, device, load=watch if mode == "on" else None))
    out: dict[str, Any] = {"scene": spec.scenes[0].name, "size": str(cfg.output.size), "seconds": seconds,
                           "rounds": max(1, rounds), "refit_s": refit_s}
    for mode, rs in runs.items():
        out[f"map_{mode}_present_ms_p99"] = _p99_ms([c for r in rs for c in r["tick_costs_s"]])
        out[f"map_{mode}_present_fps"] = round(sum(r["present_fps"] for r in rs) / len(rs), 2)
        out[f"map_{mode}_late_ticks"] = sum(r["late_ticks"] for r in rs)
    draws = sum(m["draws"] for m in maps)
    out["map_draw_ms_mean"] = round(sum(m["draw_ms_total"] for m in maps) / draws, 3) if draws else None
    out["map_refits"] = sum(m["refits"] for m in maps)
    out["map_pictures"] = sum(m["pictures"] for m in maps)
    a, b = out["map_off_present_ms_p99"], out["map_on_present_ms_p99"]
    out["present_ms_p99_on_vs_off"] = round(b / a, 3) if a else None
    return out
