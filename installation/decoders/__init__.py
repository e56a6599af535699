"""Decoder backends by name: adding one is a file with a class registered here."""

from __future__ import annotations

import importlib
from typing import Callable

from .base import Decoder, DecoderSettings, DecoderSpec, LatentRequest, NonFiniteFrame

_REGISTRY: dict[str, type] = {}
# Built-in backends are imported on first use, so a CPPN show never pays for importing diffusers.
_BUILTINS = {
    "cppn": "installation.decoders.cppn",
    "faulty": "installation.decoders.faulty",
    "diffusion": "installation.decoders.diffusion.decoder", "gan": "installation.decoders.gan",
}
# Built-ins whose class-level side (Settings, latent_shape, param_specs, check) sits in a module of its own that
# imports no torch: a scene is checked, and `scenes` or `params` prints, without importing the decoder itself.
_KINDS = {"diffusion": ("installation.decoders.diffusion.kind", "DiffusionKind"),
          "gan": ("installation.decoders.gan_kind", "GanKind")}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a decoder available to scenes as ``decoder.type = name``."""

    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def names() -> list[str]:
    """Every decoder name a scene may use."""
    return sorted(set(_BUILTINS) | set(_REGISTRY))


def decoder_class(name: str) -> type:
    """The class registered as ``name``, importing its built-in module on first use."""
    if name not in _REGISTRY and name in _BUILTINS:
        importlib.import_module(_BUILTINS[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown decoder {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def decoder_kind(name: str) -> type:
    """What a scene needs of decoder ``name`` before anything is loaded (``Settings``, ``latent_shape``, optional
    ``param_specs`` and ``check``): a built-in's light class where it has one, else the decoder class itself."""
    if name not in _REGISTRY and name in _KINDS:
        module, attr = _KINDS[name]
        return getattr(importlib.import_module(module), attr)
    return decoder_class(name)


def param_specs(spec: DecoderSpec) -> list:
    """The live bus parameters a decoder reads for these settings (``param_specs`` classmethod; none if absent)."""
    fn = getattr(decoder_kind(spec.type), "param_specs", None)
    return list(fn(spec.settings)) if fn is not None else []


def create(spec: DecoderSpec, device: str = "cpu") -> Decoder:
    """Build (not prepare) the decoder a spec names."""
    return decoder_class(spec.type)(spec.settings, device=device)


__all__ = ["Decoder", "DecoderSettings", "DecoderSpec", "LatentRequest", "NonFiniteFrame", "register",
           "names", "decoder_class", "decoder_kind", "create", "param_specs"]
