"""A real window: pygame + moderngl under SDL's offscreen driver, and a real X window under Xvfb."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from support import ROOT, run_cli, scene_toml, write_show


def test_window_on_sdl_offscreen(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("run", "--config", str(cfg), "--duration", "1", "--size", "160x96",
                env={"SDL_VIDEODRIVER": "offscreen", "DISPLAY": ""})
    assert r.returncode == 0, r.stderr
    assert "on window" in r.stderr


@pytest.fixture
def xvfb():
    if not shutil.which("Xvfb") or not shutil.which("xwd"):
        pytest.skip("Xvfb/xwd not installed (apt-get install xvfb x11-apps)")
    display = f":{100 + os.getpid() % 100}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["xdpyinfo", "-display", display], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    yield display
    proc.terminate()
    proc.wait(5)


def screenshot(display: str, path) -> np.ndarray:
    xwd = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True, check=True).stdout
    subprocess.run(["convert", "xwd:-", str(path)], input=xwd, check=True)
    return cv2.imread(str(path))


def run_and_shoot(display: str, tmp_path, args: list[str], shown) -> tuple[np.ndarray | None, str]:
    """Run ``installation run ARGS`` on the X display and screenshot it until ``shown(img)`` holds (or it ends);
    (the screenshot or None, the run's stderr), after the run has finished."""
    env = {**os.environ, "DISPLAY": display, "SDL_VIDEODRIVER": "x11"}
    proc = subprocess.Popen([sys.executable, "-m", "installation", "run", *args], env=env, cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    shot = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            img = screenshot(display, tmp_path / "shot.png")
            if img is not None and shown(img):
                shot = img
                break
    finally:
        err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 0, err
    return shot, err


def test_window_on_xvfb_shows_the_show(tmp_path, xvfb):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    shot, _ = run_and_shoot(xvfb, tmp_path, ["--config", str(cfg), "--duration", "6", "--size", "320x180"],
                            lambda img: img.max() > 0)
    assert shot is not None, "nothing appeared on the X screen"
    lit = np.argwhere(shot.max(axis=2) > 0)
    h, w = lit.max(axis=0) - lit.min(axis=0) + 1
    assert (w, h) == (320, 180)  # the window, at the asked size
    assert shot.std() > 5  # a picture, not a flat colour
