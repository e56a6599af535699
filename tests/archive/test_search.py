"""Search by meaning (installation/archive/search.py, embed.py): archived moments and space images found by a text
or a picture with the tiny test CLIP, checked against open_clip computed independently from the frames."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from installation.archive.embed import embed_archive
from installation.archive.search import search_archive, top
from installation.archive.store import Store
from installation.bus import Event
from installation.clock import FixedClock
from installation.config import load_show
from installation.render.targets import HeadlessTarget
from installation.runtime import Runtime
from support import scene_toml, wait_until, write_show

TEXT = "a storm at sea"
SCENES = {"a": scene_toml(trajectory='kind = "walk"'), "b": scene_toml(trajectory='kind = "orbit"', duration=0.0)}


def show(tmp_path: Path, tiny_clip, vision: bool = False, size: str = "64x64") -> Path:
    """A two-scene show at the tiny CLIP's own image size (its frames reach CLIP without a resize)."""
    extra = "[archive]\npoint_every = 0.25\nbatch_s = 0.05\n[state]\nenabled = false\n"
    extra += tiny_clip.toml() if vision else tiny_clip.toml().replace("enabled = true", "enabled = false")
    cfg = write_show(tmp_path, SCENES, extra=extra)
    cfg.write_text(cfg.read_text().replace('size = "160x96"', f'size = "{size}"'))
    return cfg


def record(cfg: Path, steps: int, every: dict[int, callable] | None = None) -> tuple[Path, dict[int, np.ndarray]]:
    """A fixed-step run at 20 fps with a scene change half way; returns the archive file and every presented frame
    by tick (top row first), as the output showed it."""
    from installation.bus import Event

    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    frames: dict[int, np.ndarray] = {}
    w, h = spec.config.output.size

    class Sink:
        n = 0

        def wants(self, t):
            return True

        def put(self, rgb, size, t):
            frames[self.n] = np.frombuffer(rgb, np.uint8).reshape(h, w, 3)[::-1].copy()

    sink = Sink()
    rt.tap.add(sink)
    try:
        rt.start()
        for n in range(steps):
            sink.n = n
            if n == steps // 2:
                rt.bus.post(Event("scene.next", None, "test"))
            if every and n in every:
                every[n](rt, n)
            rt.step()
        path = rt.part("archive").path
    finally:
        rt.close()
        target.close()
    return path, frames


def open_clip_model(tiny_clip):
    """The tiny CLIP through open_clip's own loading and PIL preprocessing (not the project's code)."""
    import open_clip

    open_clip.add_model_config(str(tiny_clip.config))
    model, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(tiny_clip.weights))
    return model.eval(), preprocess, open_clip.get_tokenizer("tiny-clip")


def independent(tiny_clip, images: list[np.ndarray], text: str) -> tuple[np.ndarray, np.ndarray]:
    import torch
    from PIL import Image

    model, preprocess, tokenizer = open_clip_model(tiny_clip)
    with torch.no_grad():
        img = np.zeros((0, 64), np.float32)
        if images:
            x = torch.stack([preprocess(Image.fromarray(im)) for im in images])
            img = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1).numpy()
        txt = torch.nn.functional.normalize(model.encode_text(tokenizer([text])).float(), dim=-1).numpy()[0]
    return img, txt


class Ran:
    """What a command run in this process printed and returned (no interpreter start per call on a busy machine)."""

    def __init__(self, capfd, *args: str) -> None:
        from installation.cli import main

        capfd.readouterr()
        self.returncode = main(list(args))
        out = capfd.readouterr()
        self.stdout, self.stderr = out.out, out.err


def points_of(path: Path) -> list:
    store = Store(path, readonly=True)
    try:
        return store.points(with_thumbs=False)
    finally:
        store.close()


def test_top_is_exact_with_ties_in_order():
    m = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)
    idx, s = top(m, np.array([1, 0], np.float32), 3)
    assert idx.tolist() == [0, 2, 3] and np.allclose(s, [1, 1, 0.6])
    assert top(m, np.array([0, 1], np.float32), 10)[0].tolist() == [1, 3, 0, 2]
    assert len(top(np.zeros((0, 2), np.float32), np.ones(2, np.float32), 5)[0]) == 0


