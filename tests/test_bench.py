"""The benchmark commands print figures and one JSON line with the documented keys (no speed asserted here): exit
status, the table and the JSON agreeing, finite numbers, the sizes and counts that were asked for, and ratios that
are the ratios of the figures beside them."""

from __future__ import annotations

import os

from support import bench_result, ratio_of, run_cli, scene_toml, write_show

CPPN_KEYS = {"decoder_fps", "runtime_fps", "present_fps", "ratio", "rss_mb_start", "rss_mb_end", "decoder_size",
             "output_size"}


def test_bench_cppn_json(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("bench", "--config", str(cfg), "--seconds", "1", "--json")
    result = bench_result(r, CPPN_KEYS)
    assert result["decoder_size"] == "64x40" and result["output_size"] == "160x96" and result["seconds"] == 1.0
    assert result["decoder_fps"] > 0 and result["runtime_fps"] > 0 and result["present_fps"] > 0
    ratio_of(result, "ratio", "runtime_fps", "decoder_fps")
    assert 0 < result["rss_mb_start"] and 0 < result["rss_mb_end"] < 64_000 and result["cpu_count"] == os.cpu_count()


def test_bench_camera_off_and_on_json(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("bench", "--config", str(cfg), "--seconds", "2", "--json", "--camera",
                "lavfi:testsrc2=size=160x120:rate=30,realtime", timeout=300)
    result = bench_result(r, [f"{mode}_{key}" for mode in ("off", "on") for key in (
        "late_ticks", "present_ms_p99", "interval_ms_p99", "process_cpu_ms_per_tick", "present_fps", "ticks")])
    for mode in ("off", "on"):
        assert result[f"{mode}_ticks"] > 0 and result[f"{mode}_present_ms_p99"] > 0
        assert 0 <= result[f"{mode}_late_ticks"] <= result[f"{mode}_ticks"]
    assert result["camera_fps"] > 0 and "camera_error" not in result  # the camera really ran in the "on" half
    for key in ("present_ms_p99", "interval_ms_p99"):
        ratio_of(result, f"{key}_on_vs_off", f"on_{key}", f"off_{key}")


def test_bench_diffusion_on_a_tiny_random_model(tmp_path):
    from installation.decoders.random_models import make_sd21, make_taesd

    model, taesd = make_sd21(tmp_path / "sd"), make_taesd(tmp_path / "taesd")
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("bench", "--config", str(cfg), "--decoder", "diffusion", "--model", str(model), "--taesd",
                str(taesd), "--decoder-size", "64", "--frames", "4", "--seconds", "2", "--json", timeout=300)
    result = bench_result(r, ["stages_ms", "decoder_fps", "runtime_fps", "memory_mib", "ratio"])
    assert {"unet", "decode", "convert", "upload"} <= set(result["stages_ms"])
    assert all(ms >= 0 for ms in result["stages_ms"].values()) and result["stages_ms"]["unet"] > 0
    assert result["decoder_fps"] > 0 and result["runtime_fps"] > 0
    ratio_of(result, "ratio", "runtime_fps", "decoder_fps")
    assert {"allocated_start", "reserved_end"} <= set(result["memory_mib"])


def test_bench_diffusion_missing_model_is_a_clear_error(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("bench", "--config", str(cfg), "--decoder", "diffusion", "--model", str(tmp_path / "nope"))
    assert r.returncode == 2
    assert "not found" in r.stderr and "huggingface-cli download" in r.stderr and "Traceback" not in r.stderr


def test_scene_with_missing_model_fails_fast(tmp_path):
    dec = f'type = "diffusion"\nmodel = "{tmp_path / "models" / "sd"}"\nwidth = 64\nheight = 64'
    cfg = write_show(tmp_path, {"a": scene_toml(decoder=dec)})
    r = run_cli("run", "--config", str(cfg), "--headless", "--duration", "1")
    assert r.returncode == 2 and "huggingface-cli download" in r.stderr and "Traceback" not in r.stderr


def test_bench_osc_latency_json(tmp_path):
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("bench", "--config", str(cfg), "--osc-latency", "--trials", "1", "--json")
    result = bench_result(r, ["presenter_ms", "decoder_ms", "trials"])
    assert result["trials"] == 1 and result["presenter_ms"]["n"] == 1 and result["decoder_ms"]["n"] == 1
    for path in ("presenter_ms", "decoder_ms"):
        assert 0 < result[path]["p50"] <= result[path]["max"] < 60_000, result[path]


def test_params_lists_the_live_parameters_of_the_shows_decoders(tmp_path):
    from installation.decoders.random_models import make_sd21

    model = make_sd21(tmp_path / "sd")
    dec = f'type = "diffusion"\nmodel = "{model}"\nwidth = 64\nheight = 64\nstrength = 0.3'
    cfg = write_show(tmp_path, {"a": scene_toml(), "d": scene_toml(decoder=dec)})
    both = run_cli("params", "--config", str(cfg))
    assert both.returncode == 0, both.stderr
    line = next(ln for ln in both.stdout.splitlines() if ln.startswith("diffusion.strength"))
    assert "default 0.3" in line and "prompt.15.gain" in both.stdout
    cppn_only = run_cli("params", "--config", str(cfg), "--scene", "a")
    assert cppn_only.returncode == 0 and "speed" in cppn_only.stdout and "diffusion." not in cppn_only.stdout


def test_bench_outputs_json(tmp_path):
    # one plain output against two warped, blended projector outputs of the same window, from one run
    cfg = write_show(tmp_path, {"a": scene_toml()})
    r = run_cli("bench", "--config", str(cfg), "--outputs", "--seconds", "1", "--size", "160x90", "--json",
                timeout=300)
    result = bench_result(r, ["present_ms_p99_two_vs_plain", "gl_renderer"])
    for mode in ("plain", "two_outputs"):
        assert result[f"{mode}_ticks"] > 0
        assert 0 < result[f"{mode}_present_ms_p50"] <= result[f"{mode}_present_ms_p99"]
        assert result[f"{mode}_output_pass_ms_median"] > 0
    ratio_of(result, "present_ms_p99_two_vs_plain", "two_outputs_present_ms_p99", "plain_present_ms_p99")
