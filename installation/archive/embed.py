"""``installation archive embed``: CLIP embeddings for the points of an archive recorded without a CLIP model.

Each session with points that lack an embedding is replayed offline (:func:`~.rerender.render_replay`, the live
ticks, from the session's start so that feedback and blends are what they were) up to its last such point; the
frame of each point's tick is embedded by the ``[vision]`` model and stored on the point, a batch at a time (one
transaction each). Interrupted, it resumes: points that have an embedding are not embedded again. The frames are
rendered at ``size`` pixels on the short side (the live aspect kept), not taken from the 96 px thumbnails.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .store import Store

log = logging.getLogger(__name__)


def _render_size(live: str | None, fallback: tuple[int, int], short: int) -> tuple[int, int]:
    """The live output's aspect with ``short`` pixels on its short side (even sizes)."""
    from ..sizes import parse_size

    w, h = parse_size(live) if live else fallback
    scale = short / min(w, h)
    return max(2, int(round(w * scale / 2)) * 2), max(2, int(round(h * scale / 2)) * 2)


def embed_archive(path: str | Path, *, config: Path | None = None, session: int | None = None, size: int = 224,
                  batch: int = 16, progress: bool = True,
                  on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Embed every point without an embedding (of one session, or all); returns figures. ``on_batch(done)`` is
    called after each stored batch (tests interrupt a run there)."""
    from tqdm import tqdm

    from ..config import load_config
    from ..render.targets import preload_decoders
    from .rerender import render_replay
    from .search import QueryEncoder

    path = Path(path)
    store = Store(path, readonly=True)
    try:
        sessions = [store.session(session)] if session is not None else \
            [store.session(s["id"]) for s in store.sessions()]
        todo = {}
        for s in sessions:
            rows = store.conn.execute("SELECT id, t FROM points WHERE session=? AND clip IS NULL ORDER BY t",
                                      (s["id"],)).fetchall()
            if rows:
                todo[s["id"]] = rows
    finally:
        store.close()
    total = sum(len(r) for r in todo.values())
    result: dict[str, Any] = {"archive": str(path), "missing": total, "embedded": 0, "sessions": len(todo)}
    if not total:
        return result
    cfg_path = Path(config or next(s for s in sessions if s["id"] in todo)["config"])
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config {cfg_path} (the session's) not found: name the show's config with --config")
    vision = load_config(cfg_path).vision.resolved(Path(cfg_path).resolve().parent)
    preload_decoders(["vision"])  # open_clip's Triton before the replay's GL context (see vision/part.py)
    encoder = QueryEncoder(vision)
    model = encoder.model
    bar = tqdm(total=total, unit="pt", disable=not progress, desc="embed", dynamic_ncols=True)
    writer = Store(path)
    done = 0
    try:
        for sid, rows in todo.items():
            sess = next(s for s in sessions if s["id"] == sid)
            out_size = _render_size(sess.get("size"), (1280, 720), size)
            times = np.array([t for _, t in rows])
            ids = [i for i, _ in rows]
            pending: list[tuple[int, np.ndarray]] = []
            state = {"next": 0}

            def flush() -> None:
                nonlocal done
                if not pending:
                    return
                vecs = model.embed_frames([f for _, f in pending])
                writer.set_embeddings([(i, v.astype(np.float32)) for (i, _), v in zip(pending, vecs)])
                done += len(pending)
                bar.update(len(pending))
                pending.clear()
                if on_batch is not None:
                    on_batch(done)

            def on_frame(rgb: bytes, t: float) -> None:
                if "error" in state:
                    return
                try:
                    take(rgb, t)
                except BaseException as e:  # noqa: BLE001 - the runtime would contain it: raised after the replay
                    state["error"] = e

            def take(rgb: bytes, t: float) -> None:
                k = state["next"]
                w, h = out_size
                # a point is at a tick's time (live ticks: exactly; a fixed rate: the first frame at or after it)
                while k < len(times) and times[k] <= t + 1e-9:
                    pending.append((ids[k], np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1].copy()))
                    k += 1
                state["next"] = k
                if len(pending) >= batch:
                    flush()

            render_replay(path, sid, config=cfg_path, t_to=float(times[-1]), size=out_size, on_frame=on_frame)
            if "error" in state:
                raise state["error"]
            flush()
    finally:
        bar.close()
        writer.close()
    result.update(embedded=done, size=f"{size} px short side", model=model.name, dim=model.dim)
    return result
