"""Camera features on real cv2.VideoCapture sources: a generated FFV1 video with a moving square, and lavfi."""

from __future__ import annotations

import time

import numpy as np
import pytest

from installation.bus import ParamBus
from installation.inputs.camera import CameraInput, CameraSettings, feature_specs, list_cameras
from support import wait_until

W, H, FPS, FRAMES, STEP = 160, 120, 30, 24, 3


@pytest.fixture(scope="module")
def moving_square(tmp_path_factory) -> str:
    """A lossless video: textured square moving right by 3 px/frame over a faint static texture, red top band."""
    import cv2

    path = str(tmp_path_factory.mktemp("video") / "square.mkv")
    rng = np.random.default_rng(0)
    background = (100 + rng.integers(0, 6, (H, W))).astype(np.uint8)
    square = rng.integers(0, 256, (32, 32)).astype(np.uint8)
    writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), FPS, (W, H))
    assert writer.isOpened()
    for n in range(FRAMES):
        grey = background.copy()
        x = 20 + STEP * n
        grey[44:76, x : x + 32] = square
        frame = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
        frame[0:8, :] = (0, 0, 255)  # BGR red
        writer.write(frame)
    writer.release()
    return path


def fresh_frame(cam: CameraInput):
    """The newest frame; asking is what brings frames over from the worker process, so ask until one is there."""
    assert wait_until(lambda: cam.latest_frame() is not None, 30), cam.stats()
    return cam.latest_frame()


def sample(cam: CameraInput, seconds: float) -> list[dict[str, float]]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(cam.values())
        time.sleep(0.02)
    return out


def test_file_motion_flow_presence_frame_and_loop(moving_square):
    bus = ParamBus()
    cam = CameraInput(CameraSettings(enabled=True, source=moving_square, attack=0.0, release=0.1), bus)
    assert all(bus.spec(s.name) for s in feature_specs())
    assert cam.latest_frame() is None
    cam.start()
    try:
        assert wait_until(lambda: cam.stats()["frames"] >= 5, 60), cam.stats()
        vals = sample(cam, 1.2)
        frame = fresh_frame(cam)
        assert wait_until(lambda: cam.stats()["loops"] >= 1, 30), cam.stats()  # end of file: starts again
        frames_at_loop = cam.stats()["frames"]
        assert wait_until(lambda: cam.stats()["frames"] > frames_at_loop + 5, 30)
    finally:
        cam.stop()
        cam.stop()
    fx = [v["camera.flow_x"] for v in vals]
    fy = [v["camera.flow_y"] for v in vals]
    # 3 px/frame at 30 fps on a 160 px wide frame = 0.56 frame widths per second, to the right
    assert max(fx) == pytest.approx(STEP * FPS / W, rel=0.35)
    assert min(fx) > -0.02
    assert max(abs(y) for y in fy) < 0.3 * max(fx)
    assert max(v["camera.motion"] for v in vals) > 0.01
    assert max(v["camera.flow_mag"] for v in vals) > 0.0
    assert max(v["camera.presence"] for v in vals) > 0.02
    assert np.mean([v["camera.brightness"] for v in vals]) == pytest.approx(0.42, abs=0.08)
    assert frame is not None and frame.shape == (H, W, 3) and frame.dtype == np.uint8
    assert not frame.flags.writeable
    r, g, b = frame[3, 80].astype(int)
    assert r > 200 and g < 60 and b < 60  # RGB order
    assert cam.stats()["state"] == "stopped"
    assert all(v == 0.0 for v in cam.values().values())


def test_mirror_flips_flow_direction(moving_square):
    bus = ParamBus()
    cam = CameraInput(CameraSettings(enabled=True, source=moving_square, mirror=True, attack=0.0), bus)
    cam.start()
    try:
        assert wait_until(lambda: cam.stats()["frames"] >= 5, 60)
        vals = sample(cam, 0.5)
    finally:
        cam.stop()
    assert min(v["camera.flow_x"] for v in vals) < -0.2
    assert max(v["camera.flow_x"] for v in vals) < 0.02


def test_lavfi_live_source():
    bus = ParamBus()
    cam = CameraInput(CameraSettings(enabled=True, source="lavfi:testsrc2=size=160x120:rate=30,realtime"), bus)
    cam.start()
    try:
        assert wait_until(lambda: cam.stats()["frames"] >= 10, 60), cam.stats()
        frame = fresh_frame(cam)
        assert frame is not None and frame.shape == (120, 160, 3)
        assert wait_until(lambda: bus.targets()["camera.motion"] > 0.0, 30)
        assert bus.targets()["camera.brightness"] > 0.1
    finally:
        cam.stop()
    assert cam.stats()["open_failures"] == 0


def test_missing_source_retries_without_crashing(tmp_path):
    bus = ParamBus()
    cam = CameraInput(
        CameraSettings(enabled=True, source=str(tmp_path / "gone.mkv"), reopen_min=0.05, reopen_max=0.1), bus
    )
    cam.start()
    try:
        assert wait_until(lambda: cam.stats()["open_failures"] >= 3, 60), cam.stats()
        assert cam.stats()["state"] == "waiting" and cam.latest_frame() is None
        assert all(v == 0.0 for v in cam.values().values())
    finally:
        cam.stop()


def test_list_cameras_never_raises():
    assert isinstance(list_cameras(), list)


def test_edge_wants_never_hands_the_worker_a_half_written_ask():
    """The shared array the camera input asks its worker for edge maps through: a read while the parent is writing
    (the version odd, as a worker reading mid-write sees it) keeps what was asked before; bad specs are dropped."""
    import multiprocessing as mp

    from installation.inputs.camera_edges import EDGE_SPECS_MAX, EdgeWants

    parent = EdgeWants(mp.get_context("spawn"))
    worker = EdgeWants.__new__(EdgeWants)  # the worker's copy: the same shared array
    worker.array, worker._seen, worker._specs = parent.array, -1, ()
    parent.write([(64, 48, 100, 200), (64, 48, 100, 200), (0, 48, 1, 2), (64, 48, 20, 60)])
    assert worker.read() == ((64, 48, 20, 60), (64, 48, 100, 200))
    parent.array[0] += 1  # a write under way: the count and specs may be torn
    parent.array[1], parent.array[2] = 1, 9999
    assert worker.read() == ((64, 48, 20, 60), (64, 48, 100, 200))
    parent.array[0] += 1
    parent.write([(512, 512, k, 200) for k in range(EDGE_SPECS_MAX + 2)])
    assert len(worker.read()) == EDGE_SPECS_MAX
    parent.write(())
    assert worker.read() == ()
