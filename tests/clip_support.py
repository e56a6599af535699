"""A tiny CLIP model built from a config with open_clip's real classes, saved as a user's checkpoint file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TINY = {"embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


@dataclass(frozen=True)
class TinyClip:
    config: Path  # the architecture's JSON (its stem is the model name)
    weights: Path  # a state_dict checkpoint (.safetensors), as a user would copy one onto the machine

    def toml(self, extra: str = "") -> str:
        return (f'[vision]\nenabled = true\nmodel_config_file = "{self.config}"\nweights = "{self.weights}"\n'
                f'device = "cpu"\nevery_n = 1\n{extra}')

    def settings(self, **kw):
        from installation.vision.settings import VisionSettings

        kw = {"enabled": True, "model_config_file": str(self.config), "weights": str(self.weights),
              "device": "cpu", "every_n": 1, **kw}
        return VisionSettings(**kw).resolved(Path("/"))


def make_tiny_clip(folder: Path) -> TinyClip:
    """Build the tiny model with a fixed seed and save its state_dict in ``folder``."""
    import open_clip
    import torch

    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(str(config))
    torch.manual_seed(1234)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    weights = folder / "tiny-clip.safetensors"  # the format the README asks for (a .bin/.pt loads too)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return TinyClip(config, weights)
