"""The diffusion decoder on tiny real diffusers models, float32 on the CPU, loaded through the user's path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from installation.decoders import DecoderSpec, NonFiniteFrame, create, decoder_class

W = H = 64


@pytest.fixture
def Diffusion():
    return decoder_class("diffusion")


def _settings(Diffusion, tiny_models, model="sd-turbo", **kw):
    kw.setdefault("prompts", (("a red cat", 1.0),))
    return Diffusion.Settings(model=str(tiny_models[model]), width=W, height=H, **kw)


def _decoder(Diffusion, tiny_models, model="sd-turbo", **kw):
    s = _settings(Diffusion, tiny_models, model, **kw)
    d = create(DecoderSpec("diffusion", s))
    d.prepare()
    return s, d


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda m, i, o: calls.append(1))
    return calls, handle


def _valid_frame(f):
    assert f.shape == (H, W, 3) and f.dtype == np.uint8
    assert f.std() > 1.0, "frame is flat (grey or blank)"


def test_registry_settings_and_shape(Diffusion, tiny_models):
    s = _settings(Diffusion, tiny_models)
    assert Diffusion.name == "diffusion"
    assert hash(s) == hash(_settings(Diffusion, tiny_models))
    assert Diffusion.latent_shape(s) == (4, H // 8, W // 8)
    with pytest.raises(ValidationError):
        Diffusion.Settings(model="x", family="sd21", steps=5)
    with pytest.raises(ValidationError):
        Diffusion.Settings(model="x", family="lcm", steps=1)
    with pytest.raises(ValidationError):
        Diffusion.Settings(model="x", width=100)
    with pytest.raises(ValidationError):
        Diffusion.Settings(model="x", bogus=1)
    d = create(DecoderSpec("diffusion", s))  # the constructor loads nothing
    assert not d.prepared and not hasattr(d, "unet")


@pytest.mark.parametrize("model,kw,family", [
    ("sd-turbo", {}, "sd21"),
    ("sdxl-turbo", {}, "sdxl"),
    ("lcm", {"steps": 4}, "lcm"),
    ("sd-turbo", {"steps": 2, "use_taesd": True}, "sd21"),
    ("sd-turbo", {"guidance": 3.0, "negative_prompt": "blur"}, "sd21"),
    ("sdxl-turbo", {"dtype": "bfloat16", "steps": 2, "use_taesd": True}, "sdxl"),
])
def test_families_render(Diffusion, tiny_models, make_request, unit_z, model, kw, family):
    if kw.pop("use_taesd", False):
        kw["taesd"] = str(tiny_models["taesd"])
    s, d = _decoder(Diffusion, tiny_models, model, **kw)
    assert d.family == family
    z = unit_z(Diffusion.latent_shape(s))
    f = d.render(make_request(s, z))
    _valid_frame(f)
    g = d.render(make_request(s, unit_z(z.shape, 1)))
    assert not np.array_equal(f, g), "moving the latent must change the frame"
    st = d.stats()
    assert {"encode_ms", "unet_ms", "decode_ms", "convert_ms"} <= set(st)
    d.close()


def test_deterministic_bit_identical(Diffusion, tiny_models, make_request, unit_z):
    s, a = _decoder(Diffusion, tiny_models, steps=2)
    _, b = _decoder(Diffusion, tiny_models, steps=2)
    z = unit_z(Diffusion.latent_shape(s), 7)
    fa = a.render(make_request(s, z))
    fb = b.render(make_request(s, z))
    assert np.array_equal(fa, fb)
    a.render(make_request(s, unit_z(z.shape, 8)))
    assert np.array_equal(a.render(make_request(s, z)), fa)


def test_prompt_cache_hits_and_misses(Diffusion, tiny_models, make_request, unit_z):
    s, d = _decoder(Diffusion, tiny_models, prompt_cache_size=3)
    calls, handle = _count_calls(d.text_encoders[0])
    z = unit_z(Diffusion.latent_shape(s))
    both = {"prompts": (("a red cat", 0.5), ("a blue sea", 0.5))}
    d.render(make_request(s, z, extras=both))
    assert len(calls) == 1  # "a red cat" was encoded in prepare()'s warm-up
    d.render(make_request(s, unit_z(z.shape, 1), extras=both))
    assert len(calls) == 1
    # Moving the weights re-blends from the cache: no encoder call.
    f = d.render(make_request(s, z, extras={"prompts": (("a red cat", 0.2), ("a blue sea", 0.8))}))
    assert len(calls) == 1
    # Changing one prompt encodes that one only, and the next frame is a real image.
    f = d.render(make_request(s, z, extras={"prompts": (("a red cat", 0.2), ("a green hill", 0.8))}))
    assert len(calls) == 2
    _valid_frame(f)
    # LRU: a fourth text evicts the least recently used one.
    d.render(make_request(s, z, extras={"prompts": (("a gold moon", 1.0),)}))
    assert len(calls) == 3
    d.render(make_request(s, z, extras={"prompts": (("a blue sea", 1.0),)}))
    assert len(calls) == 4, "evicted prompt must be re-encoded"
    st = d.stats()
    assert st["prompt_cache_misses"] >= 4 and st["prompt_cache_hits"] >= 1
    handle.remove()


def test_blend_weights_move_embedding_and_frame(Diffusion, tiny_models, make_request, unit_z):
    s, d = _decoder(Diffusion, tiny_models)
    z = unit_z(Diffusion.latent_shape(s))
    ea, eb = d._encode("a red cat")[0], d._encode("a blue sea")[0]
    pair = {"prompts": (("a red cat", 1.0), ("a blue sea", 1.0))}
    only_a = d.render(make_request(s, z, extras={"prompts": (("a red cat", 1.0),)}))
    # The bus's gains multiply the extras' weights by index (a fader per prompt).
    fa = d.render(make_request(s, z, params={"prompt.1.gain": 0.0}, extras=pair))
    assert np.array_equal(fa, only_a)
    fmix = d.render(make_request(s, z, params={"prompt.0.gain": 0.5, "prompt.1.gain": 1.5}, extras=pair))
    torch.testing.assert_close(d.buf["emb"][-1:], 0.25 * ea + 0.75 * eb)
    uneven = {"prompts": (("a red cat", 2.0), ("a blue sea", 6.0))}
    d.render(make_request(s, z, params={"prompt.0.gain": 1.0}, extras=uneven))
    torch.testing.assert_close(d.buf["emb"][-1:], 0.25 * ea + 0.75 * eb)
    fb = d.render(make_request(s, z, params={"prompt.0.gain": 0.0}, extras=pair))
    assert not np.array_equal(fmix, fa) and not np.array_equal(fmix, fb)
    # slerp differs from lerp in the middle and keeps the norm between the two ends.
    s2, d2 = _decoder(Diffusion, tiny_models, blend="slerp")
    d2.render(make_request(s2, z, extras=pair))
    mid = d2.buf["emb"][-1]
    lerp = 0.5 * (ea + eb)[0]
    assert not torch.allclose(mid, lerp)
    n = mid.norm(dim=-1)
    lo = torch.minimum(ea[0].norm(dim=-1), eb[0].norm(dim=-1)) - 1e-4
    hi = torch.maximum(ea[0].norm(dim=-1), eb[0].norm(dim=-1)) + 1e-4
    assert bool(((n >= lo) & (n <= hi)).all())


def _source(seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2] = (200, 40, 40)
    img[:, W // 2:] = (30, 60, 220)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


def test_img2img_strength_zero_is_reconstruction(Diffusion, tiny_models, make_request, unit_z):
    from diffusers import AutoencoderKL

    s, d = _decoder(Diffusion, tiny_models, strength=0.0)
    src = _source()
    z = unit_z(Diffusion.latent_shape(s))
    f = d.render(make_request(s, z, extras={"source": src}))
    vae = AutoencoderKL.from_pretrained(tiny_models["sd-turbo"], subfolder="vae").eval()
    with torch.no_grad():
        x = torch.from_numpy(src).permute(2, 0, 1)[None].float() / 127.5 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
    expected = ((rec[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(f.astype(int) - expected.astype(int)).max() <= 1
    g = d.render(make_request(s, z, params={"diffusion.strength": 0.8}, extras={"source": src}))
    assert not np.array_equal(f, g)
    _valid_frame(g)


def test_img2img_fixed_noise_and_similarity_filter(Diffusion, tiny_models, make_request, unit_z):
    s, d = _decoder(Diffusion, tiny_models, strength=0.6, similar_threshold=0.01, similar_max_skip=5)
    unet_calls, h1 = _count_calls(d.unet)
    vae_calls, h2 = _count_calls(d.vae.encoder)
    src = _source()
    z = unit_z(Diffusion.latent_shape(s))
    f1 = d.render(make_request(s, z, extras={"source": src}))
    assert len(unet_calls) == 1 and len(vae_calls) == 1
    # Same source, other trajectory latent: fixed per-run noise means nothing changed, so no UNet and no encode.
    f2 = d.render(make_request(s, unit_z(z.shape, 3), extras={"source": src.copy()}))
    assert np.array_equal(f1, f2) and len(unet_calls) == 1 and len(vae_calls) == 1
    # Sensor noise under the threshold still counts as unchanged.
    jitter = np.clip(src.astype(int) + 1, 0, 255).astype(np.uint8)
    d.render(make_request(s, z, extras={"source": jitter}))
    assert len(unet_calls) == 1 and d.stats()["skipped"] == 2
    # A real change runs the UNet again.
    f3 = d.render(make_request(s, z, extras={"source": _source()[::-1].copy()}))
    assert len(unet_calls) == 2 and len(vae_calls) == 2 and not np.array_equal(f1, f3)
    # A prompt change with the same source skips the encode but runs the UNet.
    d.render(make_request(s, z, extras={"source": _source()[::-1].copy(), "prompts": (("a blue sea", 1.0),)}))
    assert len(unet_calls) == 3 and len(vae_calls) == 2
    # Garbage sources are rejected and counted, never crash the loop.
    _valid_frame(d.render(make_request(s, z, extras={"source": np.zeros((4, 4), np.float32)})))
    assert d.stats()["rejected_sources"] == 1
    h1.remove(), h2.remove()


def test_camera_sized_source_is_resized_on_the_host(Diffusion, tiny_models, make_request, unit_z):
    """A 4:3 camera frame gives the same frame as the same image resized to the frame first (one encode program)."""
    import cv2

    s, d = _decoder(Diffusion, tiny_models, strength=0.5)
    cam = np.random.default_rng(5).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    z = unit_z(Diffusion.latent_shape(s))
    f = d.render(make_request(s, z, extras={"source": cam}))
    d.reset()
    g = d.render(make_request(s, z, extras={"source": cv2.resize(cam, (W, H), interpolation=cv2.INTER_AREA)}))
    assert np.array_equal(f, g)
    _valid_frame(f)


def test_prepare_reports_every_step(Diffusion, tiny_models, caplog):
    """Off a terminal (a service's journal) prepare() logs numbered steps, ending with the last warm-up program."""
    import re

    caplog.set_level("INFO", logger="installation.decoders._accel")
    _decoder(Diffusion, tiny_models, steps=2, emergence=True)
    steps = [re.search(r"\[(\d+)/(\d+)\] (.*)", r.getMessage()) for r in caplog.records]
    steps = [m for m in steps if m]
    total = int(steps[0].group(2))
    assert [int(m.group(1)) for m in steps] == list(range(1, total + 1))
    labels = [m.group(3) for m in steps]
    assert labels[0] == "checking folders" and "warm-up: frame program, step 2/2" in labels
    assert labels[-1] == "warm-up: strength-0 reconstruction"


def test_reference_blend(Diffusion, tiny_models, make_request, unit_z, tmp_path):
    from PIL import Image

    paths = []
    for i, color in enumerate([(220, 30, 30), (20, 200, 40)]):
        p = tmp_path / f"ref{i}.png"
        Image.fromarray(np.full((32, 48, 3), color, np.uint8)).save(p)
        paths.append(str(p))
    s, d = _decoder(Diffusion, tiny_models, references=tuple(paths), strength=0.0)
    z = unit_z(Diffusion.latent_shape(s))
    f0 = d.render(make_request(s, z, params={"reference.1.weight": 0.0}))
    f1 = d.render(make_request(s, z, params={"reference.0.weight": 0.0}))
    fm = d.render(make_request(s, z))
    assert not np.array_equal(f0, f1) and not np.array_equal(fm, f0) and not np.array_equal(fm, f1)
    torch.testing.assert_close(d.buf["src"], 0.5 * (d.ref_latents[0] + d.ref_latents[1]))
    g = d.render(make_request(s, z, params={"diffusion.strength": 0.7}))
    _valid_frame(g)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_never_reaches_the_frame(Diffusion, tiny_models, make_request, unit_z, bad):
    """NaN, and an Inf (fp16 overflow) that TAESD's input clamp would turn into a finite but meaningless image."""
    s, d = _decoder(Diffusion, tiny_models, steps=1, taesd=str(tiny_models["taesd"]))
    z = unit_z(Diffusion.latent_shape(s))
    good = d.render(make_request(s, z))
    handle = d.unet.register_forward_hook(lambda m, i, o: (o[0] * bad,) + tuple(o[1:]))
    with pytest.raises(NonFiniteFrame):
        d.render(make_request(s, unit_z(z.shape, 1)))
    handle.remove()
    after = d.render(make_request(s, z))
    assert np.array_equal(after, good)
    assert d.stats()["nonfinite"] == 1


def test_emergence_shows_x0_developing(Diffusion, tiny_models, make_request, unit_z):
    s, d = _decoder(Diffusion, tiny_models, steps=3, emergence=True)
    _, full = _decoder(Diffusion, tiny_models, steps=3)
    unet_calls, h = _count_calls(d.unet)
    z = unit_z(Diffusion.latent_shape(s))
    frames = [d.render(make_request(s, z, seq=i)) for i in range(4)]
    assert len(unet_calls) == 4, "one UNet step per frame"
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    assert np.array_equal(frames[2], full.render(make_request(s, z))), "the chain ends at the full result"
    assert np.array_equal(frames[3], frames[0]), "a new chain starts over"
    h.remove()


def _write_lora(unet, path, fmt, seed=0):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, mod in unet.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v", "0") \
                and ".attn" in name:
            r = 2
            down = torch.randn(r, mod.in_features, generator=g) * 0.5
            up = torch.randn(mod.out_features, r, generator=g) * 0.5
            if fmt == "peft":
                sd[f"unet.{name}.lora_A.weight"], sd[f"unet.{name}.lora_B.weight"] = down, up
            else:
                flat = "lora_unet_" + name.replace(".", "_")
                sd[f"{flat}.lora_down.weight"], sd[f"{flat}.lora_up.weight"] = down, up
                sd[f"{flat}.alpha"] = torch.tensor(4.0)
    sd["text_encoder.text_model.foo.lora_A.weight"] = torch.zeros(2, 2)  # skipped with a warning
    save_file(sd, str(path))
    return str(path)


def test_lora_load_and_live_scale(Diffusion, tiny_models, make_request, unit_z, tmp_path):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_models["sd-turbo"], subfolder="unet")
    peft_file = _write_lora(unet, tmp_path / "style.safetensors", "peft")
    kohya_file = _write_lora(unet, tmp_path / "ink.safetensors", "kohya", seed=1)
    s0, plain = _decoder(Diffusion, tiny_models)
    s, d = _decoder(Diffusion, tiny_models, loras=((peft_file, "style"), (kohya_file, "ink")))
    z = unit_z(Diffusion.latent_shape(s))
    base = plain.render(make_request(s0, z))
    off = d.render(make_request(s, z, params={"lora.style.scale": 0.0, "lora.ink.scale": 0.0}))
    assert np.array_equal(off, base), "scale 0 is exactly the model without LoRA"
    style = d.render(make_request(s, z, params={"lora.ink.scale": 0.0}))
    ink = d.render(make_request(s, z, params={"lora.style.scale": 0.0}))
    strong = d.render(make_request(s, z, params={"lora.style.scale": 2.0, "lora.ink.scale": 0.0}))
    for f in (style, ink, strong):
        assert not np.array_equal(f, base)
    assert not np.array_equal(style, strong) and not np.array_equal(style, ink)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        _decoder(Diffusion, tiny_models, loras=((str(tmp_path / "nope.safetensors"), "x"),))