def test_rows_switch_to_an_ivf_index_past_the_threshold_and_keep_adding():
    """With faiss installed (the ``search`` extra), rows past ``index_min`` are searched by an IVF index, rows
    added later are found, and its top 10 agree with the exact answer."""
    pytest.importorskip("faiss", reason="pip install faiss-cpu (the search extra)")
    from installation.archive.search import Rows, unit_rows

    rng = np.random.default_rng(3)
    centres = unit_rows(rng.standard_normal((40, 32), dtype=np.float32))
    data = unit_rows(centres[rng.integers(0, 40, 3000)] + 0.1 * rng.standard_normal((3000, 32), dtype=np.float32))
    rows = Rows(32, index_min=2000)
    rows.add(data[:1500])
    assert rows.index is None
    rows.add(data[1500:2500])
    assert rows.index is not None and rows.index.ntotal == 2500
    rows.add(data[2500:])
    assert rows.index.ntotal == 3000 and len(rows) == 3000
    assert rows.top(data[2999], 1)[0].tolist() == [2999]  # a row added after the build
    recall = []
    for q in data[rng.integers(0, 3000, 20)]:
        want = set(top(data, q, 10)[0].tolist())
        recall.append(len(want & set(rows.top(q, 10)[0].tolist())) / 10)
    assert np.mean(recall) >= 0.9


