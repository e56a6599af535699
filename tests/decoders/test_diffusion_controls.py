"""ControlNet and T2I-Adapter controls against diffusers' own pipelines, on tiny random models built the way
diffusers' tests build them (``ControlNetModel.from_unet``, a small ``T2IAdapter``), saved and loaded back through
the folders a user names. Latents are compared where they enter the VAE (the pipelines' ``output_type="latent"``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusion_support import PROMPT
from diffusion_support import assert_close as _close
from diffusion_support import assert_stream_batch_lags_one_frame
from diffusion_support import decoded_latents as _render
from diffusion_support import make_decoder as _decoder
from installation.decoders import decoder_class
from support import wait_until, write_show



@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _randomise(module, seed):
    """ControlNet's zero convolutions start at zero (no effect at all): give them weights, so the test can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def controls(tiny_models, tmp_path_factory):
    """Two ControlNets from the tiny SD-Turbo UNet, one from the SDXL one (another base), an SD folder whose first
    down block has cross-attention (where a T2I-Adapter's features go in) and an adapter for it."""
    import diffusers

    root = tmp_path_factory.mktemp("controls")
    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_models["sd-turbo"], subfolder="unet")
    out = {}
    for i in range(2):
        torch.manual_seed(10 + i)
        cn = diffusers.ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
        _randomise(cn, i)
        cn.save_pretrained(root / f"cn{i}")
        out[f"cn{i}"] = root / f"cn{i}"
    xl = diffusers.UNet2DConditionModel.from_pretrained(tiny_models["sdxl-turbo"], subfolder="unet")
    torch.manual_seed(12)
    cn = diffusers.ControlNetModel.from_unet(xl, conditioning_embedding_out_channels=(8, 8, 8, 16))
    _randomise(cn, 2)
    cn.save_pretrained(root / "cn-xl")
    out["cn-xl"] = root / "cn-xl"
    # SD with a cross-attention first block (a T2I-Adapter adds inside blocks that have attention, before the
    # downsampler), as diffusers' adapter tests build theirs.
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(tiny_models["sd-turbo"], safety_checker=None)
    torch.manual_seed(3)
    pipe.unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 4), norm_num_groups=4, use_linear_projection=True, cross_attention_dim=32)
    pipe.save_pretrained(root / "sd-attn-first")
    out["sd-attn-first"] = root / "sd-attn-first"
    torch.manual_seed(4)
    diffusers.T2IAdapter(in_channels=3, channels=[8, 16], num_res_blocks=1, downscale_factor=8,
                         adapter_type="full_adapter").save_pretrained(root / "adapter")
    out["adapter"] = root / "adapter"
    img = np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(img).save(root / "structure.png")
    out["image"] = root / "structure.png"
    return out


def _pipe(cls, folder, taesd, **kw):
    import diffusers

    p = getattr(diffusers, cls).from_pretrained(folder, vae=diffusers.AutoencoderTiny.from_pretrained(taesd),
                                                safety_checker=None, **kw)
    p.set_progress_bar_config(disable=True)
    return p


def _image_tensor(path):
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.mark.parametrize("steps,two", [(1, False), (2, True)])
def test_controlnet_matches_the_pipeline(tiny_models, controls, steps, two):
    """One ControlNet, and two summed (Multi-ControlNet) with the second acting from half-way (set live on the
    bus), as diffusers' StableDiffusionControlNetPipeline computes them."""
    import diffusers

    taesd = tiny_models["taesd"]
    spec = [{"model": str(controls["cn0"]), "source": str(controls["image"]), "scale": 0.7}]
    if two:
        spec.append({"model": str(controls["cn1"]), "source": str(controls["image"]), "scale": 1.3})
    d = _decoder(tiny_models["sd-turbo"], taesd, steps=steps, controls=tuple(spec))
    z = torch.randn((1, *d.lat_shape), generator=torch.Generator().manual_seed(3))
    mine = _render(d, z[0].numpy(), {"control.1.start": 0.5} if two else {})  # live guidance start
    nets = [diffusers.ControlNetModel.from_pretrained(c["model"]) for c in spec]
    pipe = _pipe("StableDiffusionControlNetPipeline", tiny_models["sd-turbo"], taesd,
                 controlnet=nets if two else nets[0])
    img = _image_tensor(controls["image"])
    kw = dict(controlnet_conditioning_scale=[c["scale"] for c in spec], control_guidance_start=[0.0, 0.5],
              control_guidance_end=[1.0, 1.0]) if two else dict(controlnet_conditioning_scale=0.7)
    ref = pipe(PROMPT, image=[img] * len(spec) if two else img, num_inference_steps=steps, guidance_scale=0.0,
               height=64, width=64, latents=z.clone(), output_type="latent", **kw).images
    _close(mine, ref)
    # control.0.scale = 0 (live, on the bus) takes control 0 out: with one control that is the plain render
    if not two:
        plain = _decoder(tiny_models["sd-turbo"], taesd, steps=steps)
        without = _render(plain, z[0].numpy())
        _close(mine, without, same=False)
        _close(_render(d, z[0].numpy(), {"control.0.scale": 0.0}), without)
        _close(_render(d, z[0].numpy(), {"control.0.scale": 0.7}), ref)


