"""The decoder protocol: one latent request in, one RGB frame out.

A decoder is built from its validated settings (a frozen pydantic model declared by the class), prepared once
(load, warm up, capture graphs) and then asked for frames. Frames are HxWx3 arrays, top row first: float32 in
0..1 (the guard checks them for NaN/Inf and converts) or uint8 (the decoder then checks its float stage itself and
raises :class:`NonFiniteFrame`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)


class NonFiniteFrame(RuntimeError):
    """A decoder produced NaN or Inf; the frame must not reach the screen."""


class DecoderSettings(BaseModel):
    """Base for each decoder's settings: strict keys, immutable, hashable (so equal settings share a decoder).

    ``path_fields`` names string settings that are file paths: relative ones are read from the scene file's folder.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    path_fields: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class DecoderSpec:
    """Which decoder a scene uses: a registry name plus that decoder's validated settings."""

    type: str
    settings: DecoderSettings


@dataclass(frozen=True)
class LatentRequest:
    """Everything a decoder needs for one frame. Immutable, so it can cross threads."""

    z: np.ndarray
    t: float
    seq: int
    decoder: DecoderSpec
    scene: str = ""
    params: Mapping[str, float] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Decoder(Protocol):
    """What the runtime needs from a backend."""

    name: ClassVar[str]
    Settings: ClassVar[type[DecoderSettings]]

    @classmethod
    def latent_shape(cls, settings: DecoderSettings) -> tuple[int, ...]: ...

    def prepare(self) -> None: ...

    # Optional: ``param_specs(settings)`` classmethod: the live bus parameters (ParamSpec) it reads from
    # request.params, with defaults taken from the settings; the show declares them so OSC and modulation reach them.
    # Optional: ``check(settings)`` classmethod, cheap, no weights loaded: raises FileNotFoundError/ValueError with
    # one clear message when the files a scene names are missing, so a show fails at start-up, not mid-show.

    def render(self, request: LatentRequest) -> np.ndarray: ...

    def close(self) -> None: ...


def resolve_device(choice: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        log.warning("decoder.device is 'cuda' but torch sees no GPU; using the CPU")
        return "cpu"
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice
