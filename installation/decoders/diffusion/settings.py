"""What a scene sets for the diffusion decoder, and the bounded reading of its live values from the bus."""

from __future__ import annotations

import math
from typing import ClassVar, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..base import DecoderSettings
from .image_prompts import IPAdapterSettings

FAMILIES = ("sd21", "sdxl", "lcm")
STEP_RANGE = {"sd21": (1, 4), "sdxl": (1, 4), "lcm": (2, 8)}
EXAMPLE_REPO = {"sd21": "stabilityai/sd-turbo", "sdxl": "stabilityai/sdxl-turbo",
                "lcm": "SimianLuo/LCM_Dreamshaper_v7", "auto": "stabilityai/sd-turbo"}
MAX_PROMPT_CHARS = 2000
CONTROLS_MAX = 4
PROMPT_GAINS = 16  # prompt.0.gain .. prompt.15.gain on the bus: as many as a show's live prompt set may hold


class ControlSettings(BaseModel):
    """One ``[[decoder.controls]]``: a ControlNet or T2I-Adapter folder and the image that steers it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="a diffusers ControlNetModel or T2IAdapter folder (.safetensors)")
    kind: Literal["canny", "depth", "image"] = Field(
        "image", description="canny: the source's edges (made in the camera's process for a camera); depth: its depth "
                             "(depth_model); image: the source as it is (an edge, depth or pose map already)")
    source: str = Field("camera", description="'camera' or an image file")
    scale: float = Field(1.0, ge=0.0, le=4.0, description="conditioning scale (live: control.<i>.scale)")
    start: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps before the control acts")
    end: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps after which it stops")
    low: int = Field(100, ge=0, le=1000, description="canny: lower hysteresis threshold")
    high: int = Field(200, ge=0, le=1000, description="canny: upper hysteresis threshold")
    depth_model: str = Field("", description="depth: a transformers depth-estimation folder (DPT, Depth Anything; "
                                             ".safetensors), run on the decoder's device when the source changes")

    @model_validator(mode="after")
    def _check_depth(self) -> "ControlSettings":
        if self.kind == "depth" and not self.depth_model:
            raise ValueError('kind = "depth" needs depth_model = "<folder>": a transformers depth-estimation model '
                             "(DPT, Depth Anything) saved with .safetensors weights")
        if self.depth_model and self.kind != "depth":
            raise ValueError(f'depth_model is read only by kind = "depth", not {self.kind!r}')
        return self


class DiffusionSettings(DecoderSettings):
    """What a scene sets for the diffusion decoder (all hashable, so equal settings share one prepared model)."""

    path_fields: ClassVar[tuple[str, ...]] = ("model", "taesd", "source")
    nested_path_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "controls": ("model", "source", "depth_model"), "ip_adapter": ("path", "image_encoder", "images.source")}

    model: str = Field(description="local diffusers folder, or a hub id (used only when online)")
    local_files_only: bool = Field(False, description="never touch the network for a hub id (HF_HUB_OFFLINE=1 too)")
    family: Literal["auto", "sd21", "sdxl", "lcm"] = "auto"
    steps: int = Field(1, ge=1, le=8, description="denoising steps per frame: 1-4 (LCM 2-8)")
    timesteps: tuple[int, ...] = Field((), description="explicit timesteps (descending); empty = as the folder's "
                                                      "scheduler sets them")
    taesd: str = Field("", description="folder of an AutoencoderTiny (TAESD) used instead of the full VAE")
    width: int = Field(512, ge=64, le=2048)
    height: int = Field(512, ge=64, le=2048)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cuda_graph: bool = True
    compile: bool = False
    compile_cache_dir: str = ""
    prompts: tuple[tuple[str, float], ...] = ()
    negative_prompt: str = ""
    guidance: float = Field(0.0, ge=0.0, le=30.0, description=">1 enables classifier-free guidance (see cfg)")
    cfg: Literal["full", "self", "onetime", "none"] = Field(
        "full", description="how guidance > 1 is paid for: full CFG (2x UNet batch), or StreamDiffusion's residual "
                            "CFG: self (the negative is the residual towards the source image: 1x), onetime (the "
                            "negative prompt evaluated at the first step only: steps+1 UNet rows), none (no CFG)")
    rcfg_delta: float = Field(1.0, ge=0.0, le=2.0, description="residual CFG's magnitude moderation of the negative "
                                                               "(delta in Kodaira et al. 2023)")
    stream_batch: bool = Field(False, description="2-4 steps in one batched UNet call per frame: each frame one new "
                                                  "latent enters, one leaves finished (steps-1 frames of latency)")
    blend: Literal["lerp", "slerp"] = "lerp"
    source: str = Field("", description="image file used as the img2img source")
    references: tuple[str, ...] = Field((), description="image files encoded and blended as the img2img source")
    strength: float = Field(0.5, ge=0.0, le=1.0, description="img2img strength (0 = the source's reconstruction)")
    img2img_noise: Literal["fixed", "trajectory"] = "fixed"
    latent_source: bool = Field(False, description="request.z is an image latent (the images trajectory over a space "
                                                   "file), rendered by img2img from it at diffusion.strength")
    similar_threshold: float = Field(0.004, ge=0.0, le=1.0,
                                     description="mean |diff| (0..1) under which a camera source counts unchanged")
    similar_max_skip: int = Field(30, ge=0, description="render at least every N frames even when nothing changed")
    emergence: bool = False
    loras: tuple[tuple[str, str], ...] = Field((), description="(path, name) pairs; scale on lora.<name>.scale")
    controls: tuple[ControlSettings, ...] = Field((), description="ControlNets / T2I-Adapters ([[decoder.controls]]), "
                                                                  "their residuals summed")
    ip_adapter: IPAdapterSettings | None = Field(None, description="image prompts ([decoder.ip_adapter])")
    seed: int = 0
    prompt_cache_size: int = Field(64, ge=2, le=4096)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v % 8:
            raise ValueError(f"must be a multiple of 8, not {v}")
        return v

    @model_validator(mode="after")
    def _check_steps(self) -> "DiffusionSettings":
        if self.family != "auto":
            lo, hi = STEP_RANGE[self.family]
            if not lo <= self.steps <= hi:
                raise ValueError(f"steps={self.steps} outside {lo}-{hi} for family {self.family}")
        if self.timesteps and len(self.timesteps) != self.steps:
            raise ValueError(f"timesteps has {len(self.timesteps)} entries but steps={self.steps}")
        if any(not 0 <= t < 1000 for t in self.timesteps):
            raise ValueError("timesteps must lie in 0..999")
        if self.stream_batch and not 2 <= self.steps <= 4:
            raise ValueError(f"stream_batch needs steps 2-4, not {self.steps}")
        if self.stream_batch and self.emergence:
            raise ValueError("stream_batch and emergence cannot be combined (emergence shows one frame's steps)")
        if len(self.controls) > CONTROLS_MAX:
            raise ValueError(f"at most {CONTROLS_MAX} controls, not {len(self.controls)}")
        names = [n for _, n in self.loras]
        if len(set(names)) != len(names):
            raise ValueError("LoRA names must be unique")
        return self


def bounded(params: Mapping[str, float], name: str, default: float, lo: float, hi: float) -> float:
    """A bus value, bounded; anything non-finite or non-numeric falls back to the default."""
    v = params.get(name, default)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    if not math.isfinite(v):
        return default
    return min(max(v, lo), hi)
