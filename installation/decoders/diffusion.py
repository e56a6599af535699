"""Diffusion decoder: SD-Turbo / SDXL-Turbo / LCM (+ optional TAESD) with an own 1-8 step loop per frame.

The model is built from its diffusers components (never a pipeline ``__call__`` per frame); the timesteps and the
starting latent are the ones the folder's scheduler gives a diffusers pipeline, so a frame is the pipeline's for the
same noise and prompt (tests/decoders/test_diffusion_parity.py). Prompts are encoded once each (LRU cache) and
blended by weight; img2img, reference-image blends, emergence (seeing x0 develop) and live-scaled LoRAs are
supported. On CUDA the whole frame (steps + scheduler arithmetic + decode + uint8 conversion + finite flag) is one
captured graph over static buffers; float32 eager on the CPU always works.

Live values read from ``request.params`` (declared on the bus by :meth:`DiffusionDecoder.param_specs`):
``diffusion.strength`` (img2img strength 0..1), ``diffusion.guidance`` (CFG scale when CFG is on, LCM guidance
embedding), ``lora.<name>.scale``, ``prompt.<i>.gain`` (multiplies the weight of prompt i: a fader per prompt),
``reference.<i>.weight`` (weight of image i of ``source`` + ``references``, in that order).
From ``request.extras``: ``prompts`` (tuple of (text, weight)), ``source`` (HxWx3 uint8 RGB image for img2img).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from . import register
from ._accel import (PrepareProgress, Programs, Readback, StageTimer, maybe_compile, resolve_device, resolve_dtype,
                     to_uint8_hwc)
from ..bus import ParamSpec
from .base import DecoderSettings, LatentRequest, NonFiniteFrame
from .weights import UnsafeModelFile, check_pickle

log = logging.getLogger(__name__)

FAMILIES = ("sd21", "sdxl", "lcm")
_STEP_RANGE = {"sd21": (1, 4), "sdxl": (1, 4), "lcm": (2, 8)}
_EXAMPLE_REPO = {"sd21": "stabilityai/sd-turbo", "sdxl": "stabilityai/sdxl-turbo",
                 "lcm": "SimianLuo/LCM_Dreamshaper_v7", "auto": "stabilityai/sd-turbo"}
_MAX_PROMPT_CHARS = 2000
PROMPT_GAINS = 16  # prompt.0.gain .. prompt.15.gain on the bus: as many as a show's live prompt set may hold


class DiffusionSettings(DecoderSettings):
    """What a scene sets for the diffusion decoder (all hashable, so equal settings share one prepared model)."""

    path_fields: ClassVar[tuple[str, ...]] = ("model", "taesd", "source")

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
    guidance: float = Field(0.0, ge=0.0, le=30.0, description=">1 enables classifier-free guidance (2x UNet batch)")
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
            lo, hi = _STEP_RANGE[self.family]
            if not lo <= self.steps <= hi:
                raise ValueError(f"steps={self.steps} outside {lo}-{hi} for family {self.family}")
        if self.timesteps and len(self.timesteps) != self.steps:
            raise ValueError(f"timesteps has {len(self.timesteps)} entries but steps={self.steps}")
        if any(not 0 <= t < 1000 for t in self.timesteps):
            raise ValueError("timesteps must lie in 0..999")
        names = [n for _, n in self.loras]
        if len(set(names)) != len(names):
            raise ValueError("LoRA names must be unique")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Folder resolution and validation


def _hub_offline(settings: DiffusionSettings) -> bool:
    return settings.local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")) and "\\" not in s


def resolve_model_dir(settings: DiffusionSettings) -> Path:
    """The local folder for ``settings.model``: the folder itself, or the hub snapshot (offline rules honoured)."""
    path = Path(settings.model).expanduser()
    if path.exists():
        return path
    if not _looks_like_hub_id(settings.model):
        raise FileNotFoundError(
            f"diffusion model folder {path} not found; copy a diffusers folder there, e.g. "
            f"`huggingface-cli download {_EXAMPLE_REPO[settings.family]} --local-dir {path}`")
    from huggingface_hub import snapshot_download

    offline = _hub_offline(settings)
    try:
        return Path(snapshot_download(settings.model, local_files_only=offline))
    except Exception as exc:  # LocalEntryNotFoundError, connection errors, unknown repo...
        how = "offline (local_files_only or HF_HUB_OFFLINE=1) and not in the hub cache" if offline else str(exc)
        raise FileNotFoundError(
            f"diffusion model {settings.model!r}: {how}; get it once with "
            f"`huggingface-cli download {settings.model} --local-dir <folder>` and set model to that folder") from exc


def _weights_variant(folder: Path, prefer_fp16: bool = False) -> str | None | bool:
    """None for plain weights, "fp16" for the fp16 variant (when preferred or the only one), False when none.
    Only ``.safetensors`` count: a ``.bin`` is a pickle, which could run code when loaded, and is never read."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    plain = [n for n in names if n.endswith(".safetensors") and n.count(".") == 1]
    half = any(n.endswith(".fp16.safetensors") for n in names)
    if half and (prefer_fp16 or not plain):
        return "fp16"
    return None if plain else False


def check_weights(folder: Path, how: str, prefer_fp16: bool = False) -> str | None:
    """The weights variant of a component folder; FileNotFoundError when it has none, UnsafeModelFile (one line)
    when it has only pickled ``.bin`` weights."""
    variant = _weights_variant(folder, prefer_fp16)
    if variant is not False:
        return variant
    if folder.is_dir() and any(p.suffix == ".bin" for p in folder.iterdir()):
        raise UnsafeModelFile(f"{folder}: only pickled weights (*.bin), which could run code when loaded; this "
                              f"program loads *.safetensors only; {how} (the hub's repos carry both)")
    raise FileNotFoundError(f"{folder}: no weights (*.safetensors); {how}")


def vae_factor(config: Mapping[str, Any]) -> int:
    """Pixels per latent cell of a VAE config, as diffusers' pipelines derive it: 2 ** (len(block_out_channels) - 1).

    An AutoencoderTiny (TAESD) file may only name ``decoder_block_out_channels``; diffusers registers those as
    ``block_out_channels`` when it loads one.
    """
    blocks = config.get("block_out_channels") or config.get("decoder_block_out_channels")
    return 2 ** (len(blocks) - 1) if blocks else 8


