"""Diffusion decoder: SD-Turbo / SDXL-Turbo / LCM (+ optional TAESD) with an own 1-8 step loop per frame.

The model is built from its diffusers components (never a pipeline ``__call__`` per frame); the timesteps and the
starting latent are the ones the folder's scheduler gives a diffusers pipeline, so a frame is the pipeline's for the
same noise and prompt (tests/decoders/test_diffusion_parity.py). Prompts are encoded once each (LRU cache) and
blended by weight; img2img, reference-image blends, emergence (seeing x0 develop) and live-scaled LoRAs are
supported; guidance as full CFG or StreamDiffusion's residual CFG, and the steps of consecutive frames as one
batched UNet call (stream batch). On CUDA the whole frame (steps + scheduler arithmetic + decode + uint8 conversion + finite flag) is one
captured graph over static buffers; float32 eager on the CPU always works.

The parts, by seam: ``settings`` (what a scene sets, bounded bus values), ``loading`` (folder checks, family
detection, the components), ``schedules`` (the timesteps, as the folder's scheduler sets them), ``prompts`` (encode,
cache, blend), ``sources`` (img2img images on the host), ``image_prompts`` and ``ip_adapter`` (IP-Adapter image
prompts: the scene's side without torch, the model's side), ``program`` (the per-frame program over static buffers
and its CUDA graph) and ``decoder`` (prepare and render, registered as "diffusion"); ``kind`` answers what a scene
needs before anything is loaded (settings, latent shape, live parameters, file checks) without importing torch.
"""

from .loading import check_weights, detect_family, resolve_model_dir, validate_model_dir, vae_factor
from .settings import DiffusionSettings


def __getattr__(name: str):
    if name == "DiffusionDecoder":  # on first use: importing the package (a scene check) never imports torch
        from .decoder import DiffusionDecoder

        return DiffusionDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DiffusionDecoder", "DiffusionSettings", "check_weights", "detect_family", "resolve_model_dir",
           "validate_model_dir", "vae_factor"]
