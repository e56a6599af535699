"""Random-weight diffusers folders in the real layouts (SD 2.1 / SD-Turbo, SDXL-Turbo, LCM, TAESD).

For tests (tiny shapes) and GPU benchmarks without downloads (``full=True``: the real configs). Everything is
written with ``save_pretrained`` so it is loaded back through exactly the code path a user's folder takes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def byte_level_clip_tokenizer(max_length: int = 77):
    """A CLIPTokenizer whose vocabulary is the 256 byte symbols (+ end-of-word forms): any text, no download."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _text_config(full: str | None, **overrides):
    from transformers import CLIPTextConfig

    presets = {
        None: dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                   projection_dim=32),
        "openclip_h": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                           projection_dim=512, hidden_act="gelu"),
        "clip_l": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                       projection_dim=768, hidden_act="quick_gelu"),
        "openclip_bigg": dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20,
                              num_hidden_layers=32, projection_dim=1280, hidden_act="gelu"),
    }
    cfg = dict(vocab_size=49408 if full else 1000, max_position_embeddings=77, bos_token_id=514 - 2,
               eos_token_id=514 - 1, pad_token_id=514 - 1, layer_norm_eps=1e-5, **presets[full])
    cfg.update(overrides)
    return CLIPTextConfig(**cfg)


def _vae(full: bool, scaling_factor: float, factor: int = 8):
    """A full (AutoencoderKL) VAE; ``factor`` (tiny only): pixels per latent cell, 2 ** (number of blocks - 1)."""
    from diffusers import AutoencoderKL

    if full:
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                             layers_per_block=2, sample_size=768, scaling_factor=scaling_factor)
    blocks = factor.bit_length()
    if factor < 1 or 2 ** (blocks - 1) != factor:
        raise ValueError(f"VAE factor must be a power of two, not {factor}")
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,) * blocks,
                         down_block_types=("DownEncoderBlock2D",) * blocks,
                         up_block_types=("UpDecoderBlock2D",) * blocks, layers_per_block=1, norm_num_groups=2,
                         sample_size=64, scaling_factor=scaling_factor)


def _save(model, out: Path, fp16: bool) -> None:
    """save_pretrained, as float16 ``fp16`` variant files when asked (half the bytes to write and to load)."""
    if fp16:
        model.to(torch.float16)
        model.save_pretrained(out, variant="fp16")
    else:
        model.save_pretrained(out)
    log.info("wrote %s", out)


def make_sd21(out: Path, full: bool = False, seed: int = 0, lcm: bool = False, device: str | None = None,
              fp16: bool = False, vae_factor: int = 8) -> Path:
    """An SD 2.1 / SD-Turbo-shaped folder (``lcm=True``: SD 1.5-style with an LCMScheduler and guidance embedding).

    ``device="cuda"`` runs the random initialisation on the GPU (seconds instead of a minute for full shapes);
    ``fp16`` writes float16 variant files; ``vae_factor`` (tiny only) gives a VAE of another downsampling factor.
    """
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        return _sd21_pipe(out, full, lcm, fp16, vae_factor)


def _sd21_pipe(out: Path, full: bool, lcm: bool, fp16: bool, vae_factor: int = 8) -> Path:
    from diffusers import (EulerDiscreteScheduler, LCMScheduler, StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel

    if full:
        cross = 768 if lcm else 1024
        unet = UNet2DConditionModel(
            sample_size=64 if lcm else 96, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=8 if lcm else (5, 10, 20, 20), use_linear_projection=not lcm,
            cross_attention_dim=cross, time_cond_proj_dim=256 if lcm else None)
        text = CLIPTextModel(_text_config("clip_l" if lcm else "openclip_h"))
    else:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), norm_num_groups=4,
            use_linear_projection=True, cross_attention_dim=32, time_cond_proj_dim=8 if lcm else None)
        text = CLIPTextModel(_text_config(None))
    if lcm:
        scheduler = LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    else:
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=_vae(full, 0.18215, vae_factor), text_encoder=text,
                                   tokenizer=byte_level_clip_tokenizer(), unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    _save(pipe, out, fp16)
    return out


def make_sdxl(out: Path, full: bool = False, seed: int = 0, device: str | None = None, fp16: bool = False) -> Path:
    """An SDXL-Turbo-shaped folder: two text encoders, pooled + time-id added conditioning."""
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        return _sdxl_pipe(out, full, fp16)


