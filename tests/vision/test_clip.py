"""The CLIP model: a user's checkpoint file loaded through the configured path, unit float16 embeddings, the text
cache, and the one-line start-up error when the file is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from installation.vision.clip import ClipModel, WeightsMissing, check_weights


def test_the_checkpoint_file_is_what_gets_loaded(tiny_clip, clip_model):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_clip.weights))
    loaded = clip_model.model.state_dict()
    assert set(saved) == set(loaded)
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # not a freshly initialised model


def test_a_pickled_checkpoint_loads_as_data_and_a_crafted_one_runs_nothing(tiny_clip, tmp_path):
    """A .pt/.bin checkpoint (what open_clip's hub folders ship) is read by the weights-only unpickler; one with a
    payload is refused at start with one line (exit 2) and by the loader, and the payload never runs."""
    from safetensors.torch import load_file
    from support import run_cli, scene_toml, write_show

    from installation.decoders.weights import UnsafeModelFile
    from payloads import torch_saved

    plain = tmp_path / "clip.bin"
    torch.save(load_file(str(tiny_clip.weights)), plain)
    model = ClipModel(tiny_clip.settings(weights=str(plain)))
    assert np.array_equal(model.embed_texts(["a red door"]), ClipModel(tiny_clip.settings()).embed_texts(["a red door"]))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(torch_saved(marker, w=torch.zeros(2)))
    s = tiny_clip.settings(weights=str(evil))
    with pytest.raises(UnsafeModelFile, match=r"\[vision\] weights: .*evil.bin is not a file of tensors"):
        check_weights(s)
    with pytest.raises(Exception):
        ClipModel(s)
    cfg = write_show(tmp_path, {"a": scene_toml()}, extra=tiny_clip.toml().replace(str(tiny_clip.weights), str(evil)))
    out = run_cli("run", "--config", str(cfg), "--headless", "--duration", "1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "evil.bin" in lines[0] and "safetensors" in lines[0], out.stderr
    assert not marker.exists()
    torch.load(evil, weights_only=False)
    assert marker.exists(), "the fixture is live: an unrestricted torch.load runs it"


def test_embeddings_are_unit_float16_and_texts_are_cached(clip_model):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 64, 3), dtype=np.uint8) for _ in range(2)]
    emb = clip_model.embed_frames(frames)
    assert emb.dtype == np.float16 and emb.shape == (2, clip_model.dim)
    assert np.allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
    before = clip_model.cached_texts
    a = clip_model.embed_texts(["a red door", "a blue sea"])
    assert clip_model.cached_texts == before + 2
    b = clip_model.embed_texts(["a blue sea", "a red door"])
    assert clip_model.cached_texts == before + 2 and np.array_equal(a[::-1], b)
    # the same as the model's own text encoder, normalised
    with torch.inference_mode():
        ref = clip_model.model.encode_text(clip_model.tokenizer(["a red door"])).float().numpy()[0]
    assert np.allclose(a[0].astype(np.float32), ref / np.linalg.norm(ref), atol=2e-3)


def test_a_missing_checkpoint_names_the_path_and_the_download(tiny_clip, tmp_path):
    missing = tmp_path / "ViT-B-32.bin"
    s = tiny_clip.settings().model_copy(update={"weights": str(missing)})
    with pytest.raises(WeightsMissing) as err:
        check_weights(s)
    msg = str(err.value)
    assert str(missing) in msg and "open_clip.create_model_and_transforms" in msg and "\n" not in msg
    with pytest.raises(WeightsMissing, match="offline"):
        check_weights(s.model_copy(update={"weights": "laion2b_s34b_b79k", "offline": True}))
    with pytest.raises(WeightsMissing):
        ClipModel(s)


def test_run_stops_with_one_line_and_exit_2(tiny_clip, tmp_path):
    from support import bench_result, ratio_of, run_cli, scene_toml, write_show

    missing = tmp_path / "clip.safetensors"
    cfg = write_show(tmp_path, {"a": scene_toml()},
                     extra=tiny_clip.toml().replace(str(tiny_clip.weights), str(missing)))
    out = run_cli("run", "--config", str(cfg), "--headless", "--duration", "1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "vision" in lines[0] and str(missing) in lines[0] and "open_clip" in lines[0]


def test_doctor_says_whether_a_clip_model_is_usable(tiny_clip, tmp_path):
    from installation.doctor import _vision
    from support import bench_result, ratio_of, run_cli, scene_toml, write_show

    cfg = write_show(tmp_path, {"a": scene_toml()}, extra=tiny_clip.toml())
    out = run_cli("doctor", "--config", str(cfg), timeout=300)  # as a user runs it: GL checked before CLIP loads
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("vision"))
    assert "usable: tiny-clip on cpu from " in line and "64-dim" in line and "ms per frame" in line
    (tmp_path / "off").mkdir()
    assert _vision(write_show(tmp_path / "off", {"a": scene_toml()})) == "off ([vision] enabled = false)"
    cfg.write_text(cfg.read_text().replace(str(tiny_clip.weights), str(tmp_path / "gone.pt")))
    line = _vision(cfg)
    assert line.startswith("not usable (CLIP weights ") and "gone.pt" in line


def test_bench_vision_prints_both_fps_figures_from_one_run(tiny_clip, tmp_path):
    from support import bench_result, ratio_of, run_cli, scene_toml, write_show

    cfg = write_show(tmp_path, {"a": scene_toml()}, extra=tiny_clip.toml())
    out = run_cli("bench", "--config", str(cfg), "--vision", "--seconds", "2", "--json", timeout=300)
    result = bench_result(out, ["decoder_fps_without_vision", "decoder_fps_with_vision", "ratio", "embedded"])
    assert result["decoder_fps_without_vision"] > 0 and result["decoder_fps_with_vision"] > 0
    ratio_of(result, "ratio", "decoder_fps_with_vision", "decoder_fps_without_vision")
    assert result["embedded"] > 0 and result["every_n"] == 1 and result["check"] is False
    (tmp_path / "off").mkdir()
    off = run_cli("bench", "--config", str(write_show(tmp_path / "off", {"a": scene_toml()})), "--vision")
    assert off.returncode == 2 and "[vision] enabled" in off.stderr
