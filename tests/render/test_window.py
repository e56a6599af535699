"""A real window: pygame + moderngl under SDL's offscreen driver, and a real X window under Xvfb."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
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


def test_window_reports_keys_and_mouse_for_calibration():
    """Real pygame events through a real (SDL offscreen) window's poll: the show's actions, plus every key and the
    left mouse button as the calibration reads them."""
    script = textwrap.dedent('''
        import pygame
        from installation.render.targets import WindowTarget
        t = WindowTarget((64, 48), vsync=False, borderless=True)
        post = pygame.event.post
        post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RIGHT, mod=pygame.KMOD_LSHIFT))
        post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_z, mod=pygame.KMOD_LCTRL))
        post(pygame.event.Event(pygame.MOUSEBUTTONDOWN, button=1, pos=(5, 7)))
        post(pygame.event.Event(pygame.MOUSEMOTION, buttons=(1, 0, 0), pos=(9, 8), rel=(4, 1)))
        post(pygame.event.Event(pygame.MOUSEMOTION, buttons=(0, 0, 0), pos=(20, 8), rel=(11, 0)))
        post(pygame.event.Event(pygame.MOUSEBUTTONUP, button=1, pos=(9, 8)))
        print(repr(t.poll()))
        t.close()
    ''')
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={**os.environ, "SDL_VIDEODRIVER": "offscreen", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert eval(r.stdout.strip().splitlines()[-1]) == [
        "key:shift+right", "next", "key:ctrl+z", "mouse:down:5,7", "mouse:move:9,8", "mouse:up:9,8"]