def test_an_archive_recorded_without_vision_is_embedded_by_replay_and_searched(capfd, tmp_path, tiny_clip):
    """``archive embed`` re-renders each point (the replay path) and embeds that frame; ``archive search`` then
    ranks the points as open_clip, run independently on the frames the show presented, ranks them."""
    cfg = show(tmp_path, tiny_clip)
    path, frames = record(cfg, 80)
    points = points_of(path)
    assert len(points) == 16 and all(p.clip is None for p in points)
    info = Ran(capfd, "archive", "info", str(path))
    assert info.returncode == 0 and "0 of 16 points have a CLIP embedding" in info.stdout, info.stderr

    # interrupted after its first batch, then resumed: every point once, none twice
    class Stop(Exception):
        pass

    def stop(done):
        raise Stop(done)

    with pytest.raises(Stop):
        embed_archive(path, config=cfg, size=64, batch=8, progress=False, on_batch=stop)
    assert sum(p.clip is not None for p in points_of(path)) == 8
    r = Ran(capfd, "archive", "embed", str(path), "--config", str(cfg), "--size", "64", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["embedded"] == 8
    info = Ran(capfd, "archive", "info", str(path), "--json")
    assert json.loads(info.stdout)["sessions"][0]["embedded"] == 16

    points = points_of(path)
    shown = [frames[int(round(p.t * 20))] for p in points]
    img, txt = independent(tiny_clip, shown, TEXT)
    stored = np.stack([p.clip for p in points])
    assert np.min(np.sum(stored * img, axis=1)) > 0.999  # each point's own frame, re-rendered exactly
    sims = img @ txt
    r = Ran(capfd, "archive", "search", TEXT, str(path), "--config", str(cfg), "--top", "5", "--json",
                "--out", str(tmp_path / "sheet.png"))
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    hits = found["hits"]
    assert found["embedded"] == 16 and len(hits) == 5
    order = np.argsort(-sims, kind="stable")
    assert hits[0]["id"] == points[order[0]].id or sims[order[0]] - sims[order[1]] < 2e-3
    assert abs(hits[0]["score"] - sims[order[0]]) < 5e-3
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    best = next(p for p in points if p.id == hits[0]["id"])
    assert (hits[0]["t"], hits[0]["scene"], hits[0]["seed"]) == (best.t, best.scene, best.seed)
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet.shape[1] == 5 * 160 and sheet.std() > 10

    # a picture finds the moment it shows
    goal = points[13]
    cv2.imwrite(str(tmp_path / "q.png"), frames[int(round(goal.t * 20))][:, :, ::-1])
    r = Ran(capfd, "archive", "search", "--image", str(tmp_path / "q.png"), str(path), "--config", str(cfg), "--top",
                "1", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["hits"][0]["id"] == goal.id, r.stdout + r.stderr


def test_search_reads_embeddings_posted_through_the_writer(capfd, tmp_path, tiny_clip, clip_model_for_search):
    """Embeddings given to the archive part (its ``embedding()`` API, as the vision worker does) are searched; the
    order is the cosine order, the text's own embedding comes first, a session filter and a contact page work."""
    cfg = show(tmp_path, tiny_clip)
    rng = np.random.default_rng(5)
    vecs = {}
    text = clip_model_for_search.embed_texts([TEXT])[0].astype(np.float32)

    def embed(rt, n):
        archive = rt.part("archive")
        assert wait_until(lambda: archive.counts["points"] >= n // 5, 10)  # the point of tick n - 5 is written
        v = text if len(vecs) == 4 else rng.standard_normal(64).astype(np.float32)
        vecs[n] = v
        archive.embedding((n - 5) / 20, v)

    path, _ = record(cfg, 60, {n: embed for n in range(5, 60, 5)})
    points = points_of(path)
    with_clip = [p for p in points if p.clip is not None]
    assert len(with_clip) == 11
    hits, counts = search_archive(path, text / np.linalg.norm(text), k=20)
    assert counts == {"points": 12, "embedded": 11, "missing": 1}
    expect = sorted(with_clip, key=lambda p: -float(p.clip @ text) / np.linalg.norm(p.clip) / np.linalg.norm(text))
    assert [h.id for h in hits] == [p.id for p in expect] and hits[0].score > 0.999
    r = Ran(capfd, "archive", "search", TEXT, str(path), "--config", str(cfg), "--out", str(tmp_path / "s.html"),
                "--session", "1")
    assert r.returncode == 0 and "1 of 12 points have no embedding yet" in r.stderr, r.stderr
    assert r.stdout.splitlines()[0].startswith("  1. 1.0000  session 1")
    assert (tmp_path / "s.html").read_text().count("data:image/jpeg;base64,") == 11
    r = Ran(capfd, "map", str(path), "--out", str(tmp_path / "near.png"), "--near", TEXT, "--size", "800x500")
    assert r.returncode == 0, r.stderr  # the text embedded by the model of the config the archive recorded
    figures = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert figures["near"] == TEXT and figures["embedded"] == "11" and figures["best"].startswith("1.0 s (a)")
    assert cv2.imread(str(tmp_path / "near.png")).shape == (500, 800, 3)
    bad = Ran(capfd, "archive", "search", TEXT, str(path), "--config", str(cfg), "--session", "9")
    assert bad.returncode == 2 and "no session 9" in bad.stderr
    none = Ran(capfd, "archive", "search", str(path), "--config", str(cfg), "--image", str(tmp_path / "nope.png"))
    assert none.returncode == 2 and "not a readable picture" in none.stderr


@pytest.fixture(scope="module")
def clip_model_for_search(tiny_clip):
    from installation.vision.clip import ClipModel

    return ClipModel(tiny_clip.settings())


def test_space_search_over_a_space_built_with_clip(capfd, tmp_path, tiny_clip):
    from installation.decoders.random_models import make_taesd
    from installation.spaces.folder import draw_shapes
    from installation.spaces.space import build_space, load_space

    draw_shapes(tmp_path / "img", n=8, size=64, seed=2)
    taesd = make_taesd(tmp_path / "taesd")
    out = tmp_path / "s.npz"
    build_space(tmp_path / "img", out, taesd=str(taesd), size=64, clip="tiny-clip", clip_config=str(tiny_clip.config),
                clip_pretrained=str(tiny_clip.weights), progress=False)
    space = load_space(out)
    _, txt = independent(tiny_clip, [], TEXT)
    sims = space.embeddings @ txt
    r = Ran(capfd, "space", "search", str(out), TEXT, "--clip-config", str(tiny_clip.config), "--json", "--top", "3",
                "--out", str(tmp_path / "sheet.png"))
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)["hits"]
    assert hits[0]["kind"] == "image" and hits[0]["id"] == int(np.argmax(sims))
    assert hits[0]["name"] == space.names[hits[0]["id"]] and abs(hits[0]["score"] - sims.max()) < 1e-3
    assert cv2.imread(str(tmp_path / "sheet.png")) is not None
    plain = tmp_path / "p.npz"
    build_space(tmp_path / "img", plain, taesd=str(taesd), size=64, progress=False)
    r = Ran(capfd, "space", "search", str(plain), TEXT)
    assert r.returncode == 2 and "built without --clip" in r.stderr


def test_bench_search_prints_time_and_memory(capfd):
    r = Ran(capfd, "bench", "--search", "--points", "20000", "--dim", "64", "--index", "none", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["points"] == 20000 and out["dim"] == 64 and out["exact_ms"] > 0 and out["matrix_mb"] == 5.1


def test_seek_over_osc_glides_to_the_archived_moment_and_holds_it(tmp_path, tiny_clip, clip_model_for_search):
    """``/seek "text" 0.5`` over real UDP: the search part finds the archived point whose embedding is the text's,
    the show glides to its scene, seed and path time and holds there, so the points archived while it holds have the
    very latent the found one has; ``/seek ""`` lets the walk go on. The seek is journaled (a replay repeats it)."""
    from pythonosc.udp_client import SimpleUDPClient

    cfg = show(tmp_path, tiny_clip, vision=True, size="64x40")
    cfg.write_text(cfg.read_text().replace("every_n = 1", "every_n = 1000")
                   + "[output.map]\nenabled = true\nrefit_s = 1.0\nfps = 10\nresolution = 160\n")
    text = clip_model_for_search.embed_texts([TEXT])[0].astype(np.float32)
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, FixedClock(20), fps=20)  # inputs on: OSC on a real socket
    archive, seeker = rt.part("archive"), rt.part("search")
    assert seeker is not None
    try:
        rt.start()
        for n in range(80):
            if n == 40:
                rt.bus.post(Event("scene.next", None, "test"))
            if n == 15:  # the point of tick 10 (t 0.5, scene a) shows the text; others something else
                assert wait_until(lambda: archive.counts["points"] >= 3, 10)
                archive.embedding(0.5, text)
                archive.embedding(0.25, np.roll(text, 7))
            rt.step()
        assert wait_until(lambda: archive.counts["points"] >= 16, 10)
        goal = next(p for p in points_of(archive.path) if p.t == 0.5)
        assert rt.show.scene.name == "b" and (goal.scene, goal.seed) == ("a", 3)
        osc = SimpleUDPClient("127.0.0.1", rt.osc.address[1])
        osc.send_message("/seek", [TEXT, 0.5])

        def held():
            rt.step()
            return rt.show.held and rt.show.scene.name == "a"

        assert wait_until(held, 60, every=0.01), seeker.stats()
        assert (rt.show.seed, rt.show.tau) == (goal.seed, goal.tau)
        start = rt.clock.now()
        while rt.clock.now() < start + 1.5:  # past the glide
            rt.step()
        assert rt.show.tau == goal.tau and rt.show.scene.name == "a"
        results = rt.bus.notes()["seek.results"]
        assert results["text"] == TEXT and results["results"][0]["id"] == goal.id
        assert results["results"][0]["score"] > 0.999 and results["results"][0]["thumb"]
        assert seeker.stats()["seeks"] == 1 and seeker.stats()["failures"] == 0
        # the live map rings the matches that are archived points (both embedded ones)
        assert wait_until(lambda: (rt.step(), archive.live_map.stats()["marked"] == 2)[1], 30, every=0.05), \
            archive.live_map.stats()
        osc.send_message("/seek", ["x" * 600])  # too long: refused, counted
        osc.send_message("/seek", [""])
        assert wait_until(lambda: (rt.step(), not rt.show.held)[1], 30, every=0.01)
        assert wait_until(lambda: (rt.step(), archive.live_map.stats()["marked"] == 0)[1], 30, every=0.05)
        for _ in range(10):
            rt.step()
        assert rt.show.tau > goal.tau
        assert rt.osc.stats()["rejects"].get("too_long") == 1
        assert wait_until(lambda: archive.counts["points"] >= 26, 10)
    finally:
        rt.close()
        target.close()
    late = [p for p in points_of(archive.path) if start + 0.5 <= p.t <= start + 1.5]
    assert late and all(p.scene == "a" and p.seed == goal.seed and p.tau == goal.tau for p in late)
    assert all(np.array_equal(p.latent, goal.latent) for p in late)  # the archived latent, as archived (float16)
    store = Store(archive.path, readonly=True)
    try:
        seeks = [e for e in store.events(1) if e["kind"] == "event" and e["name"] in ("seek", "seek.release",
                                                                                          "scene.goto")]
        asked = [e["value"] for e in store.events(1) if e["kind"] == "note" and e["name"] == "seek"]
    finally:
        store.close()
    assert [(e["name"], e["source"]) for e in seeks] == [("scene.goto", "search"), ("seek", "search"),
                                                          ("seek.release", "search")]
    assert seeks[1]["value"] == [goal.seed, goal.tau, 0.5, True]
    assert asked == [{"text": TEXT, "glide": 0.5}, {"text": "", "glide": None}]  # the requests, as notes


def test_the_web_page_searches_and_a_tapped_result_is_where_the_walk_goes(tmp_path, tiny_clip, clip_model_for_search):
    """The page's search box sends /seek; its results come back as thumbnails; tapping the second glides there."""
    import shutil

    pytest.importorskip("playwright.sync_api", reason="pip install playwright (its browsers are not needed)")
    if shutil.which("/usr/bin/chromium") is None:
        pytest.skip("apt-get install chromium: no browser to test the page in")
    from playwright.sync_api import sync_playwright

    from installation.clock import WallClock
    from support import play_while

    cfg = show(tmp_path, tiny_clip, vision=True, size="64x40")
    cfg.write_text(cfg.read_text().replace("every_n = 1", "every_n = 1000")
                   + "[web]\nenabled = true\nport = 0\npreview_fps = 2\n[search]\nglide = 0.2\n")
    text = clip_model_for_search.embed_texts([TEXT])[0].astype(np.float32)
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock(), fps=20)
    archive, web = rt.part("archive"), rt.part("web")
    seen: dict = {}

    def actor():
        assert wait_until(lambda: web.alive and archive.counts["points"] >= 4, 120)
        pts = points_of(archive.path)
        # the vision part embeds every archived point's own frame; two points are given the text's direction
        # (exactly, and nearly), after their own embeddings have landed, so they are the best two by far
        assert wait_until(lambda: all(p.clip is not None for p in points_of(archive.path)[1:3]), 60)
        near = text + 0.3 * np.roll(text, 5)
        archive.embedding(pts[1].t, text)
        archive.embedding(pts[2].t, near)

        def given():
            got = points_of(archive.path)[1:3]
            return all(p.clip is not None and np.allclose(p.clip.astype(np.float32) / np.linalg.norm(p.clip), want /
                                                          np.linalg.norm(want), atol=1e-2)
                       for p, want in zip(got, (text, near)))

        assert wait_until(given, 20)
        seen["points"] = pts[1:3]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
                page.goto(web.url)
                page.locator("#searchbox").wait_for(state="visible", timeout=30000)
                page.fill("#seektext", TEXT)
                page.click("#seek")
                page.wait_for_function("document.querySelectorAll('#seekhits .hit').length >= 2", timeout=60000)
                seen["first"] = wait_until(lambda: rt.show.held and (rt.show.seed, rt.show.tau) ==
                                           (pts[1].seed, pts[1].tau), 30)
                seen["thumbs"] = page.evaluate("[...document.querySelectorAll('#seekhits .hit')].slice(0, 2)"
                                               ".map(b => b.style.backgroundImage.startsWith('url(\"data:image/jpeg'))")
                page.locator("#seekhits .hit").nth(1).click()
                seen["second"] = wait_until(lambda: rt.show.held and rt.show.tau == pts[2].tau, 30)
                page.click("#seekoff")
                seen["released"] = wait_until(lambda: not rt.show.held, 30)
            finally:
                browser.close()

    play_while(rt, target, actor, seconds=240)
    rt.close()
    assert seen["first"] and seen["thumbs"] == [True, True] and seen["second"] and seen["released"], seen
