"""Fixtures for the input tests: a JACK dummy server (started before sounddevice is imported) and a feeder client.

Teardown order matters: streams close and PortAudio terminates before jackd goes away, or the process aborts at
exit inside pa_jack.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

SR = 48000


def _jack_running(env: dict[str, str]) -> bool:
    # jack_wait -c exits 0 either way; it prints "running" or "not running".
    out = subprocess.run(["jack_wait", "-c"], env=env, capture_output=True, text=True).stdout.strip()
    return out == "running"


def start_jackd(env: dict[str, str], wait_s: int = 30) -> subprocess.Popen:
    """jackd on the dummy driver (48 kHz, 256-frame periods) for the server ``env`` names; fails the test, with what
    jackd said, when it does not come up within ``wait_s`` (10 s was once too short on a busy shared machine, and the
    failure did not say why)."""
    with tempfile.TemporaryFile() as log:  # jackd keeps its own descriptor of it
        proc = subprocess.Popen(["jackd", "--no-realtime", "-d", "dummy", "-r", str(SR), "-p", "256", "-C", "2", "-P",
                                 "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
        if subprocess.run(["jack_wait", "-w", "-t", str(wait_s)], env=env, capture_output=True).returncode != 0:
            exited = proc.poll()
            stop_jackd(proc)
            log.seek(0)
            said = log.read().decode(errors="replace")[-1500:]
            pytest.fail(f"jackd did not come up within {wait_s} s (exit code {exited}); it said:\n{said}")
    return proc


def stop_jackd(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def need_jack() -> None:
    if shutil.which("jackd") is None or shutil.which("jack_wait") is None:
        pytest.skip("jackd/jack_wait not installed (apt-get install jackd2): no audio device to test against")


@pytest.fixture(scope="session")
def jack_server():
    """A running JACK server (ours: dummy driver, 48 kHz, 256-frame periods) for the whole session."""
    need_jack()
    if "sounddevice" in sys.modules:
        pytest.fail("sounddevice was imported before the JACK server started; PortAudio would not see it")
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    proc = None if _jack_running(env) else start_jackd(env)
    yield
    gc.collect()  # JACK clients a test left to the garbage collector (rtmidi, jack.Client) close while jackd lives
    sd = sys.modules.get("sounddevice")
    if sd is not None:
        while sd._initialized:
            sd._terminate()
    if proc is not None:
        stop_jackd(proc)


@pytest.fixture
def own_jack_server():
    """A JACK server of the test's own (its own name), so no client an earlier test left behind can stall it;
    yields the environment that points JACK clients (a command's subprocess) at it."""
    need_jack()
    env = dict(os.environ, JACK_DEFAULT_SERVER=f"own-{os.getpid()}-{time.monotonic_ns()}", JACK_NO_AUDIO_RESERVATION="1")
    proc = start_jackd(env)
    try:
        yield {"JACK_DEFAULT_SERVER": env["JACK_DEFAULT_SERVER"], "JACK_NO_AUDIO_RESERVATION": "1"}
    finally:
        stop_jackd(proc)


class Feeder:
    """A jack.Client whose output plays a settable signal: silence, a sine, or a click train."""

    def __init__(self) -> None:
        import jack

        self.client = jack.Client("feeder", no_start_server=True)
        self.port = self.client.outports.register("out")
        self.n = 0
        self.mode = "silence"
        self.freq = 1000.0
        self.amp = 0.5
        self.click_every = SR // 2
        self.clicks = 0
        self._lock = threading.Lock()
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        buf = self.port.get_array()
        n0 = self.n
        self.n += frames
        if self.mode == "sine":
            t = (n0 + np.arange(frames)) / SR
            buf[:] = self.amp * np.sin(2 * math.pi * self.freq * t)
            return
        buf[:] = 0.0
        if self.mode == "clicks":
            first = (-n0) % self.click_every
            for i in range(first, frames, self.click_every):
                buf[i : i + 8] = self.amp
                self.clicks += 1

    def play(self, mode: str, **kw) -> None:
        for k, v in kw.items():
            setattr(self, k, v)
        self.n = 0
        self.clicks = 0
        self.mode = mode

    def connect_to_portaudio(self, timeout: float = 5.0) -> None:
        """Connect our output to PortAudio's input ports once the stream has registered them."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ports = self.client.get_ports("PortAudio", is_audio=True, is_input=True)
            if ports:
                for p in ports:
                    if self.port not in [c for c in self.client.get_all_connections(p)]:
                        try:
                            self.client.connect(self.port, p)
                        except Exception:  # noqa: BLE001 - already connected
                            pass
                return
            time.sleep(0.02)
        raise AssertionError("PortAudio input ports did not appear in JACK")

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


@pytest.fixture
def feeder(jack_server):
    f = Feeder()
    yield f
    f.close()
