"""``installation bench --rig`` runs the loop with the performer's rig off and on, with clients really using it (a
preview viewer, a listening websocket, a JACK MIDI controller, Link), and prints the figures (no speed asserted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
from support import bench_result, ratio_of, run_cli, scene_toml, write_show


@pytest.fixture
def own_jack_server():
    """A JACK server of this test's own (dummy driver, its own name), so no client an earlier test left behind can
    stall the bench's controller; yields the environment that points JACK clients at it."""
    if shutil.which("jackd") is None or shutil.which("jack_wait") is None:
        pytest.skip("jackd/jack_wait not installed (apt-get install jackd2)")
    env = dict(os.environ, JACK_DEFAULT_SERVER=f"rig-{uuid.uuid4().hex[:8]}", JACK_NO_AUDIO_RESERVATION="1")
    proc = subprocess.Popen(["jackd", "--no-realtime", "-d", "dummy", "-r", "48000", "-p", "256"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if subprocess.run(["jack_wait", "-w", "-t", "10"], env=env, capture_output=True).returncode != 0:
            pytest.fail("jackd did not come up within 10 s")
        yield {"JACK_DEFAULT_SERVER": env["JACK_DEFAULT_SERVER"], "JACK_NO_AUDIO_RESERVATION": "1"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_bench_rig_off_and_on_json(tmp_path, own_jack_server):
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra="[state]\nenabled = false\n")
    r = run_cli("bench", "--config", str(cfg), "--seconds", "3", "--rounds", "1", "--rig", "--json", timeout=300,
                env=own_jack_server)
    result = bench_result(r, ["present_fps_on_vs_off", "runtime_fps_on_vs_off", "on_clients"])
    for mode in ("off", "on"):
        assert result[f"{mode}_present_fps"] > 0 and result[f"{mode}_runtime_fps"] > 0
    for key in ("present_fps", "runtime_fps"):
        ratio_of(result, f"{key}_on_vs_off", f"on_{key}", f"off_{key}")
    clients = result["on_clients"]
    assert clients["osc"] > 0 and clients["previews"] > 0 and clients["midi"] > 0
    assert result["on_preview_frames"] > 0 and result["on_midi_messages"] > 0  # the rig really worked
    assert result["on_oscquery_sent"] > 0 and clients["ws_messages"] > 0
    assert result["on_link"]["tempo"] == 120.0 and result["midi"] == "UNIX_JACK"
