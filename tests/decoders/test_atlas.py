"""The atlas scene: the show's own map, from the archive a real show wrote; skipped until it holds enough points."""

from __future__ import annotations

import time

import numpy as np
import pytest

from installation.archive.store import Store
from installation.clock import FixedClock
from installation.config import ConfigError, load_scene, load_show
from installation.decoders import DecoderSpec
from installation.decoders.atlas import Atlas, AtlasSettings
from installation.decoders.base import LatentRequest
from installation.render.targets import HeadlessTarget, pixels
from installation.runtime import Runtime
from support import scene_toml, write_show

FPS = 10
CPPN = 'type = "cppn"\nresolution = "64x40"\nwidth = 16\ndepth = 2\nmodel_seed = {}'
ATLAS = 'type = "atlas"\nresolution = "160x90"\nmin_points = {}\nrefit_s = 1.0\nthumbs = 40\nthumb = 0.25'


def _show(tmp_path, min_points: int):
    scenes = {"a": scene_toml(CPPN.format(1), trajectory='kind = "walk"', duration=2.0),
              "atlas": scene_toml(ATLAS.format(min_points), trajectory='kind = "loop"\nperiod = 4.0', duration=2.0,
                                  params='"palette.black" = 0.0', shaders='["present", "palette"]'),
              "b": scene_toml(CPPN.format(2), trajectory='kind = "walk"', duration=2.0)}
    return write_show(tmp_path, scenes, extra="[archive]\npoint_every = 0.1\nbatch_s = 0.05\n[state]\nenabled = false\n")


def _play(cfg, seconds: float):
    """Fixed-step play: (scene, frame) per tick and the runtime (closed)."""
    spec = load_show(cfg)
    target = HeadlessTarget((160, 96))
    rt = Runtime(spec, target, FixedClock(FPS), fps=FPS, inputs=False)
    seen = []
    try:
        rt.start()
        archive = rt.parts["archive"]
        for _ in range(int(seconds * FPS)):
            rt.step()
            # the atlas reads the file: let the writer (a commit every batch_s of wall time) catch up with the
            # points the fixed-step show has queued, as it does in a live show's real time
            deadline = time.monotonic() + 30
            while archive.counts["points"] < archive.points_held() - 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append((rt.show.scene.name, pixels(target.read(), target.size).astype(np.float32) / 255))
    finally:
        rt.close()
        target.close()
    return seen, rt


def test_the_atlas_waits_for_enough_points_then_shows_the_map_of_the_walk(tmp_path):
    """Order a, atlas, b with 30 points needed at 10 points a second: at 2 s (20 points) the atlas is passed over,
    b plays; in the second round (60 points) the atlas plays, and its picture is the map: thumbnails of what a and b
    showed on a dark ground, the trail glowing, drifting."""
    seen, rt = _play(_show(tmp_path, 30), 8.0)
    order = [name for i, (name, _) in enumerate(seen) if i == 0 or seen[i - 1][0] != name]
    assert order == ["a", "b", "a", "atlas"], order
    assert rt.show.skipped == 1
    frames = [f for name, f in seen if name == "atlas"][10:]  # after its dissolve in (0.5 s)
    assert frames
    for f in frames:
        y = f.mean(axis=2)
        assert y.std() > 0.03  # not flat: pictures and dots on a dark ground
        assert np.median(y) < 0.3 and np.percentile(y, 99) > 0.15  # a dark ground, lit pictures (levels: test_looks)
    assert np.abs(frames[0] - frames[-1]).mean() > 0.003  # the view drifts
    store = Store(next((tmp_path / "archive").glob("*.sqlite")), readonly=True)
    try:
        scenes = {p.scene for p in store.points(None, with_thumbs=False)}
    finally:
        store.close()
    assert {"a", "b", "atlas"} <= scenes  # the atlas is archived like any scene (and left off its own map)


def _archive(tmp_path) -> str:
    seen, _ = _play(_show(tmp_path, 1000), 4.0)  # never ready: a and b only
    assert {name for name, _ in seen} == {"a", "b"}
    return str(next((tmp_path / "archive").glob("*.sqlite")))


def _render(atlas: Atlas, t: float, z=(0.0, 0.0)) -> np.ndarray:
    spec = DecoderSpec("atlas", atlas.settings)
    return atlas.render(LatentRequest(z=np.asarray(z, np.float32), t=t, seq=0, decoder=spec, scene="atlas"))


def test_the_atlas_decoder_maps_a_given_archive_and_drifts_over_it(tmp_path):
    path = _archive(tmp_path)
    s = AtlasSettings(archive=path, resolution=(160, 90), min_points=10, thumbs=40, thumb=0.25, span=2.0)
    assert Atlas.ready(s, 0)  # it counts the file's points itself (about 40)
    assert not Atlas.ready(s.model_copy(update={"min_points": 1000}), 10**6)
    atlas = Atlas(s)
    atlas.prepare()
    left, right = _render(atlas, 0.0, (-3.0, 0.0)), _render(atlas, 0.0, (3.0, 0.0))
    assert left.shape == (90, 160, 3) and left.dtype == np.float32 and 0.0 <= left.min() and left.max() <= 1.0
    assert atlas.points >= 30 and atlas.builds == 1  # one build serves both views
    assert np.abs(left - right).mean() > 0.01  # the two ends of the map differ
    # a new build comes only after refit_s of show time
    _render(atlas, s.refit_s - 0.5)
    assert atlas.builds == 1
    _render(atlas, s.refit_s + 0.5)
    assert atlas.builds == 2


def test_an_atlas_without_points_is_dark_and_a_missing_archive_is_a_start_up_error(tmp_path):
    atlas = Atlas(AtlasSettings(resolution=(64, 36)))  # the show's own archive, none given: nothing to map yet
    atlas.prepare()
    assert _render(atlas, 0.0).max() == 0.0
    assert not Atlas.ready(atlas.settings, 119) and Atlas.ready(atlas.settings, 120)
    scene = tmp_path / "x.toml"
    scene.write_text('[decoder]\ntype = "atlas"\narchive = "./nowhere.sqlite"\n')
    with pytest.raises(ConfigError) as info:
        load_show(write_show(tmp_path, {"x": scene.read_text()}))
    assert "nowhere.sqlite" in str(info.value) and "not found" in str(info.value)
    scene.write_text('[decoder]\ntype = "atlas"\nthumbz = 3\n')
    with pytest.raises(ConfigError) as info:
        load_scene(scene)
    assert "decoder.thumbz" in str(info.value) and "thumbs" in str(info.value)
