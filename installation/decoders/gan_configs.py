"""The configs of the generator architectures a GAN file may name, without the networks (no torch): what a file's
header is checked against before anything is loaded (:mod:`installation.decoders.gan_kind`). The networks are in
:mod:`~installation.decoders.gan_nets` and :mod:`~installation.decoders.stylegan_lite`, each with its ``Config``
from here."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

CONFIG_MAX = 4096  # no config number (widths, sizes, layers) above this: a file cannot ask for an absurd network


@dataclass(frozen=True)
class DcganConfig:
    """A DCGAN-style generator: z (+ an embedded class vector) -> 4x4 features -> transposed convs up to ``size``."""

    z_dim: int = 128
    class_dim: int = 0
    width: int = 64  # channels of every hidden layer
    size: int = 64  # output side in pixels: 8, 16, 32, ... (4 doubled at least once)


@dataclass(frozen=True)
class GanConfig:
    """The shape of the nets; saved in the checkpoint, so a resume builds the same ones."""

    size: int = 64
    z_dim: int = 128
    w_dim: int = 128
    mapping_layers: int = 4
    base: int = 16  # channels at full resolution; doubling per halving up to ``cap``
    cap: int = 128

    def channels(self, res: int) -> int:
        return min(self.cap, self.base * self.size // res)


CONFIGS: dict[str, type] = {"dcgan": DcganConfig, "stylegan-lite": GanConfig}  # architecture name -> its config


def config_class(name: Any) -> type:
    """The config class of a declared architecture (ValueError naming the allowed ones)."""
    if not isinstance(name, str) or name not in CONFIGS:
        raise ValueError(f"architecture {name!r} is not one this program knows; allowed: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def build_config(config_cls: type, raw: Any) -> Any:
    """``config_cls`` from a file's JSON: known keys only, whole numbers from 0 to CONFIG_MAX (ValueError)."""
    names = {f.name for f in fields(config_cls)}
    if not isinstance(raw, Mapping) or set(raw) - names:
        raise ValueError(f"config must be a table with keys from {sorted(names)}, not {raw!r}"[:300])
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= CONFIG_MAX:
            raise ValueError(f"config {key} must be a whole number from 0 to {CONFIG_MAX}, not {value!r}"[:300])
    return config_cls(**raw)