def _vae_config(settings: "DiffusionSettings") -> dict[str, Any]:
    """The config.json of the VAE a scene decodes with (its TAESD, else the folder's vae/), or {} when not local."""
    folder = Path(settings.taesd).expanduser() if settings.taesd else Path(settings.model).expanduser() / "vae"
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def _check_vae_factor(settings: "DiffusionSettings", factor: int) -> None:
    if settings.width % factor or settings.height % factor:
        vae = settings.taesd or str(Path(settings.model) / "vae")
        raise ValueError(f"{vae}: this VAE turns {factor}x{factor} pixels into one latent, so width and height must "
                         f"be multiples of {factor}, not {settings.width}x{settings.height}")


def detect_family(model_dir: Path) -> str:
    """sdxl when there is a second text encoder, lcm when the pipeline or scheduler says so, else sd21."""
    index = json.loads((model_dir / "model_index.json").read_text())
    if "text_encoder_2" in index or "XL" in index.get("_class_name", ""):
        return "sdxl"
    if "LatentConsistency" in index.get("_class_name", ""):
        return "lcm"
    sched = model_dir / "scheduler" / "scheduler_config.json"
    if sched.is_file() and json.loads(sched.read_text()).get("_class_name") == "LCMScheduler":
        return "lcm"
    return "sd21"


def validate_model_dir(model_dir: Path, family: str, need_vae: bool, repo_hint: str,
                       prefer_fp16: bool = False) -> dict[str, str | None]:
    """Check every part the family needs exists; return {part: weights variant}. One message names what is missing."""
    how = f"get a complete copy with `huggingface-cli download {repo_hint} --local-dir {model_dir}`"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"diffusion model folder {model_dir} not found; {how}")
    if not (model_dir / "model_index.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no model_index.json, so it is not a diffusers folder; {how}")
    parts = ["unet", "text_encoder", "tokenizer", "scheduler"]
    if family == "sdxl":
        parts += ["text_encoder_2", "tokenizer_2"]
    if need_vae:
        parts.append("vae")
    variants: dict[str, str | None] = {}
    for part in parts:
        folder = model_dir / part
        if not folder.is_dir():
            raise FileNotFoundError(f"{model_dir}: missing the '{part}' folder; {how}")
        if part.startswith("tokenizer"):
            if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
                raise FileNotFoundError(f"{folder}: no tokenizer files (vocab.json or tokenizer.json); {how}")
            continue
        config = "scheduler_config.json" if part == "scheduler" else "config.json"
        if not (folder / config).is_file():
            raise FileNotFoundError(f"{folder}: missing {config}; {how}")
        if part != "scheduler":
            variants[part] = check_weights(folder, how, prefer_fp16 and part != "vae")
    return variants


# ---------------------------------------------------------------------------------------------------------------
# Small tensor helpers


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation along the last axis (per token), falling back to lerp for parallel vectors."""
    a32, b32 = a.float(), b.float()
    na, nb = a32.norm(dim=-1, keepdim=True), b32.norm(dim=-1, keepdim=True)
    ua, ub = a32 / na.clamp_min(1e-8), b32 / nb.clamp_min(1e-8)
    dot = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    safe = so.abs() > 1e-4
    wa = torch.where(safe, torch.sin((1 - t) * omega) / so.where(safe, torch.ones_like(so)), torch.full_like(so, 1 - t))
    wb = torch.where(safe, torch.sin(t * omega) / so.where(safe, torch.ones_like(so)), torch.full_like(so, t))
    direction = wa * ua + wb * ub
    norm = (1 - t) * na + t * nb
    out = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8) * norm
    return out.to(a.dtype)


def blend_tensors(tensors: list[torch.Tensor], weights: list[float], mode: str) -> torch.Tensor:
    """Weighted blend: normalised lerp, or cumulative slerp (exact slerp for two items)."""
    total = float(sum(weights))
    if mode == "lerp" or len(tensors) == 1:
        out = sum(t.float() * (w / total) for t, w in zip(tensors, weights))
        return out.to(tensors[0].dtype)
    acc, cum = None, 0.0
    for t, w in zip(tensors, weights):
        if w <= 0:
            continue
        acc = t if acc is None else slerp(acc, t, w / (cum + w))
        cum += w
    return acc


def guidance_embedding(w: float, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """LCM's sinusoidal embedding of the guidance scale (``time_cond_proj_dim`` UNets)."""
    wt = torch.tensor([(w - 1.0) * 1000.0])
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = wt[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb.to(device=device, dtype=dtype)


def _load_image(path: str, width: int, height: int) -> np.ndarray:
    """An RGB uint8 HxWx3 image from a file, resized to the frame size."""
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"image {p} not found (img2img source / reference)")
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.uint8).copy()


def _param(params: Mapping[str, float], name: str, default: float, lo: float, hi: float) -> float:
    """A bus value, bounded; anything non-finite or non-numeric falls back to the default."""
    v = params.get(name, default)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    if not math.isfinite(v):
        return default
    return min(max(v, lo), hi)


# ---------------------------------------------------------------------------------------------------------------