def test_missing_folder_and_missing_parts(Diffusion, tiny_models, tmp_path, monkeypatch):
    import shutil

    missing = tmp_path / "not-here"
    with pytest.raises(FileNotFoundError) as e:
        _decoder(Diffusion, {"sd-turbo": missing})
    assert str(missing) in str(e.value) and "huggingface-cli download" in str(e.value)

    broken = tmp_path / "no-unet"
    shutil.copytree(tiny_models["sd-turbo"], broken)
    shutil.rmtree(broken / "unet")
    s = Diffusion.Settings(model=str(broken), width=W, height=H)
    d = create(DecoderSpec("diffusion", s))
    with pytest.raises(FileNotFoundError) as e:
        d.prepare()
    assert str(broken) in str(e.value) and "'unet'" in str(e.value) and "huggingface-cli download" in str(e.value)
    assert not d.prepared

    (broken / "unet").mkdir()
    (broken / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no weights"):
        _decoder(Diffusion, {"sd-turbo": broken})

    # SDXL needs its second encoder; TAESD folder must exist when named.
    xl = tmp_path / "xl"
    shutil.copytree(tiny_models["sdxl-turbo"], xl)
    shutil.rmtree(xl / "text_encoder_2")
    with pytest.raises(FileNotFoundError, match="text_encoder_2"):
        _decoder(Diffusion, {"sdxl-turbo": xl}, "sdxl-turbo")
    with pytest.raises(FileNotFoundError, match="TAESD"):
        _decoder(Diffusion, tiny_models, taesd=str(tmp_path / "no-taesd"))

    # A hub id while offline: one clear message, no network.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = Diffusion.Settings(model="stabilityai/sd-turbo", width=W, height=H)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download stabilityai/sd-turbo"):
        create(DecoderSpec("diffusion", s)).prepare()


def test_bench_on_cpu(tiny_models):
    from installation.decoders.diffusion.bench import bench

    out = bench(str(tiny_models["sd-turbo"]), size=64, steps=1, frames=3, device="cpu",
                taesd=str(tiny_models["taesd"]))
    assert out["frames"] == 3 and out["fps"] > 0
    assert {"encode", "unet", "decode", "convert"} <= set(out["stages_ms"])
    assert set(out["memory_mib"]) == {"allocated_start", "reserved_start", "allocated_end", "reserved_end"}


def test_weights_variant_choice(tmp_path):
    from installation.decoders.weights import weights_variant as _weights_variant

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "diffusion_pytorch_model.safetensors").touch()
    (tmp_path / "a" / "diffusion_pytorch_model.fp16.safetensors").touch()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.fp16.safetensors").touch()
    (tmp_path / "c").mkdir()
    assert _weights_variant(tmp_path / "a") is None
    assert _weights_variant(tmp_path / "a", prefer_fp16=True) == "fp16"
    assert _weights_variant(tmp_path / "b") == "fp16"
    assert _weights_variant(tmp_path / "c") is False
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "diffusion_pytorch_model.bin").touch()
    assert _weights_variant(tmp_path / "d") is False, "a pickled .bin never counts as weights"