def _sdxl_pipe(out: Path, full: bool, fp16: bool) -> Path:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if full:
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
            cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        te1 = CLIPTextModel(_text_config("clip_l"))
        te2 = CLIPTextModelWithProjection(_text_config("openclip_bigg"))
    else:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), norm_num_groups=4,
            use_linear_projection=True, cross_attention_dim=64, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32)
        te1 = CLIPTextModel(_text_config(None))
        te2 = CLIPTextModelWithProjection(_text_config(None))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", prediction_type="epsilon", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=_vae(full, 0.13025), text_encoder=te1, text_encoder_2=te2,
                                     tokenizer=byte_level_clip_tokenizer(), tokenizer_2=byte_level_clip_tokenizer(),
                                     unet=unet, scheduler=scheduler)
    _save(pipe, out, fp16)
    return out


def make_taesd(out: Path, full: bool = False, seed: int = 0, device: str | None = None, fp16: bool = False) -> Path:
    """A TAESD-shaped AutoencoderTiny folder (the default AutoencoderTiny config is TAESD's)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        if full:
            vae = AutoencoderTiny()
        else:
            vae = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                                  num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    _save(vae, out, fp16)
    return out


def make_all(root: Path, full: bool = False, seed: int = 0, device: str | None = None,
             fp16: bool = False) -> dict[str, str]:
    """Write sd-turbo/, sdxl-turbo/, lcm/ and taesd/ under ``root``; return their paths by name."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "sd-turbo": make_sd21(root / "sd-turbo", full, seed, device=device, fp16=fp16),
        "sdxl-turbo": make_sdxl(root / "sdxl-turbo", full, seed, device=device, fp16=fp16),
        "lcm": make_sd21(root / "lcm", full, seed, lcm=True, device=device, fp16=fp16),
        "taesd": make_taesd(root / "taesd", full, seed, device=device, fp16=fp16),
    }
    out = {k: str(v) for k, v in paths.items()}
    (root / "models.json").write_text(json.dumps(out, indent=2))
    return out


def make_ip_adapter(model: Path, out: Path, full: bool = False, seed: int = 0, device: str | None = None,
                    fp16: bool = False, image_dim: int | None = None) -> dict[str, str]:
    """A base IP-Adapter for the folder's UNet in the layout of h94/IP-Adapter's ``ip-adapter_*.safetensors``
    (``ip_adapter.<k>.to_k_ip/to_v_ip.weight`` for each cross-attention, k = 1, 3, 5... in the UNet's processor order,
    and a 4-token ``image_proj``) and a CLIPVisionModelWithProjection folder (ViT-H/14's config when ``full``), random
    weights. Returns {"path": the .safetensors file, "image_encoder": the folder}."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = UNet2DConditionModel.load_config(model, subfolder="unet")
    with torch.device("meta"):
        names = list(UNet2DConditionModel.from_config(cfg).attn_processors)
    blocks, cross = list(cfg["block_out_channels"]), int(cfg["cross_attention_dim"])
    enc_cfg = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                               patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu") if full else \
        CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=4,
                         image_size=32, projection_dim=24)
    dim = image_dim or enc_cfg.projection_dim
    enc_cfg.projection_dim = dim
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float16 if fp16 else torch.float32

    def rand(*shape: int, std: float = 0.3) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * std).to(dtype)

    tensors, key_id = {}, 1
    for name in names:
        if name.endswith("attn1.processor"):
            continue
        part = name.split(".")
        hidden = blocks[-1] if part[0] == "mid_block" else \
            (blocks[::-1] if part[0] == "up_blocks" else blocks)[int(part[1])]
        std = 0.3 if not full else cross ** -0.5
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = rand(hidden, cross, std=std)
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = rand(hidden, cross, std=std)
        key_id += 2
    tensors["image_proj.proj.weight"] = rand(4 * cross, dim, std=0.3 if not full else dim ** -0.5)
    tensors["image_proj.proj.bias"] = rand(4 * cross, std=0.1)
    tensors["image_proj.norm.weight"] = 1.0 + rand(cross, std=0.1)
    tensors["image_proj.norm.bias"] = rand(cross, std=0.1)
    save_file(tensors, out / "ip-adapter.safetensors")
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        encoder = CLIPVisionModelWithProjection(enc_cfg)
    encoder.to(dtype).save_pretrained(out / "image_encoder")
    log.info("wrote %s", out)
    return {"path": str(out / "ip-adapter.safetensors"), "image_encoder": str(out / "image_encoder")}
