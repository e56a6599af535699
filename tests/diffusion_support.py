"""Shared by the diffusion decoder's equality tests: a decoder built as a scene builds it, the latents it hands to
the VAE for one request, and the comparison against diffusers' own pipelines."""

from __future__ import annotations

import numpy as np

from installation.decoders import DecoderSpec, LatentRequest, create, decoder_class

PROMPT = "a red cat"
REL_TOL = 1e-5  # max |decoder - diffusers| over the largest latent: float32 on the CPU, the same ops in another order


def make_decoder(folder, taesd, **kw):
    """A prepared diffusion decoder at 64x64 for the model folder, checked as a scene's settings are."""
    Diffusion = decoder_class("diffusion")
    s = Diffusion.Settings(model=str(folder), taesd=str(taesd), width=64, height=64, prompts=((PROMPT, 1.0),), **kw)
    Diffusion.check(s)
    d = create(DecoderSpec("diffusion", s))
    d.prepare()
    return d


def decoded_latents(d, z, params=None, extras=None):
    """The latents the decoder's VAE decodes for one request, in the pipeline's scale."""
    seen = []
    h = d.vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().float().clone()))
    try:
        d.render(LatentRequest(z=np.asarray(z, np.float32), t=0.0, seq=0, decoder=DecoderSpec("diffusion", d.settings),
                               params=params or {}, extras=extras or {}))
    finally:
        h.remove()
    assert seen, "the frame was not decoded (skipped as unchanged?)"
    return seen[0] * d.vae_scale


def assert_close(mine, ref, same=True):
    """Equal within REL_TOL of the reference's scale, or (same=False) clearly different."""
    diff = (mine - ref).abs().max().item()
    scale = ref.abs().max().item()
    if same:
        assert diff <= REL_TOL * scale, f"max |decoder - diffusers| = {diff:.3g} (latents up to {scale:.3g})"
    else:
        assert diff > 1e-3 * scale, "it made no difference"


def assert_stream_batch_lags_one_frame(ref, d, reqs):
    """A stream batch's frame n is the unbatched decoder's render of request n-1 (each request carries its own
    live values), and the requests differ enough that a mix-up shows."""
    expected = [decoded_latents(ref, *r) for r in reqs]
    assert_close(expected[1], expected[2], same=False)
    for n, r in enumerate(reqs):
        got = decoded_latents(d, *r)
        if n >= 1:
            assert_close(got, expected[n - 1])
