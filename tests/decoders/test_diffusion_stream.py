"""Residual CFG and stream batch (StreamDiffusion, Kodaira et al. 2023) on tiny random models.

Residual CFG is checked against the paper's formula computed here directly on the folder's UNet; a stream-batched
frame against the unbatched render of the same request. Latents are compared where they enter the VAE.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from installation.decoders import DecoderSpec, LatentRequest, create, decoder_class

PROMPT, NEGATIVE = "a red cat", "blur"
REL_TOL = 1e-5  # of max |latent|: float32 round-off (the batched UNet sums in another order)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def _decoder(folder, taesd, **kw):
    Diffusion = decoder_class("diffusion")
    kw.setdefault("prompts", ((PROMPT, 1.0),))
    s = Diffusion.Settings(model=str(folder), taesd=str(taesd), width=64, height=64, **kw)
    d = create(DecoderSpec("diffusion", s))
    d.prepare()
    return d


def _render(d, z, params=None, extras=None, rows=None):
    """The latent on its way into the VAE (x0 in the UNet's space); ``rows`` collects the UNet's batch sizes."""
    seen = []
    hooks = [d.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().float().clone()))]
    if rows is not None:
        hooks.append(d.unet.register_forward_pre_hook(lambda m, a: rows.append(int(a[0].shape[0]))))
    try:
        d.render(LatentRequest(z=np.asarray(z, np.float32), t=0.0, seq=0, decoder=DecoderSpec("diffusion", d.settings),
                               params=params or {}, extras=extras or {}))
    finally:
        for h in hooks:
            h.remove()
    assert len(seen) == 1
    return seen[0] * d.vae_scale


def _close(mine, ref):
    diff = (mine - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert diff <= REL_TOL * scale, f"max |diff| = {diff:.3g} (latents up to {scale:.3g})"


def _encode(d, text):
    return d.prompts.encode(text)[0]


def _paper_rcfg(d, mode, x, ref, gamma, delta):
    """Kodaira et al. 2023, section 3.3, written out: eps_cfg = delta*eps' + gamma*(eps_c - delta*eps'), eps' the
    virtual residual noise (x_t - sqrt(a_t) x0_ref) / sqrt(1 - a_t); self: x0_ref the input image's latent (zero
    for text-to-image); onetime: the negative prompt's UNet output at the first step (its x0 the reference after).
    Steps as the decoder takes them (DDIM with eta 0: x' = sqrt(a') x0 + sqrt(1 - a') eps)."""
    acp = d.scheduler.alphas_cumprod.double()
    ts = list(d.timesteps_now)
    cond, neg = _encode(d, PROMPT), _encode(d, NEGATIVE)
    x0 = None
    with torch.inference_mode():
        for i, t in enumerate(ts):
            a = float(acp[int(t)])
            sa, s1a = math.sqrt(a), math.sqrt(1 - a)
            tt = torch.tensor([float(t)])
            eps_c = d.unet(x, tt, encoder_hidden_states=cond).sample
            if mode == "full":
                eps_n = d.unet(x, tt, encoder_hidden_states=neg).sample
                eps = eps_n + gamma * (eps_c - eps_n)
            else:
                if mode == "onetime" and i == 0:
                    eps_virtual = d.unet(x, tt, encoder_hidden_states=neg).sample
                    ref = (x - s1a * eps_virtual) / sa
                else:
                    eps_virtual = (x - sa * ref) / s1a
                eps = delta * eps_virtual + gamma * (eps_c - delta * eps_virtual)
            x0 = (x - s1a * eps) / sa
            a_next = float(acp[int(ts[i + 1])]) if i + 1 < len(ts) else 1.0
            x = math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps
    return x0


@pytest.mark.parametrize("mode,img2img", [("self", True), ("self", False), ("onetime", True), ("full", True)])
def test_residual_cfg_is_the_papers_formula(tiny_models, unit_z, mode, img2img):
    """Each mode's latent equals the formula on the same UNet; the UNet sees 1 row a step (self), 2 at the first
    step only (onetime), 2 every step (full)."""
    gamma, delta, steps = 3.0, 0.8, 3
    d = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=steps, guidance=gamma, cfg=mode,
                 rcfg_delta=delta, negative_prompt=NEGATIVE, strength=0.7)
    z = unit_z(d.lat_shape, 1)
    extras = {}
    if img2img:
        extras["source"] = np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    rows: list[int] = []
    mine = _render(d, z, extras=extras, rows=rows)
    assert rows == {"self": [1] * steps, "onetime": [2] + [1] * (steps - 1), "full": [2] * steps}[mode]
    b = d.buf
    if img2img:
        a0 = d.program.alpha_start
        src = b["src"].float().clone()
        x = math.sqrt(a0) * src + math.sqrt(1 - a0) * b["fixed_noise"].float()
    else:
        src = torch.zeros_like(b["src"])
        x = d.z_coef * torch.from_numpy(z)[None]
    _close(mine, _paper_rcfg(d, mode, x, src, gamma, delta))


