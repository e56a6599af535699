"""What the camera's and the microphone's features cost the archive at their nominal rates, on a machine too busy to
reach them live (``bench --archive-size`` measures at the rates the machine reaches).

The real analysis code runs in simulated time, with no device and no load: the microphone's (``AudioInput._emit``
on ``_Analyzer`` blocks of the bench's music-like test signal, 48 kHz in blocks of 512, 93.75 a second) and the
camera's (the worker's ``Analyzer`` and ``Capture._emit`` on ``testsrc2`` frames read through cv2's lavfi input at
30 fps). The features go to a real ParamBus with ``sampled=True``; the bus is ticked at ``--fps`` in the same
simulated time; what its journal records is packed a second at a time exactly as the archive's writer packs it
(``pack_samples``), and the old way (one events row per set, ``ROW`` bytes of SQLite overhead each) for comparison.

    python scripts/archive_nominal.py --seconds 30 --fps 60
"""

from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

from installation.archive.bench import ROW
from installation.archive.store import pack_samples, to_json
from installation.bus import ParamBus


def music(sr: int, n0: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    t = (n0 + np.arange(frames)) / sr
    swell = 0.05 + 0.2 * (0.5 - 0.5 * np.cos(2 * np.pi * t / 4.0))
    x = swell * (np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 1760 * t)) + 0.01 * rng.standard_normal(frames)
    x[(t % 0.5) < 0.004] += 0.6
    return x.astype(np.float32)


class _Pipe:
    def __init__(self) -> None:
        self.values: dict[str, float] | None = None

    def send(self, message) -> None:
        self.values = message[0]


def measure(seconds: float, fps: float, which: str) -> dict:
    from installation.inputs.audio import AudioInput, AudioSettings, _Analyzer
    from installation.inputs.camera import CameraSettings
    from installation.inputs.camera_worker import Analyzer, Capture

    now = [0.0]
    bus = ParamBus(clock=lambda: now[0])
    journal = bus.subscribe(maxlen=1 << 20)
    events: list[tuple] = []  # the old way: every set a row
    audio = cam = None
    if which in ("mic", "all"):
        settings = AudioSettings(enabled=True)
        audio = AudioInput(settings, bus)
        analyzer = _Analyzer(settings, 48000)
        rng = np.random.default_rng(0)
        block, n_audio = settings.blocksize, 0
    if which in ("camera", "all"):
        import cv2

        from installation.inputs.camera import feature_specs

        for spec in feature_specs():
            bus.declare(spec)
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "input_format;lavfi"
        cap = cv2.VideoCapture("testsrc2=size=320x240:rate=30", cv2.CAP_FFMPEG)
        csettings = CameraSettings(enabled=True, source="lavfi:testsrc2")
        cam, pipe = Analyzer(csettings), _Pipe()
        capture = Capture(csettings, pipe, None, None)
        n_cam = 0
    ticks = int(seconds * fps)
    for k in range(1, ticks + 1):
        t = k / fps
        while audio is not None and (n_audio + 1) * block / 48000 <= t:  # the blocks that ended before this tick
            now[0] = (n_audio + 1) * block / 48000
            x = music(48000, n_audio * block, block, rng)
            feats, onset = analyzer.process(x)
            audio._emit(feats, onset, block / 48000)
            events += [(now[0], "set", n, to_json(v), "audio") for n, v in audio.values().items()]
            n_audio += 1
        while cam is not None and (n_cam + 1) / 30 <= t:
            now[0] = (n_cam + 1) / 30
            ok, bgr = cap.read()
            if not ok:
                break
            capture._emit(cam.process(bgr, 1 / 30), 1 / 30)
            for name, v in pipe.values.items():
                bus.set(name, v, source="camera", sampled=True)
                events.append((now[0], "set", name, to_json(v), "camera"))
            n_cam += 1
        now[0] = t
        bus.tick(1 / fps, t)
    sampled = [(c.t, c.name, c.value, c.source) for c in journal.drain() if c.sampled]
    packed = 0
    for second in range(int(math.ceil(seconds))):  # one row a second, as the writer batches at batch_s = 1
        batch = [s for s in sampled if second < s[0] * 1.0 <= second + 1 or (second == 0 and s[0] == 0)]
        if batch:
            t0, t1, n, names, sources, dtype, data = pack_samples(batch)
            packed += len(data) + len(names) + len(sources) + 40 + ROW
    old = sum(len(v) + len(n) + len(s) + 24 + ROW for _, _, n, v, s in events)
    return {"input": which, "seconds": seconds, "fps": fps, "sets_per_s": round(len(events) / seconds, 1),
            "samples_per_s": round(len(sampled) / seconds, 1),
            "bytes_per_sample": round(packed / max(len(sampled), 1), 2),
            "mb_per_hour_before": round(old / seconds * 3600 / 1e6, 2),
            "mb_per_hour_after": round(packed / seconds * 3600 / 1e6, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=60.0, help="the show's tick rate")
    args = p.parse_args()
    for which in ("mic", "camera", "all"):
        print(json.dumps(measure(args.seconds, args.fps, which)))


if __name__ == "__main__":
    main()
