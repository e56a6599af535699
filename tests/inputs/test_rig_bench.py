"""``installation bench --rig`` runs the loop with the performer's rig off and on, with clients really using it (a
preview viewer, a listening websocket, a JACK MIDI controller, Link), and prints the figures (no speed asserted)."""

from __future__ import annotations

from support import bench_result, ratio_of, run_cli, scene_toml, write_show


def test_bench_rig_off_and_on_json(tmp_path, own_jack_server):
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra="[state]\nenabled = false\n")
    r = run_cli("bench", "--config", str(cfg), "--seconds", "3", "--rounds", "1", "--rig", "--json", timeout=240,
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
