"""Finding, checking and loading a diffusers folder: hub ids, weights variants (``.safetensors`` only), the family
(SD 2.1, SDXL, LCM), the VAE's factor, and the components the frame program runs."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..weights import UnsafeModelFile, check_pickle, check_weights
from .image_prompts import check_ip_adapter
from .settings import EXAMPLE_REPO, STEP_RANGE, DiffusionSettings

if TYPE_CHECKING:  # the checks above need neither: a scene is checked without importing torch
    import torch

    from .._accel import PrepareProgress

log = logging.getLogger(__name__)


def _hub_offline(settings: DiffusionSettings) -> bool:
    return settings.local_files_only or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return len(parts) == 2 and all(parts) and not s.startswith((".", "/", "~")) and "\\" not in s


def resolve_model_dir(settings: DiffusionSettings) -> Path:
    """The local folder for ``settings.model``: the folder itself, or the hub snapshot (offline rules honoured)."""
    path = Path(settings.model).expanduser()
    if path.exists():
        return path
    if not looks_like_hub_id(settings.model):
        raise FileNotFoundError(
            f"diffusion model folder {path} not found; copy a diffusers folder there, e.g. "
            f"`huggingface-cli download {EXAMPLE_REPO[settings.family]} --local-dir {path}`")
    from huggingface_hub import snapshot_download

    offline = _hub_offline(settings)
    try:
        return Path(snapshot_download(settings.model, local_files_only=offline))
    except Exception as exc:  # LocalEntryNotFoundError, connection errors, unknown repo...
        how = "offline (local_files_only or HF_HUB_OFFLINE=1) and not in the hub cache" if offline else str(exc)
        raise FileNotFoundError(
            f"diffusion model {settings.model!r}: {how}; get it once with "
            f"`huggingface-cli download {settings.model} --local-dir <folder>` and set model to that folder") from exc


def vae_factor(config: Mapping[str, Any]) -> int:
    """Pixels per latent cell of a VAE config, as diffusers' pipelines derive it: 2 ** (len(block_out_channels) - 1).

    An AutoencoderTiny (TAESD) file may only name ``decoder_block_out_channels``; diffusers registers those as
    ``block_out_channels`` when it loads one.
    """
    blocks = config.get("block_out_channels") or config.get("decoder_block_out_channels")
    return 2 ** (len(blocks) - 1) if blocks else 8


def vae_config(settings: DiffusionSettings) -> dict[str, Any]:
    """The config.json of the VAE a scene decodes with (its TAESD, else the folder's vae/), or {} when not local."""
    folder = Path(settings.taesd).expanduser() if settings.taesd else Path(settings.model).expanduser() / "vae"
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def check_vae_factor(settings: DiffusionSettings, factor: int) -> None:
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


def _family_of(settings: DiffusionSettings, model_dir: Path) -> str:
    if settings.family != "auto":
        return settings.family
    return detect_family(model_dir) if (model_dir / "model_index.json").is_file() else "sd21"


def _check_taesd(settings: DiffusionSettings, family: str = "sd21") -> Path | None:
    """The TAESD folder a scene names, checked (None when it names none)."""
    if not settings.taesd:
        return None
    taesd = Path(settings.taesd).expanduser()
    how = f"get it with `huggingface-cli download madebyollin/taesd{'xl' if family == 'sdxl' else ''} " \
          f"--local-dir {settings.taesd}`"
    if not taesd.is_dir():
        raise FileNotFoundError(f"TAESD folder {settings.taesd} not found; {how}")
    if not (taesd / "config.json").is_file():
        raise FileNotFoundError(f"TAESD folder {settings.taesd}: missing config.json; {how}")
    check_weights(taesd, how)
    return taesd


def check_files(s: DiffusionSettings) -> None:
    """Every file the settings name exists, checked before any weight is loaded."""
    for path, name in s.loras:
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"LoRA {name!r}: file {Path(path).expanduser()} not found "
                                    "(a .safetensors LoRA trained for this model)")
        check_pickle(path, f"LoRA {name!r}")  # a .bin/.pt LoRA: refused at start when it is more than data
    for path in ([s.source] if s.source else []) + list(s.references):
        if not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"image {Path(path).expanduser()} not found (img2img source / reference)")


CONTROL_CLASSES = ("ControlNetModel", "T2IAdapter")


def _base_of(cfg: Mapping[str, Any]) -> str:
    """A UNet's or control's base in words, from its config."""
    if cfg.get("addition_embed_type") == "text_time" or cfg.get("adapter_type") == "full_adapter_xl":
        return "SDXL"
    dim = cfg.get("cross_attention_dim")
    name = {768: "SD 1.5", 1024: "SD 2.1"}.get(dim, "SD")
    return f"{name}, cross_attention_dim {dim}" if dim is not None else "SD 1.5/2.1"