def test_pickled_weights_are_refused_and_never_unpickled(Diffusion, tiny_models, tmp_path):
    """A folder whose UNet (or TAESD) has only a .bin, here a pickle whose payload would create a marker: refused
    with one line at start (check) and by prepare; the payload never runs."""
    import shutil

    from installation.config import ConfigError, check_decoder_files
    from installation.decoders.weights import UnsafeModelFile
    from payloads import torch_saved

    marker = tmp_path / "pwned"
    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_models["sd-turbo"], folder)
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(torch_saved(marker, w=torch.zeros(2)))
    s = Diffusion.Settings(model=str(folder), width=W, height=H)
    with pytest.raises(UnsafeModelFile, match=r"bin-only/unet: only pickled weights .*safetensors only"):
        Diffusion.check(s)
    with pytest.raises(UnsafeModelFile):
        create(DecoderSpec("diffusion", s)).prepare()
    taesd = tmp_path / "taesd-bin"
    shutil.copytree(tiny_models["taesd"], taesd)
    for f in taesd.glob("*.safetensors"):
        f.unlink()
    (taesd / "diffusion_pytorch_model.bin").write_bytes(torch_saved(marker, w=torch.zeros(2)))
    s = _settings(Diffusion, tiny_models, taesd=str(taesd))
    with pytest.raises(UnsafeModelFile, match="taesd-bin: only pickled weights"):
        Diffusion.check(s)
    with pytest.raises(UnsafeModelFile):
        create(DecoderSpec("diffusion", s)).prepare()

    class _Scene:  # what check_decoder_files reads: the start-up path to exit 2
        path = tmp_path / "scene.toml"
        decoder = DecoderSpec("diffusion", s)

    with pytest.raises(ConfigError, match="only pickled weights"):
        check_decoder_files(_Scene())
    assert not marker.exists()
    torch.load(taesd / "diffusion_pytorch_model.bin", weights_only=False)
    assert marker.exists(), "the fixture is live: an unrestricted torch.load runs it"


