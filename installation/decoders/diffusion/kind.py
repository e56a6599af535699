"""The diffusion decoder's class-level side: its settings, latent shape, live parameters and start-up check, read
from the scene and the model folder's config files. Checking a scene and the commands that only print use this
without importing torch or diffusers (:func:`installation.decoders.decoder_kind`)."""

from __future__ import annotations

import json
from pathlib import Path

from ...bus import ParamSpec
from .image_prompts import ip_param_specs
from .loading import check_settings, vae_config, vae_factor
from .settings import PROMPT_GAINS, DiffusionSettings


class DiffusionKind:
    """What a diffusion scene needs before anything is loaded; :class:`~.decoder.DiffusionDecoder` inherits it."""

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
        f = vae_factor(vae_config(settings))
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
        for i, c in enumerate(settings.controls):
            specs += [ParamSpec(f"control.{i}.scale", "float", 0.0, 4.0, c.scale, 0.3, 0.3,
                                f"strength of control {i} ({Path(c.model).name}, {c.kind} from {Path(c.source).name})"),
                      ParamSpec(f"control.{i}.start", "float", 0.0, 1.0, c.start, 0.0, 0.0,
                                f"fraction of the steps before control {i} acts"),
                      ParamSpec(f"control.{i}.end", "float", 0.0, 1.0, c.end, 0.0, 0.0,
                                f"fraction of the steps after which control {i} stops")]
        images = ([settings.source] if settings.source else []) + list(settings.references)
        specs += [ParamSpec(f"reference.{i}.weight", "float", 0.0, 10.0, 1.0, 0.5, 0.5,
                            f"weight of {Path(p).name} in the img2img source blend") for i, p in enumerate(images)]
        return specs + ip_param_specs(settings.ip_adapter)

    @classmethod
    def camera_edges(cls, settings: DiffusionSettings) -> tuple[tuple[int, int, int, int], ...]:
        """The Canny edge maps this scene takes from the camera, made in the camera's own process: (width, height,
        low, high) for each distinct pair of thresholds among its camera controls of kind canny."""
        return tuple(sorted({(settings.width, settings.height, c.low, c.high) for c in settings.controls
                             if c.source == "camera" and c.kind == "canny"}))

    @classmethod
    def check(cls, settings: DiffusionSettings) -> None:
        """Start-up check of a local model folder (and TAESD, images, LoRAs); hub ids are resolved in prepare()."""
        check_settings(settings)