def check_controls(s: DiffusionSettings, model_dir: Path | None) -> None:
    """Every control's folder is a ControlNet or T2I-Adapter with safe weights, made for the model's base (its UNet's
    config: cross-attention width, SDXL's added conditioning, the adapter's block widths); its image file exists."""
    unet_cfg: dict[str, Any] = {}
    if model_dir is not None and (model_dir / "unet" / "config.json").is_file():
        unet_cfg = json.loads((model_dir / "unet" / "config.json").read_text())
    for i, c in enumerate(s.controls):
        folder = Path(c.model).expanduser()
        what = f"control {i} ({folder})"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{what}: no such ControlNet/T2I-Adapter folder (config.json missing) for model "
                                    f"{model_dir or s.model}")
        cfg = json.loads((folder / "config.json").read_text())
        if cfg.get("_class_name") not in CONTROL_CLASSES:
            raise ValueError(f"{what}: a {cfg.get('_class_name')!r}, not a ControlNetModel or T2IAdapter")
        check_weights(folder, "a ControlNet/T2I-Adapter folder with .safetensors weights")
        if unet_cfg:
            if cfg["_class_name"] == "ControlNetModel":
                same = (cfg.get("cross_attention_dim") == unet_cfg.get("cross_attention_dim")
                        and cfg.get("addition_embed_type") == unet_cfg.get("addition_embed_type"))
            else:
                xl = unet_cfg.get("addition_embed_type") == "text_time"
                same = ((cfg.get("adapter_type") == "full_adapter_xl") == xl
                        and list(cfg.get("channels", [])) == list(unet_cfg.get("block_out_channels", [])))
            if not same:
                raise ValueError(f"{what} is made for another base ({_base_of(cfg)}) than the model {model_dir} "
                                 f"({_base_of(unet_cfg)})")
        if c.kind == "depth":
            from .depth import check_depth_model

            check_depth_model(Path(c.depth_model).expanduser(), what)
        if c.source != "camera" and not Path(c.source).expanduser().is_file():
            raise FileNotFoundError(f"{what}: image {Path(c.source).expanduser()} not found (source is 'camera' "
                                    "or an image file)")


def load_controls(s: DiffusionSettings, model_dir: Path, device: torch.device, dtype: torch.dtype) -> list:
    """The controls' modules, checked against the model first: [(class name, module)]."""
    import diffusers
    import torch

    check_controls(s, model_dir)
    out = []
    for c in s.controls:
        folder = Path(c.model).expanduser()
        name = json.loads((folder / "config.json").read_text())["_class_name"]
        variant = check_weights(folder, "a ControlNet/T2I-Adapter folder with .safetensors weights",
                                dtype == torch.float16)
        module = getattr(diffusers, name).from_pretrained(folder, variant=variant, torch_dtype=dtype,
                                                          use_safetensors=True, low_cpu_mem_usage=False)
        out.append((name, module.to(device).eval().requires_grad_(False)))
    return out