@pytest.mark.parametrize("kind", ["sdxl", "img2img"])
def test_controlnet_sdxl_and_img2img_match_the_pipelines(tiny_models, controls, kind):
    """StableDiffusionXLControlNetPipeline (text-to-image), StableDiffusionControlNetImg2ImgPipeline (the camera as
    the img2img source, the control from a file)."""
    import diffusers
    from PIL import Image

    taesd = tiny_models["taesd"]
    model = tiny_models["sdxl-turbo" if kind == "sdxl" else "sd-turbo"]
    cn = controls["cn-xl" if kind == "sdxl" else "cn0"]
    ctl = ({"model": str(cn), "source": str(controls["image"]), "scale": 0.9},)
    extra = {"strength": 0.5, "img2img_noise": "trajectory"} if kind == "img2img" else {}
    d = _decoder(model, taesd, steps=2, controls=ctl, **extra)
    gen = torch.Generator().manual_seed(6)
    z = torch.randn((1, *d.lat_shape), generator=gen)
    img = _image_tensor(controls["image"])
    net = diffusers.ControlNetModel.from_pretrained(cn)
    args = dict(guidance_scale=0.0, controlnet_conditioning_scale=0.9, output_type="latent")
    if kind == "sdxl":
        mine = _render(d, z[0].numpy())
        pipe = _pipe("StableDiffusionXLControlNetPipeline", model, taesd, controlnet=net, add_watermarker=False)
        ref = pipe(PROMPT, image=img, num_inference_steps=2, height=64, width=64, latents=z.clone(), **args).images
    else:
        src = np.random.default_rng(8).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        mine = _render(d, z[0].numpy(), extras={"source": src})
        pipe = _pipe("StableDiffusionControlNetImg2ImgPipeline", model, taesd, controlnet=net)
        ref = pipe(PROMPT, image=Image.fromarray(src), control_image=img, num_inference_steps=4, strength=0.5,
                   generator=torch.Generator().manual_seed(6), **args).images
    _close(mine, ref)


def test_t2i_adapter_matches_the_pipeline(tiny_models, controls):
    import diffusers

    taesd = tiny_models["taesd"]
    folder = controls["sd-attn-first"]
    d = _decoder(folder, taesd, steps=2, controls=({"model": str(controls["adapter"]),
                                                    "source": str(controls["image"]), "scale": 0.8},))
    z = torch.randn((1, *d.lat_shape), generator=torch.Generator().manual_seed(4))
    mine = _render(d, z[0].numpy())
    pipe = _pipe("StableDiffusionAdapterPipeline", folder, taesd,
                 adapter=diffusers.T2IAdapter.from_pretrained(controls["adapter"]))
    ref = pipe(PROMPT, image=_image_tensor(controls["image"]), num_inference_steps=2, guidance_scale=0.0, height=64,
               width=64, latents=z.clone(), adapter_conditioning_scale=0.8, output_type="latent").images
    _close(mine, ref)
    _close(mine, _render(_decoder(folder, taesd, steps=2), z[0].numpy()), same=False)