def test_cfg_none_ignores_guidance(tiny_models, unit_z):
    z = unit_z((4, 8, 8), 3)
    plain = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=2)
    off = _decoder(tiny_models["sd-turbo"], tiny_models["taesd"], steps=2, guidance=5.0, cfg="none",
                   negative_prompt=NEGATIVE)
    rows: list[int] = []
    _close(_render(off, z, rows=rows), _render(plain, z))
    assert rows == [1, 1]


def test_settings_refuse_stream_batch_out_of_range():
    Diffusion = decoder_class("diffusion")
    with pytest.raises(ValueError, match="stream_batch needs steps 2-4"):
        Diffusion.Settings(model="x", steps=1, stream_batch=True)
    with pytest.raises(ValueError, match="emergence"):
        Diffusion.Settings(model="x", steps=2, stream_batch=True, emergence=True)


def _requests(n, shape, img2img):
    """n different requests: new noise, a prompt that changes, and (img2img) a moving camera and strength."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        params, extras = {}, {"prompts": ((PROMPT if i < n // 2 else "a blue boat", 1.0),)}
        if img2img:
            extras["source"] = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
            params["diffusion.strength"] = 0.5 + 0.1 * (i % 4)
        out.append((rng.standard_normal(shape).astype(np.float32), params, extras))
    return out


@pytest.mark.parametrize("model,steps,kw,img2img", [
    ("sd-turbo", 3, {"guidance": 2.5, "cfg": "self", "negative_prompt": NEGATIVE}, False),
    ("sd-turbo", 2, {"guidance": 2.5, "cfg": "onetime", "negative_prompt": NEGATIVE, "img2img_noise": "trajectory"},
     True),
    ("sdxl-turbo", 2, {"guidance": 2.0, "cfg": "full", "negative_prompt": NEGATIVE}, False),
    ("lcm", 3, {"guidance": 8.0}, False),
])
def test_stream_batch_frame_is_the_unbatched_render(tiny_models, model, steps, kw, img2img):
    """Frame n of a stream batch is request n - (steps - 1) rendered alone; one UNet call a frame; a repeated
    request is rendered until the frames in flight have left, then skipped."""
    ref = _decoder(tiny_models[model], tiny_models["taesd"], steps=steps, **kw)
    d = _decoder(tiny_models[model], tiny_models["taesd"], steps=steps, stream_batch=True, **kw)
    if model == "lcm":  # the same fresh noise between steps in both
        with torch.inference_mode():
            d.buf["renoise"].copy_(ref.buf["renoise"])
    reqs = _requests(6, d.lat_shape, img2img)
    expected = [_render(ref, *r) for r in reqs]
    lag = steps - 1
    for n, r in enumerate(reqs):
        rows: list[int] = []
        got = _render(d, *r, rows=rows)
        assert len(rows) == 1, "one UNet call a frame"
        assert torch.isfinite(got).all()
        if n >= lag:
            _close(got, expected[n - lag])
    for _ in range(lag):  # the last request again: the frames still in flight come out
        got = _render(d, *reqs[-1])
    _close(got, expected[-1])
    skipped = d.stats()["skipped"]
    d.render(LatentRequest(z=reqs[-1][0], t=0.0, seq=0, decoder=DecoderSpec("diffusion", d.settings),
                           params=reqs[-1][1], extras=reqs[-1][2]))
    assert d.stats()["skipped"] == skipped + 1


def test_compare_bench_on_cpu(tiny_models):
    """`installation bench --compare` figures: one fps per variant, from one run."""
    from installation.decoders.diffusion.bench import compare

    r = compare(str(tiny_models["sd-turbo"]), "stream", size=64, steps=2, frames=2, rounds=1, device="cpu",
                taesd=str(tiny_models["taesd"]))
    assert set(r["fps"]) == {"sequential", "stream_batch"} and all(v > 0 for v in r["fps"].values())
    assert r["ratio"]["sequential"] == 1.0
    with pytest.raises(ValueError, match="compare must be one of"):
        compare(str(tiny_models["sd-turbo"]), "nope", device="cpu")
