"""Image prompts (IP-Adapter) against diffusers' own path: a pipeline with ``load_ip_adapter`` from the same
.safetensors file and ``ip_adapter_image_embeds`` from the pipeline's own ``encode_image``, on tiny random models
built the way diffusers' IP-Adapter tests build theirs (to_k_ip/to_v_ip per cross-attention layer, an
ImageProjection with 4 tokens, a small CLIPVisionModelWithProjection: ``random_models.make_ip_adapter``). Latents are compared
where they enter the VAE (the pipelines' ``output_type="latent"``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_support import PROMPT
from diffusion_support import assert_close as _close
from diffusion_support import assert_stream_batch_lags_one_frame
from diffusion_support import decoded_latents as _render
from diffusion_support import make_decoder as _decoder
from support import write_show
from installation.decoders import decoder_class

NEGATIVE = "blurry"


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="module")
def ip(tiny_models, tmp_path_factory):
    """An IP-Adapter file and CLIP image encoder for the tiny SD-Turbo, an adapter for the tiny SDXL-Turbo (the same
    encoder), two images."""
    from PIL import Image

    from installation.decoders.random_models import make_ip_adapter

    root = tmp_path_factory.mktemp("ip")
    sd = make_ip_adapter(tiny_models["sd-turbo"], root / "sd", seed=1)
    xl = make_ip_adapter(tiny_models["sdxl-turbo"], root / "xl", seed=2)
    rng = np.random.default_rng(5)
    for name, shape in (("a.png", (48, 64, 3)), ("b.png", (64, 40, 3))):  # not square: the preprocessing crops
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / name)
    return {"file": Path(sd["path"]), "xl": Path(xl["path"]),
            "encoder": Path(sd["image_encoder"]), "a": root / "a.png", "b": root / "b.png"}


def _ip(ip, images=("a",), weights=None, scale=0.7, **kw):
    weights = weights or [1.0] * len(images)
    return {"path": str(ip["file"]), "image_encoder": str(ip["encoder"]), "scale": scale,
            "images": [{"source": im if im == "camera" else str(ip[im]), "weight": w}
                       for im, w in zip(images, weights)], **kw}


def _pipe(tiny_models, ip, scale, xl=False):
    """diffusers' StableDiffusion(XL)Pipeline with the image encoder and the adapter file loaded its own way."""
    import diffusers
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    cls, extra = (diffusers.StableDiffusionXLPipeline, {"add_watermarker": False}) if xl else \
        (diffusers.StableDiffusionPipeline, {"safety_checker": None, "requires_safety_checker": False})
    p = cls.from_pretrained(
        tiny_models["sdxl-turbo" if xl else "sd-turbo"],
        vae=diffusers.AutoencoderTiny.from_pretrained(tiny_models["taesd"]),
        image_encoder=CLIPVisionModelWithProjection.from_pretrained(ip["encoder"]),
        feature_extractor=CLIPImageProcessor(size=32, crop_size=32), **extra)
    file = ip["xl" if xl else "file"]
    p.load_ip_adapter(str(file.parent), subfolder="", weight_name=file.name)
    p.set_ip_adapter_scale(scale)
    p.set_progress_bar_config(disable=True)
    return p


def _embeds(pipe, ip, names, weights):
    """The pipeline's own image embeddings (feature extractor + encoder), blended by weight as the decoder does."""
    from PIL import Image

    embs = [pipe.encode_image(Image.open(ip[n]).convert("RGB"), "cpu", 1)[0] for n in names]
    total = sum(weights)
    return sum(e * (w / total) for e, w in zip(embs, weights))[None]  # [1, 1, D]


@pytest.mark.parametrize("cfg", ["none", "full", "sdxl"])
def test_ip_adapter_matches_the_pipeline(tiny_models, ip, cfg):
    """One image (1 step, turbo; SD and SDXL) and two blended 1:3 with full CFG and a negative prompt (2 steps; the
    negative image embedding is zeros, as diffusers' encode_image gives), with ip.scale and the weights set live."""
    two, xl = cfg == "full", cfg == "sdxl"
    names = ("a", "b") if two else ("a",)
    steps, guidance = (2, 1.5) if two else (1, 0.0)
    spec = _ip(ip, names, scale=0.7)
    if xl:
        spec["path"] = str(ip["xl"])
    d = _decoder(tiny_models["sdxl-turbo" if xl else "sd-turbo"], tiny_models["taesd"], steps=steps,
                 guidance=guidance, negative_prompt=NEGATIVE, ip_adapter=spec)
    z = torch.randn((1, *d.lat_shape), generator=torch.Generator().manual_seed(3))
    params = {"ip.scale": 0.9, "ip.0.weight": 0.5, "ip.1.weight": 1.5} if two else {}
    mine = _render(d, z[0].numpy(), params)
    pipe = _pipe(tiny_models, ip, 0.9 if two else 0.7, xl)
    emb = _embeds(pipe, ip, names, [0.5, 1.5] if two else [1.0])
    if two:
        emb = torch.cat([torch.zeros_like(emb), emb])
    ref = pipe(PROMPT, negative_prompt=NEGATIVE if two else None, num_inference_steps=steps,
               guidance_scale=guidance, height=64, width=64, latents=z.clone(), output_type="latent",
               ip_adapter_image_embeds=[emb]).images
    _close(mine, ref)


