"""The CLIP reader on presented frames in a real run: each archived point holds the embedding of its own frame as
the wall showed it (after the shader chain's palette), and describe and similarity read that canvas too."""

from __future__ import annotations

import time

import numpy as np

from installation.archive.store import Store
from installation.clock import FixedClock, WallClock
from installation.config import load_show
from installation.render.targets import HeadlessTarget
from installation.runtime import Runtime
from support import scene_toml, write_show


class Presented:
    """A presented-frame sink keeping every frame (top row first) with the show time of its tick."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.frames: list[np.ndarray] = []

    def wants(self, t):
        return True

    def put(self, rgb, size, t):
        w, h = size
        self.frames.append(np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1].copy())


def test_each_point_holds_the_embedding_of_its_own_presented_frame(tiny_clip, clip_model, tmp_path):
    scene = scene_toml(shaders='["present", "palette"]', trajectory='kind = "walk"') + \
        '[[prompts]]\ntext = "a lighthouse"\n'
    cfg = write_show(tmp_path, {"a": scene}, extra=tiny_clip.toml() + "[archive]\npoint_every = 0.25\n")
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    presented = Presented(rt)
    rt.tap.add(presented)
    decoded: dict[float, np.ndarray] = {}
    render = rt.guard.render
    rt.guard.render = lambda request: decoded.setdefault(request.t, render(request))  # a spy: renders as before
    try:
        rt.start()
        assert rt.part("vision").reader.wait_ready(60)  # the model loads as the part starts (here: before a frame)
        for _ in range(60):
            rt.step()
    finally:
        rt.close()
        target.close()
    reader = rt.part("vision").stats()["worker"]
    store = Store(rt.part("archive").path, readonly=True)
    try:
        points = store.points()
    finally:
        store.close()
    assert len(points) == 12 and all(p.clip is not None for p in points), reader  # every point, none lost
    embs = clip_model.embed_frames(presented.frames).astype(np.float32)
    for p in points:
        tick = int(round(p.t * 20))
        gap = np.abs(embs - p.clip).max(axis=1)  # to the embedding of every presented frame
        raw = clip_model.embed_frames([decoded[p.t]])[0].astype(np.float32)
        # its own frame's (float16), nearer than any other frame's: not the newest frame at some later moment
        assert gap[tick] < 2e-4 and gap[tick] == gap.min() and np.sum(gap <= gap[tick]) == 1, (p.t, np.sort(gap)[:3])
        assert np.abs(raw - p.clip).max() > 0.05  # ...and not the decoded frame before the palette
    # describe and similarity read the same presented frames, in this process; the decoder's hook reads none
    assert reader["embedded"] > 0 and reader["kept"] == 12 and reader["keep_dropped"] == 0
    assert rt.part("archive").stats()["embeddings"] == 12
    assert rt.bus.notes().get("vision.description")
    text = clip_model.embed_texts(["a lighthouse"])[0].astype(np.float32)
    seen = rt.bus.targets()["vision.similarity.0"]  # the newest read frame's similarity to prompt slot 0
    assert np.abs(embs @ text - seen).min() < 2e-3  # that of a presented frame


def test_a_live_show_archives_an_embedding_on_every_point(tiny_clip, tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml(trajectory='kind = "walk"')},
                     extra=tiny_clip.toml() + "[archive]\npoint_every = 0.25\nbatch_s = 0.2\n")
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock(), fps=30, inputs=False)
    try:
        rt.start()
        until = rt.clock.now() + 3.0
        while rt.clock.now() < until:
            rt.step()
            time.sleep(0.02)
    finally:
        rt.close()
        target.close()
    store = Store(rt.part("archive").path, readonly=True)
    try:
        points = store.points()
    finally:
        store.close()
    clips = np.array([p.clip for p in points if p.clip is not None])
    assert len(points) >= 5 and len(clips) == len(points), rt.part("vision").stats()["worker"]
    assert len({c.tobytes() for c in clips}) == len(clips)  # each its own frame's
