"""The diffusion decoder against diffusers' own pipelines given the same tiny folder, noise and prompt.

Compared in latent space (the pipelines' ``output_type="latent"``, the decoder's latent caught on its way into the
VAE), so TAESD's input clamp hides nothing; the pixels through TAESD are checked too. The tolerance is float32
round-off relative to the latents' size (a random tiny UNet predicts x0 in the tens at t=999).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from installation.decoders import DecoderSpec, LatentRequest, create, decoder_class

PROMPT = "a red cat"
REL_TOL = 1e-5  # of max |latent|; float32 round-off is ~3e-7 of it, the wrong start ~2e-3


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _decoder(folder, size, **kw):
    Diffusion = decoder_class("diffusion")
    s = Diffusion.Settings(model=str(folder), width=size, height=size, prompts=((PROMPT, 1.0),), **kw)
    d = create(DecoderSpec("diffusion", s))
    d.prepare()
    return d


def _render(d, z, params=None, extras=None):
    """(frame, latent): the latent as the pipeline returns it (x0 in the UNet's space), caught before the VAE."""
    module = d.vae.decoder if d.tiny_vae else d.vae.post_quant_conv
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().float().clone()))
    try:
        req = LatentRequest(z=np.asarray(z, np.float32), t=0.0, seq=0, decoder=DecoderSpec("diffusion", d.settings),
                            params=params or {}, extras=extras or {})
        frame = d.render(req)
    finally:
        handle.remove()
    assert len(seen) == 1
    return frame, seen[0] * d.vae_scale


def _pipe(cls, folder, taesd=None, **kw):
    """A diffusers pipeline loaded the way a user loads one (from_pretrained on the folder; TAESD as its VAE)."""
    import diffusers

    if taesd is not None:
        kw["vae"] = diffusers.AutoencoderTiny.from_pretrained(taesd)
    pipe = getattr(diffusers, cls).from_pretrained(folder, local_files_only=True, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _assert_same_latent(mine, ref):
    assert mine.shape == ref.shape
    diff = (mine - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert diff <= REL_TOL * scale, f"max |decoder - diffusers| = {diff:.3g} (latents up to {scale:.3g})"
    return diff


def _noise(shape, seed):
    """What ``randn_tensor`` draws from a CPU generator: the pipelines' noise, and the decoder's z."""
    return torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed))


def _set_renoise(d, gen):
    """LCM's fresh noise between steps: the draws the pipeline's scheduler makes, in its order, into the decoder."""
    with torch.inference_mode():
        for i in range(d.settings.steps - 1):
            d.buf["renoise"][i].copy_(torch.randn((1, *d.lat_shape), generator=gen))


def _sd_kw(model):
    return {"safety_checker": None} if model != "sdxl-turbo" else {"add_watermarker": False}


@pytest.mark.parametrize("model,steps,size", [
    ("sd-turbo", 1, 64), ("sd-turbo", 2, 96), ("sd-turbo", 4, 64), ("sdxl-turbo", 1, 64), ("sdxl-turbo", 2, 96),
])
def test_text_to_image_matches_the_pipeline(tiny_models, model, steps, size):
    """SD-Turbo / SDXL-Turbo (Euler, trailing): same timesteps, same start (sigma_max-scaled noise), same x0."""
    taesd = tiny_models["taesd"]
    d = _decoder(tiny_models[model], size, steps=steps, taesd=str(taesd))
    cls = "StableDiffusionXLPipeline" if model == "sdxl-turbo" else "StableDiffusionPipeline"
    pipe = _pipe(cls, tiny_models[model], taesd, **_sd_kw(model))
    z = _noise(d.lat_shape, 3)
    frame, mine = _render(d, z[0].numpy())
    args = dict(prompt=PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=size, width=size)
    ref = pipe(latents=z.clone(), output_type="latent", **args).images
    assert list(d.timesteps_now) == pipe.scheduler.timesteps.tolist()
    _assert_same_latent(mine, ref)
    # And so the frames through TAESD, to the rounding of the last 8-bit step.
    img = pipe(latents=z.clone(), output_type="np", **args).images[0]
    assert np.abs(frame.astype(int) - (img * 255).round().astype(int)).max() <= 1


@pytest.mark.parametrize("steps,timesteps", [(3, [999, 679, 339]), (4, [999, 759, 499, 259])])
def test_lcm_matches_the_pipeline(tiny_models, steps, timesteps):
    """LCM takes its steps from the 50-step distillation schedule, and renoises between steps."""
    taesd = tiny_models["taesd"]
    d = _decoder(tiny_models["lcm"], 64, steps=steps, guidance=8.0, taesd=str(taesd))
    pipe = _pipe("LatentConsistencyModelPipeline", tiny_models["lcm"], taesd, safety_checker=None)
    z = _noise(d.lat_shape, 4)
    _set_renoise(d, torch.Generator().manual_seed(5))
    _, mine = _render(d, z[0].numpy())
    ref = pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=8.0, height=64, width=64, latents=z.clone(),
               generator=torch.Generator().manual_seed(5), output_type="latent").images
    assert list(d.timesteps_now) == pipe.scheduler.timesteps.tolist() == timesteps
    _assert_same_latent(mine, ref)