def _unet_config(settings: DiffusionSettings) -> dict[str, Any]:
    """The model's UNet config when the folder is local, else {}."""
    try:
        return json.loads((Path(settings.model).expanduser() / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def check_settings(settings: DiffusionSettings) -> None:
    """Start-up check of a local model folder (and TAESD, images, LoRAs); hub ids are resolved in prepare()."""
    path = Path(settings.model).expanduser()
    if path.exists() or not looks_like_hub_id(settings.model):
        model_dir = resolve_model_dir(settings)
        family = _family_of(settings, model_dir)
        validate_model_dir(model_dir, family, need_vae=not settings.taesd, repo_hint=EXAMPLE_REPO[family])
        check_controls(settings, model_dir)
    check_ip_adapter(settings.ip_adapter, _unet_config(settings), settings.model)
    _check_taesd(settings)
    check_vae_factor(settings, vae_factor(vae_config(settings)))
    check_files(settings)


def load_image(path: str, width: int, height: int) -> np.ndarray:
    """An RGB uint8 HxWx3 image from a file, resized to the frame size."""
    from PIL import Image

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"image {p} not found (img2img source / reference)")
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB").resize((width, height), Image.BICUBIC), dtype=np.uint8).copy()


@dataclass
class Components:
    """The loaded parts of a folder, on their device, in eval mode."""

    family: str
    model_dir: Path
    unet: Any
    tokenizers: list
    text_encoders: list
    scheduler: Any
    vae: Any
    tiny_vae: bool
    vae_dtype: torch.dtype
    vae_scale: float
    vae_factor: int
    prediction: str
    controls: list = None  # [(class name, ControlNetModel | T2IAdapter)]
    ip_adapter: Any = None  # an ip_adapter.IPAdapter (its processors in the UNet)


def load_components(s: DiffusionSettings, device: torch.device, dtype: torch.dtype,
                    progress: PrepareProgress) -> Components:
    """Resolve and validate the folder, then load the UNet, text encoders, scheduler and VAE (or TAESD)."""
    import diffusers
    import torch
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    from .schedules import loop_scheduler

    progress.step("checking folders")
    check_files(s)
    model_dir = resolve_model_dir(s)
    if not (model_dir / "model_index.json").is_file() and model_dir.is_dir():
        validate_model_dir(model_dir, "sd21", True, EXAMPLE_REPO[s.family])  # raises with the message
    family = _family_of(s, model_dir)
    repo = s.model if looks_like_hub_id(s.model) and not Path(s.model).exists() else EXAMPLE_REPO[family]
    lo, hi = STEP_RANGE[family]
    if not lo <= s.steps <= hi:
        raise ValueError(f"{model_dir}: steps={s.steps} outside {lo}-{hi} for the detected family {family}")
    taesd_dir = _check_taesd(s, family)
    variants = validate_model_dir(model_dir, family, need_vae=taesd_dir is None, repo_hint=repo,
                                  prefer_fp16=dtype == torch.float16)
    log.info("diffusion: loading %s (family %s, %s, %s) ...", model_dir, family, device, dtype)
    progress.step("loading the UNet")

    # use_safetensors: never fall back to a pickled .bin (diffusers and transformers would, with a warning).
    kw: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    # Without accelerate on purpose: loading full SD-Turbo-shaped weights took 4.6 s and peaked at 5997 MB
    # RSS without it, 4.5-4.9 s and 6000 MB with accelerate 1.15 (2-core CPU), so say so instead of letting
    # diffusers warn about it on every load.
    plain = {"low_cpu_mem_usage": False}
    unet = diffusers.UNet2DConditionModel.from_pretrained(
        model_dir, subfolder="unet", variant=variants["unet"], **plain, **kw)
    progress.step("loading the text encoders")
    tokenizers = [AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer", local_files_only=True)]
    text_encoders = [CLIPTextModel.from_pretrained(
        model_dir, subfolder="text_encoder", variant=variants["text_encoder"], **kw)]
    if family == "sdxl":
        tokenizers.append(AutoTokenizer.from_pretrained(model_dir, subfolder="tokenizer_2", local_files_only=True))
        text_encoders.append(CLIPTextModelWithProjection.from_pretrained(
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
    scheduler = loop_scheduler(sched_cls.from_pretrained(model_dir, subfolder="scheduler", local_files_only=True),
                               s.steps, model_dir)
    if taesd_dir is not None:
        vae = diffusers.AutoencoderTiny.from_pretrained(
            taesd_dir, variant=check_weights(taesd_dir, "a TAESD folder with .safetensors weights",
                                             dtype == torch.float16), **plain, **kw)
        tiny_vae = True
    else:
        vae_dtype = dtype
        cfg = json.loads((model_dir / "vae" / "config.json").read_text())
        if dtype == torch.float16 and cfg.get("force_upcast", True):
            vae_dtype = torch.float32  # the SD VAEs overflow in float16; TAESD is the fast path
            log.info("diffusion: full VAE kept in float32 (force_upcast); set taesd for speed")
        vae = diffusers.AutoencoderKL.from_pretrained(model_dir, subfolder="vae", variant=variants["vae"],
                                                      local_files_only=True, torch_dtype=vae_dtype,
                                                      use_safetensors=True, **plain)
        tiny_vae = False
    for m in [unet, vae, *text_encoders]:
        m.to(device).eval().requires_grad_(False)
    factor = vae_factor(vae.config)
    check_vae_factor(s, factor)
    vae_dir = taesd_dir if taesd_dir is not None else model_dir / "vae"
    lat_ch, unet_ch = int(vae.config.latent_channels), int(unet.config.in_channels)
    if lat_ch != unet_ch:
        raise ValueError(f"{vae_dir}: the VAE has {lat_ch} latent channels but the UNet takes {unet_ch}")
    prediction = scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"{model_dir}: unsupported prediction_type {prediction!r}")
    controls = load_controls(s, model_dir, device, dtype)
    ip = None
    if s.ip_adapter is not None:
        from .ip_adapter import IPAdapter

        progress.step("loading the IP-Adapter and its image encoder")
        ip = IPAdapter(s.ip_adapter, unet, device, dtype)
    return Components(family=family, model_dir=model_dir, unet=unet, controls=controls, ip_adapter=ip,
                      tokenizers=tokenizers, text_encoders=text_encoders, scheduler=scheduler, vae=vae,
                      tiny_vae=tiny_vae, vae_dtype=next(vae.parameters()).dtype,
                      vae_scale=float(vae.config.get("scaling_factor", 1.0) or 1.0), vae_factor=factor,
                      prediction=prediction)
