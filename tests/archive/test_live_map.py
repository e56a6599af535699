"""The live map ([output.map]): a real fixed-step runtime archiving to real SQLite, the map thread refitting from the
file, the picture drawn over the window through the real GL path; compared with the same run without the map."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image

from installation.archive.live_map import Fit
from installation.clock import FixedClock
from installation.config import load_show
from installation.render.targets import HeadlessTarget, pixels
from installation.runtime import Runtime
from support import bench_result, ratio_of, run_cli, scene_toml, write_show

SCENES = {"a": scene_toml(trajectory='kind = "walk"')}
SIZE = (160, 96)


def run_and_read(cfg, steps: int, map_draws: int = 0) -> tuple[np.ndarray, Runtime]:
    """``steps`` fixed-step ticks, then (with the map on) more ticks with the path held still until the map has
    been drawn ``map_draws`` times; the window's pixels at the end, top row first."""
    spec = load_show(cfg)
    target = HeadlessTarget(SIZE)
    rt = Runtime(spec, target, FixedClock(20), fps=20, inputs=False)
    try:
        rt.start()
        for _ in range(steps):
            rt.step()
        live_map = rt.parts["archive"].live_map
        deadline = time.monotonic() + 90
        if map_draws:
            # the map thread works on wall time: give it a few refits while the (fixed-step) show keeps playing
            while live_map.counts["draws"] < map_draws and time.monotonic() < deadline:
                rt.step()
                time.sleep(0.02)
        else:
            assert live_map is None
        rgb = pixels(target.read(), target.size)
    finally:
        rt.close()
        target.close()
    return rgb, rt


def test_the_live_map_draws_the_visited_points_and_the_position_in_its_corner_only(tmp_path):
    base = "[archive]\npoint_every = 0.1\n"
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on = write_show(tmp_path / "on", SCENES, extra=base + "[output.map]\nenabled = true\nrefit_s = 1.0\nfps = 10\n"
                    "corner = \"top-left\"\nwidth = 0.5\nmargin = 0.0\nopacity = 1.0\nresolution = 160\n")
    off = write_show(tmp_path / "off", SCENES, extra=base)
    with_map, rt = run_and_read(on, 60, map_draws=5)
    live_map = rt.parts["archive"].live_map
    stats = live_map.stats()
    assert stats["refits"] >= 1 and stats["uploads"] >= 1 and stats["draws"] >= 5 and stats["failures"] == 0, stats
    assert stats["points"] >= 3
    picture = live_map.picture()
    assert picture is not None and picture.shape == (100, 160, 4)
    # the current position is marked: white pixels on the picture that the base map (dark) does not have
    assert (picture[..., :3] == 255).all(axis=-1).sum() >= 10
    plain, _ = run_and_read(off, 60)
    # The map covers the top-left 80x50 pixels (width 0.5 of 160, the picture's aspect 0.625); outside it the window
    # is the show itself: same scene, same archive, the same fixed-step frames (the run with the map went on longer,
    # so compare where the picture is, against the picture, and elsewhere only that both are the show).
    region = with_map[:50, :80].astype(np.float64)
    expected = np.asarray(Image.fromarray(live_map.picture()).resize((80, 50)))
    # the map was uploaded from a picture at most one redraw older than the newest: compare the static parts
    # (background and points) by mean difference, loosely
    assert np.abs(region - expected[..., :3]).mean() < 40
    assert np.abs(with_map[:50, :80].astype(int) - plain[:50, :80]).mean() > 5  # the corner shows the map
    outside = with_map[60:, 90:].astype(np.float64)
    assert outside.std() > 0.5 and plain[60:, 90:].std() > 0.5  # the show, not a flat map background


def test_a_fit_puts_points_in_its_box_and_projects_new_latents_alike():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(40, 12)) * np.linspace(5, 0.1, 12)
    fit = Fit(latents, (200, 120), margin=10)
    assert fit.positions.shape == (40, 2)
    assert (fit.positions[:, 0] >= 10).all() and (fit.positions[:, 0] <= 190).all()
    assert (fit.positions[:, 1] >= 10).all() and (fit.positions[:, 1] <= 110).all()
    # a latent already on the map lands on its own dot
    assert np.allclose(fit.where(latents[7]), fit.positions[7])
    # the two strongest axes of variation are the map's axes: moving along the strongest moves across the map
    a, b = fit.where(latents[0]), fit.where(latents[0] + np.eye(12)[0] * 4)
    assert abs(a[0] - b[0]) + abs(a[1] - b[1]) > 5


def test_bench_map_prints_present_p99_with_and_without(tmp_path):
    cfg = write_show(tmp_path, SCENES)
    out = run_cli("bench", "--config", str(cfg), "--map", "--seconds", "3", "--json", timeout=300)
    result = bench_result(out, ["map_off_present_ms_p99", "map_on_present_ms_p99", "present_ms_p99_on_vs_off"])
    assert result["map_off_present_ms_p99"] > 0 and result["map_on_present_ms_p99"] > 0
    ratio_of(result, "present_ms_p99_on_vs_off", "map_on_present_ms_p99", "map_off_present_ms_p99")
    assert result["map_refits"] >= 1 and result["map_pictures"] >= 1 and result["map_draw_ms_mean"] > 0  # it drew