def _image(size, seed=0):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : size // 2] = (200, 40, 40)
    img[:, size // 2:] = (30, 60, 220)
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("model,steps,strength", [
    ("sd-turbo", 1, 0.5), ("sd-turbo", 2, 0.5), ("sdxl-turbo", 2, 0.25), ("lcm", 2, 0.5), ("lcm", 3, 0.8),
])
def test_img2img_matches_the_pipeline(tiny_models, model, steps, strength):
    """The source noised to the first timestep, the timesteps the img2img pipeline keeps (LCM: its scheduler's)."""
    from PIL import Image

    taesd = tiny_models["taesd"]
    size = 64
    lcm = model == "lcm"
    d = _decoder(tiny_models[model], size, steps=steps, strength=strength, img2img_noise="trajectory",
                 taesd=str(taesd), **({"guidance": 8.0} if lcm else {}))
    cls = {"sd-turbo": "StableDiffusionImg2ImgPipeline", "sdxl-turbo": "StableDiffusionXLImg2ImgPipeline",
           "lcm": "LatentConsistencyModelImg2ImgPipeline"}[model]
    pipe = _pipe(cls, tiny_models[model], taesd, **_sd_kw(model))
    # The pipeline draws the img2img noise first, then (LCM) a renoise per step but the last, from one generator.
    gen = torch.Generator().manual_seed(6)
    z = torch.randn((1, *d.lat_shape), generator=gen)
    _set_renoise(d, gen)
    src = _image(size)
    _, mine = _render(d, z[0].numpy(), extras={"source": src})
    # diffusers runs steps/strength steps and keeps the last `steps`; LCM takes `steps` of its partial schedule.
    n = steps if lcm else round(steps / strength)
    ref = pipe(prompt=PROMPT, image=Image.fromarray(src), num_inference_steps=n, strength=strength,
               guidance_scale=8.0 if lcm else 0.0, generator=torch.Generator().manual_seed(6),
               output_type="latent").images
    assert list(d.timesteps_now) == pipe.scheduler.timesteps[-steps:].tolist()
    _assert_same_latent(mine, ref)


@pytest.mark.parametrize("name,config,steps", [
    ("euler-linspace", {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "linspace"}, 3),
    ("euler-leading", {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"}, 2),
    ("ddim-trailing", {"_class_name": "DDIMScheduler", "timestep_spacing": "trailing", "set_alpha_to_one": True}, 2),
])
def test_the_folder_scheduler_sets_the_start(tiny_models, tmp_path, name, config, steps):
    """Whatever the folder's scheduler, the decoder starts and steps where the pipeline does.

    Euler with linspace spacing starts from sigma_max-scaled noise at fractional timesteps; with leading spacing from
    the noise as it is (init_noise_sigma = sqrt(sigma_max^2 + 1)); DDIM from the noise as it is.
    """
    folder = tmp_path / name
    shutil.copytree(tiny_models["sd-turbo"], folder)
    cfg_file = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(config)
    cfg_file.write_text(json.dumps(cfg))
    index = json.loads((folder / "model_index.json").read_text())  # as save_pretrained writes a swapped scheduler
    index["scheduler"] = ["diffusers", config["_class_name"]]
    (folder / "model_index.json").write_text(json.dumps(index))
    d = _decoder(folder, 64, steps=steps)
    pipe = _pipe("StableDiffusionPipeline", folder, safety_checker=None)
    assert type(pipe.scheduler).__name__ == config["_class_name"]
    z = _noise(d.lat_shape, 7)
    _, mine = _render(d, z[0].numpy())
    ref = pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=64, width=64,
               latents=z.clone(), output_type="latent").images
    assert list(d.timesteps_now) == pipe.scheduler.timesteps.tolist()
    _assert_same_latent(mine, ref)


@pytest.mark.parametrize("factor", [4, 16])
def test_vae_factor_comes_from_its_config(tiny_models, tmp_path, factor):
    """A VAE that turns 4x4 or 16x16 pixels into a latent cell: the latent shape follows, as in diffusers."""
    from installation.decoders.random_models import make_sd21

    folder = make_sd21(tmp_path / f"vae{factor}", seed=1, vae_factor=factor)
    Diffusion = decoder_class("diffusion")
    s = Diffusion.Settings(model=str(folder), width=64, height=64)
    assert Diffusion.latent_shape(s) == (4, 64 // factor, 64 // factor)
    d = _decoder(folder, 64, steps=2)
    assert d.lat_shape == Diffusion.latent_shape(d.settings)
    pipe = _pipe("StableDiffusionPipeline", folder, safety_checker=None)
    assert pipe.vae_scale_factor == factor
    z = _noise(d.lat_shape, 8)
    frame, mine = _render(d, z[0].numpy())
    ref = pipe(prompt=PROMPT, num_inference_steps=2, guidance_scale=0.0, height=64, width=64, latents=z.clone(),
               output_type="latent").images
    _assert_same_latent(mine, ref)
    assert frame.shape == (64, 64, 3)
    if factor == 16:  # a multiple of 8 that is not one of 16 is refused at start-up, naming the factor
        with pytest.raises(ValueError, match="multiples of 16"):
            Diffusion.check(Diffusion.Settings(model=str(folder), width=72, height=64))
        with pytest.raises(ValueError, match="multiples of 16"):
            _decoder(folder, 72, steps=1)


def test_a_multi_call_scheduler_gives_its_schedule_to_euler(tiny_models, tmp_path):
    """PNDM (SD 1.5's) calls the UNet more than once a step; the loop takes an Euler schedule from its config."""
    folder = tmp_path / "pndm"
    shutil.copytree(tiny_models["sd-turbo"], folder)
    cfg_file = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update({"_class_name": "PNDMScheduler", "timestep_spacing": "leading", "skip_prk_steps": True})
    cfg_file.write_text(json.dumps(cfg))
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    d = _decoder(folder, 64, steps=2)
    assert type(d.scheduler).__name__ == "EulerDiscreteScheduler"
    frame, _ = _render(d, _noise(d.lat_shape, 9)[0].numpy())
    assert d.timesteps_now == (501, 1) and d.z_coef == 1.0  # leading spacing: the noise as it is
    assert frame.std() > 1.0