def test_camera_control_takes_edges_and_holds(tiny_models, controls, monkeypatch):
    """A canny control from the camera: the edges of the frame at the decoder's size; the camera is not the img2img
    source then; when frames stop, the last image holds and the frames are counted."""
    import cv2

    from installation.decoders.diffusion import decoder as decoder_mod

    d = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=1,
                 controls=({"model": str(controls["cn0"]), "kind": "canny"},))
    frame = np.zeros((120, 160, 3), np.uint8)
    cv2.rectangle(frame, (40, 30), (120, 90), (255, 255, 255), -1)
    z = np.zeros(d.lat_shape, np.float32)
    first = _render(d, z, extras={"source": frame})
    small = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)
    edges = cv2.Canny(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), 100, 200)
    got = d.buf["ctl_img.0"][0].permute(1, 2, 0).numpy()
    assert edges.any() and np.array_equal(got[:, :, 0], edges / 255.0)
    assert d.stats()["control_held"] == 0
    monkeypatch.setattr(decoder_mod, "CONTROL_HOLD_S", 0.0)
    held = _render(d, z + 0.5)  # no frame: the last edges hold
    assert d.stats()["control_held"] == 1
    assert np.array_equal(d.buf["ctl_img.0"][0].permute(1, 2, 0).numpy()[:, :, 0], edges / 255.0)
    _close(held, first, same=False)  # a new z still renders (txt2img: the camera is not the img2img source)
    # The edge map the camera process sent beside a frame is taken as it is (here one unlike the frame's edges)
    made = d.stats()["control_edges_made"]
    shipped = np.zeros((64, 64), np.uint8)
    shipped[::4] = 255
    other = np.zeros((64, 64, 3), np.uint8)
    other[10:50, 5:20] = 200
    _render(d, z, extras={"source": other, "edges": {(64, 64, 100, 200): shipped, (64, 64, 1, 2): edges}})
    assert np.array_equal(d.buf["ctl_img.0"][0, 0].numpy(), shipped / 255.0)
    assert d.stats()["control_edges_made"] == made


@pytest.mark.parametrize("isolation", ["lockstep", "process"])
def test_a_camera_canny_scene_takes_the_camera_process_edges(tiny_models, controls, tmp_path, isolation):
    """Through the runtime, the decoder in this process (lockstep) or its own: the camera's process makes the edges at
    the decoder's size with the control's thresholds, and the decoder takes them (it makes none itself but for the
    warm-up's frame and any sent before the ask; /health counts them)."""
    from installation.clock import FixedClock, WallClock
    from installation.config import load_show
    from installation.render.targets import HeadlessTarget
    from installation.runtime import Runtime
    from support import scene_toml, write_show

    live = "lavfi:testsrc2=size=160x120:rate=30,realtime"
    dec = (f'type = "diffusion"\nmodel = "{tiny_models["sd-turbo"]}"\ntaesd = "{tiny_models["taesd"]}"\n'
           f'width = 64\nheight = 64\n[[decoder.controls]]\nmodel = "{controls["cn0"]}"\nkind = "canny"\n'
           f'low = 50\nhigh = 150\n')
    process = '[decoder]\nisolation = "process"\nmax_fps = 20\n' if isolation == "process" else ""
    cfg = write_show(tmp_path, {"d": scene_toml(decoder=dec, shaders='["present"]')},
                     extra=f'[inputs.camera]\nenabled = true\nsource = "{live}"\n' + process)
    spec = load_show(cfg)
    target = HeadlessTarget(spec.config.output.size)
    rt = Runtime(spec, target, WallClock() if process else FixedClock(20), fps=20)
    try:
        rt.start()

        def rendered(n):
            rt.step()
            stats = rt.decoder_stats()
            health = stats.get("decoder_health") or {}
            return health.get("control_frames", 0) >= n and health

        health = wait_until(lambda: rendered(6), 240, every=0.05)
        assert health, (rt.decoder_stats(), rt.camera.stats())
        frame = rt.camera.last_source
        assert set(rt.camera.latest_edges(frame)) <= {(64, 64, 50, 150)}
        assert health["control_edges_made"] <= 2 and health["control_held"] == 0  # none before the first frame
    finally:
        rt.close()
        target.close()


def test_missing_or_foreign_control_names_both(tiny_models, controls, tmp_path):
    Diffusion = decoder_class("diffusion")
    base = dict(model=str(tiny_models["sd-turbo"]), width=64, height=64)
    missing = tmp_path / "no-such-controlnet"
    with pytest.raises(FileNotFoundError) as e:
        Diffusion.check(Diffusion.Settings(**base, controls=({"model": str(missing)},)))
    assert str(missing) in str(e.value) and str(tiny_models["sd-turbo"]) in str(e.value)
    with pytest.raises(ValueError) as e:
        Diffusion.check(Diffusion.Settings(**base, controls=({"model": str(controls["cn-xl"])},)))
    msg = str(e.value)
    assert "another base (SDXL)" in msg and str(controls["cn-xl"]) in msg and str(tiny_models["sd-turbo"]) in msg
    assert "\n" not in msg


