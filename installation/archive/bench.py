"""``installation bench --archive``: what the archive costs and whether its replays are exact.

- fps with the archive paused and recording by turns in one fixed-step, unpaced run (blocks of a sixth of a second
  of show time, so adjacent blocks see the same machine load), so the loop's whole cost (decoding in lockstep, the shader
  chain, the read-back of a point's frame) shows; ``rounds`` such runs;
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
        replay = render_replay(src["path"], on_frame=lambda rgb, t: again.put(rgb, None, t))
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