def test_weight_or_scale_zero_is_no_adapter_and_the_image_matters(tiny_models, ip):
    taesd = tiny_models["taesd"]
    d = _decoder(tiny_models["sd-turbo"], taesd, steps=2, ip_adapter=_ip(ip, ("a", "b"), [1.0, 0.0]))
    plain = _decoder(tiny_models["sd-turbo"], taesd, steps=2)
    z = np.random.default_rng(1).standard_normal(d.lat_shape).astype(np.float32)
    without = _render(plain, z)
    with_a = _render(d, z)
    _close(with_a, without, same=False)
    _close(_render(d, z, {"ip.scale": 0.0}), without)
    _close(_render(d, z, {"ip.0.weight": 0.0}), without)  # both weights 0: no image prompt
    with_b = _render(d, z, {"ip.0.weight": 0.0, "ip.1.weight": 1.0})
    _close(with_b, with_a, same=False)  # another image, another picture
    _close(_render(d, z, {"ip.0.weight": 3.0}), with_a)  # one image: its share is all, whatever its weight over 1


@pytest.mark.parametrize("cfg", ["self", "onetime"])
def test_residual_cfg_modes_take_the_image_prompt(tiny_models, ip, cfg):
    """Residual CFG (no negative row, or one at the first step): the adapter acts, and at scale 0 it is the plain
    render of the same mode."""
    taesd = tiny_models["taesd"]
    kw = dict(steps=2, guidance=1.5, cfg=cfg, negative_prompt=NEGATIVE)
    d = _decoder(tiny_models["sd-turbo"], taesd, ip_adapter=_ip(ip), **kw)
    plain = _decoder(tiny_models["sd-turbo"], taesd, **kw)
    z = np.random.default_rng(2).standard_normal(d.lat_shape).astype(np.float32)
    without = _render(plain, z)
    _close(_render(d, z), without, same=False)
    _close(_render(d, z, {"ip.scale": 0.0}), without)


def test_stream_batch_carries_each_requests_image_prompt(tiny_models, ip):
    """Per request under stream batch: frame n is request n - 1 rendered alone while ip.scale and the weights move
    every frame."""
    taesd = tiny_models["taesd"]
    spec = _ip(ip, ("a", "b"))
    ref = _decoder(tiny_models["sd-turbo"], taesd, steps=2, ip_adapter=spec)
    d = _decoder(tiny_models["sd-turbo"], taesd, steps=2, ip_adapter=spec, stream_batch=True)
    rng = np.random.default_rng(9)
    reqs = [(rng.standard_normal(d.lat_shape).astype(np.float32),
             {"ip.scale": 0.3 + 0.4 * i, "ip.0.weight": float(i % 2), "ip.1.weight": 1.0}) for i in range(4)]
    assert_stream_batch_lags_one_frame(ref, d, reqs)


def test_camera_image_prompt_is_rate_limited_and_holds(tiny_models, ip, monkeypatch):
    """The camera's frame becomes the image prompt (not the img2img source), encoded as diffusers preprocesses it;
    a change within 1/camera_hz waits and is encoded when the interval has passed even if no frame follows; with
    no frames the last image holds, counted in /health."""
    import diffusers  # noqa: F401 - the pipeline's encode_image is the reference
    from PIL import Image

    from installation.decoders.diffusion import ip_adapter as ip_mod

    d = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=1,
                 ip_adapter=_ip(ip, ("camera",), camera_hz=0.1))
    plain = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=1)
    z = np.zeros(d.lat_shape, np.float32)
    blank = _render(plain, z)
    _close(_render(d, z), blank)  # no frame yet: no image prompt
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    pipe = _pipe(tiny_models, ip, 0.7)
    want = [pipe.encode_image(Image.fromarray(f), "cpu", 1)[0] for f in frames]
    first = _render(d, z, extras={"source": frames[0]})
    _close(first, blank, same=False)  # txt2img: the camera is the image prompt, not the source
    assert torch.allclose(d.buf["ip_img.0"][0], want[0], atol=1e-6)
    _render(d, z + 0.1, extras={"source": frames[1]})  # within 10 s of the first: waits
    assert torch.allclose(d.buf["ip_img.0"][0], want[0], atol=1e-6)
    d._ip._encoded_at -= 10.0  # the interval has passed
    monkeypatch.setattr(ip_mod, "HOLD_S", 0.0)
    held = _render(d, z)  # no frame: the waiting one is encoded now, then it holds
    assert torch.allclose(d.buf["ip_img.0"][0], want[1], atol=1e-6)
    _close(held, first, same=False)
    assert d.health()["ip_held"] >= 1