@register("diffusion")
class DiffusionDecoder:
    """Walks a text-to-image model: trajectory noise + blended prompt embeddings -> 1-8 denoising steps -> RGB."""

    Settings = DiffusionSettings

    @classmethod
    def latent_shape(cls, settings: DiffusionSettings) -> tuple[int, ...]:
        """(C, H/f, W/f): C from a local UNet config, f from the VAE's (or TAESD's) config; 4 and 8 for SD models."""
        channels = 4
        cfg = Path(settings.model).expanduser() / "unet" / "config.json"
        try:
            if cfg.is_file():
                channels = int(json.loads(cfg.read_text()).get("in_channels", 4))
        except (OSError, ValueError):
            pass
        f = vae_factor(_vae_config(settings))
        return (channels, settings.height // f, settings.width // f)

    @classmethod
    def param_specs(cls, settings: DiffusionSettings) -> list[ParamSpec]:
        """The live parameters this decoder reads, with the scene's settings as their defaults."""
        specs = [
            ParamSpec("diffusion.strength", "float", 0.0, 1.0, settings.strength, 0.3, 0.3,
                      "img2img strength: 0 shows the source (camera, image), 1 ignores it"),
            ParamSpec("diffusion.guidance", "float", 0.0, 30.0, settings.guidance, 0.3, 0.3,
                      "guidance scale (CFG when the scene's guidance > 1; LCM's guidance embedding)"),
        ]
        specs += [ParamSpec(f"prompt.{i}.gain", "float", 0.0, 4.0, 1.0, 0.5, 0.5,
                            f"multiplies prompt {i}'s weight in the blend (0 mutes it)")
                  for i in range(max(PROMPT_GAINS, len(settings.prompts)))]
        specs += [ParamSpec(f"lora.{name}.scale", "float", -4.0, 4.0, 1.0, 0.3, 0.3, f"strength of LoRA {name!r}")
                  for _, name in settings.loras]
        images = ([settings.source] if settings.source else []) + list(settings.references)
        specs += [ParamSpec(f"reference.{i}.weight", "float", 0.0, 10.0, 1.0, 0.5, 0.5,
                            f"weight of {Path(p).name} in the img2img source blend") for i, p in enumerate(images)]
        return specs

    @classmethod
    def check(cls, settings: DiffusionSettings) -> None:
        """Start-up check of a local model folder (and TAESD, images, LoRAs); hub ids are resolved in prepare()."""
        path = Path(settings.model).expanduser()
        if path.exists() or not _looks_like_hub_id(settings.model):
            model_dir = resolve_model_dir(settings)
            family = settings.family if settings.family != "auto" else (
                detect_family(model_dir) if (model_dir / "model_index.json").is_file() else "sd21")
            validate_model_dir(model_dir, family, need_vae=not settings.taesd, repo_hint=_EXAMPLE_REPO[family])
        if settings.taesd:
            taesd = Path(settings.taesd).expanduser()
            how = f"get it with `huggingface-cli download madebyollin/taesd --local-dir {settings.taesd}`"
            if not (taesd / "config.json").is_file():
                raise FileNotFoundError(f"TAESD folder {settings.taesd} not found or has no config.json; {how}")
            check_weights(taesd, how)
        _check_vae_factor(settings, vae_factor(_vae_config(settings)))
        cls._check_files(settings)

    def __init__(self, settings: DiffusionSettings, device: str = "cpu") -> None:
        if not isinstance(settings, DiffusionSettings):
            settings = DiffusionSettings.model_validate(settings)
        self.settings = settings
        self.device_name = device
        self.prepared = False
        self.encode_calls = 0
        self._counters = {"frames": 0, "skipped": 0, "nonfinite": 0, "rejected_sources": 0, "prompt_cache_hits": 0,
                          "prompt_cache_misses": 0}
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()

    # -- prepare ------------------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Resolve and validate the folder, load components, apply acceleration, warm up and capture graphs.

        All-or-nothing: on any error the partly loaded parts are released before the error propagates.
        """
        try:
            self._prepare()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _check_files(s: DiffusionSettings) -> None:
        """Every file the settings name exists, checked before any weight is loaded."""
        for path, name in s.loras:
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"LoRA {name!r}: file {Path(path).expanduser()} not found "
                                        "(a .safetensors LoRA trained for this model)")
            check_pickle(path, f"LoRA {name!r}")  # a .bin/.pt LoRA: refused at start when it is more than data
        for path in ([s.source] if s.source else []) + list(s.references):
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"image {Path(path).expanduser()} not found (img2img source / reference)")

    def _prepare(self) -> None:
        s = self.settings
        self.device = resolve_device(self.device_name)
        self.dtype = resolve_dtype(s.dtype, self.device)
        t0 = time.perf_counter()
        with PrepareProgress(f"diffusion {Path(s.model).name} {s.width}x{s.height}",
                             6 + len(self._warm_plan())) as progress:
            self._prepare_steps(progress, t0)

    def _prepare_steps(self, progress: PrepareProgress, t0: float) -> None:
        import diffusers
        from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

        s = self.settings
        progress.step("checking folders")
        self._check_files(s)
        model_dir = resolve_model_dir(s)
        if not (model_dir / "model_index.json").is_file() and model_dir.is_dir():
            validate_model_dir(model_dir, "sd21", True, _EXAMPLE_REPO[s.family])  # raises with the message
        family = s.family if s.family != "auto" else (
            detect_family(model_dir) if (model_dir / "model_index.json").is_file() else "sd21")
        repo = s.model if _looks_like_hub_id(s.model) and not Path(s.model).exists() else _EXAMPLE_REPO[family]
        lo, hi = _STEP_RANGE[family]
        if not lo <= s.steps <= hi:
            raise ValueError(f"{model_dir}: steps={s.steps} outside {lo}-{hi} for the detected family {family}")
        taesd_dir = Path(s.taesd).expanduser() if s.taesd else None
        if taesd_dir is not None:
            how = f"get it with `huggingface-cli download madebyollin/taesd{'xl' if family == 'sdxl' else ''} " \
                  f"--local-dir {taesd_dir}`"
            if not taesd_dir.is_dir():
                raise FileNotFoundError(f"TAESD folder {taesd_dir} not found; {how}")
            if not (taesd_dir / "config.json").is_file():
                raise FileNotFoundError(f"TAESD folder {taesd_dir}: missing config.json; {how}")
            check_weights(taesd_dir, how)
        variants = validate_model_dir(model_dir, family, need_vae=taesd_dir is None, repo_hint=repo,
                                      prefer_fp16=self.dtype == torch.float16)
        self.family, self.model_dir = family, model_dir
        log.info("diffusion: loading %s (family %s, %s, %s) ...", model_dir, family, self.device, self.dtype)
        progress.step("loading the UNet")

        # use_safetensors: never fall back to a pickled .bin (diffusers and transformers would, with a warning).
        kw: dict[str, Any] = {"local_files_only": True, "torch_dtype": self.dtype, "use_safetensors": True}
        # Without accelerate on purpose: loading full SD-Turbo-shaped weights took 4.6 s and peaked at 5997 MB
        # RSS without it, 4.5-4.9 s and 6000 MB with accelerate 1.15 (2-core CPU), so say so instead of letting
        # diffusers warn about it on every load.
        plain = {"low_cpu_mem_usage": False}
        self.unet = diffusers.UNet2DConditionModel.from_pretrained(
            model_dir, subfolder="unet", variant=variants["unet"], **plain, **kw)
        progress.step("loading the text encoders")
        self.tokenizers = [AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer", local_files_only=True)]
        self.text_encoders = [CLIPTextModel.from_pretrained(
            model_dir, subfolder="text_encoder", variant=variants["text_encoder"], **kw)]
        if family == "sdxl":
            self.tokenizers.append(AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer_2",
                                                                 local_files_only=True))
            self.text_encoders.append(CLIPTextModelWithProjection.from_pretrained(
                model_dir, subfolder="text_encoder_2", variant=variants["text_encoder_2"], **kw))
        progress.step("loading the scheduler and the VAE")
        # The class a pipeline loads: model_index.json's entry, else the one the scheduler's config names.
        sched_entry = json.loads((model_dir / "model_index.json").read_text()).get("scheduler") or [None, None]
        sched_name = sched_entry[1] if isinstance(sched_entry, list) and len(sched_entry) == 2 else None
        sched_cfg = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
        sched_name = sched_name or sched_cfg.get("_class_name", "DDPMScheduler")
        sched_cls = getattr(diffusers, sched_name, diffusers.DDPMScheduler)
        if family == "lcm" and sched_cls is not diffusers.LCMScheduler:
            sched_cls = diffusers.LCMScheduler
        self.scheduler = self._loop_scheduler(
            sched_cls.from_pretrained(model_dir, subfolder="scheduler", local_files_only=True), model_dir)
        if taesd_dir is not None:
            self.vae = diffusers.AutoencoderTiny.from_pretrained(
                taesd_dir, variant=check_weights(taesd_dir, "a TAESD folder with .safetensors weights",
                                                 self.dtype == torch.float16), **plain, **kw)
            self.tiny_vae = True
        else:
            vae_dtype = self.dtype
            cfg = json.loads((model_dir / "vae" / "config.json").read_text())
            if self.dtype == torch.float16 and cfg.get("force_upcast", True):
                vae_dtype = torch.float32  # the SD VAEs overflow in float16; TAESD is the fast path
                log.info("diffusion: full VAE kept in float32 (force_upcast); set taesd for speed")
            self.vae = diffusers.AutoencoderKL.from_pretrained(model_dir, subfolder="vae", variant=variants["vae"],
                                                               local_files_only=True, torch_dtype=vae_dtype,
                                                               use_safetensors=True, **plain)
            self.tiny_vae = False
        self.vae_dtype = next(self.vae.parameters()).dtype
        for m in [self.unet, self.vae, *self.text_encoders]:
            m.to(self.device).eval().requires_grad_(False)
        self.vae_scale = float(self.vae.config.get("scaling_factor", 1.0) or 1.0)
        self.vae_factor = vae_factor(self.vae.config)
        _check_vae_factor(s, self.vae_factor)
        vae_dir = taesd_dir if taesd_dir is not None else model_dir / "vae"
        lat_ch, unet_ch = int(self.vae.config.latent_channels), int(self.unet.config.in_channels)
        if lat_ch != unet_ch:
            raise ValueError(f"{vae_dir}: the VAE has {lat_ch} latent channels but the UNet takes {unet_ch}")
        self.prediction = self.scheduler.config.get("prediction_type", "epsilon")
        if self.prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"{model_dir}: unsupported prediction_type {self.prediction!r}")
        self.alphas_cumprod = self.scheduler.alphas_cumprod.double().cpu()
        self.num_train = int(self.scheduler.config.num_train_timesteps)
        self.full_schedule, self.z_coef = self._full_schedule()

        from ._lora import apply_loras

        progress.step(f"moving to {self.device}, LoRAs" + (", compile set-up" if s.compile else ""))

        self.lora_scales = apply_loras(self.unet, s.loras, self.device, self.dtype)
        self._lora_values = {name: 1.0 for name in self.lora_scales}
        self.use_graphs = bool(s.cuda_graph and self.device.type == "cuda")
        self._unet_fn = maybe_compile(self.unet, s.compile, s.compile_cache_dir, self.use_graphs)
        self._vae_decode = maybe_compile(self.vae.decoder, s.compile, s.compile_cache_dir, self.use_graphs) \
            if s.compile else None
        self.programs = Programs(self.device, self.use_graphs)
        self.readback = Readback(self.device)
        self.timer = StageTimer(self.device)
        with torch.inference_mode():
            progress.step("static buffers, negative prompt, reference images")
            self._make_buffers()
            self._load_references()
            self.prepared = True
            log.info("diffusion: loaded in %.1f s; warming up%s%s", time.perf_counter() - t0,
                     ", compiling" if s.compile else "", " and capturing CUDA graphs" if self.use_graphs else "")
            self._warm_up(progress)
        log.info("diffusion: ready in %.1f s (graphs=%s, captures=%d)", time.perf_counter() - t0, self.use_graphs,
                 self.programs.captures)

    def _make_buffers(self) -> None:
        """Static tensors every program reads or writes; their addresses never change after prepare."""
        s, dev = self.settings, self.device
        c, f = int(self.unet.config.in_channels), self.vae_factor
        h, w = s.height // f, s.width // f
        self.lat_shape = (c, h, w)
        self.cfg = s.guidance > 1.0 and self.unet.config.get("time_cond_proj_dim") is None
        batch = 2 if self.cfg else 1
        gen = torch.Generator().manual_seed(s.seed)
        emb_dim = int(self.unet.config.cross_attention_dim)
        max_len = int(self.tokenizers[0].model_max_length)
        if max_len > 10000:
            max_len = 77
        self.max_len = max_len
        b: dict[str, torch.Tensor] = {
            "z": torch.zeros((1, c, h, w), device=dev, dtype=self.dtype),
            "src": torch.zeros((1, c, h, w), device=dev, dtype=self.dtype),
            "x": torch.zeros((1, c, h, w), device=dev, dtype=self.dtype),
            "renoise": torch.randn((s.steps, 1, c, h, w), generator=gen).to(dev, self.dtype),
            "fixed_noise": torch.randn((1, c, h, w), generator=gen).to(dev, self.dtype),
            "tab": torch.zeros((s.steps, 7), device=dev, dtype=torch.float32),
            "init": torch.tensor([0.0, 1.0], device=dev, dtype=torch.float32),
            "emb": torch.zeros((batch, max_len, emb_dim), device=dev, dtype=self.dtype),
            "g": torch.tensor(max(s.guidance, 1.0), device=dev, dtype=torch.float32),
            "rgb": torch.zeros((s.height, s.width, 3), device=dev, dtype=torch.uint8),
            "ok": torch.ones((), device=dev, dtype=torch.bool),
        }
        if self.family == "sdxl":
            pooled_dim = int(self.text_encoders[1].config.projection_dim)
            b["pooled"] = torch.zeros((batch, pooled_dim), device=dev, dtype=self.dtype)
            ids = torch.tensor([s.height, s.width, 0, 0, s.height, s.width], dtype=torch.float32)
            b["time_ids"] = ids.repeat(batch, 1).to(dev, self.dtype)
        tcd = self.unet.config.get("time_cond_proj_dim")
        if tcd is not None:
            w_scale = s.guidance if s.guidance > 0 else 8.0
            b["tcond"] = guidance_embedding(w_scale, int(tcd), self.dtype, dev).repeat(batch, 1)
            self._tcond_w = w_scale
        self.buf = b
        # Source images are resized to the frame on the host, so one (pinned host, device) pair serves every camera
        # and the encode program captured in prepare() is the only one (a graph keeps the addresses it captured).
        shape = (s.height, s.width, 3)
        self._staging = (torch.empty(shape, dtype=torch.uint8, pin_memory=dev.type == "cuda"),
                         torch.zeros(shape, dtype=torch.uint8, device=dev))
        self._z_host = torch.empty((1, c, h, w), dtype=torch.float32, pin_memory=dev.type == "cuda")
        self._tab_key: float | None = None
        self._em_index = 0
        self._cond_key: tuple | None = None
        self._last_frame: np.ndarray | None = None
        self._last_key: tuple | None = None
        self._skip_run = 0
        self._prev_src_small: np.ndarray | None = None
        self._src_key: Any = None
        self._guidance_value = max(s.guidance, 1.0)
        if self.cfg:
            neg = self._encode(s.negative_prompt)
            self.buf["emb"][0].copy_(neg[0][0])
            if "pooled" in b:
                self.buf["pooled"][0].copy_(neg[1][0])

    def _load_references(self) -> None:
        """Encode the configured source/reference images to latents once (img2img and reference blends)."""
        s = self.settings
        paths = ([s.source] if s.source else []) + list(s.references)
        self.ref_latents = []
        for p in paths:
            img = _load_image(p, s.width, s.height)
            self._encode_source(img)
            self.ref_latents.append(self.buf["src"].clone())
            self.programs.sync()  # the next image reuses the pinned staging buffer this upload reads from
        self._src_key = None

    def _warm_plan(self) -> list[tuple[str, dict, dict]]:
        """The warm-up frames (label, params, extras) that reach every program a show can use."""
        s = self.settings
        plan: list[tuple[str, dict, dict]] = []
        steps = s.steps if s.emergence else 1
        full = {"diffusion.strength": s.strength or 1.0}  # strength 0 would take the reconstruction path instead
        plan += [(f"frame program, step {i + 1}/{steps}" if steps > 1 else "frame program", full, {})
                 for i in range(steps)]
        # Always the source encode (a camera may feed any diffusion scene) and the strength-0 reconstruction.
        src = {"source": np.zeros((s.height, s.width, 3), np.uint8)}
        plan.append(("source encode", {}, src))
        plan.append(("strength-0 reconstruction", {"diffusion.strength": 0.0}, src))
        return plan

    def _warm_up(self, progress: PrepareProgress) -> None:
        """Render a first frame for every program a show can use, so compile and capture never happen mid-show."""
        req_z = np.zeros(self.lat_shape, np.float32)
        what = "compile + capture" if self.settings.compile and self.use_graphs else (
            "compile" if self.settings.compile else "capture" if self.use_graphs else "warm-up")
        for label, params, extras in self._warm_plan():
            progress.step(f"{what}: {label}")
            self._render(req_z, params, extras, force=True)
        self.reset()
        for k in ("frames", "skipped", "nonfinite"):
            self._counters[k] = 0

    # -- prompts ------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prompt embeds [1,L,D], pooled [1,P] or None) for one prompt, through the LRU cache."""
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            self._counters["prompt_cache_hits"] += 1
            return hit
        self._counters["prompt_cache_misses"] += 1
        self.encode_calls += 1
        hidden, pooled = [], None
        for i, (tok, enc) in enumerate(zip(self.tokenizers, self.text_encoders)):
            ids = tok([text], padding="max_length", max_length=self.max_len, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            if self.family == "sdxl":
                out = enc(ids, output_hidden_states=True)
                hidden.append(out.hidden_states[-2])
                if i == 1:
                    pooled = out.text_embeds
            else:
                hidden.append(enc(ids)[0])
        emb = torch.cat(hidden, dim=-1).to(self.dtype)
        entry = (emb, pooled.to(self.dtype) if pooled is not None else None)
        self._cache[text] = entry
        while len(self._cache) > self.settings.prompt_cache_size:
            self._cache.popitem(last=False)
        return entry

    def _prompts(self, params: Mapping[str, float], extras: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
        """The weighted prompt set for this frame: extras (validated) or settings, weights moved by the bus."""
        raw = extras.get("prompts")
        pairs: list[tuple[str, float]] = []
        if raw is not None:
            try:
                for text, weight in raw:
                    if isinstance(text, str):
                        pairs.append((text[:_MAX_PROMPT_CHARS], float(weight)))
            except (TypeError, ValueError):
                log.warning("diffusion: ignoring malformed extras['prompts']")
                pairs = []
        if not pairs:
            pairs = list(self.settings.prompts) or [("", 1.0)]
        out = []
        for i, (text, weight) in enumerate(pairs):
            w = max(weight, 0.0) if math.isfinite(weight) else 0.0
            out.append((text, w * _param(params, f"prompt.{i}.gain", 1.0, 0.0, 1e6)))
        return tuple(out)

    def _set_condition(self, prompts: tuple[tuple[str, float], ...]) -> None:
        """Blend the cached embeddings into the static conditioning buffer (only when the blend changed)."""
        if prompts == self._cond_key:
            return
        live = [(t, w) for t, w in prompts if w > 0]
        if not live:
            live = [("", 1.0)]
        entries = [self._encode(t) for t, _ in live]
        weights = [w for _, w in live]
        emb = blend_tensors([e[0] for e in entries], weights, self.settings.blend)
        self.buf["emb"][-1].copy_(emb[0])
        if "pooled" in self.buf:
            pooled = blend_tensors([e[1] for e in entries], weights, self.settings.blend)
            self.buf["pooled"][-1].copy_(pooled[0])
        self._cond_key = prompts

    # -- the schedule, as the folder's scheduler sets it ----------------------------------------------------------

    def _loop_scheduler(self, sched: Any, model_dir: Path) -> Any:
        """The scheduler whose schedule the loop follows: the folder's own when it calls the UNet once per step (Euler,
        DDIM, LCM, DPM-Solver...); for one that calls it more often (Heun, PNDM's warm-up) an Euler scheduler from the
        same config, since the loop's step is Euler's (deterministic, == DDIM)."""
        n = self.settings.steps
        try:
            sched.set_timesteps(n)
            if getattr(sched, "order", 1) == 1 and len(sched.timesteps) == n:
                return sched
        except (ValueError, RuntimeError, TypeError):
            pass
        import diffusers

        log.info("diffusion: %s's %s does not take one UNet call per step; following an Euler schedule from its "
                 "config", model_dir, type(sched).__name__)
        return diffusers.EulerDiscreteScheduler.from_config(sched.config)

    def _scheduler_run(self, n: int | None = None, **kw: Any) -> list[tuple[float, float]]:
        """set_timesteps on the loop's scheduler, as (timestep, alphas_cumprod) per step: the alpha from the scheduler's
        own sigmas where it keeps them (Euler, DPM-Solver: fractional and Karras timesteps too), else from the table."""
        sched, T = self.scheduler, self.num_train
        if n is None:
            sched.set_timesteps(**kw)
        else:
            sched.set_timesteps(n, **kw)
        ts = [float(t) for t in sched.timesteps]
        if not ts or any(not 0.0 <= t <= T - 1 for t in ts):
            raise ValueError(f"{type(sched).__name__} gives timesteps {ts[:8]}, outside the training range 0..{T - 1}")
        sigmas = getattr(sched, "sigmas", None)
        if isinstance(sigmas, torch.Tensor) and sigmas.ndim == 1 and len(sigmas) >= len(ts):
            return [(t, 1.0 / (1.0 + float(sg) ** 2)) for t, sg in zip(ts, sigmas.tolist())]
        return [(float(round(t)), float(self.alphas_cumprod[int(round(t))])) for t in ts]

    def _full_schedule(self) -> tuple[list[tuple[float, float]], float]:
        """The steps of a text-to-image run and the weight of z in its starting latent, as a diffusers pipeline given
        this folder sets them: it scales its noise by ``init_noise_sigma`` and the UNet input by ``scale_model_input``
        (Euler with trailing or linspace spacing starts from sqrt(1 - alphas_cumprod[t0]) * z, DDIM and LCM from z)."""
        s, sched = self.settings, self.scheduler
        run = None
        if s.timesteps and "timesteps" in inspect.signature(sched.set_timesteps).parameters:
            try:
                run = self._scheduler_run(timesteps=list(s.timesteps))
            except ValueError:  # e.g. Karras sigmas take no explicit timesteps
                run = None
        if run is None:
            run = self._scheduler_run(s.steps)
            if s.timesteps:
                run = [(float(t), float(self.alphas_cumprod[t])) for t in s.timesteps]
        start = sched.scale_model_input(torch.full((1,), float(sched.init_noise_sigma)), sched.timesteps[0])
        return run, float(start[0])

    def _img2img_schedule(self, strength: float) -> list[tuple[float, float]]:
        """The steps of an img2img run at a strength, as diffusers' img2img pipelines take them: the scheduler's own
        partial schedule where it has one (LCM: ``set_timesteps(strength=)``), else the last ``steps`` timesteps of a
        steps/strength-step run (``get_timesteps``), interpolated between whole step counts so that a moving strength
        moves the timesteps smoothly (exact wherever steps/strength is whole)."""
        s, T, acp = self.settings, self.num_train, self.alphas_cumprod
        if s.timesteps:
            ts = [max(0, min(T - 1, int(round(t * strength)))) for t in s.timesteps]
            return [(float(t), float(acp[t])) for t in ts]
        try:
            if "strength" in inspect.signature(self.scheduler.set_timesteps).parameters:
                run = self._scheduler_run(s.steps, strength=strength)
                if len(run) != s.steps:
                    raise ValueError(f"{len(run)} timesteps at strength {strength}")
                return run
            n_eff = min(s.steps / strength, float(T))
            n = max(s.steps, math.floor(n_eff + 1e-6))
            upper = self._scheduler_run(n)[-s.steps:]  # strength steps/n >= strength: the larger timesteps
            if n_eff - n <= 1e-6:
                return upper
            lower = self._scheduler_run(n + 1)[-s.steps:]
            w = (strength - s.steps / (n + 1)) / (s.steps / n - s.steps / (n + 1))
            ts = [int(round((1 - w) * lo + w * hi)) for (lo, _), (hi, _) in zip(lower, upper)]
        except ValueError:  # the scheduler cannot go that low (LCM below steps/original_inference_steps)
            ts = [max(0, int(round((t + 1) * strength)) - 1) for t, _ in self.full_schedule]
        return [(float(t), float(acp[t])) for t in ts]

    # -- per-step arithmetic ------------------------------------------------------------------------------------

    def _table(self, strength: float) -> None:
        """Per-step constants (timestep, alphas, LCM scalings) for a strength, copied into the static table."""
        key = round(strength, 4)
        if key == self._tab_key:
            return
        run = self.full_schedule if key >= 1.0 else self._img2img_schedule(strength)
        rows = []
        for i, (t, a) in enumerate(run):
            a_next = run[i + 1][1] if i + 1 < len(run) else 1.0
            if self.family == "lcm":
                c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition_discrete(int(round(t)))
            else:
                c_skip, c_out = 0.0, 1.0
            rows.append([t, math.sqrt(a), math.sqrt(1 - a), float(c_skip), float(c_out), math.sqrt(a_next),
                         math.sqrt(1 - a_next)])
        self.buf["tab"].copy_(torch.tensor(rows, dtype=torch.float32))
        self._tab_key = key
        self.timesteps_now = tuple(int(t) if float(t).is_integer() else t for t, _ in run)
        self.alpha_start = run[0][1]

    def _unet_kwargs(self) -> dict[str, Any]:
        b = self.buf
        kw: dict[str, Any] = {"encoder_hidden_states": b["emb"]}
        if "pooled" in b:
            kw["added_cond_kwargs"] = {"text_embeds": b["pooled"], "time_ids": b["time_ids"]}
        if "tcond" in b:
            kw["timestep_cond"] = b["tcond"]
        return kw

    def _step(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One denoising step at table row i: (next x, x0 prediction). Tensor-only, so it can be captured."""
        b, row = self.buf, self.buf["tab"][i]
        t, sa, s1a, c_skip, c_out, sa_n, s1a_n = (row[k] for k in range(7))
        model_in = torch.cat([x, x]) if self.cfg else x
        # The timestep stays float32 (bfloat16 would round 999 to 1000); the UNet embeds it in float32 anyway.
        out = self._unet_fn(model_in, row[0:1].clone().expand(model_in.shape[0]), return_dict=False,
                            **self._unet_kwargs())[0]
        if self.cfg:
            uncond, cond = out.float().chunk(2)
            out = uncond + b["g"] * (cond - uncond)
        out, xf = out.float(), x.float()
        if self.prediction == "epsilon":
            x0 = (xf - s1a * out) / sa
            eps = out
        elif self.prediction == "v_prediction":
            x0 = sa * xf - s1a * out
            eps = sa * out + s1a * xf
        else:
            x0 = out
            eps = (xf - sa * x0) / s1a
        if self.family == "lcm":
            x0 = c_out * x0 + c_skip * xf
            x_next = sa_n * x0 + s1a_n * b["renoise"][i].float()  # LCM multi-step: fresh (fixed per-run) noise
        else:
            x_next = sa_n * x0 + s1a_n * eps  # deterministic (DDIM == Euler) step
        del t
        return x_next.to(self.dtype), x0

    def _decode_into_rgb(self, x0: torch.Tensor) -> None:
        """Decode latents, convert to uint8 RGB in the static buffer and store the finite flag.

        The flag checks the latents too: TAESD's input clamp (tanh) would turn an fp16 overflow in the UNet into a
        finite but meaningless image.
        """
        lat = (x0.float() / self.vae_scale).to(self.vae_dtype)
        t0 = self.timer
        if self._vae_decode is not None and self.tiny_vae:
            img = self._vae_decode(lat)
        elif self._vae_decode is not None:
            pq = getattr(self.vae, "post_quant_conv", None)
            img = self._vae_decode(pq(lat) if pq is not None else lat)
        else:
            img = self.vae.decode(lat, return_dict=False)[0]
        t0.mark("decode")
        self.buf["ok"].copy_(torch.isfinite(img).all() & torch.isfinite(x0).all())
        self.buf["rgb"].copy_(to_uint8_hwc(img))
        t0.mark("convert")

    def _init_x(self) -> torch.Tensor:
        b = self.buf
        return (b["init"][0] * b["src"].float() + b["init"][1] * b["z"].float()).to(self.dtype)

    def _program_full(self) -> None:
        x = self._init_x()
        x0 = x
        for i in range(self.settings.steps):
            x, x0 = self._step(i, x)
        self.timer.mark("unet")
        self._decode_into_rgb(x0)

    def _program_emergence(self, i: int) -> None:
        x = self._init_x() if i == 0 else self.buf["x"]
        x_next, x0 = self._step(i, x)
        self.buf["x"].copy_(x_next)
        self.timer.mark("unet")
        self._decode_into_rgb(x0)
        self.buf["ok"].logical_and_(torch.isfinite(x_next).all())  # a carried Inf would poison the next steps

    def _program_recon(self) -> None:
        self.timer.mark("unet")
        self._decode_into_rgb(self.buf["src"])

    def _encode_source(self, img: np.ndarray) -> None:
        """Upload an RGB uint8 image (resized to the frame on the host) and encode it into the static source latent."""
        s = self.settings
        if img.shape[:2] != (s.height, s.width):
            import cv2

            img = cv2.resize(img, (s.width, s.height), interpolation=cv2.INTER_AREA)
        host, dev_img = self._staging
        host.copy_(torch.from_numpy(np.ascontiguousarray(img)))
        dev_img.copy_(host, non_blocking=True)  # safe: the previous frame's readback synced the stream
        self.timer.mark("upload")

        def program() -> None:
            x = dev_img.permute(2, 0, 1)[None].float().div(127.5).sub(1.0).to(self.vae_dtype)
            if self.tiny_vae:
                lat = self.vae.encode(x, return_dict=False)[0]
            else:
                lat = self.vae.encode(x).latent_dist.mode()
            self.buf["src"].copy_((lat.float() * self.vae_scale).to(self.dtype))

        self.programs.run(("encode",), program)
        self.timer.mark("encode")

    # -- render -------------------------------------------------------------------------------------------------

    def _source(self, extras: Mapping[str, Any]) -> np.ndarray | None:
        src = extras.get("source")
        if src is None:
            return None
        if (not isinstance(src, np.ndarray) or src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3
                or not 8 <= src.shape[0] <= 4096 or not 8 <= src.shape[1] <= 4096):
            self._counters["rejected_sources"] += 1
            if self._counters["rejected_sources"] in (1, 100, 10000):
                log.warning("diffusion: rejected extras['source'] (need HxWx3 uint8), %d so far",
                            self._counters["rejected_sources"])
            return None
        return src

    def _source_changed(self, src: np.ndarray) -> bool:
        """Host-side similarity filter on a subsampled copy: no device work, so no host sync."""
        small = src[::8, ::8].astype(np.int16)
        prev = self._prev_src_small
        if prev is None or prev.shape != small.shape:
            self._prev_src_small = small
            return True
        diff = float(np.abs(small - prev).mean()) / 255.0
        if diff <= self.settings.similar_threshold:
            return False
        self._prev_src_small = small
        return True

    def render(self, request: LatentRequest) -> np.ndarray:
        """One frame, HxWx3 uint8. Raises NonFiniteFrame (after resetting cross-frame state) on NaN/Inf."""
        if not self.prepared:
            raise RuntimeError("diffusion decoder: call prepare() before render()")
        z = np.asarray(request.z, dtype=np.float32)
        if z.shape != self.lat_shape:
            raise ValueError(f"diffusion: request.z has shape {z.shape}, expected {self.lat_shape}")
        return self._render(z, request.params or {}, request.extras or {})

    @torch.inference_mode()
    def _render(self, z: np.ndarray, params: Mapping[str, float], extras: Mapping[str, Any],
                force: bool = False) -> np.ndarray:
        s, b = self.settings, self.buf
        self.timer.start()
        prompts = self._prompts(params, extras)
        self._set_condition(prompts)
        self.timer.mark("encode")
        # Live scalars: only written when they move (each write is a tiny async device op).
        for name, tensor in self.lora_scales.items():
            v = _param(params, f"lora.{name}.scale", 1.0, -4.0, 4.0)
            if v != self._lora_values[name]:
                tensor.fill_(v)
                self._lora_values[name] = v
        g = _param(params, "diffusion.guidance", s.guidance, 0.0, 30.0)
        if self.cfg and max(g, 1.0) != self._guidance_value:
            b["g"].fill_(max(g, 1.0))
            self._guidance_value = max(g, 1.0)
        if "tcond" in b:
            w = g if g > 0 else 8.0
            if w != self._tcond_w:
                b["tcond"].copy_(guidance_embedding(w, b["tcond"].shape[1], self.dtype, self.device)
                                 .expand_as(b["tcond"]))
                self._tcond_w = w

        src = None if s.latent_source else self._source(extras)
        img2img = src is not None or bool(self.ref_latents) or s.latent_source
        strength = _param(params, "diffusion.strength", s.strength, 0.0, 1.0) if img2img else 1.0
        src_changed = False
        if src is not None:
            src_changed = self._source_changed(src) or self._src_key != "camera"
            if src_changed:
                self._encode_source(src)
                self._src_key = "camera"
        elif s.latent_source:  # the trajectory's latent is the clean source (in the skip key); the noise is fixed
            self._src_key = ("z", z.tobytes())
        elif self.ref_latents:
            n = len(self.ref_latents)
            weights = tuple(_param(params, f"reference.{i}.weight", 1.0, 0.0, 1e6) for i in range(n))
            if sum(weights) <= 0:
                weights = (1.0,) * n
            if self._src_key != ("refs", weights):
                b["src"].copy_(blend_tensors(self.ref_latents, list(weights), s.blend))
                self._src_key = ("refs", weights)
                src_changed = True
        use_z = not img2img or (s.img2img_noise == "trajectory" and not s.latent_source)

        # Skip the whole frame when nothing that shapes it moved (a paused walk, a still camera).
        key = (prompts, strength, g, tuple(self._lora_values.values()), self._src_key,
               z.tobytes() if use_z else None)
        if (not force and not s.emergence and self._last_frame is not None and key == self._last_key
                and not src_changed and self._skip_run < s.similar_max_skip):
            self._skip_run += 1
            self._counters["skipped"] += 1
            return self._last_frame.copy()
        self._skip_run = 0

        if use_z or s.latent_source:
            self._z_host.copy_(torch.from_numpy(z)[None])
            b["src" if s.latent_source else "z"].copy_(self._z_host, non_blocking=True)
        if not use_z:
            b["z"].copy_(b["fixed_noise"])
        self.timer.mark("upload")
        if img2img and strength <= 0.0:
            program, fn = ("recon",), self._program_recon
        else:
            self._table(strength)
            if img2img:  # the source noised to the first timestep (the scheduler's add_noise)
                a = self.alpha_start
                self._init_coef((math.sqrt(a), math.sqrt(1 - a)))
            else:  # noise as the folder's scheduler starts it (init_noise_sigma, scale_model_input)
                self._init_coef((0.0, self.z_coef))
            if s.emergence and s.steps > 1:
                i = self._em_index
                program, fn = ("emergence", i), (lambda i=i: self._program_emergence(i))
                self._em_index = (i + 1) % s.steps
            else:
                program, fn = ("full",), self._program_full
        self.programs.run(program, fn)
        if self.use_graphs:
            self.timer.mark("graph")
        try:
            frame = self.readback.fetch(b["rgb"], b["ok"])
        except NonFiniteFrame:
            self._counters["nonfinite"] += 1
            self.reset()
            log.warning("diffusion: non-finite frame caught; cross-frame state reset")
            raise
        self.timer.mark("download")
        self._counters["frames"] += 1
        self._last_frame, self._last_key = frame, key
        return frame.copy()

    def _init_coef(self, coef: tuple[float, float]) -> None:
        if coef != getattr(self, "_init_now", None):
            self.buf["init"].copy_(torch.tensor(coef, dtype=torch.float32))
            self._init_now = coef

    def reset(self) -> None:
        """Forget every cross-frame state (emergence chain, skip cache, source cache); keep models and graphs."""
        self._em_index = 0
        self._last_frame, self._last_key = None, None
        self._skip_run = 0
        self._prev_src_small = None
        self._src_key = None
        self._cond_key = None
        if getattr(self, "buf", None) is not None:
            with torch.inference_mode():
                self.buf["x"].zero_()

    def stats(self) -> dict[str, float]:
        """Last frame's per-stage milliseconds (eager path; a graph replay lands in 'unet') plus counters."""
        out: dict[str, float] = {f"{k}_ms": v for k, v in self.timer.ms.items()}
        out.update({k: float(v) for k, v in self._counters.items()})
        out["encode_calls"] = float(self.encode_calls)
        out["graph_captures"] = float(self.programs.captures) if self.prepared else 0.0
        return out

    def close(self) -> None:
        """Drop graphs, models and caches so the memory goes back (safe to call twice)."""
        if getattr(self, "programs", None) is not None:  # clear() waits for a replay still in flight
            self.programs.clear()
        for name in ("unet", "vae", "text_encoders", "tokenizers", "buf", "_unet_fn", "_vae_decode", "ref_latents",
                     "_staging", "lora_scales"):
            if hasattr(self, name):
                setattr(self, name, None)
        self._cache.clear()
        self.prepared = False
        if torch.cuda.is_available() and self.device_name.startswith("cuda"):
            torch.cuda.empty_cache()
