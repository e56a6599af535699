"""Image prompts (IP-Adapter), the side a scene check needs without torch: what ``[decoder.ip_adapter]`` sets, the
start-up check of its files (read from the safetensors header and the image encoder's config, no tensor loaded) and
its live parameters. The model side is :mod:`.ip_adapter`."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ...bus import ParamSpec
from ..weights import SAFE_SUFFIXES, UnsafeModelFile, check_weights

IMAGES_MAX = 4
WEIGHT_MAX = 4.0
SCALE_MAX = 2.0
HOW = "e.g. `huggingface-cli download h94/IP-Adapter models/ip-adapter_sd15.safetensors models/image_encoder " \
      "--local-dir models/ip-adapter`"


class ImagePrompt(BaseModel):
    """One ``[[decoder.ip_adapter.images]]``: an image file (or the camera) and its live weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field("camera", description="'camera' or an image file")
    weight: float = Field(1.0, ge=0.0, le=WEIGHT_MAX, description="its share of the blend (live: ip.<i>.weight)")


class IPAdapterSettings(BaseModel):
    """``[decoder.ip_adapter]``: an IP-Adapter weights file, the CLIP image encoder it was trained with, its scale and
    the image prompts, blended by weight into one image embedding."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="an IP-Adapter weights file (.safetensors), e.g. ip-adapter_sd15.safetensors")
    image_encoder: str = Field(description="a transformers CLIPVisionModelWithProjection folder (.safetensors)")
    scale: float = Field(0.6, ge=0.0, le=SCALE_MAX, description="the adapter's strength (live: ip.scale)")
    camera_hz: float = Field(4.0, gt=0.0, le=60.0, description="at most this many camera frames a second are "
                                                              "encoded into an image prompt")
    images: tuple[ImagePrompt, ...] = Field(description="the image prompts ([[decoder.ip_adapter.images]])")

    @model_validator(mode="after")
    def _check_images(self) -> "IPAdapterSettings":
        if not 1 <= len(self.images) <= IMAGES_MAX:
            raise ValueError(f"ip_adapter needs 1-{IMAGES_MAX} images ([[decoder.ip_adapter.images]] with source = "
                             f"'camera' or an image file), not {len(self.images)}")
        return self


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a .safetensors file's header (no tensor is read)."""
    with path.open("rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if not 2 <= n <= 100_000_000:
            raise ValueError("bad header length")
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def check_ip_adapter(ip: IPAdapterSettings | None, unet_cfg: dict[str, Any], model: str) -> None:
    """The weights file is a base IP-Adapter in safetensors made for the model's cross-attention width, the image
    encoder folder a CLIPVisionModelWithProjection whose projection fits the adapter, every image file exists."""
    if ip is None:
        return
    path = Path(ip.path).expanduser()
    if path.suffix not in SAFE_SUFFIXES:
        raise UnsafeModelFile(f"ip_adapter.path {path}: not a .safetensors file; a pickled file (.bin) could run "
                              f"code when loaded, so only .safetensors is read ({HOW})")
    if not path.is_file():
        raise FileNotFoundError(f"ip_adapter.path {path} not found ({HOW})")
    try:
        shapes = safetensors_shapes(path)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise ValueError(f"ip_adapter.path {path}: not a readable .safetensors file ({type(e).__name__})") from None
    proj = shapes.get("image_proj.proj.weight")
    keys = [k for k in shapes if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight")]
    if proj is None or len(proj) != 2 or not keys:
        what = "an IP-Adapter Plus/Full-Face/FaceID file" if any(k.startswith("image_proj.") for k in shapes) \
            else "not an IP-Adapter file (no image_proj./ip_adapter. tensors)"
        raise ValueError(f"ip_adapter.path {path}: {what}; only the base IP-Adapter (e.g. ip-adapter_sd15, "
                         f"ip-adapter_sdxl) is supported")
    adapter_dim = shapes[keys[0]][1]
    unet_dim = unet_cfg.get("cross_attention_dim")
    if unet_dim is not None and adapter_dim != unet_dim:
        raise ValueError(f"ip_adapter.path {path} is made for cross_attention_dim {adapter_dim}, the model {model} "
                         f"has {unet_dim} (another base)")
    enc = Path(ip.image_encoder).expanduser()
    if not (enc / "config.json").is_file():
        raise FileNotFoundError(f"ip_adapter.image_encoder {enc}: no such CLIP image encoder folder (config.json "
                                f"missing; {HOW})")
    cfg = json.loads((enc / "config.json").read_text())
    if cfg.get("model_type") not in ("clip_vision_model", "clip"):
        raise ValueError(f"ip_adapter.image_encoder {enc}: a {cfg.get('model_type')!r} model, not a CLIP vision "
                         f"model (CLIPVisionModelWithProjection)")
    check_weights(enc, f"a CLIPVisionModelWithProjection folder with .safetensors weights ({HOW})")
    dim = cfg.get("projection_dim", cfg.get("vision_config", {}).get("projection_dim"))
    if dim is not None and dim != proj[1]:
        raise ValueError(f"ip_adapter.image_encoder {enc} gives {dim}-wide image embeddings, the adapter {path} "
                         f"takes {proj[1]}")
    for i, im in enumerate(ip.images):
        if im.source != "camera" and not Path(im.source).expanduser().is_file():
            raise FileNotFoundError(f"ip_adapter image {i}: {Path(im.source).expanduser()} not found (source is "
                                    "'camera' or an image file)")


def ip_param_specs(ip: IPAdapterSettings | None) -> list[ParamSpec]:
    """ip.scale and ip.<i>.weight, with the scene's values as their defaults."""
    if ip is None:
        return []
    specs = [ParamSpec("ip.scale", "float", 0.0, SCALE_MAX, ip.scale, 0.3, 0.3,
                       f"strength of the image prompt ({Path(ip.path).name})")]
    specs += [ParamSpec(f"ip.{i}.weight", "float", 0.0, WEIGHT_MAX, im.weight, 0.3, 0.3,
                        f"share of image prompt {i} ({Path(im.source).name}) in the blend; all 0: no image prompt")
              for i, im in enumerate(ip.images)]
    return specs
