"""Steering inputs: OSC control surface, microphone features and camera features, all writing to the ParamBus.

Each input is a part (:mod:`installation.parts`): ``Input(settings, bus, ...)`` with ``start()``, ``stop()``
(idempotent), ``alive`` and ``stats()``, registered under its ``[inputs.<name>]`` table; settings are frozen pydantic
models with safe defaults (OSC on loopback only; microphone and camera off until enabled). The ``[inputs]`` model,
:data:`InputsSettings`, is built from the registry (one sub-table per registered input).
"""

from __future__ import annotations

from typing import Any

from installation.inputs.audio import AudioInput, AudioSettings
from installation.inputs.camera import CameraInput, CameraSettings
from installation.inputs.osc import OscServer, OscSettings

__all__ = [
    "AudioInput", "AudioSettings", "CameraInput", "CameraSettings", "InputsSettings", "OscServer", "OscSettings",
]


def __getattr__(name: str) -> Any:
    if name == "InputsSettings":  # built from the part registry, so it lists every registered input
        from installation.config import config_model

        return config_model().model_fields["inputs"].annotation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
