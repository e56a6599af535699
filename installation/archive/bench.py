"""``installation bench --archive``: what the archive costs and whether its replays are exact.

- fps with the archive off and on, in one process, alternating (``rounds`` pairs): a fixed-step run, unpaced, so
  the loop's whole cost (decoding in lockstep, the shader chain, the read-back of a point's frame) shows;
- bytes per hour of show time at the defaults (the "on" runs' files over their show time);
- a replay's equality: a short fixed-step run re-rendered from its archive, frame by frame (SHA-1 of the RGB).
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
from .replay import render_replay


class _Hashes:
    def __init__(self) -> None:
        self.hashes: list[str] = []

    def wants(self, t):
        return True

    def put(self, rgb, size, t):
        self.hashes.append(hashlib.sha1(rgb).hexdigest())


def _run(spec: ShowSpec, folder: Path, on: bool, seconds: float | None, frames: int | None = None,
         sink: Any = None) -> dict[str, Any]:
    from ..render.targets import HeadlessTarget
    from ..runtime import Runtime

    cfg = spec.config
    archive = cfg.archive.model_copy(update={"enabled": on, "path": str(folder), "replay": ""})
    run_spec = replace(spec, config=cfg.model_copy(update={"archive": archive}))
    fps = cfg.output.fps
    target = HeadlessTarget(cfg.output.size)
    rt = Runtime(run_spec, target, FixedClock(fps), fps=fps, inputs=False)
    if sink is not None:
        rt.tap.add(sink)
    n = 0
    try:
        rt.start()
        started = time.perf_counter()
        while (frames is not None and n < frames) or (seconds is not None and time.perf_counter() - started < seconds):
            rt.step()
            n += 1
        wall = time.perf_counter() - started
    finally:
        rt.close()
        target.close()
    part = rt.part("archive")
    return {"fps": n / wall, "frames": n, "wall": wall, "show_s": n / fps, "stats": part.stats() if part else None,
            "path": part.path if part else None}


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
    with tempfile.TemporaryDirectory(prefix="archive-bench-") as tmp:
        off, on, sizes = [], [], []
        for r in range(max(rounds, 1)):
            for mode in ((False, True) if r % 2 == 0 else (True, False)):
                res = _run(spec, Path(tmp) / f"r{r}{int(mode)}", mode, seconds)
                (on if mode else off).append(res)
                if mode:
                    sizes.append(_payload(res["path"]))
        fps_off = sum(x["fps"] for x in off) / len(off)
        fps_on = sum(x["fps"] for x in on) / len(on)
        point_b = sum(p for p, _, _ in sizes) / len(sizes)
        tick_b = sum(t for _, t, _ in sizes) / len(sizes)
        event_b = max(e for _, _, e in sizes)
        stats = on[-1]["stats"]
        # the replay's equality: a short run, then its replay, frame by frame
        live = _Hashes()
        frames = max(int(spec.config.output.fps * 3), 2)
        src = _run(spec, Path(tmp) / "eq", True, None, frames=frames, sink=live)
        again = _Hashes()
        replay = render_replay(src["path"], on_frame=lambda rgb, t: again.put(rgb, None, t))
        same = sum(a == b for a, b in zip(live.hashes, again.hashes))
    w, h = spec.config.output.size
    a = spec.config.archive
    per_hour = point_b * 3600 / a.point_every + (tick_b * spec.config.output.fps * 3600 if a.ticks else 0)
    return {
        "size": f"{w}x{h}", "fps_setting": spec.config.output.fps, "scene": spec.scenes[0].name,
        "fps_archive_off": round(fps_off, 2), "fps_archive_on": round(fps_on, 2),
        "fps_ratio": round(fps_on / fps_off, 4) if fps_off else None,
        # the archive's own work as a share of the loop's time: noise-free where the fps ratio is not
        "archive_cpu_share": round(sum(x["stats"]["writer_cpu_s"] + x["stats"]["loop_hook_s"] for x in on) /
                                   sum(x["wall"] for x in on), 5),
        "loop_hook_us_per_tick": round(sum(x["stats"]["loop_hook_s"] for x in on) / sum(x["frames"] for x in on)
                                       * 1e6, 1),
        "bytes_per_point": int(point_b), "bytes_per_tick": round(tick_b, 2), "bytes_per_event": int(event_b),
        # at the defaults: a point a second, every tick's time; events as the performance makes them (not counted)
        "bytes_per_hour": int(per_hour), "mb_per_day": round(per_hour * 24 / 1e6, 1),
        "points_written": stats.get("points"), "points_dropped": stats.get("points_dropped", 0),
        "replay_frames_identical": f"{same}/{len(live.hashes)}" if len(again.hashes) == len(live.hashes)
        else f"{same}/{len(live.hashes)} (replay rendered {len(again.hashes)})",
        "replay_points_identical": f"{replay.get('points_identical', 0)}/{replay.get('points_compared', 0)}",
    }