@pytest.mark.parametrize("case", ["foreign", "no-depth-folder", "depth-without-model"])
def test_a_bad_control_stops_the_start_with_one_line(tiny_models, controls, tmp_path, case):
    """Through the command a user runs: exit 2, one line naming what is wrong: a control made for another base (its
    folder and the model's), a depth model folder that is not there, a depth control that names none."""
    import subprocess
    import sys

    missing = tmp_path / "no-such-depth-model"
    control = {"foreign": f'model = "{controls["cn-xl"]}"\nkind = "canny"\n',
               "no-depth-folder": f'model = "{controls["cn0"]}"\nkind = "depth"\ndepth_model = "{missing}"\n',
               "depth-without-model": f'model = "{controls["cn0"]}"\nkind = "depth"\n'}[case]
    cfg = write_show(tmp_path, {"ctl": f'[decoder]\ntype = "diffusion"\nmodel = "{tiny_models["sd-turbo"]}"\n'
                                       f'taesd = "{tiny_models["taesd"]}"\nwidth = 64\nheight = 64\n\n'
                                       f'[[decoder.controls]]\n{control}'})
    r = subprocess.run([sys.executable, "-m", "installation", "params", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("installation:")]
    assert len(lines) == 1, r.stderr
    if case == "foreign":
        assert str(controls["cn-xl"]) in lines[0] and str(tiny_models["sd-turbo"]) in lines[0]
        assert "another base (SDXL)" in lines[0]
    elif case == "no-depth-folder":
        assert f"no such depth model folder {missing}" in lines[0]
    else:
        assert 'kind = "depth" needs depth_model' in lines[0] and "ctl.toml" in lines[0]


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    """A tiny random DPT (transformers' DPTForDepthEstimation from a small config) and its image processor, saved
    with safetensors weights as a user's folder would be."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    folder = tmp_path_factory.mktemp("depth") / "dpt"
    torch.manual_seed(21)
    cfg = DPTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4, backbone_out_indices=[0, 1, 2, 3],
                    num_attention_heads=2, intermediate_size=32, neck_hidden_sizes=[8, 8, 16, 16],
                    fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(cfg).save_pretrained(folder, safe_serialization=True)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder


def test_depth_control_is_the_depth_pipelines_normalised_depth(tiny_models, controls, depth_model):
    """kind depth: the depth model's prediction at the control's size, min-max normalised to 0..1 as transformers'
    depth-estimation pipeline does, is the control image (three channels), from a file and from the camera (a frame
    of another size: the processor's own post-processing to the control's size); and it steers the render."""
    from PIL import Image
    from transformers import pipeline

    ctl = ({"model": str(controls["cn0"]), "kind": "depth", "depth_model": str(depth_model),
            "source": str(controls["image"])},
           {"model": str(controls["cn1"]), "kind": "depth", "depth_model": str(depth_model)})
    d = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=1, controls=ctl)
    assert len({id(m) for m in d._depth.values()}) == 1  # one model for both
    pipe = pipeline("depth-estimation", model=str(depth_model))

    def normalised(depth):
        depth = depth.float()
        return (depth - depth.min()) / (depth.max() - depth.min())

    def got(j):
        img = d.buf[f"ctl_img.{j}"][0]
        assert torch.equal(img[0], img[1]) and torch.equal(img[0], img[2])
        return img[0]

    z = np.zeros(d.lat_shape, np.float32)
    frame = np.random.default_rng(7).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    first = _render(d, z, extras={"source": frame})
    ref = pipe(Image.open(controls["image"]))  # the file is at the control's size (64x64): the pipeline's output
    torch.testing.assert_close(got(0), normalised(ref["predicted_depth"]), rtol=0, atol=1e-5)
    assert np.abs(np.asarray(ref["depth"], np.int16) - (got(0).numpy() * 255).astype(np.int16)).max() <= 1
    with torch.inference_mode():
        out = pipe.model(**pipe.image_processor(images=Image.fromarray(frame), return_tensors="pt"))
        camera = pipe.image_processor.post_process_depth_estimation(out, [(64, 64)])[0]["predicted_depth"]
    torch.testing.assert_close(got(1), normalised(camera), rtol=0, atol=1e-5)
    assert 0.0 <= got(1).min() and got(1).max() == 1.0 and 0.1 < got(1).mean() < 0.9
    _close(_render(d, z, {"control.1.scale": 0.0}, extras={"source": frame}), first, same=False)  # it steers


def test_stream_batch_carries_each_requests_control(tiny_models, controls):
    """Under stream batch each request keeps its own camera image and control scale: frame n is request n - 1
    rendered alone (2 steps), while the camera and control.0.scale move every frame."""
    import cv2

    ctl = ({"model": str(controls["cn0"]), "kind": "canny"},)
    ref = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=2, controls=ctl)
    d = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=2, controls=ctl, stream_batch=True)
    rng = np.random.default_rng(9)
    reqs = []
    for i in range(4):
        frame = np.zeros((64, 64, 3), np.uint8)
        cv2.circle(frame, (16 + 10 * i, 32), 12, (255, 255, 255), -1)
        reqs.append((rng.standard_normal(d.lat_shape).astype(np.float32), {"control.0.scale": 0.5 + 0.3 * i},
                     {"source": frame}))
    assert_stream_batch_lags_one_frame(ref, d, reqs)


def test_controls_compare_bench_on_cpu(tiny_models, controls, depth_model):
    """`installation bench --compare controls --control DIR --depth DIR` figures: one fps per variant from one run,
    and what one edge map of a camera frame costs (now made in the camera's process)."""
    from installation.decoders.diffusion.bench import compare

    r = compare(str(tiny_models["sd-turbo"]), "controls", size=64, steps=1, rounds=1, device="cpu",
                taesd=str(tiny_models["taesd"]), control=str(controls["cn0"]), depth=str(depth_model), frames=1)
    assert set(r["fps"]) == {"none", "control", "canny_decoder", "canny_camera", "depth"}
    assert all(v > 0 for v in r["fps"].values()) and r["canny_ms"] > 0 and r["camera_size"] == [1024, 576]
    assert set(r["control_image_ms"]) == {"canny_decoder", "canny_camera"}


def test_depth_anything_folder_gives_the_pipelines_depth(tmp_path):
    """The other family the README names: a tiny random Depth Anything (a DINOv2 backbone), checked and loaded from
    its folder as a scene's would be, gives transformers' pipeline's normalised depth for the same image."""
    from PIL import Image
    from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor,
                              pipeline)

    from installation.decoders.diffusion.depth import DepthEstimator, check_depth_model

    torch.manual_seed(22)
    backbone = Dinov2Config(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=32, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, patch_size=8, neck_hidden_sizes=[8, 8, 16, 16],
        fusion_hidden_size=16, head_hidden_size=8))
    with torch.no_grad():
        model.head.conv3.bias.fill_(0.5)  # random weights end mostly under the head's ReLU: lift them off zero
    model.save_pretrained(tmp_path / "da", safe_serialization=True)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(tmp_path / "da")
    check_depth_model(tmp_path / "da", "control 0")
    img = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mine = DepthEstimator(tmp_path / "da", "cpu", torch.float32)(img, 64, 64)
    ref = pipeline("depth-estimation", model=str(tmp_path / "da"))(Image.fromarray(img))["predicted_depth"]
    torch.testing.assert_close(mine, (ref - ref.min()) / (ref.max() - ref.min()), rtol=0, atol=1e-5)
    assert mine.std() > 0.05
    # A received folder whose weights are a pickle carrying a payload (beside the real weights): refused, nothing runs
    from safetensors.torch import load_file

    from payloads import torch_saved

    marker = tmp_path / "ran"
    weights = tmp_path / "da" / "model.safetensors"
    (tmp_path / "da" / "pytorch_model.bin").write_bytes(torch_saved(marker, **load_file(weights)))
    weights.unlink()
    with pytest.raises(ValueError, match="only pickled weights"):
        check_depth_model(tmp_path / "da", "control 0")
    assert not marker.exists()
    torch.load(tmp_path / "da" / "pytorch_model.bin", weights_only=False)  # the payload is live
    assert marker.exists()