def test_bad_files_stop_the_check_with_one_line(tiny_models, ip, tmp_path):
    Diffusion = decoder_class("diffusion")
    base = dict(model=str(tiny_models["sd-turbo"]), width=64, height=64)
    missing = tmp_path / "no-such-encoder"
    with pytest.raises(FileNotFoundError) as e:
        Diffusion.check(Diffusion.Settings(**base, ip_adapter={**_ip(ip), "image_encoder": str(missing)}))
    assert str(missing) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError) as e:
        Diffusion.check(Diffusion.Settings(**base, ip_adapter={**_ip(ip), "path": str(ip["xl"])}))
    msg = str(e.value)
    assert "another base" in msg and str(ip["xl"]) in msg and str(tiny_models["sd-turbo"]) in msg


def _show(tmp_path, ip_table: str, tiny_models) -> Path:
    return write_show(tmp_path, {"ip": f'[decoder]\ntype = "diffusion"\nmodel = "{tiny_models["sd-turbo"]}"\n'
                                       f'taesd = "{tiny_models["taesd"]}"\nwidth = 64\nheight = 64\n\n{ip_table}'})


def test_a_pickled_adapter_stops_the_start_and_params_lists_the_live_values(tiny_models, ip, tmp_path):
    """Through the command a user runs: a .bin adapter carrying a pickled payload (the adapter's own weights beside
    it, as a received file would be) exits 2 with one line naming it and runs nothing; a good scene (its image path
    relative to the scene's folder) lists ip.scale and ip.<i>.weight."""
    import shutil

    from safetensors.torch import load_file

    from payloads import torch_saved

    shutil.copy(ip["a"], tmp_path / "mood.png")
    marker = tmp_path / "ran"
    crafted = tmp_path / "ip-adapter.bin"
    crafted.write_bytes(torch_saved(marker, **load_file(ip["file"])))
    table = (f'[decoder.ip_adapter]\npath = "{crafted}"\nimage_encoder = "{ip["encoder"]}"\n\n'
             f'[[decoder.ip_adapter.images]]\nsource = "../mood.png"\n')
    cfg = _show(tmp_path, table, tiny_models)
    for command in ("params", "run"):
        r = subprocess.run([sys.executable, "-m", "installation", command, "--config", str(cfg),
                            *(["--headless", "--duration", "1"] if command == "run" else [])],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("installation:")]
        assert len(lines) == 1 and str(crafted) in lines[0] and ".safetensors" in lines[0]
        assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the payload is live: an unsafe loader runs it
    assert marker.exists()
    run = [sys.executable, "-m", "installation", "params", "--config", str(cfg)]
    cfg = _show(tmp_path, table.replace(str(crafted), str(ip["file"])) + "weight = 0.5\n\n"
                "[[decoder.ip_adapter.images]]\nsource = \"camera\"\n", tiny_models)
    r = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for name in ("ip.scale", "ip.0.weight", "ip.1.weight"):
        assert name in r.stdout


def test_ip_adapter_with_a_controlnet_matches_the_pipeline(tiny_models, ip, tmp_path):
    """An image prompt beside a ControlNet (the ControlNet sees the text only, as in diffusers), against
    StableDiffusionControlNetPipeline with the same adapter loaded its own way."""
    import diffusers
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_models["sd-turbo"], subfolder="unet")
    torch.manual_seed(10)
    net = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # its zero convolutions would make it act not at all
        for p in net.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    net.save_pretrained(tmp_path / "cn")
    img = np.random.default_rng(6).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "structure.png")
    d = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=2, ip_adapter=_ip(ip, scale=0.8),
                 controls=({"model": str(tmp_path / "cn"), "source": str(tmp_path / "structure.png"), "scale": 0.7},))
    z = torch.randn((1, *d.lat_shape), generator=torch.Generator().manual_seed(8))
    mine = _render(d, z[0].numpy())
    pipe = diffusers.StableDiffusionControlNetPipeline.from_pretrained(
        tiny_models["sd-turbo"], controlnet=diffusers.ControlNetModel.from_pretrained(tmp_path / "cn"),
        vae=diffusers.AutoencoderTiny.from_pretrained(tiny_models["taesd"]), safety_checker=None,
        requires_safety_checker=False, image_encoder=CLIPVisionModelWithProjection.from_pretrained(ip["encoder"]),
        feature_extractor=CLIPImageProcessor(size=32, crop_size=32))
    pipe.load_ip_adapter(str(ip["file"].parent), subfolder="", weight_name=ip["file"].name)
    pipe.set_ip_adapter_scale(0.8)
    pipe.set_progress_bar_config(disable=True)
    control = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    ref = pipe(PROMPT, image=control, num_inference_steps=2, guidance_scale=0.0, height=64, width=64,
               latents=z.clone(), controlnet_conditioning_scale=0.7, output_type="latent",
               ip_adapter_image_embeds=[_embeds(pipe, ip, ("a",), [1.0])]).images
    _close(mine, ref)
