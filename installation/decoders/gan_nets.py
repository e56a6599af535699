"""The generator architectures a GAN file may name: code in this package, so that a file brings weights only.

A generator file (``.safetensors``) declares one of :data:`ARCHITECTURES` and its config; the decoder builds that
network here and fills its tensors from the file (every name and shape must match). A file can so never bring code
of its own. Adding an architecture is adding its class here (code you review), with a frozen dataclass config of
whole numbers and the class attributes ``architecture`` (its name) and ``Config``; the instance keeps ``config``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .gan_configs import CONFIG_MAX, CONFIGS, DcganConfig, build_config

__all__ = ["ARCHITECTURES", "CONFIG_MAX", "Dcgan", "DcganConfig", "architecture", "make_config"]


class Dcgan(nn.Module):
    """z [B, z_dim] (+ class [B, class_dim]) -> image [B, 3, size, size] in -1..1."""

    architecture = "dcgan"
    Config = DcganConfig

    def __init__(self, cfg: DcganConfig) -> None:
        super().__init__()
        ups = int(round(math.log2(cfg.size / 4)))
        if ups < 1 or 4 * 2 ** ups != cfg.size:
            raise ValueError(f"dcgan: size must be 8, 16, 32, ... (4 doubled), not {cfg.size}")
        self.config = cfg
        self.embed = nn.Linear(cfg.class_dim, cfg.z_dim) if cfg.class_dim else None
        self.fc = nn.Linear(cfg.z_dim, cfg.width * 16)
        layers: list[nn.Module] = []
        for _ in range(ups - 1):
            layers += [nn.ConvTranspose2d(cfg.width, cfg.width, 4, 2, 1), nn.ReLU()]
        layers.append(nn.ConvTranspose2d(cfg.width, 3, 4, 2, 1))
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None and c is not None:
            z = z + self.embed(c)
        x = self.fc(z).reshape(z.shape[0], self.config.width, 4, 4)
        return torch.tanh(self.up(x))


def _stylegan_lite() -> type[nn.Module]:
    from .stylegan_lite import ExportedGenerator  # what `installation train` writes

    return ExportedGenerator


# name -> the class (imported on use); each class has ``Config`` and builds from ``cls(config)``.
ARCHITECTURES: dict[str, Callable[[], type[nn.Module]]] = {"dcgan": lambda: Dcgan, "stylegan-lite": _stylegan_lite}
assert set(ARCHITECTURES) == set(CONFIGS), "every architecture has its config in gan_configs.py"


def architecture(name: Any) -> type[nn.Module]:
    """The class of a declared architecture (ValueError naming the allowed ones)."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(f"architecture {name!r} is not one this program knows; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]()


def make_config(cls: type[nn.Module], raw: Any) -> Any:
    """``cls.Config`` from a file's JSON: known keys only, whole numbers from 0 to CONFIG_MAX (ValueError)."""
    return build_config(cls.Config, raw)  # type: ignore[attr-defined]