def test_a_pickled_lora_runs_nothing(Diffusion, tiny_models, tmp_path):
    """A .bin/.pt LoRA is read only by torch's weights-only unpickler: a payload is refused with one line naming
    the file, and never runs."""
    from payloads import torch_saved

    marker = tmp_path / "pwned"
    evil = tmp_path / "style.bin"
    evil.write_bytes(torch_saved(marker, w=torch.zeros(2)))
    with pytest.raises(ValueError, match=r"LoRA 'style': .*style.bin.*tensors"):
        _decoder(Diffusion, tiny_models, loras=((str(evil), "style"),))
    assert not marker.exists()


def test_loading_does_not_warn_about_accelerate(Diffusion, tiny_models):
    """accelerate is not installed on purpose (it did not speed up loading or lower its peak memory here): loads say
    nothing about it, on the UNet, TAESD or the full VAE."""
    import logging

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    library = logging.getLogger("diffusers")  # diffusers' own root logger, which does not propagate
    library.addHandler(handler)
    try:
        _decoder(Diffusion, tiny_models)  # the full VAE
        _decoder(Diffusion, tiny_models, taesd=str(tiny_models["taesd"]))
    finally:
        library.removeHandler(handler)
    assert not [m for m in seen if "accelerate" in m]


def test_a_diffusion_show_lists_its_parameters_without_importing_torch(tiny_models, tmp_path):
    """`installation params` for a show playing a diffusion scene reads the scene's live parameters from the
    decoder's kind (installation/decoders/diffusion/kind.py) and the model folder's config files: no torch."""
    import shutil

    from support import ROOT as REPO, print_only

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    text = (REPO / "scenes" / "turbo.toml").read_text()
    text = text.replace('"../models/sd-turbo"', f'"{tiny_models["sd-turbo"]}"')
    text = text.replace('"../models/taesd"', f'"{tiny_models["taesd"]}"').replace("512", "64")
    (scenes / "turbo.toml").write_text(text)
    shutil.copy(REPO / "scenes" / "aurora.toml", scenes)
    config = tmp_path / "show.toml"
    config.write_text(f'[show]\nscenes = ["turbo", "aurora"]\nscenes_dir = "{scenes}"\n'
                      f'shaders_dir = "{REPO / "shaders"}"\n')
    out, heavy = print_only("params", "--config", str(config))
    assert heavy == "-", f"imported {heavy}"
    assert "diffusion.strength" in out and "prompt.1.gain" in out
